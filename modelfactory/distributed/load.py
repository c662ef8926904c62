"""``load(path, mesh=...)`` and ``load_weights`` into a sharded model: each rank reads its
own rows of each tensor and nothing else.

The order is ``load``'s (``checkpoint/_rebuild.py``), with its functions: the header (and
every shard's), the format version, the trust of every target, the config's bounds and
the architecture on ``meta`` with the stored tensors' fit, all before any tensor data is
read. Then the architecture is sharded as ``build(cfg, mesh=...)`` shards it, given
memory for each rank's rows (``to_empty``), and each rank reads its rows with
safetensors' ``safe_open(...).get_slice``: the pages of those rows, not the file.
Buffers, which every rank holds whole, are read whole.
"""

from __future__ import annotations

import functools
import json
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from torch import nn
from torch.distributed.tensor import DTensor

from .._record import BuildRecord, attach, record_of
from ..checkpoint import _state
from ..checkpoint._atomic import identity, unchanged
from ..checkpoint._files import find_and_read, read_any
from ..checkpoint._rebuild import ConfigCheck, compare_with_copy, prepare
from ..checkpoint._shards import INDEX_FILE
from ..checkpoint._trust import parse_trusted
from ..checkpoint.read import copy_of, float_dtype, landing_tensors
from ..errors import CheckpointError, DeviceError
from ..tie import apply_ties, check_ties
from ._mesh import checked_mesh, local_box, mesh_of
from ._units import shard

__all__ = ["load_sharded", "load_weights_sharded"]

Pathish = str | os.PathLike


def load_sharded(
    path: Pathish,
    mesh: Any,
    *,
    device: Any = None,
    dtype: str | torch.dtype | None = None,
    trusted: Iterable[str] = (),
    strict: bool = True,
    checks: tuple[ConfigCheck, ...] = (),
    fsdp_units: Any = "repeat",
) -> nn.Module:
    """``mf.load(path, mesh=mesh)``: the saved model, sharded over ``mesh``, each rank
    reading only its rows (see the module's doc). Outputs and gathered values equal a
    one-process load's bit for bit. ``checks`` run on the trusted config before any weight
    is read, as in ``load_model``. The mesh gives the device: ``device`` must be ``None``."""
    if device is not None:
        raise CheckpointError(
            Path(path), "load(mesh=...) places the model on the mesh's devices; leave device out"
        )
    device = checked_mesh(mesh)
    cast = float_dtype(dtype, path)
    if not strict:
        raise CheckpointError(
            Path(path), "load(mesh=...) needs strict=True (a sharded load reads only what fits)"
        )
    check = functools.partial(
        prepare, trusted=parse_trusted(trusted, path), strict=True, checks=checks
    )
    file, copy, (header, stand_ins) = find_and_read(
        path, lambda f: read_any(f, require="model", mmap=None, copy=copy_of(f), check=check)
    )
    compare_with_copy(header, copy)
    doc, prepared = header.doc, header.checked
    model, aliases = prepared.skeleton, doc.get("aliases", {})
    stored = {k: aliases.get(k, k) for k in prepared.expected}  # name -> its stored name
    ties = record_of(model).ties
    if cast is not None:
        model.to(cast)
    shard(model, mesh, fsdp_units)
    model.to_empty(device=device)
    apply_ties(model, ties)  # to_empty gives plain (unsharded) parameters new objects
    check_ties(model, ties)
    _read_into(file, _targets(model, stored), stand_ins)
    _state.restore_modes(model, doc.get("eval", []))
    device_cfg = {**prepared.config.get("device", {}), "device": str(device)}
    if cast is not None:
        device_cfg["dtype"] = str(cast).removeprefix("torch.")
    config = {**prepared.config, "device": device_cfg}
    record = BuildRecord(config, ties, record_of(model).paths, doc.get("knobs", {}))
    return attach(model, record)


def _targets(model: nn.Module, stored: dict[str, str]) -> dict[str, torch.Tensor]:
    """Stored name -> the model's tensor it fills (each tensor once, ties included)."""
    own = {**model.state_dict(keep_vars=True), **dict(model.named_buffers())}
    out: dict[str, torch.Tensor] = {}
    seen: set[int] = set()
    for name, key in stored.items():
        t = own[name]
        if id(t) not in seen:
            seen.add(id(t))
            out[key] = t
    return out


def load_weights_sharded(
    model: nn.Module,
    path: Pathish,
    prefix_map: dict[str, str] | None = None,
    strict: bool = True,
    *,
    mesh: Any = None,
) -> nn.Module:
    """``mf.load_weights`` into a sharded model: each rank reads its rows of each stored
    tensor it uses (cast to the model's dtype), nothing else."""
    own_mesh = mesh_of(model)
    if own_mesh is None:
        raise DeviceError(
            [("mesh", "the model is not sharded: build it with mf.build(cfg, mesh=mesh)")]
        )
    checked_mesh(own_mesh)
    if mesh is not None and mesh != own_mesh:
        raise DeviceError([("mesh", f"the model is sharded over {own_mesh}, not over {mesh}")])
    file, _, (header, stand_ins) = find_and_read(path, lambda f: read_any(f, mmap=None))
    stored_as = {id(t): k for k, t in stand_ins.items()}  # aliases are the same stand-ins
    own = model.state_dict(keep_vars=True)
    chosen = landing_tensors(own, file, header.doc, stand_ins, prefix_map, strict)
    _read_into(file, {stored_as[id(t)]: own[k] for k, t in chosen.items()}, stand_ins)
    return model


def _read_into(
    file: Path, targets: dict[str, torch.Tensor], stand_ins: dict[str, torch.Tensor]
) -> None:
    """Fill each target (by stored name) with this rank's rows of the stored tensor, cast to
    its dtype, from the file (or shard) that holds it."""
    by_file: dict[Path, dict[str, torch.Tensor]] = {}
    where = _where(file, stand_ins)
    for key, target in targets.items():
        by_file.setdefault(where[key], {})[key] = target
    for part, some in by_file.items():
        _read_file(part, some)


def _where(file: Path, stand_ins: dict[str, torch.Tensor]) -> dict[str, Path]:
    """The file that holds each stored tensor (the file itself, or a shard of the index)."""
    if file.name != INDEX_FILE and not file.name.endswith(".index.json"):
        return dict.fromkeys(stand_ins, file)
    try:
        wmap = json.loads(file.read_text())["weight_map"]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise CheckpointError(file, f"not a readable index ({e})") from e
    if set(wmap) != set(stand_ins):
        raise CheckpointError(file, "changed while being read: read it once no save is running")
    return {k: file.with_name(v) for k, v in wmap.items()}


# Bytes of a file read through one mapping: safetensors maps the whole file, and the pages
# a rank reads count as its resident memory until the mapping closes, so it is reopened
# after each batch (a rank's peak is its shard plus this, not twice its shard).
MAPPED = 16 * 2**20


def _read_file(file: Path, targets: dict[str, torch.Tensor]) -> None:
    """This rank's rows of each target, from ``file`` (``get_slice``: the pages of those rows
    only); the file must not change while it is read."""
    keys = list(targets)
    try:
        before = identity(os.stat(file))
        while keys:
            with safe_open(file, framework="pt") as f, torch.no_grad():
                mapped = 0
                while keys and mapped < MAPPED:
                    key = keys.pop(0)
                    mapped += _read_one(f, key, targets[key])
    except (SafetensorError, OSError, ValueError, RuntimeError) as e:
        raise CheckpointError(file, f"cannot read tensors ({e})") from e
    if not unchanged(file, before):
        raise CheckpointError(file, "changed while being read: read it once no save is running")


def _read_one(f: Any, key: str, target: torch.Tensor) -> int:
    """Read this rank's part of ``key`` into ``target``; returns the bytes read."""
    if not isinstance(target, DTensor):  # every rank holds it whole
        target.copy_(f.get_tensor(key))
        return target.nbytes
    local = target.to_local()
    if local.numel():
        local.copy_(f.get_slice(key)[local_box(target)])
    return local.nbytes
