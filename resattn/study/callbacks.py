"""Callbacks of a study run: progress for the runner, a history that survives resumes, resume
checkpoints (every epoch and on SIGTERM / Ctrl-C) and the divergence guard."""

from __future__ import annotations

import math
import shutil
import time
from datetime import datetime, timezone
from pathlib import Path

import torch
from lightning.pytorch.callbacks import Callback, Checkpoint
from lightning.pytorch.utilities.exceptions import SIGTERMException

from resattn.study.results import write_json_atomic


class Diverged(RuntimeError):
    """A non-finite training loss: the run stops and is recorded as diverged."""

    def __init__(self, step: int, epoch: int, loss: float) -> None:
        super().__init__(f"non-finite training loss ({loss}) at step {step} (epoch {epoch})")
        self.step, self.epoch, self.loss = step, epoch, loss


class DivergenceGuard(Callback):
    """Stops training at the first non-finite loss (raises :class:`Diverged`, before any later step)."""

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        loss = outputs["loss"] if isinstance(outputs, dict) else outputs
        if loss is not None and not torch.isfinite(loss).item():
            raise Diverged(trainer.global_step, trainer.current_epoch, float(loss))


class StudyProgress(Callback):
    """Writes ``progress.json`` (epoch, fraction of the run, last losses) about 50 times a run, for the
    runner's display; every executor reads the same file."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._every = 1

    def write(self, trainer) -> None:
        if not trainer.is_global_zero:
            return
        metrics = {
            k: round(float(v), 4) for k, v in trainer.callback_metrics.items() if k in ("train/loss", "val/err1")
        }
        write_json_atomic(
            self.path,
            {
                "epoch": trainer.current_epoch,
                "max_epochs": trainer.max_epochs,
                "step": trainer.global_step,
                "fraction": trainer.global_step / max(1, trainer.estimated_stepping_batches),
                **metrics,
            },
        )

    def on_train_start(self, trainer, pl_module) -> None:
        self._every = max(1, int(trainer.estimated_stepping_batches) // 50)

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        self.write(trainer)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.global_step % self._every == 0:
            self.write(trainer)


class RunHistory(Callback):
    """What a result needs from the whole run, kept in every checkpoint so that a resumed run ends
    with the same record as an uninterrupted one: one row of metrics per epoch, the training-step
    time and images (first epoch excluded: warm-up), wall time of earlier segments and the resumes."""

    def __init__(self) -> None:
        self.epochs: list[dict] = []
        self.train_time, self.train_images = 0.0, 0
        self.earlier_wall_time = 0.0
        self.resumes: list[dict] = []
        self.started_at = datetime.now(timezone.utc).isoformat()  # of the first segment
        self.resuming: dict | None = None  # set before a resumed fit; appended to resumes once restored
        self._segment_start = time.time()
        self._epoch_start: float | None = None
        self._batches = 0

    @property
    def wall_time(self) -> float:
        return self.earlier_wall_time + time.time() - self._segment_start

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
        if trainer.current_epoch > 0 or trainer.max_epochs == 1:  # the first epoch is warm-up
            self.train_time += time.perf_counter() - self._epoch_start
            self.train_images += self._batches * trainer.datamodule.hparams.batch_size
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
            "wall_time": self.wall_time,
            "resumes": self.resumes,
            "started_at": self.started_at,
        }

    def load_state_dict(self, state: dict) -> None:
        self.epochs, self.resumes = state["epochs"], state["resumes"]
        self.train_time, self.train_images = state["train_time"], state["train_images"]
        self.earlier_wall_time, self.started_at = state["wall_time"], state["started_at"]


class ResumeCheckpoint(Checkpoint):
    """``last.ckpt`` for resuming: written at the end of every epoch (after the epoch's metrics went
    into ``history``; the last one holds the final weights) and on SIGTERM, which Lightning turns
    into a stop after the current batch (the study worker turns Ctrl-C into SIGTERM). Writes are
    atomic (Lightning saves to a temporary file and renames it); before each, the free disk space
    is checked, so a full disk stops the run with a clear error and the previous checkpoint stays.

    A :class:`Checkpoint` subclass, so Lightning calls its ``on_train_epoch_end`` after the
    LightningModule's (whose epoch metrics are then in ``trainer.callback_metrics``).
    """

    def __init__(self, path: Path, history: RunHistory) -> None:
        self.path, self.history = Path(path), history
        self.saved_on_stop: int | None = None  # the step of the checkpoint saved on SIGTERM / Ctrl-C
        self._saved_step: int | None = None
        self._deferred_stop = False

    def save(self, trainer) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        ensure_space(self.path, checkpoint_bytes(trainer, self.path))
        try:
            trainer.save_checkpoint(self.path, weights_only=False)
        except OSError as err:
            raise CheckpointError(f"could not write the checkpoint {self.path}: {err}") from err
        self._saved_step = trainer.global_step

    def _defer_stop(self, trainer) -> None:
        # Lightning stops at the next validation batch on SIGTERM, and a checkpoint there would hold
        # half a validation. Validation is short: the stop waits for the end of the epoch instead.
        if trainer.training or trainer.state.fn != "fit" or not trainer.received_sigterm:
            return
        trainer._signal_connector.received_sigterm = False
        self._deferred_stop = True

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        self._defer_stop(trainer)

    def on_validation_end(self, trainer, pl_module) -> None:
        self._defer_stop(trainer)

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        self.history.record_epoch(trainer)
        self.save(trainer)
        if self._deferred_stop:  # Lightning stops right after the epoch's end hooks
            trainer._signal_connector.received_sigterm = True

    def on_exception(self, trainer, pl_module, exception: BaseException) -> None:
        if isinstance(exception, SIGTERMException) and trainer.global_step > 0:
            if self._saved_step != trainer.global_step:
                self.save(trainer)
            self.saved_on_stop = trainer.global_step


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
