"""The pre-activation bottleneck residual unit (RU) that every part of the network is made of."""

from __future__ import annotations

import torch
from torch import nn


def bn_relu_conv(in_channels: int, out_channels: int, kernel_size: int, stride: int = 1) -> nn.Sequential:
    """BN-ReLU-conv, the pre-activation ordering; no conv bias (a BN always follows or precedes)."""
    return nn.Sequential(
        nn.BatchNorm2d(in_channels),
        nn.ReLU(inplace=True),
        nn.Conv2d(in_channels, out_channels, kernel_size, stride, padding=kernel_size // 2, bias=False),
    )


class ResidualUnit(nn.Module):
    """Pre-activation bottleneck unit: BN-ReLU-1x1(C/4)-BN-ReLU-3x3(C/4)-BN-ReLU-1x1(C) plus shortcut.

    The shortcut is the identity, or a 1x1 projection of the pre-activated input where the
    channel count or the stride changes (He et al., "Identity Mappings in Deep Residual
    Networks"). The stride sits on the 3x3 conv, as in the paper's Caffe files.
    """

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1) -> None:
        super().__init__()
        mid = out_channels // 4
        self.bn1 = nn.BatchNorm2d(in_channels)
        self.relu1 = nn.ReLU(inplace=True)
        self.conv1 = nn.Conv2d(in_channels, mid, 1, bias=False)
        self.conv2 = bn_relu_conv(mid, mid, 3, stride)
        self.conv3 = bn_relu_conv(mid, out_channels, 1)
        self.downsample = None
        if stride != 1 or in_channels != out_channels:
            self.downsample = nn.Conv2d(in_channels, out_channels, 1, stride, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        preact = self.relu1(self.bn1(x))
        identity = x if self.downsample is None else self.downsample(preact)
        return self.conv3(self.conv2(self.conv1(preact))) + identity


def residual_units(channels: int, count: int) -> nn.Sequential:
    """``count`` shape-preserving residual units in sequence (an empty Sequential is the identity)."""
    return nn.Sequential(*(ResidualUnit(channels, channels) for _ in range(count)))
