"""Importable targets for the persistence tests (``tests.io_targets.*``)."""

from __future__ import annotations

import torch
from torch import nn


class MaskedLinear(nn.Module):
    """A linear layer times a random mask kept in a *non-persistent* buffer."""

    def __init__(self, features: int = 4) -> None:
        super().__init__()
        self.linear = nn.Linear(features, features)
        self.register_buffer("mask", torch.rand(features), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(x) * self.mask


def make_linear(features: int = 4) -> nn.Module:
    """A factory function (not a class): a checkpoint target only under a trusted prefix."""
    return nn.Linear(features, features)
