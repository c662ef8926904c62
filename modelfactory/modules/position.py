"""Position encodings applied inside attention: rotary embeddings (RoPE)."""

from __future__ import annotations

import torch
from torch import nn

from ..blocks import build_options

__all__ = ["RotaryEmbedding", "rotate_half"]


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    """``[x1, x2] -> [-x2, x1]`` over the last dimension's two halves."""
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


@build_options(draws=False)
class RotaryEmbedding(nn.Module):
    """Rotary position embeddings (RoPE), as Llama applies them to queries and keys.

    Position ``t`` rotates feature pairs ``(i, i + dim/2)`` by ``t * theta ** (-2i / dim)``.
    The angles are computed in float32 for the sequence at hand on every call (as Hugging
    Face's Llama does), so the module holds no buffer: it is the same on ``meta``, after
    ``to_empty`` and after a checkpoint load.

    Args:
        dim: features rotated, from the start of each head (even; the head size for full
            rotary, less for partial rotary as in GPT-NeoX).
        theta: the base of the angles (``rope_theta``: 10000 for Llama 2, 500000 for Llama 3).
        max_len: the longest sequence accepted, or ``None`` for no limit (Hugging Face's
            ``max_position_embeddings``; exported with the model's config).
    """

    def __init__(self, dim: int, theta: float = 10000.0, max_len: int | None = None) -> None:
        super().__init__()
        if dim <= 0 or dim % 2:
            raise ValueError(f"dim must be a positive even number, got {dim}")
        if theta <= 0:
            raise ValueError(f"theta must be positive, got {theta}")
        if max_len is not None and max_len <= 0:
            raise ValueError(f"max_len must be positive or null, got {max_len}")
        self.dim, self.theta, self.max_len = dim, float(theta), max_len

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Rotate ``x`` of shape ``(..., T, head_dim)``; position ``t`` is row ``t``."""
        t, head_dim = x.shape[-2], x.shape[-1]
        if self.max_len is not None and t > self.max_len:
            raise ValueError(f"sequence length {t} exceeds max_len={self.max_len}")
        if head_dim < self.dim:
            raise ValueError(f"heads of {head_dim} features are narrower than dim={self.dim}")
        cos, sin = self.angles(t, x.device)
        cos, sin = cos.to(x.dtype), sin.to(x.dtype)
        if head_dim == self.dim:
            return x * cos + rotate_half(x) * sin
        rot, rest = x[..., : self.dim], x[..., self.dim :]
        return torch.cat((rot * cos + rotate_half(rot) * sin, rest), dim=-1)

    def angles(self, length: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """``cos`` and ``sin`` of the angles, float32, shape ``(length, dim)``."""
        steps = torch.arange(0, self.dim, 2, dtype=torch.int64, device=device).float()
        inv_freq = 1.0 / (self.theta ** (steps / self.dim))
        positions = torch.arange(length, device=device, dtype=torch.float32)
        freqs = positions[:, None] * inv_freq[None, :]
        angles = torch.cat((freqs, freqs), dim=-1)
        return angles.cos(), angles.sin()

    def extra_repr(self) -> str:
        return f"dim={self.dim}, theta={self.theta:g}, max_len={self.max_len}"
