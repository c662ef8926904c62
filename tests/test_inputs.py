"""Keyword inputs through composition (``model(x, attention_mask=m)``): each block gets the
keywords it takes, through every composition block (``modelfactory/_inputs.py``)."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from torch import nn

import modelfactory as mf
from modelfactory.blocks import Parallel, Repeat, Residual, Sequential, route
from modelfactory.configs import compose


class Masked(nn.Module):
    """Takes ``mask`` by naming it in forward."""

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        return x if mask is None else x * mask


class Counts(nn.Module):
    """Takes every keyword (``**kwargs``)."""

    def forward(self, x: torch.Tensor, **kwargs: Any) -> torch.Tensor:
        return x + len(kwargs)


class MyContainer(nn.Module):
    """A user's container: declares what its children take and passes it on."""

    def __init__(self, *children: nn.Module) -> None:
        super().__init__()
        self.inner = nn.ModuleList(children)

    def keyword_inputs(self) -> frozenset[str]:
        return frozenset({"mask"})

    def forward(self, x: torch.Tensor, **inputs: Any) -> torch.Tensor:
        for child in self.inner:
            x = child(x, **route(child, inputs))
        return x


def test_each_block_gets_the_keywords_it_takes_through_every_composition_block() -> None:
    model = Sequential(
        {
            "first": nn.Identity(),  # takes none: gets x alone
            "stack": Repeat(2, lambda i: Residual(Masked())),
            "branches": Parallel([Masked(), nn.Identity()], combine="sum"),
            "mine": MyContainer(Masked(), nn.Identity()),
        }
    )
    x, zeros = torch.ones(3), torch.zeros(3)
    assert torch.equal(model(x), torch.full((3,), 8.0))  # (1+1)(1+1) -> 4, +4 -> 8, *1
    assert torch.equal(model(x, mask=zeros), zeros)  # 1 -> 1 -> 0 + 1 -> 1 * 0
    assert torch.equal(Sequential([Counts(), Masked()])(x, mask=zeros, other=1), zeros)


def test_a_keyword_no_block_takes_is_a_type_error_naming_what_they_take() -> None:
    model = Sequential([nn.Identity(), Repeat(2, lambda i: Masked())])
    with pytest.raises(
        TypeError, match=r"got keyword input\(s\) maks that no block inside takes"
    ) as e:
        model(torch.ones(2), maks=torch.ones(2))
    assert "(they take: mask)" in str(e.value)
    with pytest.raises(TypeError, match=r"\(they take: none\)"):
        Residual(nn.Linear(2, 2))(torch.ones(2), mask=1)


def test_bert_takes_a_mask_and_segments_from_the_call() -> None:
    model = mf.build(compose(["model=bert", "n_layer=1"])).eval()
    ids = torch.randint(1, 256, (2, 8), generator=torch.Generator().manual_seed(0))
    mask = torch.tensor([[1] * 8, [1] * 5 + [0] * 3])
    with torch.no_grad():
        padded = model(ids, attention_mask=mask, token_type_ids=torch.zeros_like(ids))
        alone = model(ids[1:, :5])
    torch.testing.assert_close(padded[1:, :5], alone, atol=1e-5, rtol=0)
    assert not torch.allclose(model(ids)[1, :5], alone, atol=1e-3)
