"""``plan``: what a config costs, before anything is built for real.

The architecture is built as :func:`modelfactory.build` builds it (lazy layers
materialized by the same dry run, ties applied) on the ``meta`` device, so nothing is
allocated and nothing is initialized. Parameters are counted once however many names
they have (a tied head counts once), in the config's dtype. The FLOPs are torch's own
count (:class:`torch.utils.flop_counter.FlopCounterMode`) of one forward pass at
``input_shape``, and of that pass plus the backward pass of the sum of its outputs; the
activation estimate is what autograd saves for the backward pass in that forward (the
memory training holds between the two passes), parameters left out.

Attention: torch counts its fused attention kernels (flash, memory-efficient, cuDNN)
with one formula, but has none for the CPU flash kernel, and on ``meta`` attention runs
the unfused math path. The plan runs attention as the CPU flash kernel (which has a
``meta`` kernel) and counts it with torch's formula; :func:`flop_counter` is that
counter, for counting a real forward the same way.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from typing import Any

import torch
from torch import nn
from torch.overrides import TorchFunctionMode
from torch.utils import flop_counter as fc

from . import device as devices
from ._config import normalize
from ._sample import sample_input
from .errors import ConfigError, DeviceError
from .factory import _mapping, meta_build
from .tie import apply_ties

__all__ = ["Plan", "flop_counter", "plan"]

META = torch.device("meta")
_aten = torch.ops.aten


@dataclass(frozen=True)
class Plan:
    """What a config costs. Bytes are in the config's dtype; ``None``: not asked for, or not
    known (no ``input_shape``; ``notes`` says why).

    Attributes:
        params: parameters, each counted once (tied ones too).
        param_bytes: their bytes.
        buffers: buffer elements (persistent or not), each counted once.
        buffer_bytes: their bytes.
        modules: modules in the model.
        dtype: the parameters' dtype.
        input_shape: the shape the FLOPs and activations are counted at.
        flops: one forward pass at ``input_shape``.
        train_flops: that forward pass and the backward pass of the sum of its outputs.
        activation_bytes: what autograd saves for the backward pass in that forward pass.
        device_bytes: parameter and buffer bytes on each device (``device.map`` applied).
        world_size: the mesh size ``rank_bytes`` is for.
        rank_bytes: parameter and buffer bytes each rank holds when the model is sharded
            over ``world_size`` ranks with FSDP2 (every parameter split by rows; FSDP2 pads
            each rank's part to the same size; buffers are whole on every rank).
        max_shard_size: the limit ``files`` is for.
        files: ``(file, tensor bytes)`` of a save with that ``max_shard_size``.
        notes: why a number is missing.
    """

    params: int
    param_bytes: int
    buffers: int
    buffer_bytes: int
    modules: int
    dtype: str
    input_shape: list[int] | None = None
    flops: int | None = None
    train_flops: int | None = None
    activation_bytes: int | None = None
    device_bytes: dict[str, int] = field(default_factory=dict)
    world_size: int | None = None
    rank_bytes: int | None = None
    max_shard_size: int | None = None
    files: list[tuple[str, int]] | None = None
    notes: list[str] = field(default_factory=list)

    def table(self) -> str:
        """The plan as a two-column table, for people."""
        rows = [
            ("parameters", f"{self.params:,} {self.dtype}: {_size(self.param_bytes)}"),
            ("buffers", f"{self.buffers:,}: {_size(self.buffer_bytes)}"),
            ("modules", f"{self.modules:,}"),
        ]
        if self.flops is not None:
            shape = "x".join(map(str, self.input_shape or []))
            rows += [
                (f"forward FLOPs at {shape}", _count(self.flops)),
                ("training FLOPs (fwd+bwd)", _count(self.train_flops)),
                ("activations saved for bwd", _size(self.activation_bytes)),
            ]
        rows += [(f"on {dev}", _size(n)) for dev, n in self.device_bytes.items()]
        if self.rank_bytes is not None:
            rows.append((f"per rank of {self.world_size} (FSDP2)", _size(self.rank_bytes)))
        for name, n in self.files or []:
            rows.append((name, _size(n)))
        rows += [("note", n) for n in self.notes]
        width = max(len(k) for k, _ in rows)
        return "\n".join(f"{k:<{width}}  {v}" for k, v in rows)

    def __str__(self) -> str:
        return self.table()


def _size(n: int | None) -> str:
    return _scaled(n, (("TiB", 2**40), ("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)), " bytes")


def _count(n: int | None) -> str:
    return _scaled(n, (("P", 10**15), ("T", 10**12), ("G", 10**9), ("M", 10**6)), "")


def _scaled(n: int | None, units: tuple[tuple[str, int], ...], tail: str) -> str:
    """``1.50 GiB (1,610,612,736 bytes)``: in the largest unit ``n`` reaches, and exactly."""
    if n is None:
        return "?"
    for unit, scale in units:
        if n >= scale:
            return f"{n / scale:,.2f} {unit} ({n:,}{tail})"
    return f"{n:,}{tail}"


def plan(
    cfg: Any,
    *,
    world_size: int | None = None,
    max_shard_size: int | str | None = None,
    dtype: str | None = None,
) -> Plan:
    """What ``cfg`` costs: parameters, bytes, FLOPs and memory, nothing built or allocated.

    Args:
        cfg: a config, as :func:`modelfactory.build` takes it.
        world_size: also give the bytes each rank holds when the model is sharded over this
            many ranks (``build(cfg, mesh=...)``).
        max_shard_size: also list the files a save with this ``max_shard_size`` writes.
        dtype: overrides ``device.dtype``.

    Returns:
        The :class:`Plan`; ``str(plan)`` is a table.

    Raises:
        ConfigError: the config is not well-formed, or ``world_size`` is not a positive int.
    """
    bc = normalize(cfg)
    if dtype is not None:
        bc = replace(bc, dtype=dtype)
    if world_size is not None and (
        isinstance(world_size, bool) or not isinstance(world_size, int) or world_size < 1
    ):
        raise ConfigError([("world_size", f"expected a positive integer, got {world_size!r}")])
    built, model, _, ties = meta_build(replace(bc, device="meta", device_map=None))
    apply_ties(model, ties)
    params = _unique(model.parameters())
    buffers = _unique(model.buffers())
    out = Plan(
        params=sum(p.numel() for p in params),
        param_bytes=_nbytes(params),
        buffers=sum(b.numel() for b in buffers),
        buffer_bytes=_nbytes(buffers),
        modules=sum(1 for _ in model.modules()),
        dtype=str(built.dtype).removeprefix("torch."),
        input_shape=bc.input_shape,
        device_bytes=_device_bytes(model, bc),
    )
    if world_size is not None:
        out = replace(out, world_size=world_size, rank_bytes=rank_bytes(model, world_size))
    if max_shard_size is not None:
        limit = _limit(max_shard_size)
        out = replace(out, max_shard_size=limit, files=_files(model, limit))
    if bc.input_shape is None:
        return replace(out, notes=["no input_shape: FLOPs and activations not counted"])
    return replace(out, **_costs(model, bc))


def _limit(max_shard_size: int | str) -> int:
    from .checkpoint._shards import parse_size
    from .errors import CheckpointError

    try:
        return parse_size(max_shard_size, "max_shard_size")
    except CheckpointError as e:
        raise ConfigError([("max_shard_size", str(e).removeprefix("max_shard_size: "))]) from e


def _unique(tensors: Iterator[torch.Tensor]) -> list[torch.Tensor]:
    return list({id(t): t for t in tensors}.values())


def _nbytes(tensors: list[torch.Tensor]) -> int:
    return sum(t.numel() * t.element_size() for t in tensors)


def _device_bytes(model: nn.Module, bc: Any) -> dict[str, int]:
    """Parameter and buffer bytes per device, by ``device.map`` (or all on ``device.device``)."""
    target = _device(bc.device, "device.device")
    if bc.device_map == "balanced":
        mapping = {k: str(v) for k, v in _mapping(model, "balanced").items()}
    else:
        dmap = bc.device_map or {}
        mapping = {str(k): _device(v, f"device.map.{k}") for k, v in dmap.items()}
    out: dict[str, int] = {}
    seen: set[int] = set()
    for name, module in model.named_modules():
        dev = devices.device_for(name, mapping) or target
        for t in (*module._parameters.values(), *module._buffers.values()):
            if t is not None and id(t) not in seen:
                seen.add(id(t))
                out[dev] = out.get(dev, 0) + t.numel() * t.element_size()
    return out or {target: 0}


def _device(spec: Any, path: str) -> str:
    """A device as the plan names it: resolved where it exists here, else as written (a
    plan may be made for another machine: ``cuda:3`` on a laptop)."""
    try:
        return str(devices.resolve_device(spec, path))
    except DeviceError:
        if str(spec).startswith("cuda"):
            return str(spec)
        raise


def rank_bytes(model: nn.Module, world_size: int) -> int:
    """Bytes each rank holds when ``model`` is sharded over ``world_size`` ranks by FSDP2:
    every parameter split by rows (``torch.chunk``), each rank's part padded to the largest;
    0-d parameters and buffers whole."""
    total = 0
    for t in _unique(model.parameters()):
        if t.dim() == 0:
            total += t.element_size()
            continue
        rows = math.ceil(t.shape[0] / world_size) if t.shape[0] else 0
        total += rows * (t.numel() // max(t.shape[0], 1)) * t.element_size()
    return total + _nbytes(_unique(model.buffers()))


def _files(model: nn.Module, limit: int) -> list[tuple[str, int]]:
    """``(file, tensor bytes)`` of a save with ``max_shard_size=limit``: what ``save``
    stores (each tensor once, non-persistent buffers too) split as it splits them."""
    from .checkpoint import _format as fmt
    from .checkpoint._shards import plan as split
    from .checkpoint._shards import shard_names

    stored: dict[str, torch.Tensor] = {}
    seen: set[int] = set()
    named = [*model.state_dict(keep_vars=True).items(), *model.named_buffers()]
    for name, t in named:
        if id(t) not in seen:
            seen.add(id(t))
            stored[name] = t
    groups = split(stored, limit)
    names = shard_names(len(groups)) if len(groups) > 1 else [fmt.MODEL_FILE]
    return [(n, _nbytes([stored[k] for k in g])) for n, g in zip(names, groups, strict=True)]


class _FusedAttention(TorchFunctionMode):
    """On ``meta``, run attention as torch's CPU flash kernel (one op, counted by torch's
    attention formula) instead of the unfused math path ``meta`` takes."""

    def __torch_function__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        kwargs = kwargs or {}
        if func is torch.nn.functional.scaled_dot_product_attention and _fusable(args, kwargs):
            q, k, v = args[:3]
            rest = dict(
                zip(("attn_mask", "dropout_p", "is_causal", "scale"), args[3:], strict=False)
            )
            rest.update(kwargs)
            return _aten._scaled_dot_product_flash_attention_for_cpu(
                q,
                k,
                v,
                rest.get("dropout_p", 0.0),
                rest.get("is_causal", False),
                attn_mask=rest.get("attn_mask"),
                scale=rest.get("scale"),
            )[0]
        return func(*args, **kwargs)


def _fusable(args: tuple, kwargs: dict[str, Any]) -> bool:
    qkv = args[:3]
    return (
        len(qkv) == 3
        and all(isinstance(t, torch.Tensor) and t.is_meta and t.dim() == 4 for t in qkv)
        and not kwargs.get("enable_gqa", False)
        and len(args) <= 7
    )


def _attention(q: Any, k: Any, v: Any, *_: Any, out_shape: Any = None, **__: Any) -> int:
    return fc.sdpa_flop_count(q, k, v)


def _attention_backward(
    grad: Any, q: Any, k: Any, v: Any, *_: Any, out_shape: Any = None, **__: Any
) -> int:
    return fc.sdpa_backward_flop_count(grad, q, k, v)


def flop_counter() -> fc.FlopCounterMode:
    """torch's ``FlopCounterMode`` (no display) that also counts the CPU flash attention
    kernel, with the formula torch uses for its other fused attention kernels: how the plan
    counts, for counting a real forward pass the same way."""
    mapping = {
        _aten._scaled_dot_product_flash_attention_for_cpu: _attention,
        _aten._scaled_dot_product_flash_attention_for_cpu_backward: _attention_backward,
    }
    return fc.FlopCounterMode(display=False, custom_mapping=mapping)


def _costs(model: nn.Module, bc: Any) -> dict[str, Any]:
    """FLOPs of a forward (and backward) pass at ``input_shape`` on ``meta``, and the bytes
    autograd saves for the backward pass; notes instead when the forward cannot run on meta."""
    own = {t.untyped_storage()._cdata for t in (*model.parameters(), *model.buffers())}
    saved: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        storage = t.untyped_storage()
        if storage._cdata not in own:
            saved[storage._cdata] = storage.nbytes()
        return t

    counter = flop_counter()
    x = sample_input(bc, META)
    try:
        with counter, _FusedAttention():
            with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
                out = model(x)
            flops = counter.get_total_flops()
            loss = _loss(out)
            if loss is not None:
                loss.backward()
    except Exception as e:  # a forward that reads values cannot run on meta
        why = f"{type(e).__name__}: {e}".splitlines()[0][:200]
        return {"notes": [f"the forward pass does not run on meta ({why}): FLOPs not counted"]}
    return {
        "flops": flops,
        "train_flops": counter.get_total_flops(),
        "activation_bytes": sum(saved.values()),
    }


def _loss(out: Any) -> torch.Tensor | None:
    """The sum of every floating output that needs a gradient (``None``: nothing to do)."""
    parts: list[torch.Tensor] = []
    stack = [out]
    while stack:
        v = stack.pop()
        if isinstance(v, torch.Tensor):
            if v.is_floating_point() and v.requires_grad:
                parts.append(v.sum())
        elif isinstance(v, (list, tuple)):
            stack += list(v)
        elif isinstance(v, dict):
            stack += list(v.values())
    return sum(parts[1:], parts[0]) if parts else None
