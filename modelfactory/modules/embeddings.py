"""Embeddings at the input of a model: tokens (+ positions + segments), image patches."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from ..blocks import build_options

__all__ = ["PatchEmbedding", "TokenEmbedding"]


@build_options(draws=False)  # holds built submodules only; they are seeded on their own
class TokenEmbedding(nn.Module):
    """Token embedding, plus learned positions and segments when given, then norm and dropout.

    ``norm(tok(ids) + seg(token_type_ids) + pos(0..T-1))``, dropped out: BERT's embeddings
    with all three, a GPT-2's with ``tok`` and ``pos``, Llama's with ``tok`` alone.

    Args:
        tok: the token table (an ``nn.Embedding``: ``vocab_size x d_model``).
        pos: learned absolute positions (an ``nn.Embedding``: ``max_len x d_model``).
        seg: segment (token type) embeddings: BERT's sentence A / sentence B.
        norm: applied to the sum (BERT's LayerNorm).
        dropout: dropout after the norm.

    Forward: token ids ``(B, T)`` and optionally ``token_type_ids`` ``(B, T)`` (zeros when
    not given, as in Hugging Face's BERT).
    """

    def __init__(
        self,
        tok: nn.Module,
        pos: nn.Module | None = None,
        seg: nn.Module | None = None,
        norm: nn.Module | None = None,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        if not isinstance(tok, nn.Module):
            raise TypeError(f"tok must be an nn.Module, got {type(tok).__name__}")
        self.tok, self.pos, self.seg, self.norm = tok, pos, seg, norm
        self.drop = nn.Dropout(dropout)

    def forward(
        self, input_ids: torch.Tensor, token_type_ids: torch.Tensor | None = None
    ) -> torch.Tensor:
        x = self.tok(input_ids)
        if self.seg is not None:
            types = token_type_ids if token_type_ids is not None else torch.zeros_like(input_ids)
            x = x + self.seg(types)
        elif token_type_ids is not None:
            raise ValueError("token_type_ids given, but this embedding has no segment table (seg)")
        if self.pos is not None:
            t = input_ids.shape[-1]
            limit = getattr(self.pos, "num_embeddings", None)
            if limit is not None and t > limit:
                raise ValueError(f"sequence length {t} exceeds the {limit} learned positions")
            x = x + self.pos(torch.arange(t, device=input_ids.device))
        if self.norm is not None:
            x = self.norm(x)
        return self.drop(x)


def _pair(value: int | Sequence[int], name: str) -> tuple[int, int]:
    pair = (value, value) if isinstance(value, int) else tuple(value)
    if len(pair) != 2 or not all(isinstance(v, int) and v > 0 for v in pair):
        raise ValueError(f"{name} must be a positive integer or a pair of them, got {value!r}")
    return pair  # type: ignore[return-value]


class PatchEmbedding(nn.Module):
    """Image patches as tokens, with a class token in front and learned positions (ViT).

    ``proj`` cuts the image into patches and projects each (a ``Conv2d`` with kernel and
    stride ``patch_size``); its ``(B, d_model, H/p, W/p)`` output becomes ``(B, patches,
    d_model)`` tokens. The class token and the position embeddings are parameters of this
    block, ``cls_token`` ``(1, 1, d_model)`` and ``pos_embed`` ``(1, tokens, d_model)``,
    drawn from a normal distribution truncated at 2 std, std 0.02 (as ViT's).

    Args:
        proj: the patch projection.
        image_size: the images' size, ``H`` or ``[H, W]``.
        patch_size: the patches' size, ``p`` or ``[p_h, p_w]``; it must divide the image.
        d_model: the token width (``proj``'s output channels).
        cls_token: put a learned class token in front of the patches.
        dropout: dropout after adding the positions.

    Forward: pixels ``(B, C, H, W)`` of exactly ``image_size``.
    """

    def __init__(
        self,
        proj: nn.Module,
        image_size: int | Sequence[int],
        patch_size: int | Sequence[int],
        d_model: int,
        cls_token: bool = True,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        (h, w), (ph, pw) = _pair(image_size, "image_size"), _pair(patch_size, "patch_size")
        if h % ph or w % pw:
            raise ValueError(
                f"patch_size {ph}x{pw} does not divide image_size {h}x{w} into whole patches"
            )
        out = getattr(proj, "out_channels", d_model)
        if out != d_model:
            raise ValueError(f"proj gives {out} channels, d_model is {d_model}")
        # As given (an int or a pair): what the exported config says.
        self.image_size = image_size if isinstance(image_size, int) else [h, w]
        self.patch_size = patch_size if isinstance(patch_size, int) else [ph, pw]
        self._hw = [h, w]
        self.n_patches = (h // ph) * (w // pw)
        self.proj = proj
        self.cls_token = nn.Parameter(torch.empty(1, 1, d_model)) if cls_token else None
        self.pos_embed = nn.Parameter(torch.empty(1, self.n_patches + int(cls_token), d_model))
        self.drop = nn.Dropout(dropout)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Class token and positions ~ N(0, 0.02), truncated at two standard deviations."""
        for p in (self.cls_token, self.pos_embed):
            if p is not None:
                nn.init.trunc_normal_(p, std=0.02, a=-0.04, b=0.04)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        if list(pixels.shape[-2:]) != self._hw:
            got = "x".join(map(str, pixels.shape[-2:]))
            raise ValueError(f"expected images of {self._hw[0]}x{self._hw[1]}, got {got}")
        x = self.proj(pixels)
        if x.dim() == 4:  # (B, D, H/p, W/p) -> (B, patches, D)
            x = x.flatten(2).transpose(1, 2)
        if x.shape[1] != self.n_patches:
            raise ValueError(
                f"proj gave {x.shape[1]} patches; image and patch size make {self.n_patches}"
            )
        if self.cls_token is not None:
            x = torch.cat((self.cls_token.expand(x.shape[0], -1, -1), x), dim=1)
        return self.drop(x + self.pos_embed)

    def extra_repr(self) -> str:
        h, w = self._hw
        return (
            f"image_size={h}x{w}, patches={self.n_patches}, cls_token={self.cls_token is not None}"
        )
