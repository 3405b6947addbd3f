"""Model configuration: one frozen dataclass, depth presets as data, validation with clear errors.

The presets table is the single source of truth for the paper's layouts and parameter counts
(PAPER.md section 3); tests and the summary command read the counts from here.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Literal

AttentionLearning = Literal["arl", "nal", "none"]
MaskStructure = Literal["hourglass", "local_conv", "local_conv_matched"]
Normalization = Literal["mixed", "channel", "spatial"]
AttentionBlock = Literal["soft_mask", "se", "cbam", "eca"]
Family = Literal["cifar", "imagenet"]

ATTENTION_LEARNING = ("arl", "nal", "none")
MASK_STRUCTURES = ("hourglass", "local_conv", "local_conv_matched")
NORMALIZATIONS = ("mixed", "channel", "spatial")
ATTENTION_BLOCKS = ("soft_mask", "se", "cbam", "eca")
FAMILIES = ("cifar", "imagenet")
NUM_CLASSES = {"cifar10": 10, "cifar100": 100}  # the CIFAR data sets and their class counts
DEFAULT_DATASET = "cifar10"


@dataclass(frozen=True)
class Preset:
    """One row of the paper's network tables."""

    modules: tuple[int, int, int]  # attention modules per stage (m)
    p: int = 1  # pre-/post-processing residual units per module
    t: int = 2  # trunk residual units per module
    r: int = 1  # residual units between adjacent pooling levels in the mask
    paper_params: float | None = None  # millions, as printed in the paper (rounded to 0.1M)


# PAPER.md section 3. CIFAR trunk depth is 36m + 20 with p=1, t=2.
PRESETS: dict[tuple[str, int], Preset] = {
    ("cifar", 56): Preset((1, 1, 1)),
    ("cifar", 92): Preset((2, 2, 2), paper_params=1.9),
    ("cifar", 128): Preset((3, 3, 3)),
    ("cifar", 164): Preset((4, 4, 4)),
    ("cifar", 236): Preset((6, 6, 6), paper_params=5.1),
    # 8.6M in the paper; no straightforward reading of the text reproduces it (see README).
    ("cifar", 452): Preset((6, 6, 6), p=2, t=4, r=3, paper_params=8.6),
    ("imagenet", 56): Preset((1, 1, 1), paper_params=31.9),
    ("imagenet", 92): Preset((1, 2, 3), paper_params=51.3),
}
# The paper's no-attention baseline of the same trunk (attention_learning="none").
PAPER_RESNET_PARAMS: dict[tuple[str, int], float] = {("cifar", 164): 1.7}


def _allowed(name: str, value: object, allowed: tuple) -> None:
    if value not in allowed:
        raise ValueError(f"{name}={value!r} is not supported; allowed values: {', '.join(map(repr, allowed))}.")


@dataclass(frozen=True)
class ModelConfig:
    """A Residual Attention Network, every switch of the paper.

    Mask settings (``mask_structure``, ``normalization``, ``r``) are ignored when
    ``attention_learning="none"`` (that network is the plain pre-activation ResNet trunk) and when
    ``attention_block`` is a gate block (se, cbam, eca) instead of the paper's soft mask.
    """

    depth: int = 56  # CIFAR: 56, 92, 128, 164, 236, 452; ImageNet: 56, 92
    attention_learning: AttentionLearning = "arl"  # arl: H=(1+M)*T (Eq. 3); nal: H=M*T (Eq. 1)
    mask_structure: MaskStructure = "hourglass"  # bottom-up top-down; three local units; one (FLOP-matched)
    normalization: Normalization = "mixed"  # f1 sigmoid, f2 channel L2, f3 spatial standardise+sigmoid
    attention_block: AttentionBlock = "soft_mask"  # the paper's soft mask, or timm's se / cbam / eca gate
    family: Family = "cifar"  # input family: cifar (32x32) or imagenet (224x224)
    num_classes: int = 10
    width: float = 1.0  # channel multiplier; 1.0 = the paper's widths
    p: int | None = None  # None = the depth preset's value
    t: int | None = None
    r: int | None = None
    preset: Preset = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        _allowed("family", self.family, FAMILIES)
        _allowed("attention_learning", self.attention_learning, ATTENTION_LEARNING)
        _allowed("mask_structure", self.mask_structure, MASK_STRUCTURES)
        _allowed("normalization", self.normalization, NORMALIZATIONS)
        _allowed("attention_block", self.attention_block, ATTENTION_BLOCKS)
        depths = tuple(d for f, d in PRESETS if f == self.family)
        if (self.family, self.depth) not in PRESETS:
            raise ValueError(
                f"depth={self.depth!r} has no {self.family} layout; allowed depths for {self.family}: "
                f"{', '.join(map(str, depths))}."
            )
        if isinstance(self.num_classes, bool) or not isinstance(self.num_classes, int) or self.num_classes < 2:
            raise ValueError(f"num_classes={self.num_classes!r} must be an integer >= 2.")
        if not isinstance(self.width, (int, float)) or not 0 < self.width <= 8:
            raise ValueError(f"width={self.width!r} must be a number in (0, 8]; 1.0 gives the paper's widths.")
        for name, low in (("p", 0), ("t", 1), ("r", 1)):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or value < low):
                raise ValueError(f"{name}={value!r} must be an integer >= {low} (or None for the preset's value).")
        object.__setattr__(self, "preset", PRESETS[(self.family, self.depth)])

    @property
    def modules_per_stage(self) -> tuple[int, int, int]:
        return self.preset.modules

    @property
    def units(self) -> tuple[int, int, int]:
        """(p, t, r) with the preset's values filled in."""
        pre = self.preset
        return (
            pre.p if self.p is None else self.p,
            pre.t if self.t is None else self.t,
            pre.r if self.r is None else self.r,
        )

    @property
    def name(self) -> str:
        """The paper's name: Attention-92, or ResNet-164 for the no-attention trunk."""
        prefix = "ResNet" if self.attention_learning == "none" else "Attention"
        return f"{prefix}-{self.depth}"

    @property
    def paper_params(self) -> float | None:
        """The paper's parameter count in millions, where this exact configuration has one."""
        paper_classes = 10 if self.family == "cifar" else 1000
        if self.width != 1.0 or self.num_classes != paper_classes or (self.p, self.t, self.r) != (None, None, None):
            return None
        if self.attention_learning == "none":
            return PAPER_RESNET_PARAMS.get((self.family, self.depth))
        return self.preset.paper_params

    def to_dict(self) -> dict:
        d = asdict(self)
        d.pop("preset")
        return d
