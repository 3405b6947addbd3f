"""Study specs (one YAML per paper table) and profiles, expanded into run specs with stable ids.

A study YAML has ``title``, ``paper_table``, optional ``dataset`` and ``settings``, ``factors``
(a factor is a list of values of the setting it names, or a mapping of named levels to settings),
optional ``exclude`` (combinations of levels not to run), ``reference`` (the level each variant is
compared with), ``paper`` (the paper's test error in percent, nested in the order of the factors),
optional ``paper_response`` (Fig. 4 values by variant), ``notes`` (caveats printed with every
report) and ``claims`` (the paper's claims this study tests, judged in the claims ledger: see
:class:`Claim`). Settings are the single-run CLI's names:
``model.*``, ``data.*``, ``trainer.*``. The shipped studies and ``profiles.yaml`` are package data
(``resattn.ablations``, the repository's ``ablations/`` folder); a study may also be the path of a
YAML file of one's own.

No torch here: a typo in a study name or flag is answered at once.
"""

from __future__ import annotations

import difflib
import itertools
import json
import re
from dataclasses import dataclass, field, replace
from importlib.resources import files
from pathlib import Path
from typing import Any

import yaml

from resattn.config import DATA_SETTINGS, DEFAULT_DATASET, MODEL_SETTINGS, NUM_CLASSES, check_network
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
from resattn.study.store import SECTIONS, SEEDS, RunSpec, is_identity

ABLATIONS = Path(str(files("resattn.ablations")))
PROFILES = "profiles"  # ablations/profiles.yaml
# Factor names that are not "model.<name>" settings.
FACTOR_SETTINGS = {"dataset": "data.dataset", "label_noise": "data.label_noise"}
# What each field of a study YAML and of a profile may hold (checked by load_study / load_profile,
# listed in docs/bad-input.md); settings within them are checked against SETTINGS.
STUDY_FIELDS = {
    "title": "text (required)",
    "paper_table": "text",
    "dataset": "one of cifar10, cifar100",
    "settings": "a mapping of settings (section.name: value), each within its declared range",
    "factors": "a non-empty mapping (required) of factor -> a list of distinct values, or named levels -> settings",
    "exclude": "a list of {factor: level or [levels]} that leaves at least one variant",
    "reference": "a mapping (required) of factor -> one of its levels",
    "paper": "the paper's test error in percent, a number in [0, 100], nested by the factors' levels",
    "paper_response": "a mapping of variant -> list of per-stage responses, each a number >= 0",
    "notes": "text",
    "claims": "a list of claims, {claim: text} with each, trend or response (see Claim in resattn/study/spec.py)",
}
PROFILE_FIELDS = {
    "description": "text",
    "synthetic": "true or false (true: the generated data set, with the study's class count)",
    "seeds": "an integer >= 1",
    "settings": "a mapping of settings (section.name: value), each within its declared range",
}
CLAIM_KINDS = ("each", "trend", "response")
CLAIM_OPTIONS = ("expect", "against", "margin", "smallest_effect")  # see Claim
# How a study run departs from the single-run CLI's defaults (lowest priority: profiles and --set
# override them): CIFAR is downloaded when it is missing (md5 checked; without a network the study
# stops before anything is written); one device, no progress bar, model summary or sanity check,
# metrics per epoch only.
RUN_DEFAULTS = {
    "data.download": True,
    "trainer.accelerator": "auto",
    "trainer.devices": 1,
    "trainer.enable_progress_bar": False,
    "trainer.enable_model_summary": False,
    "trainer.num_sanity_val_steps": 0,
    "trainer.log_every_n_steps": 10**9,
}

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


class SpecError(ValueError):
    """A malformed study or profile: names the file, the key and what was expected."""

    def __init__(self, path: Path | str, key: str, expected: str) -> None:
        super().__init__(f"{path}: key {key!r}: expected {expected}.")


def plural(n: int, word: str) -> str:
    """``1 seed``, ``3 seeds``: a count in words a reader reads as written."""
    return f"{n} {word}{'s' * (n != 1)}"


def suggest(name: str, choices: list[str], n: int = 2) -> str:
    """`` (did you mean X?)`` for the (up to ``n``) choices closest to ``name``, case aside; else ``""``."""
    lower = {c.lower(): c for c in choices}
    close = difflib.get_close_matches(name.lower(), list(lower), n=n, cutoff=0.6)
    return f" (did you mean {' or '.join(lower[c] for c in close)}?)" if close else ""


def available_studies(root: Path = ABLATIONS) -> list[str]:
    return sorted(p.stem for p in root.glob("*.yaml") if p.stem != PROFILES)


def study_path(name: str, root: Path = ABLATIONS) -> Path:
    """``root/<name>.yaml`` for a study name, or the file itself for a path to a YAML file (a
    folder, or a missing file named like a shipped study, is answered with what was meant)."""
    if name.endswith((".yaml", ".yml")) or "/" in name:
        path = Path(name).expanduser()
        if path.is_dir():
            raise ValueError(f"{path} is a folder, not a study YAML file; give a study name or a .yaml file's path.")
        if not path.is_file():
            shipped = path.stem if path.stem in available_studies(root) else None
            hint = f"; did you mean the shipped study {shipped} (give its name)?" if shipped else "."
            raise ValueError(f"study file {path} does not exist{hint}")
        return path.resolve()
    path = root / f"{name}.yaml"
    if name == PROFILES or not path.is_file():
        raise ValueError(
            f"unknown study {name!r}{suggest(name, available_studies(root))}; available: "
            f"{', '.join(available_studies(root))} (or the path of a study YAML)."
        )
    return path


class _UniqueKeyLoader(yaml.SafeLoader):
    """PyYAML's safe loader, refusing a mapping key given twice (PyYAML keeps the last silently)."""

    def construct_mapping(self, node, deep=False):
        seen = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"key {key!r} is given twice in one mapping", key_node.start_mark
                )
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def _read_yaml(path: Path) -> Any:
    """A YAML file's content; a malformed file, a key given twice or a file that is not UTF-8 text is
    a ValueError naming the file (and the line)."""
    try:
        return yaml.load(path.read_text(encoding="utf-8"), Loader=_UniqueKeyLoader)
    except UnicodeDecodeError as err:
        raise ValueError(
            f"{path}: not a UTF-8 text file (byte {err.object[err.start]:#04x} at offset {err.start}); a study "
            "or profile is YAML text."
        ) from None
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise ValueError(f"{path}: not valid YAML{where}: {getattr(err, 'problem', err)}") from err


def check_settings(settings: Any, path: Path | str, key: str) -> dict[str, Any]:
    """Settings must be a mapping of ``section.name`` keys, section one of model / data / trainer."""
    if not isinstance(settings, dict):
        raise SpecError(path, key, "a mapping of settings such as {model.width: 0.25}")
    for name in settings:
        if not isinstance(name, str) or name.split(".", 1)[0] not in SECTIONS or "." not in name:
            rest = str(name).partition(".")[2]
            hint = suggest(str(name), [f"{s}.{rest}" for s in SECTIONS] if rest else list(SECTIONS), n=1)
            expected = "a setting named model.<arg>, data.<arg> or trainer.<arg>" + hint
            raise SpecError(path, f"{key}.{name}" if key else str(name), expected)
    return dict(settings)


@dataclass(frozen=True)
class Factor:
    name: str
    levels: dict[str, dict[str, Any]]  # level name -> settings it applies


@dataclass(frozen=True)
class Claim:
    """A claim of the paper and how a study tests it (the ``claims`` list of a study YAML).

    - ``each: [variants]``: every listed variant differs from its reference in the paper's
      direction (``X beats Y at each depth``); judged by each comparison's verdict.
    - ``trend: {factor, of: [variants], per, unit}``: the difference (variant − reference) grows
      or shrinks along a numeric factor as in the paper; judged by the slope of the per-seed
      differences over the factor (``per`` units of it, called ``unit``).
    - ``response: {collapses: [variants], holds: [variants], stages, below}``: the Fig. 4 probe:
      the relative response of ``stages`` falls below ``below`` for the first variants and not for
      the others.

    ``expect: higher | lower`` (with ``each``) states the claimed direction of a comparison the
    paper has no number for (the variants' error higher or lower than the reference's); where the
    paper has a Δ, its sign is the claim.

    Options: ``against: {factor: level}`` (with ``each``) compares with that variant instead of
    the study's reference (Attention-236 against Attention-92); ``absolute: true`` (with ``trend``)
    takes the slope of the variants' own errors, not of their differences from the reference (ARL's
    error falls with depth); ``margin`` (pp) an equivalence margin around the paper's value within
    which an interval reproduces it; ``smallest_effect`` (pp) the smallest effect of interest: an
    interval inside ±it contradicts the claim (an equivalence test).
    """

    text: str
    kind: str
    variants: tuple[str, ...] = ()  # each / trend: compared with their references
    factor: str | None = None  # trend
    per: float = 1.0  # trend: the slope is given per this many units of the factor
    unit: str = ""  # trend: the name of those units
    collapses: tuple[str, ...] = ()  # response
    holds: tuple[str, ...] = ()  # response
    stages: tuple[int, ...] = (2, 3)  # response
    below: float = 0.1  # response
    expect: str | None = None  # each, beyond the paper: "higher" / "lower" error than the reference
    against: tuple[tuple[str, str], ...] = ()  # each: (factor, level) pairs replacing the reference's
    absolute: bool = False  # trend: the slope of the variants' own errors, not of their differences
    margin: float | None = None  # pp: an interval within paper ± margin reproduces the paper's value
    smallest_effect: float | None = None  # pp: an interval within ±this contradicts the claim


@dataclass(frozen=True)
class Study:
    name: str
    path: Path
    title: str
    paper_table: str
    settings: dict[str, Any]
    factors: list[Factor]
    reference: dict[str, str]
    paper: dict[tuple[str, ...], float]
    dataset: str | None = None
    paper_response: dict[str, list[float]] = field(default_factory=dict)  # Fig. 4 curves, by variant
    exclude: tuple[dict[str, tuple[str, ...]], ...] = ()  # level combinations not run
    notes: str = ""
    claims: tuple[Claim, ...] = ()

    def variants(self) -> list[tuple[str, ...]]:
        """Every combination of factor levels, in the order of the YAML, but the excluded ones."""
        names = [f.name for f in self.factors]
        return [
            levels
            for levels in itertools.product(*(list(f.levels) for f in self.factors))
            if not any(all(dict(zip(names, levels))[k] in v for k, v in rule.items()) for rule in self.exclude)
        ]

    def variant_name(self, levels: tuple[str, ...]) -> str:
        return "-".join(levels)

    def reference_of(self, levels: tuple[str, ...]) -> tuple[str, ...]:
        """The variant this one is compared with: same levels, but the reference level(s)."""
        return tuple(self.reference.get(f.name, lvl) for f, lvl in zip(self.factors, levels))


def load_study(name: str, root: Path = ABLATIONS) -> Study:
    """Read and validate ``ablations/<name>.yaml``, or a study YAML given by its path."""
    path = study_path(name, root)
    name = path.stem
    shipped = root / path.name
    if name in available_studies(root) and not (shipped.is_file() and shipped.samefile(path)):
        raise ValueError(
            f"study file {path}: has the name of the shipped study {name} ({shipped}), whose runs and reports "
            f"lie in runs/{name}/ and reports/{name}/; rename the file (e.g. my_{name}.yaml)."
        )
    raw = _read_yaml(path)
    if not isinstance(raw, dict):
        raise SpecError(path, "<top level>", "a mapping with keys title, factors, reference, paper")
    unknown = set(raw) - set(STUDY_FIELDS)
    if unknown:
        raise SpecError(path, sorted(unknown)[0], f"one of {', '.join(STUDY_FIELDS)}")
    for key in ("title", "factors", "reference"):
        if key not in raw:
            raise SpecError(path, key, "to be present")
    if not isinstance(raw["factors"], dict) or not raw["factors"]:
        raise SpecError(path, "factors", "a non-empty mapping of factor name to a list of values or named levels")
    factors = []
    for fname, spec in raw["factors"].items():
        setting = FACTOR_SETTINGS.get(fname, f"model.{fname}")
        if isinstance(spec, list) and spec:
            twice = sorted({str(v) for v in spec if [str(w) for w in spec].count(str(v)) > 1})
            if twice:
                raise SpecError(path, f"factors.{fname}", f"distinct levels, not {twice[0]} twice")
            levels = {str(v): {setting: v} for v in spec}
        elif isinstance(spec, dict) and spec:
            levels = {str(k): check_settings(v, path, f"factors.{fname}.{k}") for k, v in spec.items()}
        else:
            raise SpecError(path, f"factors.{fname}", "a non-empty list of values or a mapping of level -> settings")
        factors.append(Factor(fname, levels))
    reference = raw["reference"]
    if not isinstance(reference, dict):
        raise SpecError(path, "reference", "a mapping of factor -> reference level, e.g. {attention_learning: arl}")
    reference = {str(k): str(v) for k, v in reference.items()}
    names = {f.name: f for f in factors}
    for k, v in reference.items():
        if k not in names:
            raise SpecError(path, f"reference.{k}", f"a factor of this study ({', '.join(names)})")
        if v not in names[k].levels:
            raise SpecError(path, f"reference.{k}", f"a level of {k} ({', '.join(names[k].levels)})")
    paper: dict[tuple[str, ...], float] = {}

    def walk(node: Any, prefix: tuple[str, ...], key: str) -> None:
        depth = len(prefix)
        if depth == len(factors):
            if isinstance(node, bool) or not isinstance(node, (int, float)) or not 0 <= node <= 100:
                raise SpecError(path, key, "a number in [0, 100] (test error in percent)")
            paper[prefix] = float(node)
            return
        if not isinstance(node, dict):
            raise SpecError(path, key, f"a mapping keyed by levels of {factors[depth].name}")
        for level, child in node.items():
            level = str(level)
            if level not in factors[depth].levels:
                raise SpecError(
                    path, f"{key}.{level}", f"a level of {factors[depth].name} ({', '.join(factors[depth].levels)})"
                )
            walk(child, prefix + (level,), f"{key}.{level}")

    walk(raw.get("paper") or {}, (), "paper")
    exclude = _exclusions(raw.get("exclude") or [], names, path)
    dataset = raw.get("dataset")
    if dataset is not None and dataset not in NUM_CLASSES:
        raise SpecError(path, "dataset", f"one of {', '.join(NUM_CLASSES)}")
    response = raw.get("paper_response") or {}
    if not isinstance(response, dict) or not all(
        isinstance(v, list) and all(isinstance(x, (int, float)) and not isinstance(x, bool) and x >= 0 for x in v)
        for v in response.values()
    ):
        raise SpecError(path, "paper_response", STUDY_FIELDS["paper_response"])
    study = Study(
        name=name,
        path=path,
        title=str(raw["title"]),
        paper_table=str(raw.get("paper_table", "")),
        settings=check_settings(raw.get("settings") or {}, path, "settings"),
        factors=factors,
        reference=reference,
        paper=paper,
        dataset=dataset,
        paper_response={str(k): [float(x) for x in v] for k, v in response.items()},
        exclude=exclude,
        notes=" ".join(str(raw.get("notes") or "").split()),
    )
    variants = [study.variant_name(v) for v in study.variants()]
    if not variants:
        raise SpecError(path, "exclude", "to leave at least one variant; it removes every variant")
    for name in response:
        if str(name) not in variants:
            raise SpecError(path, f"paper_response.{name}", f"a variant of this study ({', '.join(variants)})")
    claims = raw.get("claims") or []
    if not isinstance(claims, list):
        raise SpecError(path, "claims", "a list of claims, each with `claim` and one of " + ", ".join(CLAIM_KINDS))
    return replace(study, claims=tuple(_claim(c, i, study, variants, path) for i, c in enumerate(claims)))


def _exclusions(raw: Any, factors: dict[str, Factor], path: Path) -> tuple[dict[str, tuple[str, ...]], ...]:
    """``exclude``: a list of {factor: level or [levels]}; a variant matching every key of one is not run."""
    if not isinstance(raw, list):
        raise SpecError(path, "exclude", "a list of {factor: level or [levels]} mappings")
    rules = []
    for i, rule in enumerate(raw):
        if not isinstance(rule, dict) or not rule:
            raise SpecError(path, f"exclude[{i}]", "a mapping {factor: level or [levels]}")
        parsed = {}
        for factor, levels in rule.items():
            if factor not in factors:
                raise SpecError(path, f"exclude[{i}].{factor}", f"a factor of this study ({', '.join(factors)})")
            levels = tuple(str(v) for v in (levels if isinstance(levels, list) else [levels]))
            bad = [v for v in levels if v not in factors[factor].levels]
            if bad:
                raise SpecError(
                    path, f"exclude[{i}].{factor}", f"levels of {factor} ({', '.join(factors[factor].levels)})"
                )
            parsed[str(factor)] = levels
        rules.append(parsed)
    return tuple(rules)


def _claim(raw: Any, i: int, study: Study, variants: list[str], path: Path) -> Claim:
    """One entry of ``claims`` (see :class:`Claim`), its variants checked against the study's."""
    key = f"claims[{i}]"
    kinds = [k for k in CLAIM_KINDS if isinstance(raw, dict) and k in raw]
    if not isinstance(raw, dict) or not isinstance(raw.get("claim"), str) or len(kinds) != 1:
        raise SpecError(path, key, "a mapping with `claim` (its text) and exactly one of " + ", ".join(CLAIM_KINDS))
    extra = set(raw) - {"claim", *CLAIM_OPTIONS, *CLAIM_KINDS}
    if extra:
        raise SpecError(path, f"{key}.{sorted(extra)[0]}", ", ".join(("claim", *CLAIM_OPTIONS, *CLAIM_KINDS)))
    kind, body = kinds[0], raw[kinds[0]]
    options = {}
    for name in ("margin", "smallest_effect"):
        value = raw.get(name)
        if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0):
            raise SpecError(path, f"{key}.{name}", "a number of percentage points > 0")
        options[name] = None if value is None else float(value)

    def variant_list(value: Any, where: str) -> tuple[str, ...]:
        if not isinstance(value, list) or not value or any(str(v) not in variants for v in value):
            raise SpecError(path, where, f"a non-empty list of variants of this study ({', '.join(variants)})")
        return tuple(str(v) for v in value)

    expect = raw.get("expect")
    if expect not in (None, "higher", "lower") or (expect is not None and kind != "each"):
        raise SpecError(path, f"{key}.expect", "higher or lower, with `each`")
    against = raw.get("against")
    if against is not None:
        factors = {f.name: [str(x) for x in f.levels] for f in study.factors}
        if (
            kind != "each"
            or not isinstance(against, dict)
            or not against
            or any(k not in factors or str(v) not in factors[k] for k, v in against.items())
        ):
            raise SpecError(path, f"{key}.against", "with `each`, a mapping of factor -> one of its levels")
        options["against"] = tuple((k, str(v)) for k, v in against.items())
    if kind == "each":
        return Claim(raw["claim"], kind, variant_list(body, f"{key}.each"), expect=expect, **options)
    if not isinstance(body, dict):
        raise SpecError(path, f"{key}.{kind}", "a mapping (see the Claim docstring in resattn/study/spec.py)")
    if kind == "trend":
        factor = body.get("factor")
        if factor not in {f.name for f in study.factors}:
            raise SpecError(
                path, f"{key}.trend.factor", f"a factor of this study ({', '.join(f.name for f in study.factors)})"
            )
        values = list(next(f for f in study.factors if f.name == factor).levels)
        try:
            [float(v) for v in values]
        except ValueError:
            raise SpecError(path, f"{key}.trend.factor", f"a factor with numeric levels, not {values}") from None
        per = body.get("per", 1)
        if not isinstance(per, (int, float)) or per <= 0:
            raise SpecError(path, f"{key}.trend.per", "a number > 0")
        absolute = body.get("absolute", False)
        if not isinstance(absolute, bool):
            raise SpecError(path, f"{key}.trend.absolute", "true (the variants' own errors) or false (differences)")
        return Claim(
            raw["claim"],
            kind,
            variant_list(body.get("of"), f"{key}.trend.of"),
            factor,
            float(per),
            str(body.get("unit", f"{per:g} {factor}")),
            absolute=absolute,
            **options,
        )
    if options.get("margin") or options.get("smallest_effect"):
        raise SpecError(path, key, "margin and smallest_effect go with `each` or `trend`, not `response`")
    stages = body.get("stages", [2, 3])
    below = body.get("below", 0.1)
    if not isinstance(stages, list) or not all(isinstance(s, int) and s >= 1 for s in stages):
        raise SpecError(path, f"{key}.response.stages", "a list of stage numbers (1-based)")
    if not isinstance(below, (int, float)):
        raise SpecError(path, f"{key}.response.below", "a number (a response relative to stage 1)")
    return Claim(
        raw["claim"],
        kind,
        collapses=variant_list(body.get("collapses"), f"{key}.response.collapses"),
        holds=variant_list(body["holds"], f"{key}.response.holds") if "holds" in body else (),
        stages=tuple(stages),
        below=float(below),
    )


@dataclass(frozen=True)
class Profile:
    name: str
    description: str
    seeds: int
    settings: dict[str, Any]
    synthetic: bool = False


def profile_names(root: Path = ABLATIONS) -> list[str]:
    """The profiles in the order of ``profiles.yaml``: from the least to the most faithful to the paper."""
    return list(_read_yaml(root / f"{PROFILES}.yaml"))


def load_profile(name: str, root: Path = ABLATIONS) -> Profile:
    path = root / f"{PROFILES}.yaml"
    profiles = _read_yaml(path)
    if name not in profiles:
        raise ValueError(
            f"unknown profile {name!r}{suggest(name, list(profiles))}; available: {', '.join(profiles)} "
            f"(defined in {path})."
        )
    raw = profiles[name]
    if not isinstance(raw, dict) or set(raw) - set(PROFILE_FIELDS):
        bad = "" if not isinstance(raw, dict) else f".{sorted(set(raw) - set(PROFILE_FIELDS))[0]}"
        raise SpecError(path, f"{name}{bad}", f"a mapping with {', '.join(PROFILE_FIELDS)}")
    seeds = raw.get("seeds", 1)
    if isinstance(seeds, bool) or not isinstance(seeds, int) or seeds < 1:
        raise SpecError(path, f"{name}.seeds", PROFILE_FIELDS["seeds"])
    if not isinstance(raw.get("synthetic", False), bool):
        raise SpecError(path, f"{name}.synthetic", PROFILE_FIELDS["synthetic"])
    return Profile(
        name,
        str(raw.get("description", "")),
        seeds,
        check_settings(raw.get("settings") or {}, path, f"{name}.settings"),
        raw.get("synthetic", False),
    )


def _yaml_value(text: str) -> Any:
    """A command-line value read as YAML, and exponents as YAML 1.2 reads them (PyYAML's 1.1 leaves
    ``1e3`` a string): ``1e3`` is the integer 1000, ``1.5e-3`` the number 0.0015."""
    value = yaml.safe_load(text)
    if isinstance(value, str) and re.fullmatch(r"[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+", value.strip()):
        number = float(value)
        return int(number) if number.is_integer() and "." not in value else number
    return value


def parse_pairs(items: list[str], flag: str) -> dict[str, Any]:
    """``KEY=VALUE`` strings of a repeatable command-line flag; values are read as YAML (numbers, lists, ...).
    A key given twice with two values is refused (which one was meant?)."""
    out = {}
    for item in items:
        if "=" not in item:
            raise ValueError(f"{flag} {item!r}: expected KEY=VALUE, e.g. --set model.width=0.5")
        key, value = item.split("=", 1)
        key, value = key.strip(), _yaml_value(value)
        if key in out and out[key] != value:
            raise ValueError(f"{flag} {key} is given twice, {out[key]!r} and {value!r}; give it once.")
        out[key] = value
    return out


def parse_overrides(items: list[str]) -> dict[str, Any]:
    """``--set KEY=VALUE`` settings (``model.*``, ``data.*``, ``trainer.*``), but the seeds, which each run
    sets from its own seed."""
    settings = check_settings(parse_pairs(items, "--set"), "--set", "")
    seeded = sorted(set(settings) & set(SEEDS))
    if seeded:
        raise ValueError(
            f"--set {seeded[0]}={settings[seeded[0]]!r}: each run sets it from its seed (0, 1, ...); choose how "
            "many with --seeds."
        )
    return settings


def _nest(settings: dict[str, Any]) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {s: {} for s in SECTIONS}
    for key, value in settings.items():
        section, name = key.split(".", 1)
        out[section][name] = value
    return out


def reductions(profile: Profile, paper: Profile) -> dict[str, str]:
    """How a profile departs from the paper protocol, one line per setting it changes that changes
    results (where the data lies, say, is no reduction)."""
    if profile.name == paper.name:
        return {}
    out = {}
    for key, ours in profile.settings.items():
        if not is_identity(key):
            continue
        theirs = paper.settings.get(key)
        if theirs is None:
            if key == "trainer.max_epochs" and "trainer.max_steps" in paper.settings:
                theirs = f"{paper.settings['trainer.max_steps']} steps"
            else:
                theirs = "the full data set" if key.startswith("data.") else "not set"
        if ours != theirs:
            out[key] = f"{ours} (paper: {theirs})"
    if profile.synthetic:
        out["data.dataset"] = "synthetic (paper: CIFAR)"
    return out


def expand(
    study: Study,
    profile: Profile,
    seeds: int | None = None,
    overrides: dict | None = None,
    defaults: dict | None = None,
) -> list[RunSpec]:
    """Every variant x seed of ``study`` under ``profile``, settings merged in this order:
    ``RUN_DEFAULTS``, ``defaults`` (e.g. the precision the runner resolved for this machine),
    profile, study, dataset, factor levels, command-line overrides, seed. A synthetic profile swaps
    in the synthetic data set unless the command line names ``data.dataset``."""
    overrides = dict(overrides or {})
    runs = []
    reduced = reductions(profile, load_profile("paper"))
    for levels in study.variants():
        settings = {**RUN_DEFAULTS, **(defaults or {}), **profile.settings, **study.settings}
        if study.dataset:
            settings["data.dataset"] = study.dataset
        factor_settings = set()
        for factor, level in zip(study.factors, levels):
            settings.update(factor.levels[level])
            factor_settings |= set(factor.levels[level])
        clash = sorted(set(overrides) & factor_settings)
        if clash:
            raise ValueError(
                f"--set {clash[0]}: this study varies it (its factor levels set {', '.join(sorted(factor_settings))}); "
                "a --set would give every variant the same value. Edit the factor in a copy of the study YAML instead."
            )
        # the command line's settings, where they change what the profile and study set
        changed = {k: v for k, v in overrides.items() if k not in settings or settings[k] != v}
        settings.update(overrides)
        dataset = settings.get("data.dataset", DEFAULT_DATASET)
        if profile.synthetic and dataset in NUM_CLASSES and "data.dataset" not in overrides:
            settings["data.dataset"] = "synthetic"
            settings["data.synthetic_classes"] = overrides.get("data.synthetic_classes", NUM_CLASSES[dataset])
            if "data.dataset" in factor_settings:
                factor_settings.add("data.synthetic_classes")
        reduced_here = {**reduced, **{k: f"{v} (command line)" for k, v in changed.items() if is_identity(k)}}
        for seed in range(seeds or profile.seeds):
            config = {"seed_everything": seed, **_nest({**settings, "data.seed": seed, "data.noise_seed": seed})}
            runs.append(
                RunSpec(
                    study=study.name,
                    variant=study.variant_name(levels),
                    levels=dict(zip((f.name for f in study.factors), levels)),
                    seed=seed,
                    profile=profile.name,
                    config=config,
                    overrides=changed,
                    factor_settings=sorted(factor_settings),
                    reductions=reduced_here,
                )
            )
    return runs
