"""Validate a model config tree and turn it into a spec of plain Python objects.

The whole tree is checked before anything is constructed: every ``_target_``
must resolve and every keyword must fit the target's signature. All problems
are collected and raised together, each with its config path.

Each node also gets a *component*: the text that, hashed under its parent's
stream key, gives the node its own random stream. Mapping children and keyword
arguments use their names; list items use their own settings plus an ordinal
among identical siblings, so inserting, removing or reordering a block leaves
the streams of the other blocks unchanged.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ._targets import TargetNotFound, locate, qualified_name, signature_of
from .errors import ConfigError, path_join

_HYDRA_KEYS = frozenset({"_target_", "_args_", "_partial_", "_recursive_", "_convert_"})
MAX_DEPTH = 200


@dataclass(eq=False, slots=True)
class Node:
    """One ``_target_`` node: what to call and with what."""

    path: str
    target: Callable[..., Any]
    target_name: str
    component: str
    args: list[Any] = field(default_factory=list)
    kwargs: dict[str, Any] = field(default_factory=dict)
    partial: bool = False
    dynamic: bool = False  # any argument holds a node (needs building)
    factories: tuple[str, ...] = ()  # kwargs passed as factories (built once per call)
    prefix: str = ""  # where the node hangs under its parent (kwarg or mapping key)
    ordinal: str = ""  # "#n" for list items: n-th sibling with the same settings


@dataclass(eq=False, slots=True)
class Raw:
    """A value passed through unbuilt (``_recursive_: false``)."""

    value: Any


def parse(tree: Any, path: str, *, partial: bool = False) -> Node:
    """Validate ``tree`` (a plain dict with ``_target_``) and return its spec, or raise."""
    problems: list[tuple[str, str]] = []
    if not isinstance(tree, dict) or "_target_" not in tree:
        raise ConfigError([(path, f"expected a mapping with a '_target_' key, got {_kind(tree)}")])
    node = _parse_node(tree, path, "", problems, 0, partial)
    if problems:
        raise ConfigError(problems)
    return node


def _kind(v: Any) -> str:
    return "null" if v is None else type(v).__name__ + (f" {v!r}" if _is_scalar(v) else "")


def _is_scalar(v: Any) -> bool:
    return v is None or isinstance(v, (str, int, float, bool))


def own_digest(target_name: str, args: list[Any], kwargs: dict[str, Any]) -> str:
    """A node's own settings: its target and every argument that is not a block."""
    parts = [target_name]
    parts += [_digest_value(a) for a in args if not isinstance(a, (Node, Raw))]
    parts += [
        f"{k}={_digest_value(v)}"
        for k, v in sorted(kwargs.items())
        if not isinstance(v, (Node, Raw)) and not _holds_node(v)
    ]
    return "(" + ",".join(parts) + ")"


def _digest_value(v: Any) -> str:
    if isinstance(v, (list, tuple)):
        return "[" + ",".join(_digest_value(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{" + ",".join(f"{k}:{_digest_value(x)}" for k, x in sorted(v.items())) + "}"
    return repr(v)


def _holds_node(v: Any) -> bool:
    if isinstance(v, (Node, Raw)):
        return True
    if isinstance(v, list):
        return any(_holds_node(x) for x in v)
    if isinstance(v, dict):
        return any(_holds_node(x) for x in v.values())
    return False


def _parse_node(
    tree: dict[str, Any],
    path: str,
    component: str,
    problems: list[tuple[str, str]],
    depth: int,
    partial: bool = False,
) -> Node:
    target_path = path_join(path, "_target_")
    name = tree["_target_"]
    target: Any = None
    if not isinstance(name, str):
        problems.append((target_path, f"expected a dotted import path string, got {_kind(name)}"))
    else:
        try:
            target = locate(name)
        except TargetNotFound as e:
            problems.append((target_path, f"cannot resolve {name!r}: {e}"))
        else:
            if not callable(target):
                problems.append((target_path, f"{name!r} is not callable"))
                target = None
    partial = bool(tree.get("_partial_", partial))
    recursive = tree.get("_recursive_", True)
    for k in ("_partial_", "_recursive_"):
        if k in tree and not isinstance(tree[k], bool):
            problems.append((path_join(path, k), f"expected true or false, got {_kind(tree[k])}"))

    raw_args = tree.get("_args_", [])
    if not isinstance(raw_args, list):
        problems.append((path_join(path, "_args_"), f"expected a list, got {_kind(raw_args)}"))
        raw_args = []
    kw_items = [(k, v) for k, v in tree.items() if not (isinstance(k, str) and k in _HYDRA_KEYS)]
    for k, _ in kw_items:
        if not isinstance(k, str) or not k.isidentifier():
            problems.append((path_join(path, k), "argument names must be Python identifiers"))
        elif k.startswith("_") and k.endswith("_"):
            problems.append(
                (path_join(path, k), f"unknown special key; expected one of {sorted(_HYDRA_KEYS)}")
            )
    factories: tuple[str, ...] = tuple(getattr(target, "_mf_factories", ()))
    if target is not None:
        sig = signature_of(target)
        for key, msg in sig.problems(name, len(raw_args), {k for k, _ in kw_items}, partial):
            problems.append((path_join(path, key), msg))

    node = Node(path=path, target=target, target_name=name, component="", partial=partial)
    if depth > MAX_DEPTH:
        problems.append((path, f"config nests deeper than {MAX_DEPTH} levels"))
        return node
    parse_value = _parse_value if recursive else _raw
    siblings: dict[str, int] = {}
    node.args = [
        parse_value(v, path_join(path, f"_args_.{i}"), "_args_", problems, depth, siblings)
        for i, v in enumerate(raw_args)
    ]
    node.kwargs = {
        k: parse_value(v, path_join(path, k), k, problems, depth, None) for k, v in kw_items
    }
    for f in factories:
        if f in node.kwargs and not isinstance(node.kwargs[f], Node):
            problems.append(
                (
                    path_join(path, f),
                    f"expected a block with '_target_', got {_kind(node.kwargs[f])}",
                )
            )
    node.factories = tuple(f for f in factories if f in node.kwargs)
    node.dynamic = any(_holds_node(v) for v in node.args) or any(
        _holds_node(v) for v in node.kwargs.values()
    )
    digest = own_digest(qualified_name(target) if target else str(name), node.args, node.kwargs)
    node.prefix = component
    node.component = f"{component}|{digest}"
    return node


def _raw(v: Any, path: str, component: str, problems: list, depth: int, siblings: Any) -> Any:
    return Raw(v) if isinstance(v, (dict, list)) else v


def _parse_value(
    v: Any,
    path: str,
    component: str,
    problems: list[tuple[str, str]],
    depth: int,
    siblings: dict[str, int] | None,
) -> Any:
    """Parse one argument value; ``siblings`` counts identical list items for their ordinals."""
    if isinstance(v, dict):
        if "_target_" in v:
            node = _parse_node(v, path, component, problems, depth + 1)
            if siblings is not None:
                # A list item is named by its settings and its ordinal among identical
                # siblings, not by its position.
                n = siblings.get(node.component, 0)
                siblings[node.component] = n + 1
                node.ordinal = f"#{n}"
                node.component += node.ordinal
            return node
        return {
            k: _parse_value(x, path_join(path, k), f"{component}/{k}", problems, depth + 1, None)
            for k, x in v.items()
        }
    if isinstance(v, list):
        inner: dict[str, int] = {}
        return [
            _parse_value(x, path_join(path, i), f"{component}", problems, depth + 1, inner)
            for i, x in enumerate(v)
        ]
    return v
