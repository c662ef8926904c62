"""Initializer rules (the ``init`` group), D2L's custom init, and the init report.

A rule selects parameters by ``params`` (an ``fnmatch`` glob over the full dotted
name; ``*`` crosses dots) and/or ``modules`` (class names, matched against the
module's class and its bases), and names ``fn``: a ``torch.nn.init`` function or
any callable ``f(tensor, **kwargs, generator=...)``. Later rules win. Each
parameter's generator is seeded from its module's stream key, so its values do
not depend on the rest of the model.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable
from contextlib import nullcontext
from dataclasses import dataclass
from fnmatch import fnmatchcase
from typing import Any

import torch
from torch import nn
from torch.nn.parameter import is_lazy

from ._construct import Built
from ._seeding import DrawFrom, Streams, mix
from ._spec import Node, parse_node
from ._targets import accepts, signature_of
from .errors import BuildError, ConfigError, path_join

__all__ = ["Rule", "apply_rules", "d2l_mixture_", "init_report", "parse_rules"]

_RULE_KEYS = ("params", "modules", "fn", "optional")


@dataclass(frozen=True)
class Rule:
    """One parsed init rule."""

    path: str
    params: tuple[str, ...]
    modules: frozenset[str]
    fn: Callable[..., Any]
    kwargs: dict[str, Any]
    optional: bool

    @property
    def draws(self) -> bool:
        """Whether ``fn`` is random (needs a seeded stream); ``zeros_``, ``constant_``... not."""
        return self.fn not in _DETERMINISTIC


_DETERMINISTIC = frozenset(
    (nn.init.zeros_, nn.init.ones_, nn.init.constant_, nn.init.eye_, nn.init.dirac_)
)


@functools.lru_cache(maxsize=1024)
def _class_names(cls: type) -> frozenset[str]:
    return frozenset(c.__name__ for c in cls.__mro__)


def _str_list(v: Any, path: str, problems: list[tuple[str, str]]) -> tuple[str, ...]:
    if v is None:
        return ()
    if isinstance(v, str):
        return (v,)
    if isinstance(v, list) and all(isinstance(x, str) for x in v):
        return tuple(v)
    problems.append((path, f"expected a string or a list of strings, got {v!r}"))
    return ()


def parse_rules(
    rules: list[Any], problems: list[tuple[str, str]], base: str = "init.rules"
) -> list[Rule]:
    """Validate ``init.rules`` (appending problems) and return the rules that are well-formed."""
    out = []
    for i, rule in enumerate(rules):
        path = f"{base}.{i}"
        if not isinstance(rule, dict):
            problems.append(
                (path, f"expected a mapping with keys {', '.join(_RULE_KEYS)}, got {rule!r}")
            )
            continue
        for k in rule:
            if k not in _RULE_KEYS:
                problems.append(
                    (path_join(path, k), f"unknown key; expected one of {', '.join(_RULE_KEYS)}")
                )
        params = _str_list(rule.get("params"), path_join(path, "params"), problems)
        modules = _str_list(rule.get("modules"), path_join(path, "modules"), problems)
        if not params and not modules:
            problems.append((path, "a rule needs 'params' (a glob) and/or 'modules' (class names)"))
        fn = rule.get("fn")
        if not isinstance(fn, dict) or "_target_" not in fn:
            problems.append(
                (
                    path_join(path, "fn"),
                    f"expected a node with '_target_' naming an init function, got {fn!r}",
                )
            )
            continue
        n_before = len(problems)
        node: Node = parse_node(fn, path_join(path, "fn"), "", problems, 0, partial=True)
        optional = rule.get("optional", False)
        if not isinstance(optional, bool):
            problems.append(
                (path_join(path, "optional"), f"expected true or false, got {optional!r}")
            )
        if node.dynamic:
            problems.append(
                (
                    path_join(path, "fn"),
                    "an init function's arguments must be plain values, not blocks",
                )
            )
        if len(problems) == n_before and node.target is not None:
            _check_init_call(node, path_join(path, "fn"), problems)
        if len(problems) == n_before:
            out.append(
                Rule(
                    path, params, frozenset(modules), node.target, dict(node.kwargs), bool(optional)
                )
            )
    return out


def _check_init_call(node: Node, path: str, problems: list[tuple[str, str]]) -> None:
    """An init function is called as ``fn(tensor, **kwargs)``: the rule's keywords plus the
    tensor must cover every required argument (a module class named as ``fn`` does not)."""
    if isinstance(node.target, type):
        problems.append((path, f"{node.target_name} is a class; expected an init function"))
        return
    sig = signature_of(node.target)
    for key, msg in sig.problems(node.target_name, 1, node.kwargs, False):
        problems.append((path_join(path, key), msg))


def apply_rules(model: nn.Module, rules: list[Rule], records: Iterable[Built], root: int) -> None:
    """Apply ``rules`` in place; raises if a non-optional rule selects nothing.

    Each selected parameter is filled from a generator seeded by its module's stream key:
    the key its config node was built under or, for a module a constructor made itself,
    derived from its nearest built ancestor and its name.
    """
    modules = dict(model.named_modules())
    chosen = _select(modules, rules)
    keys = _StreamKeys(modules, records, root)
    streams = Streams()  # one generator per device, re-seeded per tensor; never the global one
    # A function that takes ``generator`` is given it; only one that does not needs every
    # random op routed (DrawFrom costs microseconds per torch call).
    routed = any(r.draws and not accepts(r.fn, "generator") for r in rules)
    with torch.no_grad(), DrawFrom(streams) if routed else nullcontext():
        for rule, full, pname, mname, param in chosen:
            if is_lazy(param):
                raise ConfigError(
                    [
                        (
                            rule.path,
                            f"parameter {full!r} is not materialized yet (lazy layer); "
                            "set input_shape so the model is materialized before init",
                        )
                    ]
                )
            if param.is_meta:
                continue
            kwargs = rule.kwargs
            if rule.draws:  # seed its stream: from the module's key and the parameter's name
                streams.seed(param.device, mix(keys[mname], f"init/{pname}"))
                if accepts(rule.fn, "generator"):
                    kwargs = {**kwargs, "generator": streams.generator(param.device)}
                # else: the function's own random ops get the stream from DrawFrom
            try:
                rule.fn(param, **kwargs)
            except Exception as e:
                raise BuildError(
                    path_join(rule.path, "fn"),
                    f"failed on parameter {full!r}: {type(e).__name__}: {e}",
                ) from e


def _select(
    modules: dict[str, nn.Module], rules: list[Rule]
) -> list[tuple[Rule, str, str, str, nn.Parameter]]:
    """``(winning rule, full name, name, module name, parameter)`` for every selected
    parameter (the last rule that selects it wins); raises for rules that select nothing."""
    by_type: dict[type, list[tuple[int, Rule]]] = {}
    chosen = []
    seen: set[int] = set()
    hits = [0] * len(rules)
    for mname, module in modules.items():
        params = module._parameters
        if not params:
            continue
        candidates = by_type.get(type(module))
        if candidates is None:
            classes = _class_names(type(module))
            candidates = by_type[type(module)] = [
                (i, r)
                for i, r in enumerate(rules)
                if not r.modules or not r.modules.isdisjoint(classes)
            ]
        for pname, param in params.items():
            if param is None or id(param) in seen or not candidates:
                continue
            seen.add(id(param))
            full = f"{mname}.{pname}" if mname else pname
            winner = None
            for i, rule in candidates:
                if not rule.params or any(fnmatchcase(full, p) for p in rule.params):
                    hits[i] += 1
                    winner = rule
            if winner is not None:
                chosen.append((winner, full, pname, mname, param))
    unmatched = [
        (
            r.path,
            f"matched no parameter (params={list(r.params)}, modules={sorted(r.modules)}); "
            "fix the pattern or mark the rule 'optional: true'",
        )
        for r, n in zip(rules, hits, strict=True)
        if n == 0 and not r.optional
    ]
    if unmatched:
        raise ConfigError(unmatched)
    return chosen


class _StreamKeys(dict):
    """Module name -> stream key, computed on demand: the key the module's config node was
    built under, or for a module a constructor made itself, derived from its parent's."""

    def __init__(self, modules: dict[str, nn.Module], records: Iterable[Built], root: int) -> None:
        super().__init__()
        self.modules, self.root = modules, root
        self.built = {id(r.module): r for r in records}  # keys derived when asked

    def __missing__(self, mname: str) -> int:
        module = self.modules[mname]
        record = self.built.get(id(module))
        if record is not None:
            key = record.key
        else:
            parent, _, leaf = mname.rpartition(".")
            key = mix(self[parent] if mname else self.root, f"sub/{leaf}")
        self[mname] = key
        return key


def d2l_mixture_(
    tensor: torch.Tensor,
    low: float = 5.0,
    high: float = 10.0,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """D2L's custom init: U(low, high) w.p. 1/4, 0 w.p. 1/2, U(-high, -low) w.p. 1/4.

    Draws U(-high, high) and zeroes every value with ``|w| < low``.
    """
    with torch.no_grad():
        tensor.uniform_(-high, high, generator=generator)
        tensor.mul_(tensor.abs() >= low)
    return tensor


@torch.no_grad()
def init_report(model: nn.Module, sample: torch.Tensor) -> dict[str, Any]:
    """Per-layer weight statistics and the activation std through depth for ``sample``.

    Returns ``{"weights": [{name, shape, mean, std}], "activations": [{depth, name, std}]}``:
    weights of every parameter, activations at the output of every leaf module in the
    order the forward pass reaches them.
    """
    weights = [
        {
            "name": n,
            "shape": list(p.shape),
            "mean": p.float().mean().item(),
            "std": p.float().std().item() if p.numel() > 1 else 0.0,
        }
        for n, p in model.named_parameters()
    ]
    acts: list[dict[str, Any]] = []
    names = {id(m): n for n, m in model.named_modules()}
    handles = []

    def hook(mod: nn.Module, _inp: Any, out: Any) -> None:
        if isinstance(out, torch.Tensor) and out.is_floating_point() and out.numel() > 1:
            acts.append(
                {"depth": len(acts), "name": names[id(mod)], "std": out.float().std().item()}
            )

    for m in model.modules():
        if not list(m.children()):
            handles.append(m.register_forward_hook(hook))
    was_training = model.training
    model.eval()
    try:
        model(sample)
    finally:
        model.train(was_training)
        for h in handles:
            h.remove()
    return {"weights": weights, "activations": acts}
