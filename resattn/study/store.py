"""The run store: every file of a study run named once, written atomically, read with checks, locked.

A run lives in ``runs/<study>/<run id>/``; :class:`RunDir` names each of its files (nowhere else
spells them). ``run.json`` holds the run's :class:`~resattn.study.record.RunSpec` (written by the
runner), ``config.yaml`` the same settings in the single-run CLI's format, so that ``python -m resattn
fit --config runs/<study>/<run id>/config.yaml`` reproduces the run by hand, and ``result.json`` its
:class:`~resattn.study.record.RunResult` (written by the worker). Both are validated when read: a file
that does not parse as one is a :class:`StoreError` naming it, never a crash and never a silent skip.
:class:`RunLock` keeps two processes from training one run; the exit codes of the worker and the study
command are here too.

No torch here: the runner and the report read the store without importing it.
"""

from __future__ import annotations

import json
import os
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import yaml
from filelock import FileLock, Timeout
from pydantic import ValidationError

from resattn.study.record import RunResult, RunSpec, digest

# Exit codes of the worker (python -m resattn.study.worker) and of the study command.
EXIT_OK, EXIT_FAILED, EXIT_BAD_INPUT = 0, 1, 2
EXIT_NO_CHECKPOINT = 74  # a checkpoint could not be written (EX_IOERR): disk full, quota, permissions
EXIT_BUSY = 75  # another process holds the run's lock (EX_TEMPFAIL)
EXIT_STOPPED = 130  # the study command was interrupted (SIGINT / SIGTERM); checkpoints were saved
EXIT_INTERRUPTED = 143  # a worker stopped by SIGTERM / Ctrl-C after saving a checkpoint


class StoreError(ValueError):
    """A file of the run store that is not what it must be (names the file and what is wrong)."""


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
