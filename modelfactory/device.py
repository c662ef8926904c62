"""Devices and dtypes: D2L's ``try_gpu`` / ``try_all_gpus`` from config, and ``device.map``."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from .errors import DeviceError

__all__ = ["available_devices", "parse_dtype", "place_hooks", "resolve_device", "try_all_gpus"]

_DTYPES = {
    "float32": torch.float32,
    "float": torch.float32,
    "float64": torch.float64,
    "double": torch.float64,
    "float16": torch.float16,
    "half": torch.float16,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
    "fp16": torch.float16,
    "fp32": torch.float32,
    "long": torch.long,
    "int64": torch.long,
    "int32": torch.int32,
    "int": torch.int32,
}
_SPEC = re.compile(r"^(cpu|meta|cuda|auto)(?::(\d+))?$")


def parse_dtype(name: str | torch.dtype, path: str = "device.dtype") -> torch.dtype:
    """``"bfloat16"`` (or ``"torch.bfloat16"``, ``"bf16"``) -> ``torch.bfloat16``."""
    if isinstance(name, torch.dtype):
        return name
    key = str(name).removeprefix("torch.")
    if key not in _DTYPES:
        raise DeviceError([(path, f"unknown dtype {name!r}; expected one of {', '.join(_DTYPES)}")])
    return _DTYPES[key]


def available_devices() -> list[str]:
    """The devices that exist here, for error messages."""
    return ["cpu", "meta"] + [f"cuda:{i}" for i in range(torch.cuda.device_count())]


def try_all_gpus() -> list[torch.device]:
    """All GPUs, or ``[cpu]`` when there is none (D2L's ``try_all_gpus``)."""
    n = torch.cuda.device_count() if torch.cuda.is_available() else 0
    return [torch.device(f"cuda:{i}") for i in range(n)] or [torch.device("cpu")]


def resolve_device(spec: str | torch.device, path: str = "device.device") -> torch.device:
    """``cpu``, ``cuda``, ``cuda:N``, ``meta``, ``auto`` (first GPU else CPU), ``auto:N``.

    An explicit device that does not exist is an error naming the devices that do.
    """
    if isinstance(spec, torch.device):
        spec = str(spec)
    m = _SPEC.match(str(spec).strip())
    if not m:
        raise DeviceError(
            [(path, f"unknown device {spec!r}; expected cpu, cuda, cuda:N, meta, auto or auto:N")]
        )
    kind, index = m.group(1), m.group(2)
    n_gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if kind == "auto":
        i = int(index or 0)
        return torch.device(f"cuda:{i}") if i < n_gpus else torch.device("cpu")
    if kind == "cuda":
        i = int(index or 0)
        if i >= n_gpus:
            have = ", ".join(available_devices())
            raise DeviceError(
                [
                    (
                        path,
                        f"device {spec!r} does not exist here ({n_gpus} GPU(s)); available: {have}"
                        "; use 'auto' to fall back to the CPU",
                    )
                ]
            )
        return torch.device(f"cuda:{i}")
    if index is not None:
        raise DeviceError([(path, f"{kind} takes no index, got {spec!r}")])
    return torch.device(kind)


def parse_map(spec: Any, path: str = "device.map") -> dict[str, torch.device] | str | None:
    """``device.map``: ``None``, ``"balanced"`` or a mapping module-path-prefix -> device."""
    if spec is None or spec == {}:
        return None
    if spec == "balanced":
        return "balanced"
    if not isinstance(spec, Mapping):
        raise DeviceError(
            [(path, f"expected 'balanced' or a mapping path prefix -> device, got {spec!r}")]
        )
    problems, out = [], {}
    for prefix, dev in spec.items():
        try:
            out[str(prefix)] = resolve_device(dev, f"{path}.{prefix}")
        except DeviceError as e:
            problems += e.problems
    if problems:
        raise DeviceError(problems)
    return out


def device_for(name: str, mapping: Mapping[str, torch.device]) -> torch.device | None:
    """The device of the longest prefix in ``mapping`` that covers module ``name``."""
    best, best_len = None, -1
    for prefix, dev in mapping.items():
        if (prefix == "" or name == prefix or name.startswith(prefix + ".")) and len(
            prefix
        ) > best_len:
            best, best_len = dev, len(prefix)
    return best


def balanced_map(model: nn.Module, devices: list[torch.device]) -> dict[str, torch.device]:
    """Spread the copies of the outermost ``Repeat`` blocks over ``devices`` in contiguous runs.

    Everything else starts on the first device; top-level children after the last repeated
    stage (a final norm, a head) join the last device, so activations cross each boundary once.
    """
    from .blocks import Repeat

    if len(devices) <= 1:
        return {"": devices[0]} if devices else {}
    mapping: dict[str, torch.device] = {"": devices[0]}
    repeats: list[str] = []
    for name, module in model.named_modules():
        if isinstance(module, Repeat) and not any(name.startswith(r + ".") for r in repeats):
            repeats.append(name)
            copies = [c for c, _ in module.named_children()]
            for j, c in enumerate(copies):
                mapping[f"{name}.{c}" if name else c] = devices[j * len(devices) // len(copies)]
    if repeats:
        top = repeats[-1].split(".")[0]
        names = [n for n, _ in model.named_children()]
        if top in names:
            for n in names[names.index(top) + 1 :]:
                mapping[n] = devices[-1]
    return mapping


def place_hooks(model: nn.Module, mapping: Mapping[str, torch.device]) -> list[Any]:
    """Move activations onto each mapped block's device when they enter it.

    One transfer per boundary: a pre-hook on each mapped submodule moves its tensor inputs
    only when they are elsewhere.
    """
    handles = []
    for prefix, dev in mapping.items():
        module = model.get_submodule(prefix) if prefix else model

        def hook(_mod: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any], dev=dev):
            return _to(args, dev), _to(kwargs, dev)

        handles.append(module.register_forward_pre_hook(hook, with_kwargs=True))
    return handles


def _to(v: Any, dev: torch.device) -> Any:
    if isinstance(v, torch.Tensor):
        return v if v.device == dev else v.to(dev, non_blocking=True)
    if isinstance(v, tuple):
        return tuple(_to(x, dev) for x in v)
    if isinstance(v, list):
        return [_to(x, dev) for x in v]
    if isinstance(v, dict):
        return {k: _to(x, dev) for k, x in v.items()}
    return v
