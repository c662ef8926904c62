"""Interpolations that do not resolve: every one of them, each named by its config path.

OmegaConf stops at the first interpolation that does not resolve. A config file with a
misspelled knob (``${widht}``) and another mistake should report both, so each value is
resolved on its own here, and a key that is not found gets a "did you mean" from the keys
beside it (``${widht}``: did you mean ``width``?).
"""

from __future__ import annotations

import copy
import re
from typing import Any

from ._knobs import close_key
from .errors import path_join

__all__ = ["unresolved"]

Keys = tuple[Any, ...]
_NOT_FOUND = re.compile(r"Interpolation key '([^']*)' not found")


def unresolved(cfg: Any, prefix: str) -> tuple[Any, list[tuple[str, str]]]:
    """Each interpolation in ``cfg`` (a ``DictConfig`` or ``ListConfig``, maybe a node of a
    bigger config) that does not resolve.

    Args:
        cfg: the config.
        prefix: how paths inside the config's root are named (``"model"`` for a bare node).

    Returns:
        ``(copy, problems)``: a copy of ``cfg`` whose failing interpolations are literal
        text (so the rest resolves and can be checked), and ``(path, message)`` for each.
    """
    from omegaconf import open_dict, read_write

    failed = _failures(cfg)
    if not failed:
        return cfg, []
    clone = copy.deepcopy(cfg)  # keeps its parent: the rest still resolves against the root
    root, base = cfg._get_root(), len(_keys_of(cfg))
    problems = []
    for keys, raw, error in failed:
        parent = clone
        for k in keys[base:-1]:
            parent = parent._get_node(k)
        with read_write(parent), open_dict(parent):
            parent[keys[-1]] = raw.replace("${", "\\${")  # literal text from now on
        path = path_join(prefix, ".".join(map(str, keys)))
        problems.append((path, _explained(error, root, keys)))
    return clone, problems


def _failures(cfg: Any) -> list[tuple[Keys, str, Exception]]:
    """``(keys from the root, raw text, error)`` of each value whose interpolation fails."""
    from omegaconf import OmegaConf
    from omegaconf.errors import MissingMandatoryValue, OmegaConfBaseException

    out = []
    stack: list[tuple[Keys, Any]] = [(_keys_of(cfg), cfg)]
    while stack:
        keys, node = stack.pop()
        for k in list(node.keys()) if OmegaConf.is_dict(node) else range(len(node)):
            child = node._get_node(k)
            if child is None:
                continue
            if child._is_interpolation():
                try:
                    node[k]
                except MissingMandatoryValue:  # ``???``: reported where missing values are
                    pass
                except OmegaConfBaseException as e:
                    out.append(((*keys, k), str(child._value()), e))
            elif OmegaConf.is_config(child):
                stack.append(((*keys, k), child))
    return sorted(out, key=lambda f: [str(k) for k in f[0]])


def _keys_of(node: Any) -> Keys:
    keys = []
    while node._get_parent() is not None:
        keys.append(node._key())
        node = node._get_parent()
    return tuple(reversed(keys))


def _explained(error: Exception, root: Any, keys: Keys) -> str:
    """The error's message; for a key not found, with the closest key beside it."""
    text = str(getattr(error, "msg", None) or error).split("\n    full_key:")[0].strip()
    message = f"{type(error).__name__}: {text}"
    found = _NOT_FOUND.search(text)
    if found:
        hint = _close_key(root, keys, found.group(1))
        if hint:
            message += f" (did you mean {hint!r}?)"
    return message


def _close_key(root: Any, keys: Keys, ref: str) -> str | None:
    """The key closest to the last part of ``ref`` (an interpolation written at ``keys``)
    among the keys of the node it looks in."""
    from omegaconf import OmegaConf

    dots = len(ref) - len(ref.lstrip("."))
    parts = [p for p in re.split(r"[.\[\]]", ref.lstrip(".")) if p]
    if not parts:
        return None
    node, start = root, keys[: len(keys) - dots] if dots else ()
    try:
        for k in (*start, *parts[:-1]):
            node = node[int(k)] if OmegaConf.is_list(node) else node[k]
    except Exception:  # the way there does not exist either: no hint
        return None
    if not OmegaConf.is_dict(node):
        return None
    hint = close_key(parts[-1], [str(k) for k in node])
    return ".".join([*parts[:-1], hint]) if hint else None
