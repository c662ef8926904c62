"""Materialize lazy layers from stored tensor shapes, with no forward pass.

A saved model has no lazy layers left (``build`` with ``input_shape`` turns them
into their eager twins), so its tensors give every lazy layer's input size:
``LazyLinear(256)`` whose stored weight is 256 x 20 saw 20 features. Each lazy
layer of PyTorch's own kinds is initialized from a probe input of that size on
``meta`` and becomes its eager class, exactly as after a first forward. Other
lazy layers are left to PyTorch's ``load_state_dict`` hook, which materializes
them from the incoming tensors.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import nn
from torch.nn.modules.batchnorm import _LazyNormBase
from torch.nn.modules.conv import _LazyConvXdMixin
from torch.nn.modules.lazy import LazyModuleMixin

__all__ = ["materialize_lazy"]


def materialize_lazy(model: nn.Module, shapes: Mapping[str, Sequence[int]]) -> nn.Module:
    """Give each uninitialized lazy layer the input size its stored tensors imply (in place)."""
    for name, module in model.named_modules():
        if not isinstance(module, LazyModuleMixin) or not module.has_uninitialized_params():
            continue
        probe = _probe(module, f"{name}." if name else "", shapes)
        if probe is not None:
            with torch.no_grad():
                module._infer_parameters(module, (probe,))
    return model


def _probe(
    module: nn.Module, prefix: str, shapes: Mapping[str, Sequence[int]]
) -> torch.Tensor | None:
    """A ``meta`` input whose channel/feature size matches the stored tensors, or ``None``."""
    weight = shapes.get(prefix + "weight")
    if isinstance(module, nn.LazyLinear) and weight is not None and len(weight) == 2:
        return torch.empty(1, weight[1], device="meta")
    if isinstance(module, _LazyConvXdMixin) and weight is not None and len(weight) >= 3:
        channels = weight[0] if module.transposed else weight[1] * module.groups
        spatial = [1] * module._get_num_spatial_dims()
        return torch.empty(1, channels, *spatial, device="meta")
    if isinstance(module, _LazyNormBase):
        size = weight if weight is not None else shapes.get(prefix + "running_mean")
        if size is not None and len(size) == 1:
            return torch.empty(1, size[0], device="meta")
    return None
