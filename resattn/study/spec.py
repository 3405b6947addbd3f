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

The schema of those files is :mod:`resattn.study.schema` (pydantic models), the validated objects
:mod:`resattn.study.definition`; the declared ranges of the settings are checked by
:mod:`resattn.study.settings` when the runs are planned.

No torch here: a typo in a study name or flag is answered at once.
"""

from __future__ import annotations

import fnmatch
import re
from importlib.resources import files
from pathlib import Path
from typing import Any

import yaml

from resattn.config import DEFAULT_DATASET, NUM_CLASSES
from resattn.study.definition import Claim, Factor, Profile, Study
from resattn.study.errors import SpecError, suggest, validated
from resattn.study.record import SECTIONS, SEEDS, RunSpec, is_identity
from resattn.study.schema import (
    CLAIM_KINDS,
    CLAIM_OPTIONS,
    FACTOR_SETTINGS,
    PROFILE_FIELDS,
    STUDY_FIELDS,
    ProfileSpec,
    StudyFile,
    check_settings,
)
from resattn.study.settings import (
    PRECISIONS,
    SEED_SETTING,
    SETTINGS,
    TRAINER_SETTINGS,
    check_config,
    check_runs,
    ranges_markdown,
)

# The names the rest of the code imports from here; some live in schema, definition, errors and settings.
__all__ = [
    "ABLATIONS",
    "CLAIM_KINDS",
    "CLAIM_OPTIONS",
    "FACTOR_SETTINGS",
    "PRECISIONS",
    "PROFILE_FIELDS",
    "RUN_DEFAULTS",
    "SEED_SETTING",
    "SETTINGS",
    "STUDY_FIELDS",
    "TRAINER_SETTINGS",
    "Claim",
    "Factor",
    "Profile",
    "SpecError",
    "Study",
    "available_studies",
    "check_config",
    "check_runs",
    "check_settings",
    "expand",
    "load_profile",
    "load_study",
    "parse_overrides",
    "parse_pairs",
    "plural",
    "profile_names",
    "ranges_markdown",
    "reductions",
    "study_path",
    "suggest",
]

ABLATIONS = Path(str(files("resattn.ablations")))
PROFILES = "profiles"  # ablations/profiles.yaml
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


def plural(n: int, word: str) -> str:
    """``1 seed``, ``3 seeds``: a count in words a reader reads as written."""
    return f"{n} {word}{'s' * (n != 1)}"


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


def check_comparisons(study: Study) -> Study:
    """Refuse claims whose comparisons are empty: a variant compared with itself (it is its own
    reference or ``against``), one compared with a variant the study does not run, a trend whose
    variants differ in another factor than the trend's, span fewer than two of its levels, or are
    their own references (a zero difference: ``absolute: true`` is meant)."""
    by_name = {study.variant_name(v): v for v in study.variants()}
    for i, claim in enumerate(study.claims):
        key = f"claims[{i}]"
        if claim.kind == "each":
            for name in claim.variants:
                other = study.reference_of(by_name[name], claim.against)
                where = f"{key}.against" if claim.against else f"{key}.each"
                if other == by_name[name]:
                    raise SpecError(
                        study.path, where, f"a variant compared with another; {name} is compared with itself"
                    )
                if study.variant_name(other) not in by_name:
                    raise SpecError(
                        study.path, where, f"a comparison with a variant of this study, not {study.variant_name(other)}"
                    )
        elif claim.kind == "trend":
            index = [f.name for f in study.factors].index(claim.factor)
            rest = {tuple(x for j, x in enumerate(by_name[v]) if j != index) for v in claim.variants}
            if len(rest) > 1 or len({by_name[v][index] for v in claim.variants}) < 2:
                raise SpecError(
                    study.path, f"{key}.trend.of", f"variants at two or more levels of {claim.factor}, alike otherwise"
                )
            own = [v for v in claim.variants if study.reference_of(by_name[v]) == by_name[v]]
            if own and not claim.absolute:
                raise SpecError(
                    study.path,
                    f"{key}.trend.of",
                    f"variants other than their reference ({own[0]} is its own); or absolute: true for their errors",
                )
    return study


def load_study(name: str, root: Path = ABLATIONS) -> Study:
    """Read and validate ``ablations/<name>.yaml``, or a study YAML given by its path (its schema:
    :class:`resattn.study.schema.StudyFile`).

    Raises:
        ValueError: a missing or misnamed file, or one that is not YAML text; a :class:`SpecError`
            naming the file, the key and what is allowed there for a study that breaks the schema.
    """
    path = study_path(name, root)
    name = path.stem
    shipped = root / path.name
    if name in available_studies(root) and not (shipped.is_file() and shipped.samefile(path)):
        raise ValueError(
            f"study file {path}: has the name of the shipped study {name} ({shipped}), whose runs and reports "
            f"lie in runs/{name}/ and reports/{name}/; rename the file (e.g. my_{name}.yaml)."
        )
    return check_comparisons(validated(StudyFile, _read_yaml(path), path).study(name, path))


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
    return validated(ProfileSpec, profiles[name], path, name).profile(name)


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


def pick_variants(study: Study, patterns: list[str] | None) -> list[tuple[str, ...]]:
    """The factor levels of ``study``'s variants whose names match one of ``patterns`` (names or
    shell patterns, ``fnmatch``), in the study's order; every variant when ``patterns`` is empty.
    A pattern that matches no variant is an error naming the variants."""
    variants = study.variants()
    if not patterns:
        return variants
    names = [study.variant_name(levels) for levels in variants]
    for pattern in patterns:
        if not fnmatch.filter(names, pattern):
            raise ValueError(
                f"--variants {pattern}: no variant of {study.name} is named so{suggest(pattern, names)}; "
                f"its variants: {', '.join(names)}."
            )
    return [v for v, name in zip(variants, names) if any(fnmatch.fnmatchcase(name, p) for p in patterns)]


def expand(
    study: Study,
    profile: Profile,
    seeds: int | None = None,
    overrides: dict | None = None,
    defaults: dict | None = None,
    variants: list[str] | None = None,
) -> list[RunSpec]:
    """Every variant x seed of ``study`` under ``profile``, settings merged in this order:
    ``RUN_DEFAULTS``, ``defaults`` (e.g. the precision the runner resolved for this machine),
    profile, study, dataset, factor levels, command-line overrides, seed. A synthetic profile swaps
    in the synthetic data set unless the command line names ``data.dataset``. ``variants``: only
    those (:func:`pick_variants`)."""
    overrides = dict(overrides or {})
    runs = []
    reduced = reductions(profile, load_profile("paper"))
    for levels in pick_variants(study, variants):
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
