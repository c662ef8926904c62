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

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from ._targets import INFOS, TargetInfo, describe, fits, target_info
from .errors import path_join, value_kind

_HYDRA_KEYS = frozenset({"_target_", "_args_", "_partial_", "_recursive_", "_convert_"})
MAX_DEPTH = 200


_UNPARSED: dict[str, Any] = {}  # the keywords of a node too deep to parse (never built)


class Node:
    """One ``_target_`` node: what to call and with what.

    A plain slotted class, not a dataclass: one is made per config node, and the
    dataclass ``__init__`` (keywords, default factories) cost twice as much.
    """

    __slots__ = (
        "args",  # positional arguments (``_args_``), parsed
        "component",  # the text that, hashed under the parent's key, gives the stream key
        "convert",  # `_convert_: none` here or above: pass OmegaConf containers
        "convert_set",  # the node sets `_convert_` itself (children inherit it)
        "direct",  # args and kwargs are passed as they are (see settle)
        "dynamic",  # any argument holds a node (needs building)
        "factories",  # kwargs passed as factories (built once per call)
        "keyless",  # building it needs no stream key of its own (see settle)
        "kwargs",  # keyword arguments, parsed
        "mutable",  # any argument is a list or dict (copied per call)
        "partial",  # `_partial_: true`: the call returns a functools.partial
        "path",  # the config path of the node
        "seeded",  # re-seed the generator before calling (False: draws nothing)
        "target",  # what to call
        "target_name",  # its dotted name
    )

    def __init__(self, path: str, info: TargetInfo, target_name: str, partial: bool) -> None:
        self.path = path
        self.target = info.target
        self.target_name = target_name
        self.partial = partial
        self.seeded = info.draws
        self.component = ""
        self.args: Sequence[Any] = ()  # a list when the node has _args_ (none: no allocation)
        self.kwargs: dict[str, Any] = _UNPARSED  # replaced when its keywords are parsed
        self.dynamic = self.mutable = self.convert = self.convert_set = False
        self.direct = True
        self.keyless = False
        self.factories: tuple[str, ...] = ()

    def settle(self) -> None:
        """Derive what construction asks first, once the flags are final: whether the
        arguments are passed as they are (no block to build, no container to copy or
        convert, not a partial), and whether the node needs a stream key of its own to be
        built (it draws or holds blocks)."""
        self.direct = not (self.dynamic or self.mutable or self.convert or self.partial)
        self.keyless = not (self.dynamic or self.seeded)


@dataclass(eq=False, slots=True)
class Raw:
    """A value passed through unbuilt (``_recursive_: false``)."""

    value: Any


def _digest_value(v: Any) -> str:
    if isinstance(v, (list, tuple)):
        return "[" + ",".join(_digest_value(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{" + ",".join(f"{k}:{_digest_value(x)}" for k, x in sorted(v.items())) + "}"
    return repr(v)


def holds_node(v: Any) -> bool:
    if isinstance(v, (Node, Raw)):
        return True
    if isinstance(v, list):
        return any(holds_node(x) for x in v)
    if isinstance(v, dict):
        return any(holds_node(x) for x in v.values())
    return False


_PLAIN = frozenset((str, int, float, bool, type(None)))


def is_plain(spec: Node) -> bool:
    """Whether every value in ``spec`` is JSON's own data: exact ``dict`` (``str`` keys),
    ``list``, ``str``, ``int``, ``float``, ``bool`` or ``None``; what a config copied through
    JSON holds (no tuple, no subclass, no other object). Nodes' own keys are identifiers
    (parsing checks them)."""
    stack: list[Any] = [spec]
    while stack:
        v = stack.pop()
        t = type(v)
        if t is Node:
            stack += v.args
            stack += v.kwargs.values()
        elif t is list:
            stack += v
        elif t is dict:
            if any(type(k) is not str for k in v):
                return False
            stack += v.values()
        elif t is Raw:
            stack.append(v.value)
        elif t not in _PLAIN:
            return False
    return True


def parse_node(
    tree: dict[str, Any],
    path: str,
    component: str,
    problems: list[tuple[str, str]],
    depth: int,
    partial: bool = False,
) -> Node:
    """Validate one ``_target_`` node and its subtree; problems are appended, not raised."""
    name = tree["_target_"]
    info = INFOS.get(name) if type(name) is str else None
    if info is None:
        info = target_info(name, path, problems)
        name = name if type(name) is str else info.qualname
    parse_value = _parse_value
    if "_partial_" in tree or "_recursive_" in tree:
        partial = _special_flags(tree, path, problems, partial)
        parse_value = _parse_value if tree.get("_recursive_", True) is not False else _raw
    node = Node(path, info, name, partial)
    if depth > MAX_DEPTH:
        problems.append((path, f"config nests deeper than {MAX_DEPTH} levels"))
        return node
    digest: list[str] = []
    _parse_kwargs(tree, node, info, parse_value, digest, problems, depth)
    raw_args = tree.get("_args_", ())
    if raw_args or (type(raw_args) is tuple and "_args_" in tree):  # (): refused, not a list
        raw_args = _parse_args(raw_args, node, parse_value, digest, problems, depth)
    if info.target is not None and (
        info.factories or not info.sig.fits(len(raw_args), node.kwargs, node.partial)
    ):
        _check_call(node, info, len(raw_args), problems)
    digest.sort()
    node.component = f"{component}|({','.join(digest)};{info.qualname})"
    node.settle()
    if "_convert_" in tree:
        _convert_mode(node, tree["_convert_"], problems)
    return node


CONVERT_MODES = ("none", "partial", "object", "all")


def _convert_mode(node: Node, mode: Any, problems: list[tuple[str, str]]) -> None:
    """Hydra's ``_convert_``: what containers the node and its subtree pass to targets.

    ``none`` passes ``DictConfig`` / ``ListConfig``s; ``partial``, ``object`` and ``all`` pass
    plain dicts and lists, as modelfactory does by default (configs here are plain data, so
    no structured-config type is left for ``partial`` / ``object`` to keep).
    """
    mode = getattr(mode, "value", mode)  # hydra.types.ConvertMode, given from Python
    if not isinstance(mode, str) or mode.lower() not in CONVERT_MODES:
        expected = f"expected one of {', '.join(CONVERT_MODES)}, got {value_kind(mode)}"
        problems.append((path_join(node.path, "_convert_"), expected))
        return
    stack = [node]
    while stack:  # inherited by every node below that does not set its own
        n = stack.pop()
        if n is node or not n.convert_set:
            n.convert, n.convert_set = mode.lower() == "none", n is node or n.convert_set
            n.settle()
            stack.extend(_child_nodes([*n.args, *n.kwargs.values()]))


def _child_nodes(values: list[Any]) -> list[Node]:
    out, stack = [], list(values)
    while stack:
        v = stack.pop()
        if type(v) is Node:
            out.append(v)
        elif type(v) is list:
            stack.extend(v)
        elif type(v) is dict:
            stack.extend(v.values())
    return out


def _special_flags(
    tree: dict[str, Any], path: str, problems: list[tuple[str, str]], partial: bool
) -> bool:
    """Check ``_partial_`` / ``_recursive_``; returns whether the node is partial."""
    for k in ("_partial_", "_recursive_"):
        if k in tree and not isinstance(tree[k], bool):
            problems.append(
                (path_join(path, k), f"expected true or false, got {value_kind(tree[k])}")
            )
    return tree.get("_partial_", partial) is True


def _parse_kwargs(
    tree: dict[str, Any],
    node: Node,
    info: TargetInfo,
    parse_value: Callable[..., tuple[Any, bool]],
    digest: list[str],
    problems: list[tuple[str, str]],
    depth: int,
) -> None:
    """Fill ``node.kwargs`` from the tree's keyword arguments (the hot loop of parsing)."""
    path, known, ignore, types = node.path, info.known, info.ignore, info.types
    kwargs: dict[str, Any] = {}
    for k, v in tree.items():
        if k not in known and (k in _HYDRA_KEYS or not _plain_key(k, path, problems)):
            continue
        if type(v) is dict or type(v) is list:
            v, holds = parse_value(v, f"{path}.{k}", k, problems, depth, None)
            node.dynamic = node.dynamic or holds
            if not holds:
                node.mutable = True
                digest.append(f"{k}={_digest_value(v)}")
        elif k not in ignore:
            digest.append(f"{k}={_digest_value(v) if type(v) is tuple else repr(v)}")
        t = types.get(k)
        if t is not None and type(v) not in t and not fits(v, t) and not holds_node(v):
            expected = f"expected {describe(t)} for {node.target_name}, got {v!r}"
            problems.append((f"{path}.{k}", expected))
        kwargs[k] = v
    node.kwargs = kwargs


def _plain_key(k: Any, path: str, problems: list[tuple[str, str]]) -> bool:
    """Whether ``k`` is a keyword argument (``False`` for Hydra's keys and bad names)."""
    if k in _HYDRA_KEYS:
        return False
    if not isinstance(k, str) or not k.isidentifier():
        problems.append((path_join(path, k), "argument names must be Python identifiers"))
        return False
    if k[0] == "_" and k[-1] == "_":
        expected = f"unknown special key; expected one of {sorted(_HYDRA_KEYS)}"
        problems.append((path_join(path, k), expected))
        return False
    return True


def _parse_args(
    raw_args: Any,
    node: Node,
    parse_value: Callable[..., tuple[Any, bool]],
    digest: list[str],
    problems: list[tuple[str, str]],
    depth: int,
) -> Any:
    """Fill ``node.args`` from ``_args_``; returns the list parsed (``()`` if not a list)."""
    path = node.path
    if not isinstance(raw_args, list):
        problems.append((path_join(path, "_args_"), f"expected a list, got {value_kind(raw_args)}"))
        return ()
    siblings: dict[str, int] = {}
    node.args = args = []
    for i, v in enumerate(raw_args):
        if type(v) is dict and "_target_" in v and parse_value is _parse_value:
            # a block: the hot path of a deep tree, parsed here directly
            child = parse_node(v, f"{path}._args_.{i}", "_args_", problems, depth + 1)
            args.append(_list_item(child, siblings))
            node.dynamic = True
            continue
        v, holds = parse_value(v, f"{path}._args_.{i}", "_args_", problems, depth, siblings)
        node.dynamic = node.dynamic or holds
        if not holds:
            node.mutable = node.mutable or isinstance(v, (list, dict))
            digest.append(_digest_value(v))
        args.append(v)
    return raw_args


def _check_call(node: Node, info: TargetInfo, n_args: int, problems: list) -> None:
    """The arguments fit the target's signature; factory arguments are blocks."""
    path, kwargs = node.path, node.kwargs
    for key, msg in info.sig.problems(node.target_name, n_args, kwargs, node.partial):
        problems.append((path_join(path, key), msg))
    if not info.factories:
        return
    for f in info.factories:
        if f in kwargs and not isinstance(kwargs[f], Node):
            got = value_kind(kwargs[f])
            problems.append((path_join(path, f), f"expected a block with '_target_', got {got}"))
    node.factories = tuple(f for f in info.factories if f in kwargs)


def _raw(
    v: Any, path: str, component: str, problems: list, depth: int, siblings: Any
) -> tuple[Any, bool]:
    """A value under ``_recursive_: false``: passed as it is, but no deeper than any config
    (construction copies it, recursively)."""
    if not isinstance(v, (dict, list)):
        return v, False
    if depth + _levels(v, MAX_DEPTH - depth) > MAX_DEPTH:
        problems.append((path, f"config nests deeper than {MAX_DEPTH} levels"))
        return None, False
    return Raw(v), True


def _levels(v: Any, limit: int) -> int:
    """How many levels of lists and mappings ``v`` nests (counted without recursion, and
    only up to ``limit + 1``: enough to tell it is too deep)."""
    deepest, stack = 0, [(v, 1)]
    while stack:
        x, level = stack.pop()
        if level > deepest:
            deepest = level
            if deepest > limit:
                break
        children = x.values() if isinstance(x, dict) else x
        stack.extend((c, level + 1) for c in children if isinstance(c, (dict, list)))
    return deepest


def _list_item(node: Node, siblings: dict[str, int]) -> Node:
    """``node`` as a list item: named by its settings and its ordinal among identical
    siblings (counted in ``siblings``), not by its position."""
    n = siblings.get(node.component, 0)
    siblings[node.component] = n + 1
    node.component += f"#{n}"
    return node


def _parse_value(
    v: Any,
    path: str,
    component: str,
    problems: list[tuple[str, str]],
    depth: int,
    siblings: dict[str, int] | None,
) -> tuple[Any, bool]:
    """Parse one argument value -> ``(value, holds a node)``.

    ``siblings`` counts identical list items, for their ordinals.
    """
    if depth > MAX_DEPTH and type(v) in (dict, list):  # deep lists and mappings too
        problems.append((path, f"config nests deeper than {MAX_DEPTH} levels"))
        return None, False
    if type(v) is dict:
        if "_target_" in v:
            node = parse_node(v, path, component, problems, depth + 1)
            return (node if siblings is None else _list_item(node, siblings)), True
        out, holds = {}, False
        for k, x in v.items():
            out[k], h = _parse_value(
                x, path_join(path, k), f"{component}/{k}", problems, depth + 1, None
            )
            holds = holds or h
        return out, holds
    if type(v) is list:
        inner: dict[str, int] = {}
        items, holds = [], False
        for i, x in enumerate(v):
            item, h = _parse_value(x, path_join(path, i), component, problems, depth + 1, inner)
            items.append(item)
            holds = holds or h
        return items, holds
    return v, False
