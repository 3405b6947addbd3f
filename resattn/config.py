"""Model configuration: one frozen dataclass, depth presets as data, validation with clear errors.

The presets table is the single source of truth for the paper's layouts and parameter counts
(PAPER.md section 3); tests and the summary command read the counts from here.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields
from typing import Any, Literal, get_args

from resattn.ranges import BOOL, NONE, Choice, Items, Number, Setting, SettingError, Text, check_values, setting

# Each switch's allowed values, written once: the CLI validates with these types, MODEL_SETTINGS
# declares their ranges from them (get_args), and the factories that implement them are keyed by
# them (resattn.attention, resattn.gates; a test holds the keys equal to these values).
AttentionLearning = Literal["arl", "nal", "none"]
MaskStructure = Literal["hourglass", "local_conv", "local_conv_matched"]
Normalization = Literal["mixed", "channel", "spatial"]
Gate = Literal["se", "cbam", "eca"]  # timm's gate blocks (resattn.gates)
AttentionBlock = Literal["soft_mask", Gate]
UnitGate = Literal["none", Gate]
Family = Literal["cifar", "imagenet"]
CompileMode = Literal["default", "reduce-overhead", "max-autotune"]  # torch.compile's modes
NUM_CLASSES = {"cifar10": 10, "cifar100": 100}  # the CIFAR data sets and their class counts
DATASETS = (*NUM_CLASSES, "synthetic", "imagefolder")
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
    # 8.6M in the paper; no straightforward reading of the text reproduces it (see docs/model.md).
    ("cifar", 452): Preset((6, 6, 6), p=2, t=4, r=3, paper_params=8.6),
    ("imagenet", 56): Preset((1, 1, 1), paper_params=31.9),
    ("imagenet", 92): Preset((1, 2, 3), paper_params=51.3),
}
# The paper's no-attention baseline of the same trunk (attention_learning="none").
PAPER_RESNET_PARAMS: dict[tuple[str, int], float] = {("cifar", 164): 1.7}


@dataclass(frozen=True)
class ModelConfig:
    """A Residual Attention Network, every switch of the paper.

    Mask settings (``mask_structure``, ``normalization``, ``r``) are ignored when
    ``attention_learning="none"`` (that network is the plain pre-activation ResNet trunk) and when
    ``attention_block`` is a gate block (se, cbam, eca) instead of the paper's soft mask;
    ``attention_block`` is ignored under ``attention_learning="none"`` too. ``unit_gate`` is not:
    ``attention_learning="none", unit_gate="se"`` is SE-ResNet of the trunk's depth.
    """

    depth: int = 56  # CIFAR: 56, 92, 128, 164, 236, 452; ImageNet: 56, 92
    attention_learning: AttentionLearning = "arl"  # arl: H=(1+M)*T (Eq. 3); nal: H=M*T (Eq. 1)
    mask_structure: MaskStructure = "hourglass"  # bottom-up top-down; three local units; one (~ hourglass MACs)
    normalization: Normalization = "mixed"  # f1 sigmoid, f2 channel L2, f3 spatial standardise+sigmoid
    attention_block: AttentionBlock = "soft_mask"  # the paper's soft mask, or a se / cbam / eca gate as the mask
    unit_gate: UnitGate = "none"  # a se / cbam / eca gate on every trunk unit's branch, as their papers place it
    family: Family = "cifar"  # input family: cifar (32x32) or imagenet (224x224)
    num_classes: int = 10
    width: float = 1.0  # channel multiplier; 1.0 = the paper's widths
    p: int | None = None  # None = the depth preset's value
    t: int | None = None
    r: int | None = None
    preset: Preset = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        check_network({f.name: getattr(self, f.name) for f in fields(self) if f.init})
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
        """The paper's name: Attention-92, or ResNet-164 for the no-attention trunk; with a gate in
        every unit, the gate's name first, as its paper names it (SE-ResNet-56)."""
        prefix = "ResNet" if self.attention_learning == "none" else "Attention"
        gate = "" if self.unit_gate == "none" else f"{self.unit_gate.upper()}-"
        return f"{gate}{prefix}-{self.depth}"

    @property
    def paper_params(self) -> float | None:
        """The paper's parameter count in millions, where this exact configuration has one."""
        paper_classes = 10 if self.family == "cifar" else 1000
        if self.width != 1.0 or self.num_classes != paper_classes or (self.p, self.t, self.r) != (None, None, None):
            return None
        if self.unit_gate != "none" or (self.attention_learning != "none" and self.attention_block != "soft_mask"):
            return None  # a gate block: not the paper's network
        if self.attention_learning == "none":
            return PAPER_RESNET_PARAMS.get((self.family, self.depth))
        return self.preset.paper_params

    @classmethod
    def from_hparams(cls, hparams: Mapping[str, Any]) -> ModelConfig:
        """The network that a LightningModule's hyperparameters describe (the classifier's flat
        ``model.*`` settings, a checkpoint's ``hyper_parameters``, an export's ``model``): its
        fields among them, the training settings left out. A field they lack (a checkpoint of a
        version before it existed) takes its default."""
        return cls(**{f.name: hparams[f.name] for f in fields(cls) if f.init and f.name in hparams})

    def to_dict(self) -> dict:
        d = asdict(self)
        d.pop("preset")
        return d


def _integer(**bounds) -> Number:
    return Number(integer=True, **bounds)


def _choice(values) -> Setting:
    """One of a Literal type's values."""
    return setting(Choice(get_args(values)))


_FRACTION = Number(gt=0, lt=1)
# The declared range of every model.* setting: the network's (ModelConfig's fields) and the
# classifier's training settings (resattn.module.ResidualAttentionClassifier). One entry per
# argument of the classifier; a test fails when an argument has none.
MODEL_SETTINGS: dict[str, Setting] = {
    "depth": setting(Choice(tuple(sorted({d for _, d in PRESETS})))),  # which ones: by family, PRESETS
    "attention_learning": _choice(AttentionLearning),
    "mask_structure": _choice(MaskStructure),
    "normalization": _choice(Normalization),
    "attention_block": _choice(AttentionBlock),
    "unit_gate": _choice(UnitGate),
    "family": _choice(Family),
    "num_classes": setting(_integer(ge=2)),
    "width": setting(Number(gt=0, le=8)),  # 1.0: the paper's widths
    "p": setting(_integer(ge=0), NONE),  # None: the depth preset's value
    "t": setting(_integer(ge=1), NONE),
    "r": setting(_integer(ge=1), NONE),
    "lr": setting(Number(gt=0)),
    "momentum": setting(Number(ge=0, lt=1)),  # > 0 with nesterov (check_network)
    "weight_decay": setting(Number(ge=0)),
    "nesterov": setting(BOOL),
    "lr_milestones": setting(Items(_FRACTION, increasing=True, min_length=0)),
    "lr_gamma": setting(Number(gt=0, le=1)),
    "probes": setting(BOOL),
    "channels_last": setting(BOOL),
    "compile": setting(BOOL, Choice(get_args(CompileMode))),
}


def check_network(values: dict, prefix: str = "") -> None:
    """``values`` (model settings, e.g. ModelConfig's fields) within their declared ranges, and the
    combinations: a depth the family has a layout for; Nesterov momentum with a momentum above 0
    (torch's SGD refuses it only when training starts). ``prefix`` names the section (``model.``).

    Raises:
        SettingError: the first value or combination not allowed, in one line.
    """
    check_values(MODEL_SETTINGS, values, prefix)
    family, depth = values.get("family", ModelConfig.family), values.get("depth", ModelConfig.depth)
    if (family, depth) not in PRESETS:
        depths = ", ".join(str(d) for f, d in PRESETS if f == family)
        raise SettingError(
            f"{prefix}depth={depth!r} has no {family} layout; allowed depths for {prefix}family={family}: {depths}."
        )
    if values.get("nesterov", True) and values.get("momentum", 0.9) == 0:
        raise SettingError(
            f"{prefix}momentum=0 with {prefix}nesterov=True is not allowed; allowed: a momentum > 0, or "
            f"{prefix}nesterov=false."
        )


# The declared range of every data.* setting (the arguments of resattn.data.CIFARDataModule).
DATA_SETTINGS: dict[str, Setting] = {
    "dataset": setting(Choice(DATASETS)),
    "data_dir": setting(Text("a folder path")),
    "download": setting(BOOL),
    "batch_size": setting(_integer(ge=1)),
    "eval_batch_size": setting(_integer(ge=1)),
    "label_noise": setting(Number(ge=0, lt=1)),  # the noise level 1 - r
    "noise_seed": setting(_integer(ge=0)),
    "seed": setting(_integer(ge=0)),
    "train_size": setting(_integer(ge=1), NONE),  # None: the whole split; at most its size
    "test_size": setting(_integer(ge=1), NONE),
    "val_size": setting(_integer(ge=0)),  # 0: validate on the test split
    "synthetic_size": setting(Items(_integer(ge=1), length=2)),  # (train, test)
    "synthetic_classes": setting(_integer(ge=2)),
    "num_workers": setting(_integer(ge=0)),
}
