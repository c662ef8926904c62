"""Construct modules from a validated spec.

Every node is constructed directly where the model will live, after the
default generator of that device is re-seeded from the node's stream key, so
PyTorch's own default init runs once, on the target device, and gives the
same values whatever else the config contains.
"""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from ._spec import Node, Raw
from .errors import BuildError, ModelFactoryError

ROOT = "model"


def mix(key: int, text: str) -> int:
    """Derive a child stream key (64 bits) from a parent key and a component."""
    data = key.to_bytes(8, "little") + text.encode()
    return int.from_bytes(hashlib.blake2b(data, digest_size=8).digest(), "little")


def root_key(seed: int) -> int:
    return mix(0, f"seed={int(seed)}")


@dataclass(eq=False, slots=True)
class Built:
    """One module a config node built: which node, and the stream key it was built under."""

    module: nn.Module
    node: Node
    key: int


@dataclass(eq=False)
class Context:
    """Per-build state: where to construct and how to seed."""

    device: torch.device
    seed_streams: bool = True
    node_devices: dict[int, torch.device] = field(default_factory=dict)  # key -> device
    records: list[Built] = field(default_factory=list)
    default_gen: torch.Generator | None = field(init=False, default=None)

    def __post_init__(self) -> None:
        self.default_gen = self.generator(self.device)

    def generator(self, device: torch.device) -> torch.Generator | None:
        if not self.seed_streams or device.type == "meta":
            return None
        if device.type == "cpu":
            return torch.default_generator
        if device.type == "cuda":
            index = device.index if device.index is not None else torch.cuda.current_device()
            return torch.cuda.default_generators[index]
        return None


def construct(node: Node, key: int, ctx: Context) -> Any:
    """Build ``node`` (and its children) under stream key ``key``'s parent."""
    return _build_node(node, key, ctx, ctx.device)


def _build_node(node: Node, parent_key: int, ctx: Context, device: torch.device) -> Any:
    key = mix(parent_key, node.component)
    dev = ctx.node_devices.get(key, device) if ctx.node_devices else device
    if node.dynamic:
        args = [_build_value(a, key, ctx, dev) for a in node.args]
        kwargs = {}
        for name, v in node.kwargs.items():
            if name in node.factories:
                kwargs[name] = _factory(v, key, ctx, dev)
            else:
                kwargs[name] = _build_value(v, key, ctx, dev)
    elif node.mutable:
        args = [_fresh(a) for a in node.args]
        kwargs = {k: _fresh(v) for k, v in node.kwargs.items()}
    else:
        args, kwargs = node.args, node.kwargs  # immutable scalars: safe to pass as they are
    if node.partial:
        return functools.partial(node.target, *args, **kwargs)
    try:
        if dev is ctx.device:
            if ctx.default_gen is not None and node.seeded:
                ctx.default_gen.manual_seed(key)
            out = node.target(*args, **kwargs)
        else:
            gen = ctx.generator(dev)
            if gen is not None:
                gen.manual_seed(key)
            with torch.device(dev):
                out = node.target(*args, **kwargs)
    except ModelFactoryError:
        raise
    except Exception as e:
        raise BuildError(
            node.path, f"{node.target_name}(...) failed: {type(e).__name__}: {e}"
        ) from e
    if isinstance(out, nn.Module):
        ctx.records.append(Built(out, node, key))
    return out


def _factory(node: Node, key: int, ctx: Context, device: torch.device) -> Callable[[int], Any]:
    """A callable that builds a fresh, independently seeded copy of ``node`` per index."""

    def make(index: int) -> Any:
        return _build_node(node, mix(key, f"copy{index}"), ctx, device)

    return make


def _build_value(v: Any, key: int, ctx: Context, device: torch.device) -> Any:
    if type(v) is Node:
        return _build_node(v, key, ctx, device)
    if type(v) is list:
        return [_build_value(x, key, ctx, device) for x in v]
    if type(v) is dict:
        return {k: _build_value(x, key, ctx, device) for k, x in v.items()}
    if type(v) is Raw:
        return _fresh(v.value)
    return v


def _fresh(v: Any) -> Any:
    """A private copy of a container value, so a target that mutates it cannot alter the spec."""
    if type(v) is list:
        return [_fresh(x) for x in v]
    if type(v) is dict:
        return {k: _fresh(x) for k, x in v.items()}
    return v


class preserved_rng:
    """Restore the global RNG states a build re-seeds, so building has no side effect."""

    def __init__(self, devices: list[torch.device]) -> None:
        self.cuda = sorted(
            {d.index or 0 for d in devices if d.type == "cuda"} if torch.cuda.is_available() else ()
        )

    def __enter__(self) -> preserved_rng:
        self.cpu_state = torch.get_rng_state()
        self.cuda_states = [torch.cuda.get_rng_state(i) for i in self.cuda]
        return self

    def __exit__(self, *exc: object) -> None:
        torch.set_rng_state(self.cpu_state)
        for i, s in zip(self.cuda, self.cuda_states, strict=True):
            torch.cuda.set_rng_state(s, i)
