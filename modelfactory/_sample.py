"""Running a model on its seeded sample input, with failures traced to config paths.

Used while building (dry runs and materializing runs of lazy layers) and after
(the app's checksum): a failure names the config path of the innermost block that
was running, so a shape that does not fit reads ``model.layers.2: ...``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from . import device as devices
from ._config import BuildConfig
from ._construct import ROOT
from ._record import record_of
from ._seeding import sample_generator
from .errors import BuildError, ModelFactoryError

__all__ = ["run_sample", "sample_input", "traced"]


def sample_input(bc: BuildConfig, device: torch.device) -> torch.Tensor:
    """A deterministic sample of ``input_shape`` on ``device``.

    Integer ``input_dtype``s (token ids) give zeros; floating ones give U(0, 1) values in
    the model's own dtype (``device.dtype``), so a bfloat16 model gets a bfloat16 sample.
    """
    dtype = devices.parse_dtype(bc.input_dtype, "input_dtype")
    if dtype.is_floating_point:
        dtype = devices.parse_dtype(bc.dtype, "device.dtype")
    shape = tuple(bc.input_shape or ())
    if device.type == "meta":
        return torch.empty(shape, dtype=dtype, device=device)
    if dtype.is_floating_point:
        x = torch.rand(shape, generator=sample_generator(bc.seed))
        return x.to(device=device, dtype=dtype)
    return torch.zeros(shape, dtype=dtype, device=device)


def traced(model: nn.Module, x: torch.Tensor, paths: Mapping[int, str], what: str) -> Any:
    """``model(x)`` under ``no_grad``; a failure names the path of the innermost failing block."""
    stack: list[str] = []
    handles = []

    def enter(mod: nn.Module, _args: Any) -> None:
        stack.append(paths[id(mod)])

    def leave(_mod: nn.Module, _args: Any, _out: Any) -> None:
        stack.pop()  # returns None: a forward hook's return value would replace the output

    for m in model.modules():
        if id(m) in paths:
            handles.append(m.register_forward_pre_hook(enter))
            handles.append(m.register_forward_hook(leave))
    try:
        with torch.no_grad():
            return model(x)
    except ModelFactoryError:
        raise
    except Exception as e:
        raise BuildError(
            stack[-1] if stack else ROOT,
            f"{what} with input_shape {list(x.shape)} failed: {type(e).__name__}: {e}",
        ) from e
    finally:
        for h in handles:
            h.remove()


def run_sample(model: nn.Module, x: torch.Tensor, what: str = "the sample forward pass") -> Any:
    """``model(x)`` in ``eval`` mode (mode restored after) under ``no_grad``.

    Raises:
        BuildError: naming the config path of the innermost block that failed (for models
            modelfactory built or loaded), else its module name.
    """
    record = record_of(model)
    built = record.paths if record is not None else {}
    paths = {
        id(m): built.get(id(m)) or f"module {n or '<root>'!r} ({type(m).__name__})"
        for n, m in model.named_modules()
    }
    was_training = model.training
    model.eval()  # a materializing or sample run must not move BatchNorm's running stats
    try:
        return traced(model, x, paths, what)
    finally:
        model.train(was_training)
