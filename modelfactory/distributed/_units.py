"""Which modules FSDP2 shards as units of their own, and the sharding itself.

``fully_shard`` makes each unit one all-gather in forward and backward (its parameters
gathered together, freed after); the root takes every parameter no unit holds.
torchtitan shards each transformer block; here the default is each copy of a
``Repeat`` (a model's repeated blocks), which is the same thing for the zoo's models.
"""

from __future__ import annotations

from collections.abc import Callable
from fnmatch import fnmatchcase
from typing import Any

from torch import nn
from torch.distributed.device_mesh import DeviceMesh

from ..blocks import Repeat
from ..errors import ConfigError

__all__ = ["UNITS", "shard", "units_of"]

UNITS = ("repeat", "root")


def units_of(model: nn.Module, units: Any) -> list[str]:
    """The names of the modules to shard as units (deepest first, so that children are
    sharded before their parents, as ``fully_shard`` requires).

    Args:
        model: the model, not sharded yet.
        units: ``"repeat"`` (each copy of every ``Repeat`` not inside another one),
            ``"root"`` or ``None`` (no unit but the root), a list of module-name globs
            (``["blocks.*", "embed"]``; ``*`` crosses dots), or a callable
            ``(name, module) -> bool``.

    A module whose parameters are also used outside it (a tie across blocks) is left to
    the root: FSDP2 shards every parameter in one unit only.
    """
    select = _selector(units)
    chosen: list[str] = []
    for name, module in model.named_modules():
        if name and select(name, module) and not any(name.startswith(c + ".") for c in chosen):
            chosen.append(name)
    if units == "repeat":  # copies, not the Repeat itself
        chosen = [f"{n}.{c}" for n in chosen for c, _ in model.get_submodule(n).named_children()]
    names_of: dict[int, list[str]] = {}
    for name, p in model.named_parameters(remove_duplicate=False):
        names_of.setdefault(id(p), []).append(name)
    out = [u for u in chosen if _self_contained(model.get_submodule(u), u, names_of)]
    return sorted(out, key=lambda n: -n.count("."))


def _selector(units: Any) -> Callable[[str, nn.Module], bool]:
    if units == "repeat":
        return lambda _name, module: isinstance(module, Repeat)
    if units in ("root", None) or units == []:
        return lambda _name, _module: False
    if isinstance(units, (list, tuple)) and all(isinstance(u, str) for u in units):
        return lambda name, _module: any(fnmatchcase(name, u) for u in units)
    if callable(units):
        return units
    raise ConfigError(
        [
            (
                "fsdp_units",
                f"expected 'repeat', 'root', a list of module-name globs or a callable "
                f"(name, module) -> bool, got {units!r}",
            )
        ]
    )


def _self_contained(module: nn.Module, name: str, names_of: dict[int, list[str]]) -> bool:
    """No parameter of ``module`` has a name outside it."""
    prefix = name + "."
    return all(all(n.startswith(prefix) for n in names_of[id(p)]) for p in module.parameters())


def shard(model: nn.Module, mesh: DeviceMesh, units: Any) -> list[str]:
    """``fully_shard`` each unit, then the root (in place); returns the units' names.

    0-d parameters cannot be split by rows: they stay whole on every rank.
    """
    from torch.distributed.fsdp import fully_shard

    names = units_of(model, units)
    whole = {p for p in model.parameters() if p.dim() == 0} or None
    for name in names:
        fully_shard(model.get_submodule(name), mesh=mesh, ignored_params=whole)
    fully_shard(model, mesh=mesh, ignored_params=whole)
    return names
