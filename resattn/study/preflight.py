"""Everything a study will need, checked before anything is created, moved or deleted.

Every value was checked against its declared range before torch was loaded
(:func:`resattn.study.spec.check_runs`). Then each distinct configuration of a study is parsed and
instantiated by the single-run CLI's own parser (:func:`resattn.cli.fit.build_run`), for what only it
can catch (a strategy Lightning does not know, an accelerator this machine lacks), with one line
naming the setting; the same pass resolves each run's
settings (its id and ``config.yaml`` come from them) and measures its cost (multiply-adds x training
images) for the ETA. The data is loaded (or downloaded) once per data set, last, once everything
else passed; the runs and reports folders must be writable directories with room for checkpoints.
"""

from __future__ import annotations

import contextlib
import copy
import inspect
import json
import logging
import math
import os
import shutil
import warnings
from dataclasses import dataclass
from pathlib import Path

from resattn.config import DEFAULT_DATASET
from resattn.study.record import SECTIONS, SEEDS, RunSpec


class PreflightError(ValueError):
    """Bad input found before anything was written: the message names the setting and what is allowed."""


@contextlib.contextmanager
def _quiet():
    """Lightning's start-up chatter (seed, GPU available, ...) is noise while checking settings."""
    loggers = [logging.getLogger(n) for n in ("lightning.pytorch", "lightning.fabric", "lightning")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)


CPU_PRECISION = "32-true"  # the default precision where runs do not train on a CUDA GPU


def default_precision(runs: list[RunSpec]) -> str:
    """The training precision of runs that do not set one: ``bf16-mixed`` where they train on a
    CUDA GPU, else ``32-true`` (this project's CPU has no fast bf16: 4x slower, docs/performance.md)."""
    import torch

    accelerators = {str(r.config["trainer"]["accelerator"]) for r in runs}  # RUN_DEFAULTS sets it
    cuda = torch.cuda.is_available() and accelerators <= {"auto", "gpu", "cuda"}
    return "bf16-mixed" if cuda else CPU_PRECISION


def _classes() -> dict:
    import lightning as L

    from resattn.cli.fit import CLASSES

    return {**CLASSES, "trainer": L.Trainer}


def _check_accelerator(run: RunSpec) -> None:
    """A CUDA accelerator asked for on a machine without one, named (Lightning's own message does not)."""
    import torch

    accelerator = str(run.config["trainer"]["accelerator"])  # RUN_DEFAULTS sets it
    if accelerator in ("gpu", "cuda") and not torch.cuda.is_available():
        raise PreflightError(
            f"trainer.accelerator={accelerator}: this machine has no usable CUDA GPU "
            "(torch.cuda.is_available() is False); use trainer.accelerator=auto or cpu."
        )


def _plain(obj):
    """JSON types only (tuples become lists), as the config is stored and hashed."""
    return json.loads(json.dumps(obj, default=str))


def _with_seeds(config: dict, seeds_from: dict) -> dict:
    config = copy.deepcopy(config)
    config["seed_everything"] = seeds_from["seed_everything"]
    for key in SEEDS[1:]:
        section, name = key.split(".")
        config[section][name] = seeds_from[section][name]
    return config


NO_SEEDS = {"seed_everything": 0, "data": {"seed": 0, "noise_seed": 0}}


@dataclass(frozen=True)
class Built:
    """A configuration parsed and instantiated by the single-run CLI's parser, and its cost per image."""

    cli: object
    cost: dict


def default_pack(runs: list[RunSpec], built: dict[str, Built]) -> int:
    """How many seeds of a variant train in one process when ``--pack`` is not given: 1 on a CPU,
    where packing was measured to lose throughput (docs/performance.md: the grouped convolutions
    of a pack are slower there than the plain ones, and a CPU step is bound by arithmetic, not by
    launches); on a CUDA GPU, where a batch-64 step is bound by kernel launches, every seed of a
    variant, up to 8 (not yet measured on a GPU by this project)."""
    if not all(b.cli.trainer.strategy.root_device.type == "cuda" for b in built.values()):
        return 1
    seeds = max((sum(r.variant == v for r in runs) for v in {r.variant for r in runs}), default=1)
    return max(1, min(8, seeds))


def resolve(runs: list[RunSpec]) -> tuple[list[RunSpec], dict[str, Built]]:
    """Parse and instantiate each distinct configuration with the single-run CLI's parser, exactly as
    the worker will. Returns the runs with their resolved configs (every setting that differs from
    its class default, the normalised precision and the absolute data folder always spelled out,
    and the fingerprint of their data files: the run id and ``config.yaml`` come from these) and
    what was built, by run id.

    Raises:
        PreflightError: the first bad setting, named, with what is allowed.
    """
    from resattn.cli.fit import build_run
    from resattn.summary import model_cost

    classes = _classes()
    defaults = {
        s: _plain({k: p.default for k, p in inspect.signature(c).parameters.items() if p.default is not p.empty})
        for s, c in classes.items()
    }
    always = {"trainer.precision", "data.data_dir"}
    cache: dict[str, tuple[Built, dict]] = {}
    resolved_runs, built = [], {}
    for run in runs:
        key = json.dumps(_with_seeds(run.config, NO_SEEDS), sort_keys=True, default=str)
        if key not in cache:
            _check_accelerator(run)
            try:
                with _quiet():
                    cli = build_run(run.config)
            except Exception as err:  # the parser's or the class's own message names the setting
                raise PreflightError(
                    f"bad setting in run {run.variant}: {' '.join(str(err).split()).rstrip('.')}. Check {run.study}'s "
                    "YAML, "
                    "the profile and --set."
                ) from err
            resolved = _plain(cli.config.as_dict())
            resolved["trainer"]["precision"] = str(cli.trainer.precision)  # normalised: 32 -> 32-true
            resolved["data"]["data_dir"] = str(Path(resolved["data"]["data_dir"]).expanduser().resolve())
            config = {
                s: {
                    k: v
                    for k, v in resolved[s].items()
                    if f"{s}.{k}" in always or k not in defaults[s] or v != defaults[s][k]
                }
                for s in SECTIONS
            }
            cache[key] = (Built(cli, model_cost(cli.model.net)), config)
        one, config = cache[key]
        resolved_runs.append(
            run.model_copy(update={"config": _with_seeds({"seed_everything": None, **config}, run.config)})
        )
        built[len(resolved_runs) - 1] = one
    resolved_runs = fingerprint(resolved_runs)
    return resolved_runs, {run.run_id: built[i] for i, run in enumerate(resolved_runs)}


def fingerprint(runs: list[RunSpec]) -> list[RunSpec]:
    """The runs with the fingerprint of their data files (:func:`resattn.cifar.data_fingerprint`),
    which their run ids include: once per data set, about 0.3 s for CIFAR-10.

    Raises:
        PreflightError: a data file cannot be read.
    """
    from resattn.cifar import data_fingerprint, official_fingerprint

    found: dict[tuple, str | None] = {}
    out = []
    for run in runs:
        data = run.config["data"]
        key = (data.get("dataset", DEFAULT_DATASET), data["data_dir"], bool(data.get("download", False)))
        if key not in found:
            try:
                found[key] = data_fingerprint(key[1], key[0], key[2])
            except OSError as err:
                raise PreflightError(str(err)) from err
        fp = found[key]
        out.append(run.model_copy(update={"data_fingerprint": fp, "data_official": fp == official_fingerprint(key[0])}))
    return out


def costs(runs: list[RunSpec], built: dict[str, Built], data_sizes: dict[tuple, int | None]) -> dict[str, float]:
    """Each run's cost for the ETA: multiply-adds per image x the images it trains on."""
    return {r.run_id: built[r.run_id].cost["macs"] * training_images(built[r.run_id].cli, data_sizes) for r in runs}


def check_space(runs_dir: Path, built: dict[str, Built], jobs: int) -> None:
    """Room in the runs folder for ``jobs`` checkpoints of the largest run at once (weights, SGD
    momentum and metric states, and the temporary copy of a save)."""
    largest = max(b.cost["params"] for b in built.values()) * 4 * 3
    check_folder(runs_dir, "--runs-dir", int(1.5 * largest * jobs), what=f"{jobs} checkpoint(s)")


def training_images(cli, data_sizes: dict[tuple, int | None]) -> float:
    """Images the run will train on (steps x batch x devices), from the resolved Trainer (whose
    ``max_epochs`` is Lightning's 1000 when neither it nor ``max_steps`` is set) and the data."""
    hp, trainer = cli.datamodule.hparams, cli.trainer
    per_step = hp.batch_size * trainer.world_size
    total = data_sizes.get(data_key(hp))
    per_epoch = math.inf if total is None else max(1, (min(total - hp.val_size, hp.train_size or math.inf)) // per_step)
    epochs = math.inf if trainer.max_epochs in (None, -1) else trainer.max_epochs
    steps = min(per_epoch * epochs, trainer.max_steps if trainer.max_steps > 0 else math.inf)
    return float(steps * per_step) if steps < math.inf else 1.0


def data_key(hp) -> tuple:
    return (hp.dataset, str(Path(hp.data_dir).expanduser().resolve()), tuple(hp.synthetic_size))


def check_data(runs: list[RunSpec], fetch: bool = True) -> dict[tuple, int | None]:
    """Load (or, with ``data.download`` and ``fetch``, download) every data set the runs use, once,
    so that missing or corrupt data fails with the data module's message before any run starts.
    Returns each data set's number of training images (None for image folders)."""
    from resattn.data import CIFARDataModule

    sizes: dict[tuple, int | None] = {}
    for run in runs:
        data = CIFARDataModule(**{**run.config["data"], **({} if fetch else {"download": False})})
        key = data_key(data.hparams)
        if key not in sizes:
            try:
                sizes[key] = data.verify()
            except (OSError, ValueError) as err:
                raise PreflightError(str(err)) from err
    return sizes


def check_folder(path: Path, flag: str, needed: int = 0, what: str = "a checkpoint") -> None:
    """``path`` is a writable directory (or can be made one) with ``needed`` bytes free.

    Raises:
        PreflightError: naming ``flag`` (e.g. ``--runs-dir``), the path and what is wrong.
    """
    path = Path(path).expanduser()
    existing = path
    while not existing.exists():
        existing = existing.parent
    if existing != path and not existing.is_dir():
        raise PreflightError(f"{flag} {path}: {existing} is a file, not a directory.")
    if existing == path and not path.is_dir():
        raise PreflightError(f"{flag} {path} is a file, not a directory.")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise PreflightError(f"{flag} {path}: {existing} is not writable; pick another folder with {flag}.")
    free = shutil.disk_usage(existing).free
    if free < needed:
        raise PreflightError(
            f"{flag} {path}: {free // 2**20} MiB free; {what} need about {math.ceil(needed / 2**20)} MiB."
        )
