"""``save`` of a sharded model: a collective that writes what a one-process save writes.

Every rank gathers the tensors one at a time (``DTensor.full_tensor()``, an all-gather);
the mesh's first rank ("rank 0") keeps them, on the CPU, in a model of its own (the
architecture from the model's config on ``meta``, the gathered tensors assigned, ties
and train/eval modes restored) and saves that with the one-process
:func:`modelfactory.save`: the same checks, the same files, byte for byte. The other
ranks hold one gathered tensor at a time. Every rank returns the file rank 0 wrote, or
raises the error it raised.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.tensor import DTensor

from .._config import to_plain
from .._record import attach, record_of
from ..checkpoint import _state
from ..errors import CheckpointError
from ..tie import apply_ties
from ._mesh import agree, checked_mesh, first_rank, group_of, mesh_of

__all__ = ["save_sharded"]


def save_sharded(
    model: nn.Module, path: str | os.PathLike, write: Callable[[nn.Module], Path], cfg: Any = None
) -> Path:
    """``mf.save(model, path, ...)`` for a model sharded over a mesh; every rank of the mesh
    calls it (see the module's doc). Rank 0 gathers the model whole and ``write`` saves it
    as a model of one process is saved (``cfg``: the config that builds it, if not its own).

    Raises:
        CheckpointError: on every rank, when rank 0's save failed (its message), or when
            the model has no config of its own.
    """
    mesh = mesh_of(model)
    checked_mesh(mesh)
    record = record_of(model)
    if record is None and cfg is None:
        raise CheckpointError(
            Path(path),
            f"this sharded {type(model).__name__} was not made by modelfactory.build, so its "
            "architecture is unknown; pass cfg= (the config that builds it)",
        )
    first, group = first_rank(mesh), group_of(mesh)
    full = _gathered(model, keep=dist.get_rank() == first)
    written, error = None, None
    if dist.get_rank() == first:
        try:
            written = write(_whole(model, full, record, cfg, Path(path)))
        except Exception as e:  # reported to every rank below, then raised here too
            error = e
    failed = agree(mesh, error)
    if error is not None:
        raise error
    if failed is not None:
        raise CheckpointError(Path(path), f"the collective save failed on {failed}")
    names: list[Any] = [str(written) if written is not None else None]
    dist.broadcast_object_list(names, src=first, group=group)
    return Path(names[0])


def _gathered(model: nn.Module, keep: bool) -> dict[str, torch.Tensor]:
    """Every tensor ``save`` stores, whole and on the CPU where ``keep`` (else nothing).
    Each tensor is gathered once (a tied one too), in the same order on every rank."""
    names, _ = _state.collect(model)
    objects = {**model.state_dict(keep_vars=True), **dict(model.named_buffers())}
    out: dict[str, torch.Tensor] = {}
    done: dict[int, torch.Tensor] = {}
    for name in names:
        t = objects[name]
        if id(t) not in done:
            whole = t.full_tensor() if isinstance(t, DTensor) else t
            done[id(t)] = whole.detach().to("cpu") if keep else torch.empty(0)
        if keep:
            out[name] = done[id(t)]
    return out


def _whole(
    model: nn.Module, full: dict[str, torch.Tensor], record: Any, cfg: Any, path: Path
) -> nn.Module:
    """A one-process model holding ``full``: ``model``'s architecture, ties and modes."""
    config = to_plain(cfg) if cfg is not None else record.config
    nbytes = sum(t.nbytes for t in full.values())
    whole = _state.skeleton(config, {k: t.shape for k, t in full.items()}, path, nbytes)
    ties = record_of(whole).ties
    _state.assign(whole, full, [k for k in full if k not in whole.state_dict()], {})
    apply_ties(whole, ties)
    _state.restore_modes(whole, _state.eval_modules(model))
    if record is not None:
        attach(whole, record)
    return whole
