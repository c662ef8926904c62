"""ResNet's residual blocks."""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["BasicBlock"]


class BasicBlock(nn.Module):
    """ResNet-18/34's block: two 3x3 convolutions with batch norm, around a shortcut.

    ``relu(bn2(conv2(relu(bn1(conv1(x))))) + shortcut(x))``, where the shortcut is ``x``
    itself, or ``downsample`` (a 1x1 convolution with ``stride`` and a batch norm) when the
    block changes the width or the resolution. Submodules are named as torchvision's and
    timm's (``conv1``, ``bn1``, ``conv2``, ``bn2``, ``downsample.0``, ``downsample.1``).

    Args:
        in_channels: input channels.
        out_channels: output channels.
        stride: the first convolution's (and the shortcut's) stride; 2 halves the resolution.
    """

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.relu = nn.ReLU()
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.downsample = None
        if stride != 1 or in_channels != out_channels:
            self.downsample = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, 1, stride, bias=False),
                nn.BatchNorm2d(out_channels),
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        return self.relu(self.bn2(self.conv2(out)) + shortcut)
