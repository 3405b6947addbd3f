"""The pre-activation bottleneck residual unit (RU) that every part of the network is made of."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

GateFactory = Callable[[int], nn.Module]  # channels -> a block returning x * g(x) (resattn.gates)


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

    With ``gate`` (a block returning ``F * g(F)``, :mod:`resattn.gates`), the gate multiplies the
    residual branch F(x) before the identity add: out = shortcut(x) + g(F(x)) * F(x), where SE
    (Hu et al. 2018, Fig. 3 "SE-ResNet module"), CBAM (Woo et al. 2018, Fig. 3) and ECA-Net
    (Wang et al. 2020) place their blocks. Here the branch ends with the last 1x1 conv (pre-activation:
    no BN after it), so the gate reads that conv's output.
    """

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1, gate: GateFactory | None = None) -> None:
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
        self.gate = None if gate is None else gate(out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        preact = self.relu1(self.bn1(x))
        identity = x if self.downsample is None else self.downsample(preact)
        branch = self.conv3(self.conv2(self.conv1(preact)))
        if self.gate is not None:
            branch = self.gate(branch)  # g(F) * F
        return branch + identity


def residual_units(channels: int, count: int, gate: GateFactory | None = None) -> nn.Sequential:
    """``count`` shape-preserving residual units in sequence (an empty Sequential is the identity),
    each with ``gate`` on its branch when given."""
    return nn.Sequential(*(ResidualUnit(channels, channels, gate=gate) for _ in range(count)))
