"""Parameter and module sharing (the ``tie`` group).

Each group is a list of dotted paths (globs allowed). Paths that name modules
share the module; paths that name parameters share the parameter. The first
match is the source: it keeps its values and the others become it.
"""

from __future__ import annotations

from fnmatch import fnmatchcase
from typing import Any

from torch import nn

from .errors import TieError

__all__ = ["apply_ties", "check_ties", "owner", "resolve_groups", "tied_names", "validate_groups"]

_GLOB = set("*?[")


def validate_groups(groups: list[Any], base: str = "tie.groups") -> list[tuple[str, str]]:
    """``(path, message)`` for every group that is not a non-empty list of paths."""
    problems = []
    for i, g in enumerate(groups):
        if not isinstance(g, list) or not g or not all(isinstance(p, str) and p for p in g):
            problems.append(
                (f"{base}.{i}", f"expected a non-empty list of dotted paths or globs, got {g!r}")
            )
    return problems


def resolve_groups(
    model: nn.Module, groups: list[Any], base: str = "tie.groups"
) -> list[tuple[str, list[str]]]:
    """Expand globs against ``model`` into ``[(kind, [source, other, ...])]``.

    ``kind`` is ``module`` or ``param``.

    Raises :class:`TieError` listing every path that matches nothing, mixes kinds, or
    joins objects of different shapes or dtypes.
    """
    problems = validate_groups(groups, base)
    if problems:
        raise TieError(problems)
    modules = dict(model.named_modules(remove_duplicate=False))
    params = dict(model.named_parameters(remove_duplicate=False))
    out = []
    for i, group in enumerate(groups):
        gpath = f"{base}.{i}"
        matched: dict[str, None] = {}  # ordered and linear: globs can match thousands of names
        kinds = set()
        for j, pattern in enumerate(group):
            found, kind = _match(pattern, modules, params)
            if not found:
                problems.append(
                    (f"{gpath}.{j}", f"{pattern!r} names no module or parameter of the model")
                )
                continue
            kinds.add(kind)
            matched.update(dict.fromkeys(found))
        if len(kinds) > 1:
            problems.append((gpath, "a group must name only modules or only parameters, not both"))
            continue
        names = list(matched)
        if not kinds or (len(names) < 2 and any(p[0].startswith(gpath + ".") for p in problems)):
            continue  # already reported: a path that names nothing
        kind = kinds.pop()
        if len(names) < 2:
            problems.append((gpath, f"matches only {names}; a tie needs at least two objects"))
            continue
        nested = _nested(names) if kind == "module" else None
        if nested is not None:
            problems.append((gpath, nested))
            continue
        problems += _compatible(gpath, kind, names, modules, params)
        out.append((kind, names))
    if problems:
        raise TieError(problems, header="Cannot apply tie groups:")
    return out


def _match(
    pattern: str, modules: dict[str, nn.Module], params: dict[str, nn.Parameter]
) -> tuple[list[str], str]:
    if _GLOB.isdisjoint(pattern):
        if pattern in params:
            return [pattern], "param"
        if pattern in modules and pattern:
            return [pattern], "module"
        return [], ""
    found = [n for n in modules if n and fnmatchcase(n, pattern)]
    if found:
        return found, "module"
    return [n for n in params if fnmatchcase(n, pattern)], "param"


def _nested(names: list[str]) -> str | None:
    """Why a module group cannot be one module: one of its paths lies inside another (the
    module would contain itself)."""
    present = set(names)
    for name in names:
        parts = name.split(".")
        for i in range(1, len(parts)):
            outer = ".".join(parts[:i])
            if outer in present:
                return (
                    f"cannot tie {outer!r} with {name!r}, which lies inside it: the module "
                    "would contain itself"
                )
    return None


def _signature(obj: nn.Module | nn.Parameter) -> Any:
    if isinstance(obj, nn.Module):
        return (
            type(obj).__name__,
            tuple((k, tuple(v.shape), v.dtype) for k, v in obj.state_dict().items()),
        )
    return (tuple(obj.shape), obj.dtype)


def _compatible(
    gpath: str, kind: str, names: list[str], modules: dict, params: dict
) -> list[tuple[str, str]]:
    table = modules if kind == "module" else params
    src = _signature(table[names[0]])
    out = []
    for n in names[1:]:
        other = _signature(table[n])
        if other != src:
            out.append(
                (
                    gpath,
                    f"cannot tie {names[0]!r} {_show(src, kind)} with {n!r} {_show(other, kind)}: "
                    "shapes and dtypes must agree",
                )
            )
    return out


def _show(sig: Any, kind: str) -> str:
    if kind == "param":
        return f"(shape {list(sig[0])}, {str(sig[1]).removeprefix('torch.')})"
    return f"({sig[0]}: " + ", ".join(f"{k} {list(s)}" for k, s, _ in sig[1]) + ")"


def owner(model: nn.Module, name: str) -> tuple[nn.Module, str]:
    """The module that holds dotted ``name`` directly, and the last part of the name."""
    parent, _, leaf = name.rpartition(".")
    return (model.get_submodule(parent) if parent else model), leaf


def _set(model: nn.Module, name: str, value: Any) -> None:
    setattr(*owner(model, name), value)


def _get(model: nn.Module, name: str, kind: str) -> Any:
    return model.get_submodule(name) if kind == "module" else model.get_parameter(name)


def apply_ties(model: nn.Module, resolved: list[tuple[str, list[str]]]) -> nn.Module:
    """Make every path of each group the same object as its source (in place)."""
    for kind, names in resolved:
        src = _get(model, names[0], kind)
        for n in names[1:]:
            _set(model, n, src)
    if any(kind == "module" for kind, _ in resolved):
        _check_acyclic(model)
    return model


def _check_acyclic(model: nn.Module) -> None:
    """Module ties of different groups can still close a loop (``a.x`` is ``b``, ``b.y`` is
    ``a``): refuse a model that contains itself, before anything recurses into it."""
    done: set[int] = set()
    on_path: set[int] = set()
    stack: list[tuple[nn.Module, str, bool]] = [(model, "", False)]
    while stack:
        module, name, leaving = stack.pop()
        if leaving:
            on_path.discard(id(module))
            done.add(id(module))
            continue
        if id(module) in done:
            continue
        on_path.add(id(module))
        stack.append((module, name, True))
        for child_name, child in module._modules.items():
            if child is None:
                continue
            path = f"{name}.{child_name}" if name else child_name
            if id(child) in on_path:
                raise TieError(
                    [("tie.groups", f"the ties make {path!r} a module that contains itself")],
                    header="Cannot apply tie groups:",
                )
            stack.append((child, path, False))


def check_ties(model: nn.Module, resolved: list[tuple[str, list[str]]]) -> None:
    """Raise unless every tie still holds by identity (``to_empty``, ``assign=True`` break them)."""
    broken = []
    for i, (kind, names) in enumerate(resolved):
        src = _get(model, names[0], kind)
        broken += [
            (f"tie.groups.{i}", f"{n!r} is no longer the same object as {names[0]!r}")
            for n in names[1:]
            if _get(model, n, kind) is not src
        ]
    if broken:
        raise TieError(broken, header="Ties were broken:")


def tied_names(model: nn.Module) -> dict[str, list[str]]:
    """For each parameter name, the other names of the same parameter object."""
    by_id: dict[int, list[str]] = {}
    for n, p in model.named_parameters(remove_duplicate=False):
        by_id.setdefault(id(p), []).append(n)
    return {n: [m for m in names if m != n] for names in by_id.values() for n in names}
