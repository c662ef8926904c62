"""Multi-head attention over ``(batch, tokens, features)``, on PyTorch's fused kernels."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..blocks import build_options

__all__ = ["MultiHeadAttention", "attention_mask_for"]


# SDPA groups key/value heads itself from torch 2.5 on (enable_gqa); before, they are repeated.
_SDPA_GROUPS = tuple(int(p) for p in torch.__version__.split(".")[:2]) >= (2, 5)


def _features(module: nn.Module | None) -> int | None:
    """Output features of a projection, when it says (``nn.Linear``, ``nn.LazyLinear``)."""
    out = getattr(module, "out_features", None)
    return out if isinstance(out, int) else None


@build_options(draws=False)  # holds built submodules only; they are seeded on their own
class MultiHeadAttention(nn.Module):
    """Multi-head self-attention, computed with ``F.scaled_dot_product_attention``.

    Give either ``q_proj``, ``k_proj`` and ``v_proj`` (Llama, BERT, ViT) or one fused
    ``qkv_proj`` whose output is the queries, keys and values side by side (GPT-2). Heads
    are ``n_head`` for queries and ``n_kv_head`` for keys and values (grouped-query
    attention: each key/value head serves ``n_head / n_kv_head`` query heads, as Llama's
    ``repeat_kv`` does). ``pos_embeddings`` (a :class:`~modelfactory.modules.position.
    RotaryEmbedding`) rotates queries and keys of shape ``(B, heads, T, head_dim)``.

    Args:
        n_head: query heads; the query projection's width is ``n_head * head_dim``.
        o_proj: the output projection, ``n_head * head_dim -> d_model``.
        q_proj: the query projection (with ``k_proj`` and ``v_proj``).
        k_proj: the key projection, ``d_model -> n_kv_head * head_dim``.
        v_proj: the value projection, ``d_model -> n_kv_head * head_dim``.
        qkv_proj: instead of the three: one projection to ``(n_head + 2 * n_kv_head) *
            head_dim`` features, in the order queries, keys, values.
        n_kv_head: key/value heads (default ``n_head``); ``n_head`` must be a multiple.
        pos_embeddings: applied to queries and keys after the projections, or ``None``.
        causal: each token attends to itself and the tokens before it only.
        dropout: dropout on the attention probabilities, while training.

    Forward: ``x`` of shape ``(B, T, d_model)`` and optionally ``attention_mask``: a
    ``(B, T)`` padding mask (nonzero or ``True`` for a real token, ``0`` for padding, as
    Hugging Face tokenizers give it), or a mask broadcastable to ``(B, heads, T, T)``
    (``True`` = may attend, or a float added to the scores). It combines with ``causal``.
    A query that may attend to no key at all (padding in a causal row) attends to every
    key instead, so that no ``NaN`` comes out; its output is padding anyway.
    """

    def __init__(
        self,
        n_head: int,
        o_proj: nn.Module,
        q_proj: nn.Module | None = None,
        k_proj: nn.Module | None = None,
        v_proj: nn.Module | None = None,
        qkv_proj: nn.Module | None = None,
        n_kv_head: int | None = None,
        pos_embeddings: nn.Module | None = None,
        causal: bool = False,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        n_kv_head = n_head if n_kv_head is None else n_kv_head
        if n_head < 1 or n_kv_head < 1 or n_head % n_kv_head:
            raise ValueError(
                f"n_head={n_head} must be a positive multiple of n_kv_head={n_kv_head}"
            )
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout}")
        separate = (q_proj, k_proj, v_proj)
        if (qkv_proj is None) == all(p is None for p in separate) or (
            qkv_proj is None and any(p is None for p in separate)
        ):
            raise ValueError("give q_proj, k_proj and v_proj, or qkv_proj alone")
        self.n_head, self.n_kv_head = n_head, n_kv_head
        self.causal, self.dropout = bool(causal), float(dropout)
        if qkv_proj is not None:
            self.qkv_proj = qkv_proj
        else:
            self.q_proj, self.k_proj, self.v_proj = q_proj, k_proj, v_proj
        self.o_proj = o_proj
        self.pos_embeddings = pos_embeddings
        self.head_dim = self._head_dim(qkv_proj, q_proj, k_proj, v_proj)

    def _head_dim(
        self, qkv: nn.Module | None, q: nn.Module | None, *kv: nn.Module | None
    ) -> int | None:
        """The head size, from the projections' widths when they give them (else ``None``,
        and the forward pass splits what it gets); widths that do not fit are errors."""
        heads = self.n_head + 2 * self.n_kv_head
        if qkv is not None:
            width = _features(qkv)
            if width is not None and width % heads:
                raise ValueError(
                    f"qkv_proj gives {width} features, not a multiple of n_head + 2 * "
                    f"n_kv_head = {heads}"
                )
            return None if width is None else width // heads
        width = _features(q)
        if width is not None and width % self.n_head:
            raise ValueError(
                f"q_proj gives {width} features, not a multiple of n_head={self.n_head}"
            )
        head_dim = None if width is None else width // self.n_head
        for name, proj in zip(("k_proj", "v_proj"), kv, strict=True):
            got = _features(proj)
            if head_dim is not None and got is not None and got != self.n_kv_head * head_dim:
                raise ValueError(
                    f"{name} gives {got} features; n_kv_head={self.n_kv_head} heads of "
                    f"{head_dim} (q_proj's {width} / n_head={self.n_head}) need "
                    f"{self.n_kv_head * head_dim}"
                )
        return head_dim

    def forward(self, x: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        if x.dim() != 3:
            raise ValueError(f"expected (batch, tokens, features), got shape {list(x.shape)}")
        b, t, _ = x.shape
        q, k, v = self._project(x)
        q = q.view(b, t, self.n_head, -1).transpose(1, 2)
        k = k.view(b, t, self.n_kv_head, -1).transpose(1, 2)
        v = v.view(b, t, self.n_kv_head, -1).transpose(1, 2)
        if self.pos_embeddings is not None:
            q, k = self.pos_embeddings(q), self.pos_embeddings(k)
        mask = attention_mask_for(attention_mask, self.causal, t, x.device)
        grouped = {}
        if self.n_kv_head != self.n_head:
            if _SDPA_GROUPS:
                grouped = {"enable_gqa": True}
            else:  # each key/value head serves n_head / n_kv_head query heads, in order
                group = self.n_head // self.n_kv_head
                k, v = k.repeat_interleave(group, dim=1), v.repeat_interleave(group, dim=1)
        y = F.scaled_dot_product_attention(
            q,
            k,
            v,
            attn_mask=mask,
            dropout_p=self.dropout if self.training else 0.0,
            is_causal=self.causal and mask is None,
            **grouped,
        )
        return self.o_proj(y.transpose(1, 2).reshape(b, t, -1))

    def _project(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        if not hasattr(self, "qkv_proj"):
            return self.q_proj(x), self.k_proj(x), self.v_proj(x)
        qkv = self.qkv_proj(x)
        head_dim = qkv.shape[-1] // (self.n_head + 2 * self.n_kv_head)
        kv = self.n_kv_head * head_dim
        return qkv.split([qkv.shape[-1] - 2 * kv, kv, kv], dim=-1)

    def extra_repr(self) -> str:
        kv = f", n_kv_head={self.n_kv_head}" if self.n_kv_head != self.n_head else ""
        return f"n_head={self.n_head}{kv}, head_dim={self.head_dim}, causal={self.causal}"


def attention_mask_for(
    mask: torch.Tensor | None, causal: bool, length: int, device: torch.device
) -> torch.Tensor | None:
    """The ``attn_mask`` for ``F.scaled_dot_product_attention``: ``None`` when ``causal``
    alone says it (the kernel's own ``is_causal`` is faster), else a boolean (``True`` =
    may attend) or float mask broadcastable to ``(B, heads, length, length)``."""
    if mask is None:
        return None
    if mask.dim() == 2:  # (B, T) padding: which keys are real tokens
        mask = mask.to(device=device, dtype=torch.bool)[:, None, None, :]
    elif not mask.is_floating_point():
        mask = mask.to(device=device, dtype=torch.bool)
    if causal:
        allowed = torch.ones(length, length, dtype=torch.bool, device=device).tril()
        mask = (
            mask & allowed if mask.dtype == torch.bool else mask.masked_fill(~allowed, -torch.inf)
        )
    if mask.dtype == torch.bool:
        mask = mask | ~mask.any(dim=-1, keepdim=True)
    return mask
