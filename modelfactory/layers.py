"""The custom layers of D2L's "Builders' Guide", and the few a GPT-style model needs.

Each is an ordinary ``nn.Module`` usable as a ``_target_``.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "CausalSelfAttention",
    "CenteredLayer",
    "FixedHiddenMLP",
    "MyLinear",
    "MySequential",
    "TokenPositionEmbedding",
]


class CenteredLayer(nn.Module):
    """A layer without parameters: ``x - x.mean()``."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x - x.mean()


class MyLinear(nn.Module):
    """A hand-made dense layer: ``relu(x @ weight + bias)`` with its own ``nn.Parameter``s.

    Args:
        in_units: input features.
        units: output features.
    """

    def __init__(self, in_units: int, units: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(in_units, units))
        self.bias = nn.Parameter(torch.randn(units))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(x @ self.weight + self.bias)

    def extra_repr(self) -> str:
        return f"in_units={self.weight.shape[0]}, units={self.weight.shape[1]}"


class MySequential(nn.Module):
    """D2L's hand-made sequential container: children kept in the module's own registry.

    Args:
        layers: modules, in order (a list; or a mapping whose keys become child names).
    """

    def __init__(self, layers: list[nn.Module] | Mapping[str, nn.Module]) -> None:
        super().__init__()
        items = layers.items() if isinstance(layers, Mapping) else enumerate(layers)
        for name, module in items:
            # add_module, not a Python list: a list would hide the parameters from
            # parameters() and state_dict().
            self.add_module(str(name), module)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for module in self.children():
            x = module(x)
        return x


class FixedHiddenMLP(nn.Module):
    """D2L's fixed-hidden MLP: a constant random weight, a reused layer and a while-loop.

    The constant ``rand_weight`` (20 x 20, not trained) is a *persistent* buffer, so it is
    saved in ``state_dict()`` and a restored model reproduces it.
    """

    def __init__(self, features: int = 20) -> None:
        super().__init__()
        self.register_buffer("rand_weight", torch.rand(features, features), persistent=True)
        self.linear = nn.Linear(features, features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.linear(x)
        x = F.relu(x @ self.rand_weight + 1)
        x = self.linear(x)  # the same layer again: its parameters are shared by both uses
        while x.abs().sum() > 1:  # control flow on values: cannot run on the meta device
            x /= 2
        return x.sum()


class TokenPositionEmbedding(nn.Module):
    """Token embedding plus a learned position embedding (GPT-2 style).

    Args:
        vocab_size: number of token ids.
        d_model: embedding width.
        max_len: longest sequence.
        dropout: dropout after the sum.
    """

    def __init__(self, vocab_size: int, d_model: int, max_len: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.tok = nn.Embedding(vocab_size, d_model)
        self.pos = nn.Embedding(max_len, d_model)
        self.drop = nn.Dropout(dropout)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        t = idx.shape[-1]
        if t > self.pos.num_embeddings:
            raise ValueError(f"sequence length {t} exceeds max_len={self.pos.num_embeddings}")
        pos = torch.arange(t, device=idx.device)
        return self.drop(self.tok(idx) + self.pos(pos))


class CausalSelfAttention(nn.Module):
    """Multi-head causal self-attention with one fused ``qkv`` projection.

    Args:
        d_model: model width (divisible by ``n_heads``).
        n_heads: attention heads.
        dropout: attention and output dropout.
        bias: whether the projections have biases.
    """

    def __init__(self, d_model: int, n_heads: int, dropout: float = 0.0, bias: bool = True) -> None:
        super().__init__()
        if d_model % n_heads:
            raise ValueError(f"d_model={d_model} is not divisible by n_heads={n_heads}")
        self.n_heads, self.dropout = n_heads, dropout
        self.qkv = nn.Linear(d_model, 3 * d_model, bias=bias)
        self.proj = nn.Linear(d_model, d_model, bias=bias)
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape
        q, k, v = self.qkv(x).split(d, dim=-1)
        q, k, v = (z.view(b, t, self.n_heads, d // self.n_heads).transpose(1, 2) for z in (q, k, v))
        p = self.dropout if self.training else 0.0
        y = F.scaled_dot_product_attention(q, k, v, dropout_p=p, is_causal=True)
        return self.drop(self.proj(y.transpose(1, 2).reshape(b, t, d)))
