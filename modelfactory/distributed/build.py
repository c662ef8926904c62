"""``build(cfg, mesh=...)``: a model built directly sharded, with one process's values.

The architecture is built on ``meta`` exactly as a one-process build makes it (lazy
layers rewritten as their eager twins by the same dry run), every init rule is checked
against it, ties are applied, FSDP2 shards it (``fully_shard`` per unit and at the
root) and ``to_empty`` gives each rank memory for its own rows only. Then each config
node that holds parameters or buffers of its own is built alone, on the mesh's device,
under its own stream key (the values it gets in a whole build), its init rules applied
under its full names; each rank copies its rows of every tensor out of it, and the node
is freed. The peak is a rank's shard plus one such node (a ``Linear``, an attention
block). Random init applied to sharded ``DTensor``s directly would not give one
process's values; this does, bit for bit, for any world size.
"""

from __future__ import annotations

from contextlib import nullcontext
from dataclasses import dataclass, field, replace
from typing import Any

import torch
from torch import nn
from torch.distributed.tensor import DTensor
from torch.nn.modules.lazy import LazyModuleMixin

from .._config import BuildConfig
from .._construct import Built, Context, construct_at, record_paths
from .._record import BuildRecord
from .._seeding import DrawFrom, root_key
from ..errors import BuildError, ConfigError
from ..factory import meta_build
from ..init import Rule, apply_rules
from ..tie import apply_ties, check_ties
from ._mesh import checked_mesh, local_box
from ._units import shard

__all__ = ["build_sharded", "fill_local"]


def build_sharded(bc: BuildConfig, mesh: Any, units: Any) -> tuple[nn.Module, BuildRecord]:
    """The model of ``bc`` sharded over ``mesh``, and its record (see the module's doc)."""
    device = checked_mesh(mesh)
    if bc.device_map:
        raise ConfigError(
            [("device.map", "a sharded model lives on the mesh's devices; leave device.map out")]
        )
    plan, model, records, ties = meta_build(replace(bc, device="meta"))
    _check_eager(records)
    if plan.rules:  # on meta: checks that every rule selects something, draws nothing
        apply_rules(model, plan.rules, records, root_key(bc.seed))
    groups = _groups(model, records, ties)
    shard(model, mesh, units)
    model.to_empty(device=device)
    apply_ties(model, ties)  # to_empty gives plain (unsharded) parameters new objects
    check_ties(model, ties)
    rules = [replace(r, optional=True) for r in plan.rules]  # each node sees a part
    for group in groups:
        _fill(model, group, rules, Context(device), plan.dtype, root_key(bc.seed))
    device_cfg = {**bc.resolved.get("device", {}), "device": str(device)}
    record = BuildRecord(
        {**bc.resolved, "device": device_cfg}, ties, record_paths(records), bc.knobs
    )
    return model, record


def _check_eager(records: list[Built]) -> None:
    lazy = [
        r
        for r in records
        if isinstance(r.module, LazyModuleMixin)
        or (isinstance(r.node.target, type) and issubclass(r.node.target, LazyModuleMixin))
    ]
    if lazy:
        raise BuildError(
            lazy[0].node.path,
            "this lazy layer has no eager twin (a user-defined lazy layer, or Repeat copies "
            "that saw different sizes), so only a real forward pass would materialize it; a "
            "sharded build cannot run one: give the layer its sizes",
        )


@dataclass
class _Group:
    """A config node built alone, and the tensors it gives: ``(name in the node, name in
    the model)``."""

    record: Built
    path: str
    tensors: list[tuple[str, str]] = field(default_factory=list)


def _groups(model: nn.Module, records: list[Built], ties: list) -> list[_Group]:
    """Apply ``ties`` to ``model``; return the nodes to build alone and the tensors each gives.

    A tensor comes from the innermost node whose module held it before the ties (a node
    built alone builds its children too, so a node inside another one that is built anyway
    is not built again). Tensors the ties replaced are left out: a tie keeps its source's.
    """
    paths: dict[int, str] = {}
    for name, module in model.named_modules():
        paths.setdefault(id(module), name)
    by_path: dict[str, Built] = {}
    for r in records:
        if id(r.module) in paths:
            by_path.setdefault(paths[id(r.module)], r)
    before = [*model.named_parameters(), *model.named_buffers()]
    apply_ties(model, ties)
    kept = {id(t) for t in (*model.parameters(), *model.buffers())}
    owners: dict[str, list[str]] = {}
    for name, t in before:
        if id(t) in kept:
            owners.setdefault(_innermost(name, by_path), []).append(name)
    groups: dict[str, _Group] = {}
    for path in sorted(owners, key=lambda p: p.count(".") + bool(p)):
        outer = next((g for g in groups if _inside(path, g)), path)
        group = groups.setdefault(outer, _Group(by_path[outer], outer))
        strip = len(outer) + 1 if outer else 0
        group.tensors += [(name[strip:], name) for name in owners[path]]
    return list(groups.values())


def _innermost(name: str, by_path: dict[str, Built]) -> str:
    parts = name.split(".")[:-1]
    for i in range(len(parts), 0, -1):
        path = ".".join(parts[:i])
        if path in by_path:
            return path
    return ""


def _inside(path: str, outer: str) -> bool:
    return outer == "" or path.startswith(outer + ".")


def _fill(
    model: nn.Module,
    group: _Group,
    rules: list[Rule],
    ctx: Context,
    dtype: torch.dtype,
    root: int,
) -> None:
    """Build ``group``'s node alone (its one-process values), and copy this rank's part of
    each of its tensors into ``model``."""
    on_device = torch.device(ctx.device) if ctx.device.type != "cpu" else nullcontext()
    with DrawFrom(ctx.streams, dtype), on_device:
        alone = construct_at(group.record.node, group.record.key, ctx)
    if rules:
        apply_rules(_placed(group.path, alone), rules, ctx.records, root)
    with torch.no_grad():
        for inner, name in group.tensors:
            fill_local(_tensor(model, name), _tensor(alone, inner), name)


def _placed(path: str, module: nn.Module) -> nn.Module:
    """``module`` under empty parents named by ``path``, so that init rules see the names
    (and the stream keys) its tensors have in the whole model."""
    if not path:
        return module
    root = parent = nn.Module()
    *parents, leaf = path.split(".")
    for part in parents:
        child = nn.Module()
        parent.add_module(part, child)
        parent = child
    parent.add_module(leaf, module)
    return root


def _tensor(model: nn.Module, name: str) -> torch.Tensor:
    owner, _, leaf = name.rpartition(".")
    module = model.get_submodule(owner) if owner else model
    t = module._parameters.get(leaf)
    return t if t is not None else module._buffers[leaf]


def fill_local(target: torch.Tensor, full: torch.Tensor, name: str) -> None:
    """Copy this rank's part of ``full`` (the whole tensor) into ``target`` (a sharded
    parameter's local rows, or a tensor every rank holds whole)."""
    if tuple(full.shape) != tuple(target.shape):
        raise BuildError(
            name,
            f"built alone it has shape {list(full.shape)}, in the model {list(target.shape)}",
        )
    if isinstance(target, DTensor):
        target.to_local().copy_(full[local_box(target)])
    else:
        target.copy_(full)
