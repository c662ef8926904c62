"""Construct modules from a validated spec.

Every node is constructed directly where the model will live, after the build's
private generator for that device is seeded from the node's stream key, so
PyTorch's own default init runs once, on the target device, and gives the
same values whatever else the config contains.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import torch
from torch import nn
from torch.overrides import TorchFunctionMode

from ._seeding import RANDOM_FILLS, Streams, mix
from ._spec import Node, Raw
from ._targets import signature_of
from .errors import ArgumentError, BuildError, ModelFactoryError

ROOT = "model"
_NOT_ARGUMENT_ERRORS = (MemoryError, torch.OutOfMemoryError, OSError)


class Built(NamedTuple):
    """One module a config node built: which node, and the stream key it was built under
    (a tuple: one is made per module built)."""

    module: nn.Module
    node: Node
    stream: int  # the node's own stream key, or (``own`` false) its parent's
    own: bool

    @property
    def key(self) -> int:
        """The node's stream key. A node that draws nothing and holds no block needs none to
        be built, so its record keeps its parent's and derives its own when asked."""
        return self.stream if self.own else mix(self.stream, self.node.component)


_new_tuple = tuple.__new__


@dataclass(eq=False)
class Context:
    """Per-build state: where to construct and how to seed."""

    device: torch.device
    seed_streams: bool = True
    node_devices: dict[int, torch.device] = field(default_factory=dict)  # key -> device
    records: list[Built] = field(default_factory=list)
    streams: Streams = field(default_factory=Streams)  # what constructors draw from
    on_meta: bool = field(init=False)  # device is meta (``device.type`` costs ~0.4 us a call)
    real_device: torch.device | None = field(init=False)  # device, unless meta

    def __post_init__(self) -> None:
        self.on_meta = self.device.type == "meta"
        self.real_device = None if self.on_meta else self.device


def record_paths(records: list[Built]) -> dict[int, str]:
    """``id(module) -> config path`` of every module a config node built."""
    return {id(r.module): r.node.path for r in records}


def construct(node: Node, key: int, ctx: Context) -> Any:
    """Build ``node`` (and its children) under stream key ``key``'s parent."""
    return _build_node(node, key, ctx, ctx.device)


def construct_at(node: Node, key: int, ctx: Context) -> Any:
    """Build ``node`` (and its children) under its own stream key ``key`` (a record's key): one
    node of a model alone, with the values it gets in the whole model."""
    return _build_at(node, key, ctx, ctx.device)


def _build_node(node: Node, parent_key: int, ctx: Context, device: torch.device) -> Any:
    """Build ``node`` under its parent's stream key."""
    if node.keyless and not ctx.node_devices:
        return _build_at(node, parent_key, ctx, device, False)
    return _build_at(node, mix(parent_key, node.component), ctx, device)


def _build_at(node: Node, key: int, ctx: Context, device: torch.device, own: bool = True) -> Any:
    """Build ``node`` under its stream key ``key`` (its parent's when not ``own``: a node that
    draws nothing and holds no block, built where its parent is)."""
    dev = ctx.node_devices.get(key, device) if ctx.node_devices else device
    if node.direct and dev is ctx.real_device:  # the hot path: scalars only, no meta
        args, kwargs = node.args, node.kwargs  # immutable scalars: safe to pass as they are
    else:
        args, kwargs = _arguments(node, key, ctx, dev)
        if node.partial:
            return functools.partial(node.target, *args, **kwargs)
    try:
        if node.seeded and ctx.seed_streams:
            ctx.streams.seed(dev, key)
        if dev is ctx.device:
            out = node.target(*args, **kwargs)
        else:
            with torch.device(dev):
                out = node.target(*args, **kwargs)
    except ModelFactoryError:
        raise
    except Exception as e:
        # The constructor refused the config's values (a negative size, a bad choice):
        # a config mistake. Running out of memory or an OS error is not.
        error = BuildError if isinstance(e, _NOT_ARGUMENT_ERRORS) else ArgumentError
        raise error(node.path, f"{node.target_name}(...) failed: {type(e).__name__}: {e}") from e
    if isinstance(out, nn.Module):
        # Built(...) without the Python-level __new__ of a NamedTuple: half the cost
        ctx.records.append(_new_tuple(Built, (out, node, key, own)))
    return out


def _arguments(node: Node, key: int, ctx: Context, dev: torch.device) -> tuple[list, dict]:
    """The arguments of ``node``'s call: blocks built, containers copied, OmegaConf
    containers for ``_convert_: none``, ``device`` arguments on ``meta`` kept there."""
    if node.dynamic:
        args = [
            _build_node(a, key, ctx, dev) if type(a) is Node else _build_value(a, key, ctx, dev)
            for a in node.args
        ]
        kwargs = node.kwargs  # none (a Sequential's): passed as it is, a call copies it
        if kwargs:
            kwargs = {
                name: _factory(v, key, ctx, dev)
                if name in node.factories
                else _build_value(v, key, ctx, dev)
                for name, v in kwargs.items()
            }
    elif node.mutable:
        args = [_fresh_copy(a) for a in node.args]
        kwargs = {k: _fresh_copy(v) for k, v in node.kwargs.items()}
    else:
        args, kwargs = node.args, node.kwargs
    if ctx.on_meta if dev is ctx.device else dev.type == "meta":
        args, kwargs = _kept_on_meta(node, args, kwargs)
    if node.convert:
        args, kwargs = _omegaconf_containers(args, kwargs)
    return args, kwargs


def _kept_on_meta(node: Node, args: list[Any], kwargs: dict[str, Any]) -> tuple[list, dict]:
    """A node built on ``meta`` stays there: a ``device`` argument of its own
    (``Linear(20000, 20000, device="cpu")`` in a checkpoint's config) must not make it
    allocate real memory before its shapes are checked."""
    if "device" in kwargs:
        kwargs = {**kwargs, "device": "meta"}
    if args:
        positional = signature_of(node.target).positional if node.target is not None else ()
        if "device" in positional[: len(args)]:
            args = list(args)
            args[positional.index("device")] = "meta"
    return args, kwargs


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
        return _fresh_copy(v.value)
    return v


def _omegaconf_containers(args: list[Any], kwargs: dict[str, Any]) -> tuple[list, dict]:
    """``_convert_: none``: list and dict arguments are passed as ``ListConfig`` /
    ``DictConfig`` (holding the built modules as they are), as Hydra passes them."""
    from omegaconf import OmegaConf

    def wrap(v: Any) -> Any:
        if isinstance(v, (list, dict)):
            return OmegaConf.create(v, flags={"allow_objects": True})
        return v

    return [wrap(a) for a in args], {k: wrap(v) for k, v in kwargs.items()}


def _fresh_copy(v: Any) -> Any:
    """A private copy of a container value, so a target that mutates it cannot alter the spec."""
    if type(v) is list:
        return [_fresh_copy(x) for x in v]
    if type(v) is dict:
        return {k: _fresh_copy(x) for k, x in v.items()}
    return v


_FILLS = frozenset(
    (
        *RANDOM_FILLS,
        torch.Tensor.fill_,
        torch.Tensor.zero_,
        torch.Tensor.erfinv_,
        torch.Tensor.clamp_,
    )
)


class SkipInit(TorchFunctionMode):
    """Construct without initializing: ``torch.nn.init`` functions and in-place value fills
    of ``meta`` tensors do nothing; with ``everywhere``, ``torch.nn.init`` functions and
    random fills of any tensor do nothing (a skeleton built on the CPU, whose values all
    come from a file).

    A skeleton on ``meta`` holds no values, so its init is pure cost: the first random fill
    on ``meta`` alone imports ``torch._dynamo`` (about 1.5 s). Modes are per thread, so this
    affects nothing outside the build that enters it.
    """

    def __init__(self, everywhere: bool = False) -> None:
        super().__init__()
        self.everywhere = everywhere

    def __torch_function__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        kwargs = kwargs or {}
        first = args[0] if args else kwargs.get("tensor")
        if isinstance(first, torch.Tensor):
            init = getattr(func, "__module__", None) == "torch.nn.init"
            if first.is_meta and (init or func in _FILLS):
                return first
            if self.everywhere and (init or func in RANDOM_FILLS):
                return first
        return func(*args, **kwargs)


_SIZED = frozenset(
    (torch.empty, torch.zeros, torch.ones, torch.rand, torch.randn, torch.full, torch.empty_strided)
)
_MADE = frozenset((torch.tensor, torch.as_tensor, torch.arange, torch.eye, torch.linspace))


class Allocations(TorchFunctionMode):
    """Refuse, before it is made, the tensor that takes what factory functions (``torch.empty``,
    ``zeros``, ``full``...) have made past ``limit`` bytes: a bound on what a constructor
    allocates (one that reads values runs on the CPU, not on ``meta``).

    Raises:
        BuildError: naming ``path`` and the bound.
    """

    def __init__(self, limit: int, path: str = ROOT) -> None:
        super().__init__()
        self.limit, self.path, self.used = limit, path, 0

    def __torch_function__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        kwargs = kwargs or {}
        if func in _SIZED and str(kwargs.get("device", "")) != "meta":
            self._add(_nbytes(func, args, kwargs))
        out = func(*args, **kwargs)
        if func in _MADE and isinstance(out, torch.Tensor) and not out.is_meta:
            self._add(out.numel() * out.element_size())
        return out

    def _add(self, nbytes: int) -> None:
        self.used += nbytes
        if self.used > self.limit:
            raise BuildError(
                self.path,
                f"building it on the CPU (its constructors cannot run on meta) would allocate "
                f"more than {self.limit:,} bytes, more than its stored tensors justify",
            )


def _nbytes(func: Any, args: tuple, kwargs: dict[str, Any]) -> int:
    """The bytes a sized factory call asks for (``torch.empty(3, 4)``, ``zeros((3, 4))``)."""
    size: Any = kwargs.get("size", args[0] if args else ())
    if func not in (torch.full, torch.empty_strided) and args and isinstance(args[0], int):
        size = args
    if not isinstance(size, (tuple, list, torch.Size)):
        size = (size,)
    try:
        n = math.prod(int(s) for s in size)
    except (TypeError, ValueError):
        return 0
    return n * (kwargs.get("dtype") or torch.get_default_dtype()).itemsize
