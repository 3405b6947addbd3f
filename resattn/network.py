"""The Residual Attention Network for CIFAR (32x32) and ImageNet (224x224) inputs.

CIFAR layout (open in the paper; this is the reconstruction whose parameter counts match it,
PAPER.md section 3): conv3x3(16) -> three stages at 32/16/8 pixels with 64/128/256 channels,
each ``RU, m attention modules, RU`` -> BN-ReLU -> global average pool -> FC. The soft masks pool
3 / 2 / 1 times in stages 1 / 2 / 3 (the smallest map is 4x4), as in the ImageNet layout.

ImageNet layout (the authors' Caffe files): conv7x7/2(64)-BN-ReLU-maxpool 3x3/2 -> stages at
56/28/14 pixels with 256/512/1024 channels, each ``RU, m modules`` -> 3 RUs at 7x7 with 2048 ->
BN-ReLU -> average pool -> FC.
"""

from __future__ import annotations

import torch
from torch import nn

from resattn.attention import AttentionModule
from resattn.config import ModelConfig
from resattn.gates import UNIT_GATES
from resattn.layers import ResidualUnit

# Max-pools of the hourglass mask in stages 1/2/3 (PAPER.md section 1), for both families.
MASK_POOLS = (3, 2, 1)
CIFAR_STEM, CIFAR_WIDTHS = 16, (64, 128, 256)
IMAGENET_STEM, IMAGENET_WIDTHS, IMAGENET_LAST = 64, (256, 512, 1024), 2048


def scaled(channels: int, width: float) -> int:
    """Channels times the width multiplier, rounded to a multiple of 4 (the bottleneck is C/4)."""
    return max(4, int(round(channels * width / 4)) * 4)


class ResidualAttentionNetwork(nn.Module):
    """Stem, stages of residual units and attention modules, classifier. Built from a ModelConfig.

    ``unit_gate`` puts a gate block on the branch of every residual unit of the trunk path (the
    stages' units and the attention modules' pre, trunk and post units; not the soft masks' units),
    before the identity add, as SE, CBAM and ECA are placed in their papers. With
    ``attention_learning="none"`` the network is then exactly that block's published network on
    this trunk: ``unit_gate="se"`` is SE-ResNet (Hu et al. 2018), a pre-activation bottleneck ResNet
    of the same depth and widths with an SE block in each of its (depth - 2) / 3 units (ResNet-164
    with ``se``: SE-ResNet-164); ``cbam`` the ResNet + CBAM of Woo et al. 2018; ``eca`` ECA-Net
    (Wang et al. 2020). The gates are timm's with its defaults (:mod:`resattn.gates`), whose hidden
    sizes are not the papers' reduction 16 at every width.
    """

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        w = config.width
        gate = UNIT_GATES[config.unit_gate]
        if config.family == "cifar":
            in_ch = scaled(CIFAR_STEM, w)
            self.stem = nn.Conv2d(3, in_ch, 3, padding=1, bias=False)
            strides, widths, trailing = (1, 2, 2), CIFAR_WIDTHS, 1
        else:
            in_ch = scaled(IMAGENET_STEM, w)
            self.stem = nn.Sequential(
                nn.Conv2d(3, in_ch, 7, stride=2, padding=3, bias=False),
                nn.BatchNorm2d(in_ch),
                nn.ReLU(inplace=True),
                nn.MaxPool2d(3, stride=2, padding=1),
            )
            strides, widths, trailing = (1, 2, 2), IMAGENET_WIDTHS, 0

        stages = []
        for stride, channels, modules, pools in zip(strides, widths, config.modules_per_stage, MASK_POOLS):
            out_ch = scaled(channels, w)
            units = [ResidualUnit(in_ch, out_ch, stride, gate)]
            units += [AttentionModule(config, out_ch, pools) for _ in range(modules)]
            units += [ResidualUnit(out_ch, out_ch, gate=gate) for _ in range(trailing)]
            stages.append(nn.Sequential(*units))
            in_ch = out_ch
        if config.family == "imagenet":
            out_ch = scaled(IMAGENET_LAST, w)
            stages.append(
                nn.Sequential(
                    ResidualUnit(in_ch, out_ch, 2, gate),
                    ResidualUnit(out_ch, out_ch, gate=gate),
                    ResidualUnit(out_ch, out_ch, gate=gate),
                )
            )
            in_ch = out_ch
        self.stages = nn.ModuleList(stages)
        self.final = nn.Sequential(nn.BatchNorm2d(in_ch), nn.ReLU(inplace=True), nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.fc = nn.Linear(in_ch, config.num_classes)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """He initialisation of every convolution (He et al. 2015, as the paper states)."""
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def attention_modules(self) -> list[tuple[str, AttentionModule]]:
        """(name, module) of every attention module, in forward order."""
        return [(n, m) for n, m in self.named_modules() if isinstance(m, AttentionModule)]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)  # (N, C0, H, W)
        for stage in self.stages:
            x = stage(x)
        return self.fc(self.final(x))  # (N, num_classes)


def build_model(config: ModelConfig | None = None, **overrides) -> ResidualAttentionNetwork:
    """Build the network for ``config`` (or ``ModelConfig(**overrides)``)."""
    if config is None:
        config = ModelConfig(**overrides)
    elif overrides:
        raise TypeError("pass either a ModelConfig or keyword settings, not both.")
    return ResidualAttentionNetwork(config)
