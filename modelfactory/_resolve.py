"""Every form a config comes in, resolved once to plain data, at the boundary.

A YAML path, a ``DictConfig`` (a whole config or a node of one: ``cfg.model`` resolves
``${...}`` against its root, as ``hydra.utils.instantiate(cfg.model)`` does), a structured
config (a dataclass or attrs instance or class), or a dict that may hold class or function
objects as ``_target_``, ``DictConfig`` nodes and other copyable values. Past this module
the core sees only plain Python containers, never a ``DictConfig``.

``???`` (missing) values are one error listing each full config path, in dicts and
``DictConfig``s alike; in a ``_partial_: true`` node a missing argument is left out of the
call, as Hydra does.
"""

from __future__ import annotations

import copy
import io
import json
import marshal
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ._bounded import MAX_YAML_NODES, OverBound, check_yaml
from ._interpolation import unresolved
from ._knobs import referenced_top_keys
from ._spec import MAX_DEPTH
from ._targets import TargetNotFound, locate, qualified_name
from .errors import ConfigError, dotted, path_join
from .resolvers import register

__all__ = ["MISSING", "Resolved", "model_in_model", "resolve"]

MISSING = "???"
ROOT = "model"  # the path of a bare model node, as validation errors name it


@dataclass
class Resolved:
    """A config resolved to plain data.

    Attributes:
        tree: the plain, resolved config (a private copy; with ``model_snapshot``, its model
            tree is the caller's own).
        used: top-level keys of the config that its interpolations reference.
        knobs: for a node of a bigger config (``cfg.model``): the values of the root's
            top-level keys that the node's interpolations use.
    """

    tree: Any
    used: frozenset[str] = frozenset()
    knobs: dict[str, Any] = field(default_factory=dict)
    problems: list[tuple[str, str]] = field(default_factory=list)
    model_snapshot: bytes | None = None  # borrow=True: the caller's model tree, marshalled


def resolve(cfg: Any, *, collect: bool = False, borrow: bool = False) -> Resolved:
    """Resolve ``cfg`` (any accepted form) to plain data; see the module docstring.

    Args:
        cfg: the config.
        collect: interpolations that do not resolve are returned in ``problems`` (their
            values left as literal text), to be reported with the config's other mistakes,
            instead of raised.
        borrow: a dict that needs no resolving keeps the caller's own model tree, with a
            snapshot of it (``model_snapshot``); the caller checks it is plain data
            (:func:`modelfactory._spec.is_plain`), or falls back to ``borrow=False``.

    Raises:
        ConfigError: a file that is not YAML, an interpolation that does not resolve, ``???``
            values, a value that cannot be copied, or an unsupported form; each with its path.
    """
    r = _borrowed(cfg) if borrow and isinstance(cfg, dict) else None
    if r is not None:
        return r
    try:
        r = _resolve(cfg)
    except RecursionError as e:  # OmegaConf and YAML recurse: a config 400 lists deep
        raise ConfigError([("", f"config nests deeper than {MAX_DEPTH} levels")]) from e
    if r.problems and not collect:
        raise ConfigError(r.problems)
    return r


def _resolve(cfg: Any) -> Resolved:
    if isinstance(cfg, dict):  # first: a plain dict needs no omegaconf import (load is fast)
        return _from_dict(cfg)
    from omegaconf import OmegaConf
    from omegaconf._utils import is_structured_config

    where = "config"
    if isinstance(cfg, (str, os.PathLike)):
        where, cfg = str(cfg), _load_yaml(cfg)
    elif is_structured_config(cfg):
        cfg = _omegaconf(lambda: OmegaConf.structured(cfg), "", where)
    if OmegaConf.is_config(cfg):
        return _from_omegaconf(cfg, where)
    raise ConfigError(
        [
            (
                "",
                "expected a DictConfig, a dict, a structured config (dataclass) or a YAML "
                f"path, got {type(cfg).__name__}",
            )
        ]
    )


def _from_dict(cfg: dict[str, Any]) -> Resolved:
    # A private copy (the caller may edit their dict after build), through JSON at C speed
    # when it is plain data; the text tells whether it needs OmegaConf or a ??? check.
    try:
        # no circularity check (a cycle nests past the recursion limit), no escaping: 1.6x
        text = json.dumps(cfg, check_circular=False, ensure_ascii=False)
    except RecursionError as e:
        raise ConfigError([("", f"config nests deeper than {MAX_DEPTH} levels")]) from e
    except (TypeError, ValueError):  # objects: class targets, DictConfig nodes, dtypes
        text = None
    if text is not None and "${" not in text and f'"{MISSING}"' not in text:
        return Resolved(json.loads(text))
    seen = {"${": False, MISSING: False}
    tree = _prepared(cfg, _prefix_of(cfg), 0, seen)
    if seen["${"]:
        from omegaconf import OmegaConf

        root = _omegaconf(lambda: OmegaConf.create(tree, flags={"allow_objects": True}), "", "")
        return _from_omegaconf(root, "config")
    if seen[MISSING]:
        _drop_missing(tree, _prefix_of(tree))
    return Resolved(tree)


def _borrowed(cfg: dict[str, Any]) -> Resolved | None:
    """``cfg`` with its own model tree, snapshot by marshal (1/8 of a JSON copy's cost), and a
    copy of the rest; ``None`` if it needs resolving or marshal refuses it (a tuple it takes)."""
    bare = "_target_" in cfg and "model" not in cfg
    model = cfg if bare else cfg.get("model")
    if not isinstance(model, dict):
        return None
    try:
        snapshot = marshal.dumps(model)
        rest = {} if bare else {k: v for k, v in cfg.items() if k != "model"}
        text = json.dumps(rest, check_circular=False, ensure_ascii=False)
    except (TypeError, ValueError, RecursionError):  # objects, or nested past marshal's limit
        return None
    if b"${" in snapshot or MISSING.encode() in snapshot or "${" in text or MISSING in text:
        return None  # (or a string that merely holds them: the general path decides)
    copied = json.loads(text)  # the rest, in the caller's order:
    tree = model if bare else {k: model if k == "model" else copied[k] for k in cfg}
    return Resolved(tree, model_snapshot=snapshot)


def _prefix_of(tree: Any) -> str:
    """How paths inside ``tree`` are named: a bare model node's paths read ``model.…``."""
    return ROOT if isinstance(tree, Mapping) and "_target_" in tree and "model" not in tree else ""


def _prepared(v: Any, path: str, depth: int, seen: dict[str, bool]) -> Any:
    """A private copy of a dict tree: class and function ``_target_``s become their dotted
    names (when the name finds the same object again), ``DictConfig`` nodes and structured
    configs become plain data, other objects are deep-copied."""
    if depth > MAX_DEPTH:
        raise ConfigError([("", f"config nests deeper than {MAX_DEPTH} levels")])
    if isinstance(v, str):
        seen["${"] = seen["${"] or "${" in v
        seen[MISSING] = seen[MISSING] or v == MISSING
        return v
    if v is None or isinstance(v, (bool, int, float)):
        return v
    if isinstance(v, dict):
        return {
            k: _target_name(x)
            if k == "_target_" and callable(x)
            else _prepared(x, path_join(path, k), depth + 1, seen)
            for k, x in v.items()
        }
    if isinstance(v, (list, tuple)):
        items = [_prepared(x, path_join(path, i), depth + 1, seen) for i, x in enumerate(v)]
        return items if isinstance(v, list) else tuple(items)
    from omegaconf import OmegaConf
    from omegaconf._utils import is_structured_config

    if is_structured_config(v):
        v = _structured(v, path)
    if OmegaConf.is_config(v):
        return _prepared(_nested_config(v, path), path, depth, seen)
    try:
        return copy.deepcopy(v)
    except Exception as e:  # a generator, a lock, an open file: no private copy possible
        raise ConfigError(
            [
                (
                    path,
                    f"cannot copy this {type(v).__name__} value ({type(e).__name__}: {e}); a "
                    "config holds data (numbers, strings, lists, mappings) or copyable objects",
                )
            ]
        ) from e


def _structured(v: Any, path: str) -> Any:
    """A dataclass or attrs value inside a dict, read as a structured config (as Hydra
    reads one); one OmegaConf cannot read (a library's own config object, whose type hints
    name what its module does not import) is a ``ConfigError`` naming its path."""
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    try:
        return _omegaconf(lambda: OmegaConf.structured(v), path, "")
    except (OmegaConfBaseException, NameError, TypeError, ValueError) as e:
        what = f"{type(v).__module__}.{type(v).__qualname__}"
        raise ConfigError(
            [
                (
                    path,
                    f"cannot read this {what} as a structured config ({type(e).__name__}: "
                    f"{_message(e)}); give a node with _target_ that builds it instead",
                )
            ]
        ) from e


def _target_name(target: Any) -> Any:
    """``nn.Linear`` -> ``"torch.nn.modules.linear.Linear"``, the dotted name a checkpoint
    can store (a classmethod is named through the class it was read from:
    ``AutoModelForCausalLM.from_config``); a callable that its name does not find again (a
    local class) stays itself."""
    owner = getattr(target, "__self__", None)
    if isinstance(owner, type) and hasattr(target, "__name__"):
        name = f"{qualified_name(owner)}.{target.__name__}"
    else:
        name = qualified_name(target)
    try:
        found = locate(name)
    except TargetNotFound:
        return target
    return name if found is target or (owner is not None and found == target) else target


def _nested_config(node: Any, path: str) -> Any:
    """A ``DictConfig`` / ``ListConfig`` inside a dict: a node of another config resolves
    against its own root; a standalone one is resolved with the tree it was put in."""
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    register()

    attached = node._get_parent() is not None
    try:
        return OmegaConf.to_container(node, resolve=attached, throw_on_missing=False)
    except OmegaConfBaseException as e:  # its paths are its own config's: name both
        inner = dotted(getattr(e, "full_key", None) or "") or "<root>"
        message = f"{type(e).__name__} at {inner} of this DictConfig: {_message(e)}"
        raise ConfigError([(path, message)]) from e


def _from_omegaconf(cfg: Any, where: str) -> Resolved:
    from omegaconf import OmegaConf

    register()  # ${mf.calc:...} in a config composed or made without modelfactory

    root, node_path = cfg._get_root(), _node_path(cfg)
    prefix = ".".join(map(str, node_path)) or _prefix_of(cfg)
    resolve_prefix = "" if node_path else _prefix_of(cfg)
    problems: list[tuple[str, str]] = []
    try:
        tree = _container(cfg, resolve_prefix, where)
    except ConfigError as e:
        hint = model_in_model(OmegaConf.to_container(cfg, resolve=False))
        if hint:  # a knob of a misplaced model file is not at the top: say why
            raise ConfigError([*hint, *e.problems]) from e
        clone, problems = unresolved(cfg, resolve_prefix)  # every one, each with its path
        if not problems:
            raise
        tree = _container(clone, resolve_prefix, where)
    _drop_missing(tree, prefix)
    raw = OmegaConf.to_container(cfg, resolve=False)
    used = referenced_top_keys(raw, node_path)
    knobs = {}
    if node_path:  # a node of a bigger config: the root keys it uses, for people to see
        knobs = {k: _plain(root, k) for k in sorted(used) if k in root and k != node_path[0]}
    return Resolved(tree, used, knobs, problems)


def _container(cfg: Any, prefix: str, where: str) -> Any:
    from omegaconf import OmegaConf

    return _omegaconf(
        lambda: OmegaConf.to_container(cfg, resolve=True, throw_on_missing=False), prefix, where
    )


def model_in_model(tree: Any) -> list[tuple[str, str]]:
    """The problem of a model group file written without ``# @package _global_``: its
    ``model:`` lands one level down (``model.model``), its knobs and input_shape too."""
    model = tree.get("model") if isinstance(tree, dict) else None
    if not (isinstance(model, dict) and "_target_" not in model and "model" in model):
        return []
    return [
        (
            "model.model",
            "a model inside the model: a group file model/NAME.yaml that spells out 'model:' "
            "(and input_shape, knobs) needs '# @package _global_' as its first line; without "
            "it, write the node itself (_target_: ...) at the top of the file",
        )
    ]


def _node_path(node: Any) -> tuple[Any, ...]:
    """The keys from the root down to ``node`` (``()`` for a root)."""
    keys = []
    while node._get_parent() is not None:
        keys.append(node._key())
        node = node._get_parent()
    return tuple(reversed(keys))


def _plain(root: Any, key: str) -> Any:
    from omegaconf import OmegaConf

    value = _omegaconf(lambda: root[key], key, "config")
    return OmegaConf.to_container(value, resolve=True) if OmegaConf.is_config(value) else value


def _omegaconf(fn: Any, prefix: str, where: str) -> Any:
    """``fn()``; an OmegaConf error becomes a ``ConfigError`` naming the full config path."""
    from omegaconf.errors import OmegaConfBaseException

    try:
        return fn()
    except OmegaConfBaseException as e:
        key = path_join(prefix, dotted(getattr(e, "full_key", None) or "")).strip(".")
        raise ConfigError(
            [(key, f"{type(e).__name__}: {_message(e)}")],
            header=f"Cannot resolve {where}:" if where else None,
        ) from e


def _message(e: Exception) -> str:
    """OmegaConf's message without the ``full_key: ...`` lines it appends (the path is ours)."""
    text = str(getattr(e, "msg", None) or e)
    return text.split("\n    full_key:")[0].strip()


def _drop_missing(tree: Any, prefix: str) -> None:
    """Raise one error naming every ``???`` value; in a ``_partial_: true`` node a missing
    argument is left out (the call supplies it later), as Hydra does."""
    problems: list[tuple[str, str]] = []
    stack: list[tuple[str, Any]] = [(prefix, tree)]
    while stack:
        path, v = stack.pop()
        if isinstance(v, dict):
            if v.get("_partial_") is True and "_target_" in v:
                for k in [k for k, x in v.items() if x == MISSING and k != "_target_"]:
                    del v[k]
            stack.extend((path_join(path, k), x) for k, x in v.items())
        elif isinstance(v, (list, tuple)):
            stack.extend((path_join(path, i), x) for i, x in enumerate(v))
        elif v == MISSING and isinstance(v, str):
            problems.append((path, "missing value '???': give it in the config or override it"))
    if problems:
        raise ConfigError(sorted(problems, key=lambda p: _natural(p[0])))


def _natural(path: str) -> list[Any]:
    return [(0, int(p), "") if p.isdigit() else (1, 0, p) for p in path.split(".")]


def _load_yaml(path: str | os.PathLike) -> Any:
    """A YAML config file, its size as expanded (aliases at each use) and depth checked on
    its events before OmegaConf builds it (an alias bomb would take hours and all memory)."""
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    try:
        text = Path(path).read_text(encoding="utf-8")
        check_yaml(text, max_depth=MAX_DEPTH, max_nodes=MAX_YAML_NODES)
        return OmegaConf.load(io.StringIO(text))
    except OverBound as e:
        raise ConfigError([(str(path), f"config {e}")]) from e
    except FileNotFoundError as e:
        raise ConfigError([(str(path), "no such config file")]) from e
    except Exception as e:
        if _recursed(e):  # OmegaConf wraps the RecursionError of a config nested too deep
            raise ConfigError([(str(path), f"config nests deeper than {MAX_DEPTH} levels")]) from e
        if isinstance(e, (OmegaConfBaseException, ValueError, OSError)):
            raise ConfigError([(str(path), f"not a readable YAML config: {e}")]) from e
        raise ConfigError([(str(path), f"not valid YAML: {e}")]) from e  # yaml's parser errors


def _recursed(e: BaseException | None) -> bool:
    """Whether ``e`` or an exception it was raised from is a ``RecursionError``."""
    seen = 0
    while e is not None and seen < 50:
        if isinstance(e, RecursionError):
            return True
        e, seen = e.__cause__ or e.__context__, seen + 1
    return False
