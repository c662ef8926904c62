"""Shape operations between blocks: transpose, select a token, pool the tokens."""

from __future__ import annotations

import torch
from torch import nn

from ..blocks import build_options

__all__ = ["MeanPool", "SelectToken", "Transpose"]


@build_options(draws=False)
class Transpose(nn.Module):
    """``x.transpose(dim0, dim1)``: tokens and channels swap places (``(B, T, D) <->
    (B, D, T)`` for a ``Conv1d`` over a sequence)."""

    def __init__(self, dim0: int, dim1: int) -> None:
        super().__init__()
        self.dim0, self.dim1 = dim0, dim1

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.transpose(self.dim0, self.dim1)

    def extra_repr(self) -> str:
        return f"dim0={self.dim0}, dim1={self.dim1}"


@build_options(draws=False)
class SelectToken(nn.Module):
    """One token of each sequence: ``x.select(dim, index)`` (ViT's and BERT's class token is
    ``index: 0``; a decoder's last token ``index: -1``)."""

    def __init__(self, index: int = 0, dim: int = 1) -> None:
        super().__init__()
        self.index, self.dim = index, dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.select(self.dim, self.index)

    def extra_repr(self) -> str:
        return f"index={self.index}, dim={self.dim}"


@build_options(draws=False)
class MeanPool(nn.Module):
    """The mean over the tokens (``dim``), counting only real tokens when the keyword input
    ``attention_mask`` ``(B, T)`` marks padding with zeros (sentence embeddings from BERT)."""

    def __init__(self, dim: int = 1) -> None:
        super().__init__()
        self.dim = dim

    def forward(self, x: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        if attention_mask is None:
            return x.mean(dim=self.dim)
        if self.dim % x.dim() != 1 or attention_mask.shape != x.shape[:2]:
            raise ValueError(
                f"attention_mask {list(attention_mask.shape)} must be (batch, tokens) of x "
                f"{list(x.shape)}, pooled over dim 1"
            )
        weights = attention_mask.to(x.dtype).unsqueeze(-1)
        return (x * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1)

    def extra_repr(self) -> str:
        return f"dim={self.dim}"
