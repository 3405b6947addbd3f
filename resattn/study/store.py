"""The run store: every file of a study run named once, and typed records of what a run is and gave.

A run lives in ``runs/<study>/<run id>/``; :class:`RunDir` names each of its files (nowhere else
spells them). :class:`RunSpec` (``run.json``, written by the runner) says what to train;
``config.yaml`` holds the same settings in the single-run CLI's format, so that ``python -m resattn
fit --config runs/<study>/<run id>/config.yaml`` reproduces the run by hand; :class:`RunResult`
(``result.json``, written by the worker) is what it gave. Both are validated when read: a file that
does not parse as one is a :class:`StoreError` naming it, never a crash and never a silent skip.

No torch here: the runner and the report read the store without importing it.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Literal

import numpy as np
import yaml
from filelock import FileLock, Timeout
from pydantic import BaseModel, ConfigDict, ValidationError

# Exit codes of the worker (python -m resattn.study.worker) and of the study command.
EXIT_OK, EXIT_FAILED, EXIT_BAD_INPUT = 0, 1, 2
EXIT_NO_CHECKPOINT = 74  # a checkpoint could not be written (EX_IOERR): disk full, quota, permissions
EXIT_BUSY = 75  # another process holds the run's lock (EX_TEMPFAIL)
EXIT_STOPPED = 130  # the study command was interrupted (SIGINT / SIGTERM); checkpoints were saved
EXIT_INTERRUPTED = 143  # a worker stopped by SIGTERM / Ctrl-C after saving a checkpoint

SECTIONS = ("model", "data", "trainer")
SEEDS = ("seed_everything", "data.seed", "data.noise_seed")  # set per run from its seed
# Settings that do not change a run's result, so they are not part of its identity (the run id):
# where the data lies and how it is fetched, evaluation batching, workers, logging and display, the
# device kind and the memory layout or compilation of the same maths. Precision is part of it.
NOT_IDENTITY = {
    "data": {"data_dir", "download", "eval_batch_size", "num_workers"},
    "model": {"channels_last", "compile"},
    "trainer": {
        "accelerator",
        "strategy",
        "enable_progress_bar",
        "enable_model_summary",
        "enable_checkpointing",
        "log_every_n_steps",
        "num_sanity_val_steps",
        "default_root_dir",
        "logger",
        "callbacks",
        "profiler",
    },
}


class StoreError(ValueError):
    """A file of the run store that is not what it must be (names the file and what is wrong)."""


def digest(obj: Any, n: int = 8) -> str:
    """A short stable hash of a JSON-able object."""
    return hashlib.sha1(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:n]


def is_identity(key: str) -> bool:
    """Whether the setting ``section.name`` changes a run's result."""
    section, _, name = key.partition(".")
    return name not in NOT_IDENTITY.get(section, set())


class RunSpec(BaseModel):
    """What to train: one variant x seed of a study, with its settings.

    ``config`` is the single-run CLI's config (``seed_everything``, ``model``, ``data``,
    ``trainer``). Once the runner has resolved it with the CLI's parser it holds every setting whose
    value differs from the class default, with the precision and the data folder always spelled
    out; that is what ``config.yaml`` holds. ``overrides`` are the command-line settings (``--set``)
    that changed what the profile and study set; ``factor_settings`` the settings the factor
    levels set; ``reductions`` how the profile departs from the paper's protocol.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    study: str
    variant: str
    levels: dict[str, str]
    seed: int
    profile: str
    config: dict[str, Any]
    overrides: dict[str, Any] = {}
    factor_settings: list[str] = []
    reductions: dict[str, str] = {}
    # A hash of the data files' content (resattn.data.data_fingerprint), set when the run is planned;
    # None for generated data and image folders (their settings and path say what they are) and in
    # the specs of earlier versions. ``data_official``: the files are the official CIFAR ones.
    data_fingerprint: str | None = None
    data_official: bool = True

    @property
    def precision(self) -> str:
        return str(self.config["trainer"]["precision"])

    @property
    def synthetic(self) -> bool:
        """Trained on the generated stand-in data (the smoke profile), not on a real data set."""
        return self.config["data"].get("dataset") == "synthetic"  # never the default: absent is real data

    @property
    def identity(self) -> dict[str, Any]:
        """The settings that change the result: model, data content, training, precision, seeds. The
        data's content is its fingerprint (the same files in another folder: the same id; other
        files: another); an image folder's path and workers are its content and augmentation
        streams: they count there."""
        folder = self.config["data"].get("dataset") == "imagefolder"  # absent: the default data set
        keep = {"data.data_dir", "data.num_workers"} if folder else set()
        files = {"data_fingerprint": self.data_fingerprint} if self.data_fingerprint else {}
        return {
            "seed_everything": self.config["seed_everything"],
            **{
                s: {k: v for k, v in self.config[s].items() if is_identity(f"{s}.{k}") or f"{s}.{k}" in keep}
                for s in SECTIONS
            },
            **files,
        }

    @property
    def run_id(self) -> str:
        """``<variant>-s<seed>-<hash of the identity>``: stable, and the same wherever the data lies."""
        return f"{self.variant}-s{self.seed}-{digest(self.identity)}"

    @property
    def settings_digest(self) -> str:
        """A hash of what the runs of one study configuration share: the identity without the seeds
        and the settings of the factor levels. Runs of one configuration label with another digest
        were trained before the profile or study YAML changed."""
        identity = self.identity
        shared = {
            s: {
                k: v
                for k, v in identity[s].items()
                if f"{s}.{k}" not in self.factor_settings and f"{s}.{k}" not in SEEDS
            }
            for s in SECTIONS
        }
        if self.data_fingerprint:
            shared["data_fingerprint"] = self.data_fingerprint
        return digest(shared)

    @property
    def configuration(self) -> str:
        """The study configuration this run belongs to (its report folder): the profile, then the
        precision unless fp32, then ``data`` and the start of the data's fingerprint unless it is
        the official CIFAR files, then a hash of the command-line settings that change results."""
        label = self.profile if self.precision == "32-true" else f"{self.profile}-{self.precision}"
        if self.data_fingerprint and not self.data_official:
            label += f"-data{self.data_fingerprint[:6]}"
        changed = {k: v for k, v in self.overrides.items() if is_identity(k) and k != "trainer.precision"}
        return f"{label}-{digest(changed, 6)}" if changed else label

    def dump(self) -> dict[str, Any]:
        """The record as stored: with its id and precision spelled out (derived, dropped when read)."""
        return {"run_id": self.run_id, "precision": self.precision, **self.model_dump(mode="json")}


class Divergence(BaseModel):
    """Where a run's training loss became non-finite."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    step: int
    epoch: int
    loss: str


Status = Literal["finished", "diverged"]


class RunResult(RunSpec):
    """What a run gave (``result.json``): its spec, provenance, cost, metrics and probes."""

    status: Status
    git_commit: str | None  # None: trained by an installed package, not a checkout ("unknown" in earlier versions)
    versions: dict[str, str]
    python: str
    device: str
    world_size: int
    started_at: str
    finished_at: str
    wall_time_s: float
    train_images_per_s: float | None
    params: int
    macs: int
    flops: int
    epochs: list[dict[str, float | int]]
    resumes: list[dict[str, Any]]
    test: dict[str, float]
    test_error: float | None
    probe: dict[str, float]  # of the final weights (ResponseProbe), on the split ``probe_split``
    noise_rate: float | None
    wandb: dict[str, Any]
    diverged: Divergence | None = None
    probe_split: str | None = None  # "test": the probe ran when the final weights were tested
    pack: dict[str, Any] | None = None  # trained in a pack: its folder, runs, seeds, images/s of all seeds
    # The unit of the errors in ``epochs`` and ``test`` (``test_error`` is always percent). Results
    # written before errors were logged in percent lack the field: theirs are fractions.
    error_unit: Literal["percent", "fraction"] = "fraction"
    # What the run trained and was tested on (resattn.data.CIFARDataModule.provenance): realised image
    # counts and a hash of their pixels and labels. None in results of earlier versions: data unrecorded.
    data: dict[str, Any] | None = None
    # Which test images the final weights got wrong (top-1), in the test split's order, as
    # :func:`pack_bits` writes them; None for results of earlier versions, diverged runs and runs
    # tested on several devices (their images arrive in the ranks' order).
    test_wrong: str | None = None
    # What code trained it (resattn.provenance): resattn's installed version; whether its git checkout
    # had uncommitted changes (None: no checkout); a hash of the resolved config (``digest(config,
    # 16)``, the settings of config.yaml). None in results of earlier versions: unrecorded.
    version: str | None = None
    git_dirty: bool | None = None
    config_digest: str | None = None

    def wrong_images(self) -> np.ndarray | None:
        """The per-image top-1 outcomes of the test (True: wrong), or None where not recorded."""
        return None if self.test_wrong is None else unpack_bits(self.test_wrong)

    def epoch_error(self, epoch: dict[str, float | int], key: str = "val/err1") -> float | None:
        """An error of one entry of ``epochs`` in percent, whatever unit the result was written in."""
        value = epoch.get(key)
        return None if value is None else float(value) * (100.0 if self.error_unit == "fraction" else 1.0)


def pack_bits(flags: np.ndarray) -> str:
    """Booleans as ``"<count>:<base64 of the packed bits>"``: 10,000 test images in 1.7 kB of JSON."""
    flags = np.asarray(flags, dtype=bool).ravel()
    return f"{flags.size}:{base64.b64encode(np.packbits(flags)).decode()}"


def unpack_bits(text: str) -> np.ndarray:
    """The booleans :func:`pack_bits` wrote."""
    count, _, data = text.partition(":")
    return np.unpackbits(np.frombuffer(base64.b64decode(data), dtype=np.uint8), count=int(count)).astype(bool)


@contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """A temporary file name next to ``path`` (same suffix) to write to; renamed over ``path`` when the
    block succeeds, removed when it fails. Readers see the old file or the new one, never half of one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.{os.getpid()}-{threading.get_ident()}.tmp{path.suffix}")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_json_atomic(path: Path, obj: Any) -> None:
    """Write JSON to a temp file in the same folder, fsync, then rename over ``path``."""
    with atomic_path(path) as tmp, open(tmp, "w") as f:
        json.dump(obj, f, indent=2, default=str)
        f.flush()
        os.fsync(f.fileno())


def read_json(path: Path) -> Any:
    """The JSON in ``path``; FileNotFoundError if there is none, StoreError if it cannot be read or parsed."""
    try:
        text = Path(path).read_text()
    except FileNotFoundError:
        raise
    except OSError as err:
        raise StoreError(f"{path} cannot be read ({err.strerror}).") from err
    try:
        return json.loads(text)
    except ValueError as err:
        raise StoreError(f"{path} is not valid JSON ({err}); move it away or delete it.") from err


class RunDir:
    """The folder of one run and every file in it."""

    LOCK, HOLDER = "lock", "lock.json"
    CHECKPOINT = "last.ckpt"

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)

    @classmethod
    def of(cls, runs_dir: Path | str, spec: RunSpec) -> RunDir:
        return cls(Path(runs_dir) / spec.study / spec.run_id)

    def __repr__(self) -> str:
        return f"RunDir({str(self.path)!r})"

    def __str__(self) -> str:
        return str(self.path)

    @property
    def name(self) -> str:
        return self.path.name

    spec = property(lambda self: self.path / "run.json", doc="the RunSpec, written by the runner")
    config = property(lambda self: self.path / "config.yaml", doc="the single-run CLI config of the run")
    result = property(lambda self: self.path / "result.json", doc="the RunResult, written by the worker")
    progress = property(lambda self: self.path / "progress.json", doc="how far the worker is")
    lock = property(lambda self: self.path / self.LOCK, doc="the run lock (held by the worker)")
    holder = property(lambda self: self.path / self.HOLDER, doc="who holds the lock, for messages")
    checkpoints = property(lambda self: self.path / "checkpoints")
    checkpoint = property(lambda self: self.path / "checkpoints" / self.CHECKPOINT, doc="the resume checkpoint")
    wandb_ids = property(lambda self: self.path / "wandb.json", doc="W&B run id, segments, abandoned ids")
    masks = property(lambda self: self.path / "masks.npz", doc="attention masks of test images")
    log = property(lambda self: self.path / "train.log", doc="the worker's output")
    csv = property(lambda self: self.path / "csv", doc="CSVLogger folder: one version per segment")
    attic = property(lambda self: self.path / "attic", doc="earlier results and checkpoints, moved aside")

    def write_spec(self, spec: RunSpec) -> None:
        """``run.json`` and ``config.yaml`` (the same settings in the single-run CLI's format)."""
        write_json_atomic(self.spec, spec.dump())
        with atomic_path(self.config) as tmp:
            tmp.write_text(
                f"# {spec.study} / {spec.run_id}: reproduce with `python -m resattn fit --config {self.config}`\n"
                + yaml.safe_dump(spec.config, sort_keys=False)
            )

    def read_spec(self) -> RunSpec:
        """The run's spec. Raises StoreError if ``run.json`` is not one (or not this folder's)."""
        return self._read(self.spec, RunSpec, "a run spec")

    def _read(self, path: Path, record: type[RunSpec], what: str, own: bool = True):
        raw = read_json(path)
        stored_id = raw.pop("run_id", None) if isinstance(raw, dict) else None
        if isinstance(raw, dict):
            raw.pop("precision", None)  # derived from the config
        try:
            value = record.model_validate(raw)
        except ValidationError as err:
            raise StoreError(
                f"{path} is not {what} ({_first_error(err)}). Move it away or delete it: the run then trains again."
            ) from err
        if own and (stored_id != self.name or value.run_id != self.name):
            raise StoreError(
                f"{path} belongs to run {stored_id or value.run_id}, not to its folder {self.name} (a copied folder, "
                "or one written by another version of resattn). Move it away or delete it."
            )
        return value

    def read_result(self, own: bool = True) -> RunResult | None:
        """The result, or None if the run has none yet; ``own=False`` for a result fetched into a
        folder of another name (from W&B).

        Raises:
            StoreError: ``result.json`` exists but is not a valid result of this run (names the file).
        """
        try:
            return self._read(self.result, RunResult, "a valid result", own)
        except FileNotFoundError:
            return None

    def write_result(self, result: RunResult) -> None:
        write_json_atomic(self.result, result.dump())

    def move_aside(self) -> Path | None:
        """Move the result and checkpoints into ``attic/<time>/`` (what ``--force`` does instead of deleting)."""
        items = [p for p in (self.result, self.checkpoints, self.masks) if p.exists()]
        if not items:
            return None
        stamp = time.strftime("%Y%m%d-%H%M%S")
        target, n = self.attic / stamp, 1
        while target.exists():  # two moves in one second: never over an earlier one
            target, n = self.attic / f"{stamp}-{n}", n + 1
        target.mkdir(parents=True)
        for item in items:
            os.replace(item, target / item.name)
        return target

    def run_lock(self) -> RunLock:
        return RunLock(self)


def _first_error(err: ValidationError) -> str:
    e = err.errors()[0]
    where = ".".join(str(x) for x in e["loc"]) or "<top level>"
    return f"{where}: {e['msg']}" + (f" ({len(err.errors()) - 1} more)" if len(err.errors()) > 1 else "")


def study_runs(runs_dir: Path | str, study: str) -> list[RunDir]:
    """Every run folder of a study (those with a ``run.json``)."""
    folder = Path(runs_dir) / study
    if not folder.is_dir():
        return []
    return [RunDir(p) for p in sorted(folder.iterdir()) if RunDir(p).spec.is_file()]


def study_dir(runs_dir: Path | str, study: str, part: str | None = None) -> Path:
    """``runs/<study>/``, or one of its folders that are not runs (their names start with ``_``):
    ``slurm`` (submitit's logs), ``wandb`` (results downloaded from W&B), ``report-<configuration>``
    (the W&B report run)."""
    folder = Path(runs_dir) / study
    return folder / f"_{part}" if part else folder


def pack_dir(run_dirs: list[RunDir]) -> RunDir:
    """The folder of a pack of runs of one study (``runs/<study>/_pack-<hash of the run ids>``): its
    checkpoint, progress and log (it is no run: it has no ``run.json``)."""
    return RunDir(run_dirs[0].path.parent / f"_pack-{digest(sorted(rd.name for rd in run_dirs))}")


def study_results(runs_dir: Path | str, study: str) -> list[RunResult]:
    """Every result of a study; a malformed one raises :class:`StoreError` naming its file."""
    return [r for r in (rd.read_result() for rd in study_runs(runs_dir, study)) if r is not None]


class RunLock:
    """Non-blocking exclusive lock on a run (``filelock``: a kernel ``flock`` on ``lock``).

    The kernel drops the lock the moment its holder ends, however it ends (SIGKILL and power loss
    included), so it can never go stale on a local disk; on NFS it is a POSIX lock the server
    releases when the client's lease expires. Who holds it (host, pid, since) is written to
    ``lock.json`` for the message other runners print.
    """

    def __init__(self, run_dir: RunDir) -> None:
        self.run_dir = run_dir
        self._lock = FileLock(run_dir.lock, timeout=0)

    def acquire(self, timeout: float = 0) -> bool:
        """True if this process now holds the lock; False if another one does (after ``timeout`` s)."""
        self.run_dir.path.mkdir(parents=True, exist_ok=True)
        try:
            self._lock.acquire(timeout=timeout)
        except Timeout:
            return False
        except OSError as err:
            raise OSError(
                err.errno,
                f"cannot lock {self.run_dir.lock} ({err.strerror}); the runs folder must be on a file system "
                "with file locks (local disk, NFS with locking)",
            ) from err
        since = time.strftime("%Y-%m-%d %H:%M:%S")
        write_json_atomic(self.run_dir.holder, {"host": socket.gethostname(), "pid": os.getpid(), "since": since})
        return True

    def release(self) -> None:
        if self._lock.is_locked:
            self._lock.release()

    def __enter__(self) -> bool:
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()

    def holder(self) -> str:
        """Who holds the lock, as its holder recorded it (only read for messages)."""
        try:
            info = json.loads(self.run_dir.holder.read_text())
            return f"pid {info['pid']} on {info['host']} since {info['since']}"
        except (OSError, ValueError, KeyError):
            return "another process"


def is_locked(run_dir: RunDir) -> bool:
    """Whether some live process holds the run's lock right now (probe: take it and drop it)."""
    if not run_dir.lock.exists():
        return False
    lock = FileLock(run_dir.lock, timeout=0)
    try:
        lock.acquire(timeout=0)
    except Timeout:
        return True
    lock.release()
    return False
