"""Importable user code for the tests (``tests.user_blocks.*``): what a user's package holds."""

from __future__ import annotations

import itertools
from collections.abc import Callable

import torch
from torch import nn

from modelfactory.blocks import build_options


def noisy_(tensor: torch.Tensor, std: float = 1.0) -> torch.Tensor:
    """An init function that takes no generator: it draws from the default one."""
    with torch.no_grad():
        return tensor.normal_(0.0, std)


class LazyHead(nn.Module):
    """A user block that makes a lazy layer inside its own constructor."""

    def __init__(self, out_features: int) -> None:
        super().__init__()
        self.fc = nn.LazyLinear(out_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x)


class Flexible(nn.Module):
    """A block that takes ``**kwargs`` besides its one required argument."""

    def __init__(self, width: int, **options: object) -> None:
        super().__init__()
        self.width, self.options = width, options


@build_options(factories=("layer",), stream_ignore=("depth",), draws=False)
class Tower(nn.Sequential):
    """The README's example of a block that receives a factory."""

    def __init__(self, depth: int, layer: Callable[[int], nn.Module]) -> None:
        super().__init__(*(layer(i) for i in range(depth)))


def make_mlp(sizes: list[int]) -> nn.Module:
    """A function (not a class) that returns a module: Linear layers with ReLUs between."""
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(itertools.pairwise(sizes)):
        layers += [nn.ReLU()] if i else []
        layers.append(nn.Linear(a, b))
    return nn.Sequential(*layers)


class FromFactory(nn.Module):
    """A block that receives a partial (``_partial_: true``) and calls it once per width."""

    def __init__(self, make: Callable[..., nn.Module], widths: list[int]) -> None:
        super().__init__()
        self.layers = nn.ModuleList(make(out_features=w) for w in widths)


class Deferred(nn.Module):
    """A block that takes its child built, or unbuilt (``_recursive_: false``) and then
    builds it itself."""

    def __init__(self, spec: object) -> None:
        super().__init__()
        import modelfactory as mf

        self.kind = type(spec).__name__
        self.inner = spec if isinstance(spec, nn.Module) else mf.build(spec)


def twice(layer: nn.Module) -> nn.Module:
    """One module used at two positions (D2L's shared layer): ``net[0] is net[2]``."""
    return nn.Sequential(layer, nn.ReLU(), layer)


@build_options(draws=False)
class Gain(nn.Module):
    """A block whose constructor draws nothing but which holds a parameter (ones): init
    rules give it values from its stream key."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.gain = nn.Parameter(torch.ones(width))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.gain
