"""Which ``_target_``s a checkpoint's config may name.

A checkpoint is untrusted input: its config could name any importable callable
(``os.system``) with any arguments. Before anything is imported, every
``_target_`` anywhere in the config (model tree, ``_args_``, nested lists and
mappings, unbuilt ``_recursive_: false`` values, init rule ``fn``s) is checked
as a plain string against the allowed prefixes. Only then are the model's
targets imported, and each must really live under an allowed prefix: a dotted path
that starts with ``torch.nn`` but walks to a function defined elsewhere does not pass.

By default (``torch.nn`` and ``modelfactory``) a model target must be an ``nn.Module``
class. Under a prefix the caller trusts, anything a build accepts restores: classes,
functions and factories that return a module, classmethods, and values built from
targets that are not modules (``transformers.LlamaConfig``). Trusting a prefix means
running its code: the load calls what the file names under it, with the file's arguments.
"""

from __future__ import annotations

import importlib
import inspect
import sys
from collections.abc import Iterable
from typing import Any

from torch import nn

from .._targets import TargetNotFound, locate, qualified_name
from ..errors import CheckpointError, UntrustedTargetError, path_join
from ._bounds import MAX_BLOCKS, check_size

__all__ = ["check_config", "parse_trusted"]

MODULE_PREFIXES = ("torch.nn", "modelfactory")
# Init functions are called with arguments taken from the file, so by default only the
# initializer modules are allowed, not everything under torch.nn / modelfactory.
INIT_PREFIXES = ("torch.nn.init", "modelfactory.init")


def parse_trusted(trusted: Iterable[str], file: object) -> tuple[str, ...]:
    """``["mypkg.*", "other.Block"]`` -> ``("mypkg", "other.Block")``; ``"*"`` trusts every name."""
    if isinstance(trusted, str):
        trusted = [trusted]
    out = []
    for entry in trusted:
        if not isinstance(entry, str) or not entry.strip():
            raise CheckpointError(
                file, f"trusted: expected dotted prefixes such as 'mypkg.*', got {entry!r}"
            )
        out.append(entry.strip().removesuffix("*").removesuffix("."))
    return tuple(out)


def _allowed(name: str, prefixes: Iterable[str]) -> bool:
    return any(p == "" or name == p or name.startswith(p + ".") for p in prefixes)


def check_config(cfg: dict[str, Any], file: object, trusted: tuple[str, ...]) -> None:
    """Refuse a checkpoint config that names untrusted targets or holds interpolations.

    Raises:
        UntrustedTargetError: listing every offending ``_target_`` with its config path.
        CheckpointError: the config holds ``${...}`` interpolations (a saved config is
            already resolved; resolving one from a file could read the environment).
    """
    targets: list[tuple[str, str]] = []
    missing: list[tuple[str, str]] = []  # trusted by name, but not importable here
    interpolations: list[str] = []
    blocks = _count_targets(cfg)
    if blocks > MAX_BLOCKS:
        raise CheckpointError(
            file,
            f"the embedded config names {blocks:,} blocks, more than the {MAX_BLOCKS:,} a "
            "checkpoint may hold; refusing to build it",
        )
    try:
        _walk(cfg, "", trusted, targets, interpolations)
        if not targets:
            # Strings passed: import the model's targets and check what they really are.
            _check_modules(
                cfg.get("model"), "model", (*MODULE_PREFIXES, *trusted), trusted, targets, missing
            )
            _check_init_fns(cfg.get("init"), (*INIT_PREFIXES, *trusted), trusted, targets)
    except RecursionError as e:
        raise CheckpointError(file, "the embedded config nests too deeply") from e
    if targets:
        allowed = ", ".join((*MODULE_PREFIXES, *(f"{t}.*" if t else "*" for t in trusted)))
        lines = "\n".join(f"  {path}: {msg}" for path, msg in targets)
        raise UntrustedTargetError(
            file,
            "the embedded config names targets that are not trusted, nothing was imported "
            f"or called:\n{lines}\nAllowed: {allowed}.",
        )
    if missing:
        lines = "\n".join(f"  {path}: {msg}" for path, msg in missing)
        raise CheckpointError(
            file,
            f"the embedded config names blocks that cannot be imported here:\n{lines}\n"
            "Install the package that provides them, or put it on PYTHONPATH.",
        )
    if interpolations:
        raise CheckpointError(
            file,
            "the embedded config holds interpolations, which a saved (resolved) config never "
            "has: " + ", ".join(interpolations),
        )
    check_size(cfg, file)


def _count_targets(tree: Any) -> int:
    """How many ``_target_`` nodes ``tree`` holds (iterative: depth is checked elsewhere)."""
    n, stack = 0, [tree]
    while stack:
        v = stack.pop()
        if isinstance(v, dict):
            n += "_target_" in v
            stack.extend(v.values())
        elif isinstance(v, list):
            stack.extend(v)
    return n


def _walk(
    v: Any,
    path: str,
    trusted: tuple[str, ...],
    targets: list[tuple[str, str]],
    interpolations: list[str],
) -> None:
    if isinstance(v, dict):
        for k, x in v.items():
            sub = path_join(path, k)
            if isinstance(k, str) and "${" in k:
                interpolations.append(sub)
            if k == "_target_":
                in_init = path.startswith("init.")
                prefixes = (*(INIT_PREFIXES if in_init else MODULE_PREFIXES), *trusted)
                if not isinstance(x, str):
                    targets.append((sub, f"expected a dotted name, got {x!r}"))
                elif not _allowed(x, prefixes):
                    targets.append((sub, f"{x!r} is not under a trusted prefix"))
            _walk(x, sub, trusted, targets, interpolations)
    elif isinstance(v, list):
        for i, x in enumerate(v):
            _walk(x, path_join(path, i), trusted, targets, interpolations)
    elif isinstance(v, str) and "${" in v:
        interpolations.append(path)


# modelfactory's own modules of blocks and init functions: importing one runs our code only.
_IMPORTABLE = (
    "modelfactory.blocks",
    "modelfactory.layers",
    "modelfactory.init",
    *(
        f"modelfactory.modules.{m}"
        for m in ("attention", "embeddings", "feed_forward", "position", "resnet", "shapes")
    ),
)


class _NotLoaded(Exception):
    """A name under a built-in prefix that only an import could find (refused unimported)."""


def _peek(name: str, trusted: tuple[str, ...]) -> Any:
    """What dotted ``name`` names, found without importing anything the caller did not
    trust: under ``torch.nn`` / ``modelfactory`` only what is already loaded (plus our block
    modules) is looked at, attribute by attribute, never through a module ``__getattr__``.

    Raises:
        TargetNotFound: a name under a trusted prefix that does not import.
        _NotLoaded: a name under a built-in prefix that is not loaded.
    """
    if _allowed(name, trusted):
        return locate(name)  # the caller trusts the package: importing it is theirs to allow
    parts = name.split(".")
    for i in range(len(parts), 0, -1):
        module_name = ".".join(parts[:i])
        if module_name in _IMPORTABLE:
            importlib.import_module(module_name)
        obj = sys.modules.get(module_name)
        if obj is not None:
            break
    else:
        raise _NotLoaded(f"{name!r} is not loaded with torch.nn or modelfactory")
    for j in range(i, len(parts)):
        try:
            obj = inspect.getattr_static(obj, parts[j])
        except AttributeError:
            raise _NotLoaded(
                f"{name!r} is not loaded with torch.nn or modelfactory ({'.'.join(parts[:j])!r} "
                f"has no loaded {parts[j]!r}); nothing was imported to look for it"
            ) from None
    return obj


def _resolve(name: str, where: str, trusted: tuple[str, ...], targets: list, missing: list) -> Any:
    """``_peek(name)``, or ``None`` with the reason recorded (refused, or not importable)."""
    try:
        return _peek(name, trusted)
    except _NotLoaded as e:
        targets.append((where, str(e)))
    except TargetNotFound as e:
        missing.append((where, f"cannot import {name!r}: {e}"))
    return None


def _check_modules(
    v: Any,
    path: str,
    prefixes: tuple[str, ...],
    trusted: tuple[str, ...],
    targets: list[tuple[str, str]],
    missing: list[tuple[str, str]],
) -> None:
    """Every model target must live under an allowed prefix; one the caller did not trust
    (``torch.nn``, ``modelfactory``) must be an ``nn.Module`` class."""
    if isinstance(v, dict):
        name = v.get("_target_")
        if isinstance(name, str):
            where = path_join(path, "_target_")
            obj = _resolve(name, where, trusted, targets, missing)
            if obj is not None:
                problem = _not_a_target(name, obj, prefixes, trusted)
                if problem:
                    targets.append((where, problem))
        for k, x in v.items():
            if k != "_target_":
                _check_modules(x, path_join(path, k), prefixes, trusted, targets, missing)
    elif isinstance(v, list):
        for i, x in enumerate(v):
            _check_modules(x, path_join(path, i), prefixes, trusted, targets, missing)


def _not_a_target(name: str, obj: Any, prefixes: tuple[str, ...], trusted: tuple[str, ...]) -> str:
    """Why ``obj``, what the model target ``name`` names, may not be called ("" if it may)."""
    home = qualified_name(obj)
    if _allowed(name, trusted):  # the caller's own: any callable living under a prefix
        if not callable(obj):
            return f"{name!r} is a {type(obj).__name__}, not callable"
    elif not (isinstance(obj, type) and issubclass(obj, nn.Module)):
        return f"{name!r} is a {type(obj).__name__}, not an nn.Module class"
    if not _allowed(home, prefixes):
        return f"{name!r} is {home}, not under a trusted prefix"
    return ""


def _check_init_fns(
    init: Any, prefixes: tuple[str, ...], trusted: tuple[str, ...], targets: list[tuple[str, str]]
) -> None:
    """Init functions (called only by a non-strict load) must really live under a prefix."""
    rules = init.get("rules") if isinstance(init, dict) else None
    for i, rule in enumerate(rules if isinstance(rules, list) else []):
        fn = rule.get("fn") if isinstance(rule, dict) else None
        name = fn.get("_target_") if isinstance(fn, dict) else None
        if not isinstance(name, str):
            continue
        where = f"init.rules.{i}.fn._target_"
        obj = _resolve(name, where, trusted, targets, targets)
        if obj is None:
            continue
        if not callable(obj) or not _allowed(qualified_name(obj), prefixes):
            targets.append(
                (where, f"{name!r} is {qualified_name(obj)}, not under a trusted prefix")
            )
