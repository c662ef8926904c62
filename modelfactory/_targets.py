"""Resolving ``_target_`` strings to callables, what parsing needs to know of each (its
signature, whether it draws random numbers), and checking arguments against signatures."""

from __future__ import annotations

import difflib
import importlib
import inspect
import types as types_mod
import typing
from collections.abc import Callable, Collection
from functools import lru_cache
from typing import Any

from torch import nn

from .errors import path_join, value_kind


class TargetNotFound(Exception):
    """Raised by :func:`locate` with a message naming what is missing."""


@lru_cache(maxsize=4096)
def locate(dotted: str) -> Any:
    """Import ``a.b.C`` (module ``a.b``, attribute ``C``) with helpful messages on failure."""
    if not dotted or not isinstance(dotted, str) or any(not p for p in dotted.split(".")):
        raise TargetNotFound(f"{dotted!r} is not a dotted path such as 'torch.nn.Linear'")
    parts = dotted.split(".")
    obj: Any = None
    module_len = 0
    for i in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:i]))
        except ModuleNotFoundError as e:
            # A missing submodule is expected while probing; a broken import inside an existing
            # module is a real error the user must see.
            if e.name is None or not ".".join(parts[:i]).startswith(e.name):
                raise TargetNotFound(f"importing {'.'.join(parts[:i])!r} failed: {e}") from e
            continue
        except Exception as e:
            raise TargetNotFound(f"importing {'.'.join(parts[:i])!r} failed: {e}") from e
        module_len = i
        break
    if module_len == 0:
        raise TargetNotFound(f"no module named {parts[0]!r}")
    for j in range(module_len, len(parts)):
        name = parts[j]
        if not hasattr(obj, name):
            where = ".".join(parts[:j])
            hint = _close(name, [n for n in dir(obj) if not n.startswith("_")])
            did = f"; did you mean {where}.{hint}?" if hint else ""
            raise TargetNotFound(f"{where!r} has no attribute {name!r}{did}")
        obj = getattr(obj, name)
    return obj


def _close(name: str, options: list[str]) -> str | None:
    """The option closest to ``name``, ignoring case (``Relu`` -> ``ReLU``)."""
    lower = {o.lower(): o for o in options}
    hit = difflib.get_close_matches(name.lower(), list(lower), n=1)
    return lower[hit[0]] if hit else None


@lru_cache(maxsize=4096)
def qualified_name(obj: Any) -> str:
    """``module.QualName`` of a class or function (stable across import aliases)."""
    module = getattr(obj, "__module__", None) or ""
    qual = getattr(obj, "__qualname__", None) or getattr(obj, "__name__", None) or repr(obj)
    return f"{module}.{qual}" if module else qual


class Signature:
    """What a callable accepts, computed once per callable."""

    __slots__ = (
        "accepts_var_kw",
        "max_positional",
        "name_set",
        "names",
        "positional",
        "required",
        "required_set",
        "types",
    )

    def __init__(self, sig: inspect.Signature | None) -> None:
        self.names: tuple[str, ...] = ()
        self.name_set: frozenset[str] = frozenset()
        self.required_set: frozenset[str] = frozenset()
        self.required: tuple[str, ...] = ()
        self.positional: tuple[str, ...] = ()
        self.types: dict[str, tuple[type, ...]] = {}  # simple annotations only (int, float, ...)
        self.accepts_var_kw = sig is None
        self.max_positional: float = float("inf") if sig is None else 0
        if sig is None:
            return
        names, required, positional = [], [], []
        var_pos = False
        for p in sig.parameters.values():
            if p.kind is p.VAR_KEYWORD:
                self.accepts_var_kw = True
            elif p.kind is p.VAR_POSITIONAL:
                var_pos = True
            else:
                if p.kind is not p.POSITIONAL_ONLY:
                    names.append(p.name)
                if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD):
                    positional.append(p.name)
                if p.default is p.empty:
                    required.append(p.name)
                simple = _simple_types(p.annotation)
                if simple:
                    self.types[p.name] = simple
        self.names, self.required, self.positional = (
            tuple(names),
            tuple(required),
            tuple(positional),
        )
        self.name_set, self.required_set = frozenset(names), frozenset(required)
        self.max_positional = float("inf") if var_pos else len(positional)

    def fits(self, n_args: int, kwargs: Collection[str], partial: bool) -> bool:
        """Whether the arguments surely fit (the usual case, decided by set operations alone;
        ``False`` may still fit: :meth:`problems` tells)."""
        keys = kwargs.keys() if isinstance(kwargs, dict) else set(kwargs)
        return (
            n_args <= self.max_positional
            and (self.accepts_var_kw or keys <= self.name_set)
            and (partial or not self.required_set or (n_args == 0 and keys >= self.required_set))
        )

    def problems(
        self, what: str, n_args: int, kwargs: Collection[str], partial: bool
    ) -> list[tuple[str, str]]:
        """``(key, message)`` for each argument that does not fit; key ``""`` means the node."""
        if self.fits(n_args, kwargs, partial):
            return []
        kwargs = set(kwargs)
        out = []
        if n_args > self.max_positional:
            out.append(
                (
                    "_args_",
                    f"{what} takes at most {self.max_positional} positional arguments, "
                    f"got {n_args}",
                )
            )
        if not self.accepts_var_kw:
            for k in sorted(kwargs - set(self.names)):
                hint = _close(k, list(self.names))
                did = f" (did you mean {hint!r}?)" if hint else ""
                out.append(
                    (
                        k,
                        f"unexpected keyword for {what}{did}; expected one of "
                        + ", ".join(self.names),
                    )
                )
        if not partial:
            given = set(self.positional[:n_args]) | kwargs
            for r in self.required:
                if r not in given:
                    out.append((r, f"missing required argument for {what}"))
        return out


_SIMPLE_TYPES = frozenset((int, float, bool, str, type(None)))


def _simple_types(annotation: Any) -> tuple[type, ...]:
    """``int`` -> ``(int,)``; ``int | None`` / ``Optional[int]`` likewise.

    Anything richer (tuples, unions with other types, classes) gives ``()``: no check.
    String annotations are evaluated by ``inspect.signature(eval_str=True)``; one that does
    not evaluate stays a string and is not checked.
    """
    if annotation is inspect.Parameter.empty or isinstance(annotation, str):
        return ()
    args = typing.get_args(annotation)
    if args and typing.get_origin(annotation) in (typing.Union, types_mod.UnionType):
        found = [a if a in _SIMPLE_TYPES else None for a in args]
        return tuple(found) if all(found) else ()  # type: ignore[arg-type]
    return (annotation,) if annotation in _SIMPLE_TYPES else ()


def fits(value: Any, types: tuple[type, ...]) -> bool:
    """Whether a config value fits simple annotation types (an int fits ``float``; a bool
    fits only ``bool``)."""
    if isinstance(value, bool):
        return bool in types
    if isinstance(value, int):
        return int in types or float in types
    return isinstance(value, types)


def describe(types: tuple[type, ...]) -> str:
    return " or ".join("null" if t is type(None) else t.__name__ for t in types)


@lru_cache(maxsize=4096)
def signature_of(fn: Callable[..., Any]) -> Signature:
    """What ``fn`` accepts: the signature of the function it wraps (``functools.wraps``), for
    names, types and did-you-mean hints, but never refusing what the outer callable accepts:
    a wrapper that takes ``**kwargs`` (transformers' config classes do) takes any keyword."""
    sig = _signature(fn, eval_str=True)
    if sig is None:
        return Signature(None)  # builtins without a signature: accept anything
    out = Signature(sig)
    if not (out.accepts_var_kw and out.max_positional == float("inf")):
        outer = _signature(fn, follow_wrapped=False)
        kinds = {p.kind for p in outer.parameters.values()} if outer is not None else set()
        out.accepts_var_kw = out.accepts_var_kw or inspect.Parameter.VAR_KEYWORD in kinds
        if inspect.Parameter.VAR_POSITIONAL in kinds:
            out.max_positional = float("inf")
    return out


def _signature(fn: Callable[..., Any], **how: bool) -> inspect.Signature | None:
    """``inspect.signature(fn, **how)``; an annotation that does not evaluate is left a
    string, and a callable without a signature gives ``None``."""
    try:
        return inspect.signature(fn, **how)
    except (NameError, SyntaxError, AttributeError):  # an annotation that does not evaluate
        how.pop("eval_str", None)
    except (TypeError, ValueError):
        return None
    try:
        return inspect.signature(fn, **how)
    except (TypeError, ValueError):
        return None


@lru_cache(maxsize=4096)
def accepts(fn: Callable[..., Any], name: str) -> bool:
    sig = signature_of(fn)
    return sig.accepts_var_kw or name in sig.names


class TargetInfo:
    """What parsing needs to know of a target, looked up once per ``_target_`` string."""

    __slots__ = ("draws", "factories", "ignore", "known", "qualname", "sig", "target", "types")

    def __init__(self, target: Any, qualname: str) -> None:
        self.target, self.qualname = target, qualname
        # Whether constructing it may draw random numbers (else its stream need not be
        # seeded): only exact classes known to draw nothing, never their subclasses.
        self.draws = not (
            target in DRAWS_NOTHING or vars(target).get("_mf_draws_nothing", False)
            if isinstance(target, type)
            else False
        )
        self.sig = signature_of(target) if target is not None else None
        self.known = self.sig.name_set if self.sig is not None else frozenset()  # identifiers
        self.types = self.sig.types if self.sig is not None else {}
        self.factories: tuple[str, ...] = tuple(getattr(target, "_mf_factories", ()))
        # Arguments a block declares as not part of its identity (Repeat's ``n``: growing a
        # stack keeps the values of the copies it already had).
        self.ignore: tuple[str, ...] = tuple(getattr(target, "_mf_stream_ignore", ()))


INFOS: dict[str, TargetInfo] = {}  # by ``_target_`` string: parsing looks here first
DRAWS_NOTHING = frozenset(
    getattr(nn, name)
    for name in [
        *("ReLU", "ReLU6", "LeakyReLU", "GELU", "SiLU", "Mish", "ELU", "SELU", "CELU", "Tanh"),
        *("Sigmoid", "Softplus", "Softmax", "LogSoftmax", "Hardtanh", "Hardswish"),
        *("Hardsigmoid", "Identity", "Flatten", "Unflatten", "Upsample", "AlphaDropout"),
        *("Dropout", "Dropout1d", "Dropout2d", "Dropout3d", "Sequential", "ModuleList"),
        *("ModuleDict", "MaxPool1d", "MaxPool2d", "MaxPool3d", "AvgPool1d", "AvgPool2d"),
        *("AvgPool3d", "AdaptiveAvgPool1d", "AdaptiveAvgPool2d", "AdaptiveAvgPool3d"),
        *("AdaptiveMaxPool1d", "AdaptiveMaxPool2d", "AdaptiveMaxPool3d"),
    ]
    if hasattr(nn, name)
)


def target_info(name: Any, path: str, problems: list[tuple[str, str]]) -> TargetInfo:
    """What parsing needs to know of ``_target_`` value ``name`` (at config ``path``); one that
    does not resolve to a callable has its problem appended and no target. Resolved strings
    are kept in :data:`INFOS`."""
    target_path = path_join(path, "_target_")
    if callable(name) and not isinstance(name, str):  # a class or function given from Python
        return TargetInfo(name, qualified_name(name))
    if not isinstance(name, str):
        expected = f"expected a dotted import path string or a callable, got {value_kind(name)}"
        problems.append((target_path, expected))
        return TargetInfo(None, str(name))
    try:
        target = locate(name)
    except TargetNotFound as e:
        problems.append((target_path, f"cannot resolve {name!r}: {e}"))
        return TargetInfo(None, name)
    if not callable(target):
        problems.append((target_path, f"{name!r} is not callable"))
        return TargetInfo(None, name)
    info = INFOS[name] = TargetInfo(target, qualified_name(target))
    return info
