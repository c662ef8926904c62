"""The mesh a sharded model lives on: checks, its device, each rank's part of a tensor.

Every rank of a sharded build, load or save runs the same code on the same config, so
each takes the same decisions; what differs between ranks is only which rows of each
parameter it holds (:func:`local_box`).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.device_mesh import DeviceMesh
from torch.distributed.tensor import DTensor
from torch.distributed.tensor._utils import compute_local_shape_and_global_offset

from ..errors import DeviceError

__all__ = [
    "agree",
    "checked_mesh",
    "device_of",
    "first_rank",
    "group_of",
    "local_box",
    "mesh_of",
    "resharded",
]


def checked_mesh(mesh: Any, path: str = "mesh") -> torch.device:
    """The device this rank's shard lives on, taken from ``mesh`` (``cpu``, or the current
    ``cuda`` device, which the caller sets per rank: ``torch.cuda.set_device(local_rank)``).

    Raises:
        DeviceError: ``mesh`` is not a ``DeviceMesh``, ``torch.distributed`` is not
            initialized, this process is not in the mesh, or its device type does not exist.
    """
    if not isinstance(mesh, DeviceMesh):
        raise DeviceError(
            [
                (
                    path,
                    f"expected a torch.distributed DeviceMesh, got {type(mesh).__name__}; make one "
                    "with torch.distributed.device_mesh.init_device_mesh('cuda', (world_size,))",
                )
            ]
        )
    if not (dist.is_available() and dist.is_initialized()):
        raise DeviceError(
            [
                (
                    path,
                    "the default process group is not initialized: call "
                    "torch.distributed.init_process_group() first (torchrun sets up what it "
                    "reads), then make the mesh",
                )
            ]
        )
    if mesh.get_coordinate() is None:
        raise DeviceError([(path, f"rank {dist.get_rank()} is not in the mesh {mesh}")])
    return device_of(mesh.device_type, path)


def device_of(kind: str, path: str = "mesh") -> torch.device:
    """This rank's device of type ``kind``: ``cpu``, or the current accelerator (``cuda:N``
    after ``torch.cuda.set_device(N)``), as FSDP2 takes it from a mesh."""
    if kind == "cpu":
        return torch.device("cpu")
    module = getattr(torch, kind, None)
    if module is None or not module.is_available():
        raise DeviceError([(path, f"the mesh is on {kind!r}, which this process has none of")])
    return torch.device(kind, module.current_device())


def resharded(model: nn.Module) -> nn.Module:
    """``model`` with every FSDP2 unit's sharded parameters registered (a forward pass leaves
    the root's gathered, unsharded ones in place until the backward pass)."""
    from torch.distributed.fsdp import FSDPModule

    for module in model.modules():
        if isinstance(module, FSDPModule):
            module.reshard()
    return model


def mesh_of(model: nn.Module) -> DeviceMesh | None:
    """The mesh of a sharded model's parameters (``None`` for a model that is not sharded)."""
    params = resharded(model).parameters()
    return next((p.device_mesh for p in params if isinstance(p, DTensor)), None)


def local_box(t: DTensor) -> tuple[slice, ...]:
    """The part of the full tensor that this rank holds, as one slice per dimension."""
    shape, offset = compute_local_shape_and_global_offset(t.shape, t.device_mesh, t.placements)
    return tuple(slice(o, o + n) for o, n in zip(offset, shape, strict=True))


def group_of(mesh: DeviceMesh) -> Any:
    """The process group of all of ``mesh``'s ranks (``None``, the default group, for a mesh
    of several dimensions, which must then span the world)."""
    return mesh.get_group() if mesh.ndim == 1 else None


def first_rank(mesh: DeviceMesh) -> int:
    """The global rank of the mesh's first process: the one that writes files."""
    return int(mesh.mesh.flatten()[0])


def agree(mesh: DeviceMesh, error: BaseException | None) -> str | None:
    """Every rank of ``mesh`` learns whether some rank failed: the first failing rank's
    message, or ``None`` when none did. A collective: every rank calls it."""
    group = group_of(mesh)
    messages: list[Any] = [None] * dist.get_world_size(group)
    text = None if error is None else f"{type(error).__name__}: {error}"
    dist.all_gather_object(messages, (dist.get_rank(), text), group=group)
    failed = [(rank, msg) for rank, msg in messages if msg is not None]
    return None if not failed else f"rank {failed[0][0]}: {failed[0][1]}"
