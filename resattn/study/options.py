"""The runner's options, checked in one place: :class:`StudyOptions` (every flag of ``resattn study``
/ ``studies/run.py``) and :class:`WorkerOptions` (what a study worker is started with).

A :class:`StudyOptions` is frozen and valid once made: its numbers and choices by pydantic
constraints, then what ties flags together or looks at this machine (``--slurm`` without
``--executor slurm``, no SLURM here, a Ray address that does not answer, a runs or reports folder
that cannot be written). :meth:`StudyOptions.checked` turns the first problem into one line that
names the flag (``--jobs 0: must be an integer >= 1.``), as the command prints it. No torch here.
"""

from __future__ import annotations

import os
import shutil
import socket
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from resattn.study.preflight import check_folder
from resattn.study.wandb_runs import WANDB_MODES, WANDB_PROJECT

EXECUTORS = ("local", "ray", "slurm")
MAX_PACK = 64

# Each checked option: its flag and what it must be (the one-line message of a bad value).
ALLOWED = {
    "pack": ("--pack", f"an integer in [1, {MAX_PACK}]"),
    "seeds": ("--seeds", "an integer in [1, 1000]"),
    "jobs": ("--jobs", "an integer >= 1"),
    "cpus_per_run": ("--cpus-per-run", "a whole number >= 1 (Ray takes fractions > 0)"),
    "gpus_per_run": ("--gpus-per-run", "a number >= 0"),
    "max_retries": ("--max-retries", "an integer >= 0"),
    "executor": ("--executor", f"one of {', '.join(EXECUTORS)}"),
}
Finite = Field(allow_inf_nan=False)


class StudyOptions(BaseModel):
    """Every flag of ``resattn study``, parsed (``--set``, ``--data_dir`` and ``--download`` as the
    ``overrides`` dict; ``--slurm`` as the ``slurm`` dict) and checked; ``poll`` is how often the
    scheduler looks again for runs another runner holds (seconds)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    study: str
    profile: str = "quick"
    pack: Annotated[int, Field(strict=True, ge=1, le=MAX_PACK)] | None = None
    seeds: Annotated[int, Field(strict=True, ge=1, le=1000)] | None = None
    jobs: Annotated[int, Field(strict=True, ge=1)] = 1
    cpus_per_run: Annotated[float, Field(gt=0), Finite] | None = None
    gpus_per_run: Annotated[float, Field(ge=0), Finite] = 0
    max_retries: Annotated[int, Field(strict=True, ge=0)] = 1
    executor: Literal[EXECUTORS] = "local"
    overrides: dict[str, Any] = {}
    variants: list[str] | None = None
    force: bool = False
    dry_run: bool = False
    wandb: str | None = None  # checked with WANDB_MODE by wandb_runs.decide_mode
    project: str = WANDB_PROJECT
    entity: str | None = None
    ray_address: str | None = None
    slurm: dict[str, Any] = {}
    runs_dir: Path = Path("runs")
    reports_dir: Path = Path("reports")
    poll: float = 5.0

    @model_validator(mode="after")
    def _check(self) -> StudyOptions:
        if self.cpus_per_run is not None and self.executor != "ray" and not float(self.cpus_per_run).is_integer():
            flag, allowed = ALLOWED["cpus_per_run"]
            raise ValueError(f"{flag} {self.cpus_per_run!r}: must be {allowed}.")
        if self.slurm and self.executor != "slurm":
            raise ValueError(f"--slurm is for --executor slurm, not --executor {self.executor}.")
        if self.executor == "slurm":  # checked even when nothing is left to train: the flags are checked, always
            check_slurm(self.slurm)
        if self.executor == "ray":
            check_reachable(self.ray_address)
        check_folder(self.reports_dir, "--reports-dir")
        check_folder(self.runs_dir, "--runs-dir")
        return self

    @classmethod
    def checked(cls, **flags: Any) -> StudyOptions:
        """The options of ``flags``, or a ValueError in one line naming the first bad flag."""
        try:
            return cls(**flags)
        except ValidationError as err:
            first = err.errors()[0]
            if first["type"] == "value_error":  # raised by _check (or a check it calls): its own line
                raise first["ctx"]["error"] from None
            name = first["loc"][0]
            if name not in ALLOWED:
                raise ValueError(f"{name}: {first['msg']}.") from None
            flag, allowed = ALLOWED[name]
            raise ValueError(f"{flag} {flags[name]!r}: must be {allowed}.") from None

    def worker(self, wandb_mode: str) -> WorkerOptions:
        """What each worker of this study is started with, in the W&B mode decided once for the study."""
        return WorkerOptions(wandb_mode=wandb_mode, project=self.project, entity=self.entity)


# Each flag's default, written once (above); the command-line parsers show and use these.
DEFAULTS = {name: field.default for name, field in StudyOptions.model_fields.items()}


class WorkerOptions(BaseModel):
    """What a study worker (``python -m resattn.study.worker``) is started with. The executors pass
    the record whole, as JSON (``--options``), and the worker validates it whole: no flag is spelled
    out and parsed again on the way. ``threads``: torch's CPU threads (None: all cores);
    ``parent_pid``: the process whose death stops the worker (with a checkpoint)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    wandb_mode: Literal[WANDB_MODES] = "offline"
    project: str = WANDB_PROJECT
    entity: str | None = None
    threads: Annotated[int, Field(ge=1)] | None = None
    parent_pid: int | None = None


def check_reachable(address: str | None, timeout: float = 5.0) -> None:
    """A Ray address ``HOST:PORT`` (``--ray-address``, else ``RAY_ADDRESS``) must answer before the
    study writes anything (``ray.init`` would retry an unreachable one for good); ``auto`` and
    ``ray://`` addresses are left to Ray."""
    address = address or os.environ.get("RAY_ADDRESS")
    if not address or address == "auto" or "://" in address:
        return
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit():
        raise ValueError(f"--ray-address {address!r}: expected auto or HOST:PORT, e.g. 10.0.0.1:6379.")
    try:
        socket.create_connection((host, int(port)), timeout=timeout).close()
    except OSError as err:
        raise ValueError(
            f"--ray-address {address}: nothing answers there ({err.strerror or err}); start the cluster "
            "(ray start --head) or give its address, or leave --ray-address out for a local Ray instance."
        ) from err


def check_slurm(parameters: dict) -> None:
    """SLURM is here (``sbatch`` on PATH), or the ``--slurm`` parameters name another submitit
    cluster; else submitit would quietly run the array on this machine."""
    if parameters.get("cluster") is None and shutil.which("sbatch") is None:
        raise ValueError(
            "--executor slurm: no SLURM here (no sbatch on PATH); run where SLURM is, or add --slurm cluster=local "
            "to run the array on this machine."
        )
