"""Callbacks of a study run: progress for the runner, a history that survives resumes, resume
checkpoints (every epoch and on SIGTERM / Ctrl-C) and the divergence guard. Wall time comes from
Lightning's :class:`~lightning.pytorch.callbacks.Timer` (stateful: it sums the segments of a
resumed run)."""

from __future__ import annotations

import math
import shutil
import signal
import time
import warnings
from datetime import datetime, timezone
from pathlib import Path

import torch
from lightning.pytorch.callbacks import Callback, Checkpoint, Timer
from lightning.pytorch.utilities.exceptions import SIGTERMException

from resattn.study.store import write_json_atomic


class Diverged(RuntimeError):
    """A non-finite training loss: the run stops and is recorded as diverged. ``members`` maps each
    diverged seed of the run (its index in a pack; 0 for a run alone) to (step, epoch, loss)."""

    def __init__(self, members: dict[int, tuple[int, int, float]]) -> None:
        step, epoch, loss = members[min(members)]
        super().__init__(f"non-finite training loss ({loss}) at step {step} (epoch {epoch})")
        self.step, self.epoch, self.loss, self.members = step, epoch, loss, dict(members)


class DivergenceGuard(Callback):
    """Watches the training loss of each seed of the run (one, or the K of a pack) without a host
    sync per step: the first non-finite step and loss of each seed are kept on the device and read
    every ``every`` steps, at each epoch's end (before its checkpoint) and when a checkpoint is
    written, so a divergence is found at most ``every`` steps late but recorded at its own step. A
    seed that diverged is listed in ``diverged``; when every seed has, training stops
    (:class:`Diverged`). In a pack the others train on: each seed has its own parameters, so NaNs
    stay in the diverged one's slice."""

    def __init__(self, every: int = 100) -> None:
        self.every = every
        self.diverged: dict[int, tuple[int, int, float]] = {}  # seed index -> (step, epoch, loss)
        self._first = self._loss = self._step = None
        self._per_epoch = 0

    def on_train_start(self, trainer, pl_module) -> None:
        self._step = torch.tensor(trainer.global_step, device=pl_module.device)
        self._per_epoch = max(1, int(trainer.num_training_batches)) if trainer.num_training_batches else 1

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        losses = (outputs.get("losses", outputs["loss"]) if isinstance(outputs, dict) else outputs).detach().reshape(-1)
        if self._first is None:
            self._first = torch.full_like(losses, -1, dtype=torch.long)
            self._loss = torch.zeros_like(losses, dtype=torch.float32)
        self._step += 1  # = trainer.global_step after this optimiser step, counted on the device
        new = ~torch.isfinite(losses) & (self._first < 0)
        self._first = torch.where(new, self._step, self._first)
        self._loss = torch.where(new, losses.float(), self._loss)
        if trainer.global_step % self.every == 0:
            self.check()

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        self.check()

    def on_train_end(self, trainer, pl_module) -> None:
        self.check()

    def check(self, stop: bool = True) -> None:
        """Read the device state (one sync); raise :class:`Diverged` if every seed has diverged."""
        if self._first is None:
            return
        steps, losses = torch.stack([self._first.double(), self._loss.double()]).tolist()  # one host read
        for k, (step, loss) in enumerate(zip(steps, losses)):
            step = int(step)
            if step >= 0 and k not in self.diverged:
                self.diverged[k] = (step, (step - 1) // self._per_epoch, loss)
        if stop and len(self.diverged) == self._first.numel():
            raise Diverged(self.diverged)

    def state_dict(self) -> dict:
        self.check(stop=False)
        return {"diverged": {str(k): list(v) for k, v in self.diverged.items()}}

    def load_state_dict(self, state: dict) -> None:
        self.diverged = {int(k): tuple(v) for k, v in state["diverged"].items()}
        self._first = None  # restarts the device state; seeds already diverged stay recorded


class StudyProgress(Callback):
    """Writes ``progress.json`` (epoch, fraction of the run, last losses) about 50 times a run, for the
    runner's display; every executor reads the same file. No host read between epochs: the losses
    are read from the device at each epoch's end (where the epoch's metrics are computed anyway),
    the step is the trainer's counter."""

    KEYS = ("train/loss", "val/err1")

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._every = 1
        self._metrics: dict[str, float] = {}

    def write(self, trainer) -> None:
        if not trainer.is_global_zero:
            return
        write_json_atomic(
            self.path,
            {
                "epoch": trainer.current_epoch,
                "max_epochs": trainer.max_epochs,
                "step": trainer.global_step,
                "fraction": trainer.global_step / max(1, trainer.estimated_stepping_batches),
                **self._metrics,
            },
        )

    def _read_metrics(self, trainer) -> None:
        self._metrics.update({k: round(float(v), 4) for k, v in trainer.callback_metrics.items() if k in self.KEYS})

    def on_train_start(self, trainer, pl_module) -> None:
        self._every = max(1, int(trainer.estimated_stepping_batches) // 50)

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        self._read_metrics(trainer)
        self.write(trainer)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.global_step % self._every == 0:
            self.write(trainer)


class RunHistory(Callback):
    """What a result needs from the whole run, kept in every checkpoint so that a resumed run ends
    with the same record as an uninterrupted one: one row of metrics per epoch, the training-step
    time and images of every device (first epoch excluded: warm-up), the wall time of fitting
    (from ``timer``, summed over segments) and the resumes."""

    def __init__(self, timer: Timer) -> None:
        self.timer = timer
        self.epochs: list[dict] = []
        self.train_time, self.train_images = 0.0, 0
        self.resumes: list[dict] = []
        self.started_at = datetime.now(timezone.utc).isoformat()  # of the first segment
        self.resuming: dict | None = None  # set before a resumed fit; appended to resumes once restored
        self._epoch_start: float | None = None
        self._batches = 0

    @property
    def wall_time(self) -> float:
        return float(self.timer.time_elapsed("train"))

    @property
    def images_per_second(self) -> float | None:
        return self.train_images / self.train_time if self.train_time else None

    def record_epoch(self, trainer) -> None:
        """Append the finished epoch's metrics (called at the end of the epoch, before its checkpoint)."""
        if self.epochs and self.epochs[-1]["epoch"] >= trainer.current_epoch:
            return  # recorded before the checkpoint this segment resumed from
        metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if not k.startswith("test/")}
        self.epochs.append({"epoch": trainer.current_epoch, "step": trainer.global_step, **metrics})

    def on_train_start(self, trainer, pl_module) -> None:
        if self.resuming is not None:
            self.resumes.append(self.resuming)
            self.resuming = None

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        self._epoch_start, self._batches = time.perf_counter(), 0

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self._batches += 1

    def _stop_clock(self, trainer) -> None:
        if self._epoch_start is None:
            return
        # the first epoch is warm-up, unless the run has no other
        only = trainer.max_epochs == 1 or 0 < trainer.max_steps <= trainer.num_training_batches
        if trainer.current_epoch > 0 or only:
            self.train_time += time.perf_counter() - self._epoch_start
            # every device trains its own batch of batch_size images per step
            self.train_images += self._batches * trainer.datamodule.hparams.batch_size * trainer.world_size
        self._epoch_start = None

    def on_validation_epoch_start(self, trainer, pl_module) -> None:
        if trainer.training:
            self._stop_clock(trainer)

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        self._stop_clock(trainer)

    def state_dict(self) -> dict:
        return {
            "epochs": self.epochs,
            "train_time": self.train_time,
            "train_images": self.train_images,
            "resumes": self.resumes,
            "started_at": self.started_at,
        }

    def load_state_dict(self, state: dict) -> None:
        self.epochs, self.resumes = state["epochs"], state["resumes"]
        self.train_time, self.train_images = state["train_time"], state["train_images"]
        self.started_at = state["started_at"]


class ResumeCheckpoint(Checkpoint):
    """``last.ckpt`` for resuming: written at the end of every epoch (after the epoch's metrics went
    into ``history``; the last one holds the final weights) and on SIGTERM, which Lightning turns
    into a stop after the current batch (the study worker turns Ctrl-C into SIGTERM). Writes are
    atomic (Lightning saves to a temporary file and renames it); before each, the free disk space
    is checked, so a full disk stops the run with a clear error and the previous checkpoint stays.

    Hand-written rather than Lightning's ``ModelCheckpoint`` + ``OnExceptionCheckpoint`` because
    exact resume needs what they do not give: the epoch is recorded in ``history`` before the
    save (a :class:`Checkpoint` subclass runs after the LightningModule's epoch-end hook, so the
    epoch's metrics are there), a checkpoint only on a stop request (not on divergence or a failed
    write), the disk-space check, and a stop during validation deferred to the end of the epoch (a
    checkpoint there would hold half a validation, which corrupted the next epoch's metrics).
    """

    def __init__(self, path: Path, history: RunHistory) -> None:
        self.path, self.history = Path(path), history
        self.saved_on_stop: int | None = None  # the step of the checkpoint saved on SIGTERM / Ctrl-C
        self._saved_step: int | None = None
        self._deferred: tuple | None = None  # a SIGTERM that arrived during validation
        self._lightning_handler = None

    def save(self, trainer) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        ensure_space(self.path, checkpoint_bytes(trainer, self.path))
        try:
            trainer.save_checkpoint(self.path, weights_only=False)
        except OSError as err:
            raise CheckpointError(f"could not write the checkpoint {self.path}: {err}") from err
        self._saved_step = trainer.global_step

    def on_train_start(self, trainer, pl_module) -> None:
        """Wrap Lightning's SIGTERM handler (registered just before training starts; Lightning puts the
        original back at teardown): a SIGTERM during validation is held until the epoch's end."""
        if signal.getsignal(signal.SIGTERM) in (signal.SIG_DFL, signal.SIG_IGN, None):
            return
        self._lightning_handler = signal.getsignal(signal.SIGTERM)

        def on_sigterm(signum, frame) -> None:
            if trainer.validating:
                self._deferred = (signum, frame)
            else:
                self._lightning_handler(signum, frame)

        signal.signal(signal.SIGTERM, on_sigterm)

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        self.history.record_epoch(trainer)
        self.save(trainer)
        if self._deferred is not None:  # Lightning stops right after the epoch's end hooks
            self._lightning_handler(*self._deferred)
            self._deferred = None

    def on_exception(self, trainer, pl_module, exception: BaseException) -> None:
        if isinstance(exception, SIGTERMException) and trainer.global_step > 0:
            if self._saved_step != trainer.global_step:
                self.save(trainer)
            self.saved_on_stop = trainer.global_step


def resume_checkpoint(path: Path) -> int | None:
    """The step of the checkpoint at ``path`` if it is a readable Lightning checkpoint, else None; an
    unreadable one is moved aside with a warning (the run then starts from scratch)."""
    if not path.is_file():
        return None
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=False)
        missing = {"state_dict", "loops", "optimizer_states", "global_step"} - set(ckpt)
        if missing:
            raise ValueError(f"not a resumable Lightning checkpoint (no {', '.join(sorted(missing))})")
    except Exception as err:
        aside = path.with_name(f"{path.name}.unreadable-{time.strftime('%Y%m%d-%H%M%S')}")
        path.rename(aside)
        warnings.warn(
            f"checkpoint {path} is unreadable ({type(err).__name__}: {err}); moved it to {aside.name} "
            "and training this run from scratch.",
            stacklevel=2,
        )
        return None
    return int(ckpt["global_step"])


class CheckpointError(OSError):
    """A checkpoint could not be written (no space, quota, permissions)."""


def checkpoint_bytes(trainer, path: Path) -> int:
    """Expected size of a checkpoint: the previous one's, else parameters + buffers + optimizer state."""
    if path.is_file():
        return path.stat().st_size
    module = trainer.lightning_module
    tensors = [*module.parameters(), *module.buffers()]
    for optimizer in trainer.optimizers:
        tensors += [v for state in optimizer.state.values() for v in state.values() if torch.is_tensor(v)]
    return sum(t.numel() * t.element_size() for t in tensors)


def ensure_space(path: Path, needed: int, margin: float = 1.5) -> None:
    """Raise :class:`CheckpointError` unless the disk of ``path`` has ``margin`` x ``needed`` bytes
    free (the temporary copy lives next to the old checkpoint until the rename)."""
    free = shutil.disk_usage(path.parent).free
    if free < margin * needed:
        raise CheckpointError(
            f"no disk space for the checkpoint {path}: it needs about {math.ceil(margin * needed / 2**20)} MiB, "
            f"{free // 2**20} MiB are free. Free some space and run the same command again: the run resumes "
            "from its previous checkpoint."
        )
