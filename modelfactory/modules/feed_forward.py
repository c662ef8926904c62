"""Feed-forward blocks: the gated MLP of Llama (SwiGLU) and its GELU sibling (GeGLU)."""

from __future__ import annotations

import torch
from torch import nn

from ..blocks import build_options

__all__ = ["GatedMLP"]


@build_options(draws=False)  # holds built submodules only; they are seeded on their own
class GatedMLP(nn.Module):
    """``down_proj(activation(gate_proj(x)) * up_proj(x))``.

    SwiGLU with ``activation: torch.nn.SiLU`` (Llama, Mistral), GeGLU with
    ``torch.nn.GELU`` (Gemma uses its tanh approximation).

    Args:
        gate_proj: ``d_model -> d_ff``, through the activation.
        up_proj: ``d_model -> d_ff``, the linear half.
        down_proj: ``d_ff -> d_model``.
        activation: applied to the gate (default ``nn.SiLU()``: SwiGLU).
    """

    def __init__(
        self,
        gate_proj: nn.Module,
        up_proj: nn.Module,
        down_proj: nn.Module,
        activation: nn.Module | None = None,
    ) -> None:
        super().__init__()
        for name, m in (("gate_proj", gate_proj), ("up_proj", up_proj), ("down_proj", down_proj)):
            if not isinstance(m, nn.Module):
                raise TypeError(f"{name} must be an nn.Module, got {type(m).__name__}")
        gate, up = getattr(gate_proj, "out_features", None), getattr(up_proj, "out_features", None)
        if gate is not None and up is not None and gate != up:
            raise ValueError(f"gate_proj gives {gate} features and up_proj {up}; they must agree")
        self.gate_proj, self.up_proj, self.down_proj = gate_proj, up_proj, down_proj
        self.activation = activation if activation is not None else nn.SiLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(self.activation(self.gate_proj(x)) * self.up_proj(x))
