"""Everything a study will need, checked before anything is created, moved or deleted.

Each distinct configuration of a study is parsed and instantiated by the single-run CLI's own
parser (:func:`resattn.cli.build_run`): an unknown setting, a wrong type, a value outside its
choices, a model the config rejects (``model.depth=57``, ``model.width=-1``) or an accelerator this
machine lacks fails here with one line naming the setting. The data is loaded (or downloaded) once
per data set; the runs and reports folders must be writable directories with room for a
checkpoint. The same pass measures each run's cost (multiply-adds x training images) for the ETA.
"""

from __future__ import annotations

import contextlib
import difflib
import inspect
import json
import logging
import math
import os
import shutil
import warnings
from dataclasses import dataclass
from pathlib import Path

from resattn.study.store import SECTIONS, RunSpec

SEEDS = ("seed_everything", "data.seed", "data.noise_seed")


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


def default_precision(runs: list[RunSpec]) -> str:
    """The training precision of runs that do not set one: ``bf16-mixed`` where they train on a
    CUDA GPU, else ``32-true`` (this project's CPU has no fast bf16: 4x slower, README)."""
    import torch

    accelerators = {str(r.config["trainer"].get("accelerator", "auto")) for r in runs}
    cuda = torch.cuda.is_available() and accelerators <= {"auto", "gpu", "cuda"}
    return "bf16-mixed" if cuda else "32-true"


def _unknown_settings(run: RunSpec) -> None:
    import lightning as L

    from resattn.cli import CLASSES

    classes = {**CLASSES, "trainer": L.Trainer}
    for section in SECTIONS:
        allowed = set(inspect.signature(classes[section]).parameters) - {"self"}
        unknown = sorted(set(run.config[section]) - allowed)
        if unknown:
            close = difflib.get_close_matches(unknown[0], allowed, n=3)
            hint = f" (did you mean {', '.join(close)}?)" if close else ""
            raise PreflightError(
                f"unknown setting {section}.{unknown[0]}{hint}; {section}.* settings are the arguments of "
                f"{classes[section].__name__}: {', '.join(sorted(allowed))}. Check {run.study}'s YAML, the "
                "profile and --set."
            )


def _without_seeds(run: RunSpec) -> str:
    config = {s: dict(run.config[s]) for s in SECTIONS}
    for key in SEEDS[1:]:
        section, name = key.split(".")
        config[section].pop(name, None)
    return json.dumps(config, sort_keys=True, default=str)


@dataclass(frozen=True)
class Checked:
    """What the checks measured: each run's cost (multiply-adds x training images, the ETA's
    weights) and the size of the largest run's checkpoint."""

    costs: dict[str, float]
    checkpoint_bytes: int


def check(runs: list[RunSpec], runs_dir: Path, jobs: int = 1) -> Checked:
    """Every check before a study writes anything: settings (each distinct configuration parsed and
    instantiated by the single-run CLI's parser), data, and the runs folder (room for ``jobs``
    checkpoints).

    Raises:
        PreflightError: the first problem, named, with what is allowed or what to do.
    """
    from resattn.cli import build_run
    from resattn.summary import model_cost

    built: dict[str, tuple] = {}
    for run in runs:
        key = _without_seeds(run)
        if key in built:
            continue
        _unknown_settings(run)
        try:
            with _quiet():
                cli = build_run(run.config)
        except Exception as err:  # the parser's or the class's own message names the setting
            raise PreflightError(
                f"bad setting in run {run.variant}: {' '.join(str(err).split())}. Check {run.study}'s YAML, "
                "the profile and --set."
            ) from err
        built[key] = (cli, model_cost(cli.model.net))
    sizes = check_data(runs)
    costs = {
        r.run_id: built[_without_seeds(r)][1]["macs"] * training_images(built[_without_seeds(r)][0], sizes)
        for r in runs
    }
    # weights, SGD momentum and metric states, with room for the temporary copy of a save
    largest = max(cost["params"] for _, cost in built.values()) * 4 * 3
    check_folder(runs_dir, "--runs-dir", int(1.5 * largest * jobs))
    return Checked(costs, largest)


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


def check_data(runs: list[RunSpec]) -> dict[tuple, int | None]:
    """Load (or, with ``data.download``, download) every data set the runs use, once, so that
    missing or corrupt data fails with the data module's message before any run starts. Returns
    each data set's number of training images (None for image folders)."""
    from resattn.data import CIFARDataModule

    sizes: dict[tuple, int | None] = {}
    for run in runs:
        data = CIFARDataModule(**run.config["data"])
        key = data_key(data.hparams)
        if key not in sizes:
            try:
                sizes[key] = data.verify()
            except (OSError, ValueError) as err:
                raise PreflightError(str(err)) from err
    return sizes


def check_folder(path: Path, flag: str, needed: int = 0) -> None:
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
            f"{flag} {path}: {free // 2**20} MiB free, a checkpoint needs about {math.ceil(needed / 2**20)} MiB."
        )
