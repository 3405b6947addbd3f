"""What a study run may set: the declared range of every ``trainer.*`` setting (Lightning's Trainer
arguments; ``model.*`` and ``data.*`` are declared in :mod:`resattn.config`), and the checks of a
run's config against all of them (:func:`check_config`, :func:`check_runs`), before torch is loaded.

No torch here.
"""

from __future__ import annotations

import json

from resattn.config import DATA_SETTINGS, MODEL_SETTINGS, check_network
from resattn.ranges import (
    BOOL,
    NONE,
    Choice,
    ClassPath,
    Items,
    Number,
    Setting,
    SettingError,
    Text,
    check_values,
    markdown,
    setting,
)
from resattn.study.record import SECTIONS, RunSpec
from resattn.study.schema import PROFILE_FIELDS, STUDY_FIELDS, suggest

PRECISIONS = (64, 32, 16, "64", "32", "16", "bf16", "64-true", "32-true", "16-true", "16-mixed", "bf16-true")
PRECISIONS += ("bf16-mixed", "transformer-engine", "transformer-engine-float16")  # Lightning's list, as it spells them
_COUNT, _FRACTION_OR_COUNT = Number(integer=True, ge=0), Number(ge=0, le=1)
_TIME = Text("a time DD:HH:MM:SS", r"\d+:\d\d:\d\d:\d\d")
# The declared range of every trainer.* setting (the arguments of Lightning's Trainer; a test fails
# when Lightning adds one without an entry here). Where only Lightning can tell (a strategy's name,
# a class's arguments) the full parse checks what is left.
TRAINER_SETTINGS: dict[str, Setting] = {
    "accelerator": setting(Choice(("auto", "cpu", "gpu", "cuda", "mps", "tpu"))),
    "strategy": setting(Text("a strategy name (auto, ddp, ddp_spawn, fsdp, ...)"), ClassPath("a strategy")),
    "devices": setting(
        Number(integer=True, ge=1),
        Choice((-1, "auto")),
        Items(_COUNT),
        Text("device indices, e.g. '0,1'", r"\d+(,\d+)*,?"),
    ),
    "num_nodes": setting(Number(integer=True, ge=1)),
    "precision": setting(Choice(PRECISIONS), NONE),
    "logger": setting(BOOL, NONE, ClassPath("a logger")),
    "callbacks": setting(NONE, ClassPath("callbacks")),
    "fast_dev_run": setting(BOOL, Number(integer=True, ge=1)),
    "max_epochs": setting(Number(integer=True, ge=1), Choice((-1,)), NONE),  # -1: no limit
    "min_epochs": setting(_COUNT, NONE),
    "max_steps": setting(Number(integer=True, ge=1), Choice((-1,))),  # -1: no limit
    "min_steps": setting(_COUNT, NONE),
    "max_time": setting(_TIME, NONE),
    "limit_train_batches": setting(_FRACTION_OR_COUNT, _COUNT, NONE),
    "limit_val_batches": setting(_FRACTION_OR_COUNT, _COUNT, NONE),
    "limit_test_batches": setting(_FRACTION_OR_COUNT, _COUNT, NONE),
    "limit_predict_batches": setting(_FRACTION_OR_COUNT, _COUNT, NONE),
    "overfit_batches": setting(_FRACTION_OR_COUNT, _COUNT),
    "val_check_interval": setting(Number(gt=0, le=1), Number(integer=True, ge=1), _TIME, NONE),
    "check_val_every_n_epoch": setting(Number(integer=True, ge=1), NONE),
    "num_sanity_val_steps": setting(_COUNT, Choice((-1,)), NONE),  # -1: the whole validation set
    "log_every_n_steps": setting(Number(integer=True, ge=1), NONE),
    "enable_checkpointing": setting(BOOL, NONE),
    "enable_progress_bar": setting(BOOL, NONE),
    "enable_model_summary": setting(BOOL, NONE),
    "accumulate_grad_batches": setting(Number(integer=True, ge=1)),
    "gradient_clip_val": setting(Number(gt=0), NONE),
    "gradient_clip_algorithm": setting(Choice(("norm", "value")), NONE),
    "deterministic": setting(BOOL, Choice(("warn",)), NONE),
    "benchmark": setting(BOOL, NONE),
    "inference_mode": setting(BOOL),
    "use_distributed_sampler": setting(BOOL),
    "profiler": setting(Choice(("simple", "advanced", "pytorch", "xla")), ClassPath("a profiler"), NONE),
    "detect_anomaly": setting(BOOL),
    "barebones": setting(BOOL),
    "plugins": setting(Text("a plugin name"), ClassPath("plugins"), NONE),
    "sync_batchnorm": setting(BOOL),
    "reload_dataloaders_every_n_epochs": setting(_COUNT),
    "default_root_dir": setting(Text("a folder path"), NONE),
    "enable_autolog_hparams": setting(BOOL),
    "model_registry": setting(Text("a model registry name"), NONE),
}
# Every setting a study, a profile or --set may change, by section (the single-run CLI's names);
# seed_everything is set per run from its seed.
SETTINGS: dict[str, dict[str, Setting]] = {"model": MODEL_SETTINGS, "data": DATA_SETTINGS, "trainer": TRAINER_SETTINGS}
SEED_SETTING = setting(Number(integer=True, ge=0), BOOL, NONE)


def ranges_markdown() -> str:
    """Every declared range (settings, study YAML fields, profile fields) as markdown tables: the
    listing of docs/bad-input.md and ``python -m resattn settings``."""
    text = markdown(SETTINGS)
    for title, fields in (("study YAML field", STUDY_FIELDS), ("profile field", PROFILE_FIELDS)):
        text += f"\n| {title} | allowed |\n|---|---|\n" + "".join(f"| `{k}` | {v} |\n" for k, v in fields.items())
    return text


def check_config(config: dict) -> None:
    """A run's config (``{seed_everything, model: {...}, data: {...}, trainer: {...}}``) against the
    declared ranges, with no torch: an unknown setting (with a did-you-mean), a value outside its
    range or a model combination the config rejects.

    Raises:
        SettingError: the first, in one line naming the setting, the value and what is allowed.
    """
    if "seed_everything" in config:
        SEED_SETTING.check("seed_everything", config["seed_everything"])
    for section in SECTIONS:
        values = config.get(section) or {}
        unknown = sorted(set(values) - set(SETTINGS[section]))
        if unknown:
            hint = suggest(unknown[0], list(SETTINGS[section]))
            raise SettingError(
                f"unknown setting {section}.{unknown[0]}{hint}; {section}.* settings are: "
                f"{', '.join(SETTINGS[section])}."
            )
        check_values(SETTINGS[section], values, f"{section}.")
    check_network(config.get("model") or {}, "model.")


def check_runs(runs: list[RunSpec]) -> None:
    """Each distinct configuration of ``runs`` checked by :func:`check_config` (no torch; before the
    parser builds anything).

    Raises:
        SettingError: the first bad setting, named with the run and where to look.
    """
    seen = set()
    for run in runs:
        key = json.dumps({s: run.config[s] for s in SECTIONS}, sort_keys=True, default=str)
        if key in seen:
            continue
        seen.add(key)
        try:
            check_config({s: run.config[s] for s in SECTIONS})
        except SettingError as err:
            raise SettingError(
                f"bad setting in run {run.variant}: {str(err).rstrip('.')}. Check {run.study}'s YAML, the profile "
                "and --set."
            ) from None
