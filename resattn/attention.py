"""The attention module of Wang et al. (CVPR 2017): trunk, soft mask branch, and the ARL / NAL rules.

PAPER.md section 1 is the spec. One factory per ablation switch, keyed by the switch's values
(declared once, in :mod:`resattn.config`): the soft mask's structure (``MASK_BODIES``), its
normalisation (``NORMALIZERS``), the attention learning rule (``LEARNING_RULES``) and, beyond the
paper, the block that computes the attention (``GATE_BLOCKS``: the paper's soft mask, or the gate
of timm's SE, CBAM or ECA block used as the mask). The modules take the network's
:class:`~resattn.config.ModelConfig` whole, validated when it was made.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from resattn.config import MODEL_SETTINGS, ModelConfig
from resattn.gates import GATES, UNIT_GATES
from resattn.layers import ResidualUnit, bn_relu_conv, residual_units

# f2 divides by max(||x_i||_2, CHANNEL_EPS) (torch.nn.functional.normalize): unit norm wherever the
# logits are not all ~0 at a position, and no division by zero where they are.
CHANNEL_EPS = 1e-6
# f3 standardises with the biased (population) variance plus SPATIAL_EPS, as BatchNorm does.
SPATIAL_EPS = 1e-5


def mixed_attention(logits: torch.Tensor) -> torch.Tensor:
    """f1 (mixed attention): a sigmoid for every channel and position, so M is in (0, 1)."""
    return torch.sigmoid(logits)


def channel_attention(logits: torch.Tensor) -> torch.Tensor:
    """f2 (channel attention): L2 normalisation across channels at each spatial position i.

    No sigmoid: M can be negative, so (1 + M) lies in [0, 2].
    """
    return F.normalize(logits, p=2.0, dim=1, eps=CHANNEL_EPS)


def spatial_attention(logits: torch.Tensor) -> torch.Tensor:
    """f3 (spatial attention): sigmoid((x - mean_c) / std_c), mean and std over each channel's map.

    Statistics are per sample and per channel (instance normalisation without affine parameters):
    std_c = sqrt(biased variance + SPATIAL_EPS).
    """
    return torch.sigmoid(F.instance_norm(logits, eps=SPATIAL_EPS))


NORMALIZERS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "mixed": mixed_attention,
    "channel": channel_attention,
    "spatial": spatial_attention,
}


def normalize_mask(logits: torch.Tensor, kind: str) -> torch.Tensor:
    """Apply the paper's attention normalisation f1 / f2 / f3 (section 3.3) to (N, C, H, W) logits.

    Args:
        logits: the soft mask head's output, shape (N, C, H, W).
        kind: ``"mixed"`` (f1), ``"channel"`` (f2) or ``"spatial"`` (f3).

    Raises:
        SettingError: an unknown ``kind``, in one line naming the allowed ones.
    """
    MODEL_SETTINGS["normalization"].check("normalization", kind)
    if logits.dim() != 4:
        raise ValueError(f"normalize_mask expects an (N, C, H, W) tensor, got shape {tuple(logits.shape)}.")
    return NORMALIZERS[kind](logits)


def upsample_to(x: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """Bilinear upsampling to the runtime spatial size of ``like``.

    align_corners=True reproduces Caffe's Interp layer used by the authors; sizes are taken at
    run time, so odd input sizes work.
    """
    return F.interpolate(x, size=like.shape[-2:], mode="bilinear", align_corners=True)


def max_pool(x: torch.Tensor) -> torch.Tensor:
    """The mask's down-sampling step: max-pool 3x3, stride 2, pad 1."""
    return F.max_pool2d(x, kernel_size=3, stride=2, padding=1)


class HourglassMask(nn.Module):
    """Bottom-up top-down (encoder-decoder) body of the soft mask branch.

    ``pools`` max-pools, r units after each; 2r units at the lowest resolution; on the way up,
    upsample to the matching skip tensor, add that skip unit's output (nothing else), then r units;
    the last upsample returns to the input's size. One skip unit per intermediate level.
    """

    def __init__(self, channels: int, pools: int, r: int) -> None:
        super().__init__()
        if pools < 1:
            raise ValueError(f"an hourglass mask needs at least one pooling level, got pools={pools}.")
        self.down = nn.ModuleList(residual_units(channels, r) for _ in range(pools - 1))
        self.skips = nn.ModuleList(ResidualUnit(channels, channels) for _ in range(pools - 1))
        self.bottom = residual_units(channels, 2 * r)
        self.up = nn.ModuleList(residual_units(channels, r) for _ in range(pools - 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skips = []
        out = x
        for down, skip in zip(self.down, self.skips):
            out = down(max_pool(out))
            skips.append(skip(out))
        out = self.bottom(max_pool(out))
        for up, skip in zip(self.up, reversed(skips)):
            out = up(upsample_to(out, skip) + skip)
        return upsample_to(out, x)


class LocalConvMask(nn.Module):
    """Local-convolution body (paper Table 4): residual units at full resolution, no down- or up-sampling.

    ``units=3`` is PAPER.md's literal reading (``local_conv``): its body costs 3.8x the multiply-adds
    of the hourglass body, its branch (body + the shared head) 1.83x. The paper's local-convolution
    mask has "the same number of FLOPs" as the hourglass; how they were matched is open (PAPER.md
    section 1, "Soft mask branch, local convolutions"). ``local_conv_matched`` keeps one
    full-resolution unit, the count whose cost is closest to the hourglass body's (which, pooled,
    costs about 0.97 / 0.88 / 0.5 full-resolution units in stages 1 / 2 / 3): with r = 1 (CIFAR 56
    to 236) its body costs 1.03x / 1.14x / 2.00x the hourglass body per stage (+28%), its branch
    +8.2% of the hourglass branch's multiply-adds (tested within 10%) with 0.61x its parameters.
    Attention-452 (r = 3) triples the hourglass's units, not this one's: its branch costs -25%
    (:func:`resattn.summary.mask_branch_cost`).
    """

    def __init__(self, channels: int, pools: int, r: int, units: int = 3) -> None:  # HourglassMask's signature
        super().__init__()
        self.units = residual_units(channels, units)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.units(x)


MASK_BODIES: dict[str, Callable[..., nn.Module]] = {
    "hourglass": HourglassMask,
    "local_conv": LocalConvMask,  # three units, as PAPER.md reads Table 4 literally
    "local_conv_matched": functools.partial(LocalConvMask, units=1),  # about the hourglass branch's compute
}


class SoftMaskBranch(nn.Module):
    """M(a): a mask body (``config.mask_structure``, pooling ``pools`` times, ``r`` units a level),
    the head BN-ReLU-1x1-BN-ReLU-1x1, then the normalisation f (``config.normalization``)."""

    def __init__(self, config: ModelConfig, channels: int, pools: int) -> None:
        super().__init__()
        self.normalization = config.normalization
        _, _, r = config.units
        self.body = MASK_BODIES[config.mask_structure](channels, pools, r)
        self.head = nn.Sequential(bn_relu_conv(channels, channels, 1), bn_relu_conv(channels, channels, 1))
        self.normalize = NORMALIZERS[config.normalization]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.normalize(self.head(self.body(x)))


def attention_residual_learning(mask: torch.Tensor, trunk: torch.Tensor) -> torch.Tensor:
    """ARL, Eq. 3: H = (1 + M) * T."""
    return (1 + mask) * trunk


def naive_attention_learning(mask: torch.Tensor, trunk: torch.Tensor) -> torch.Tensor:
    """NAL, Eq. 1: H = M * T."""
    return mask * trunk


LEARNING_RULES: dict[str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None] = {
    "arl": attention_residual_learning,
    "nal": naive_attention_learning,
    "none": None,  # no mask: H = T, the plain residual trunk (the ResNet baseline)
}


def gated_residual_learning(gated: torch.Tensor, trunk: torch.Tensor) -> torch.Tensor:
    """ARL (Eq. 3) with a gate block that returns M * T: H = (1 + M) * T = T + M * T."""
    return trunk + gated


def gated_naive_learning(gated: torch.Tensor, trunk: torch.Tensor) -> torch.Tensor:
    """NAL (Eq. 1) with a gate block that returns M * T: H = M * T."""
    return gated


GATED_RULES = {"arl": gated_residual_learning, "nal": gated_naive_learning}


# What computes an attention module's mask M: the paper's soft mask branch ("soft_mask", shaped by
# ``mask_structure`` and ``normalization``), or a timm gate block (:mod:`resattn.gates`) used as the
# ARL / NAL mask. A gate block reads the module's trunk output T and returns g(T) * T, so M = g(T)
# and H = T + g(T) * T (ARL) or g(T) * T (NAL), once per attention module. That is not SE, CBAM or
# ECA as their papers place them (in every residual unit, on the branch before the identity add:
# ``unit_gate``, :class:`resattn.layers.ResidualUnit`).
GATE_BLOCKS: dict[str, Callable[[int], nn.Module] | None] = {"soft_mask": None, **GATES}


class AttentionModule(nn.Module):
    """Attention Module (p, t, r), paper section 3, of ``channels`` channels whose soft mask pools
    ``pools`` times; every switch and (p, t, r) are the network's ``config``'s.

    a = RU^p(x); T = RU^t(a); M = mask(a); H = (1 + M) * T (ARL) or M * T (NAL); out = RU^p(H).
    With ``attention_learning="none"`` there is no mask branch and H = T. With a gate block
    (``attention_block`` se / cbam / eca, :data:`GATE_BLOCKS`) in place of the soft mask, the mask
    is the block's gate computed from the trunk output, M = g(T): H = T + g(T) * T (ARL, Eq. 3) or
    g(T) * T (NAL, Eq. 1), one gate per module (not the blocks' published placement). With
    ``unit_gate`` (se / cbam / eca), every unit of the trunk path (pre, trunk, post) has that gate
    on its branch (:class:`resattn.layers.ResidualUnit`); the soft mask branch's units do not.
    """

    def __init__(self, config: ModelConfig, channels: int, pools: int = 1) -> None:
        super().__init__()
        p, t, _ = config.units
        self.learning_rule = LEARNING_RULES[config.attention_learning]
        make_block = GATE_BLOCKS[config.attention_block]
        gate = UNIT_GATES[config.unit_gate]
        self.pre = residual_units(channels, p, gate)
        self.trunk = residual_units(channels, t, gate)
        self.mask = self.block = None
        if self.learning_rule is not None and make_block is None:
            self.mask = SoftMaskBranch(config, channels, pools)
        elif self.learning_rule is not None:
            self.block = make_block(channels)
            self.gated_rule = GATED_RULES[config.attention_learning]
        self.post = residual_units(channels, p, gate)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = self.pre(x)
        trunk = self.trunk(a)
        if self.mask is not None:
            h = self.learning_rule(self.mask(a), trunk)
        elif self.block is not None:
            h = self.gated_rule(self.block(trunk), trunk)
        else:
            h = trunk
        return self.post(h)
