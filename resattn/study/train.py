"""One study run in its own process: ``python -m resattn.study.train RUN_DIR [--wandb MODE ...]``.

The per-run entry point of every executor. Builds the run from ``RUN_DIR/config.yaml`` with the
single-run CLI's parser (the same run ``python -m resattn fit --config RUN_DIR/config.yaml`` trains),
takes the run's lock, resumes from its checkpoint if there is one, trains with a Lightning Trainer,
logs to CSV and Weights & Biases, and writes ``result.json`` atomically; ``progress.json`` tells
the runner how far it is. The files are named in :mod:`resattn.study.store`.

Exit codes (``resattn.study.store``): 0 a result was written (finished or diverged); 75 another
process holds the run's lock or already wrote its result; 143 stopped by SIGTERM / Ctrl-C
(checkpoint saved: run again to resume); 74 a checkpoint could not be written (disk full); 2 the
run folder is not a valid run; anything else: the run failed (see its log).
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import threading
import time
import warnings
from datetime import datetime, timezone
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import numpy as np
import torch
from lightning.fabric.utilities.rank_zero import rank_zero_only
from lightning.pytorch.callbacks import Timer
from lightning.pytorch.loggers import CSVLogger
from lightning.pytorch.utilities.exceptions import SIGTERMException

from resattn.cli import build_run
from resattn.data import normalize
from resattn.machine import describe_device
from resattn.probes import mask_maps
from resattn.study import wandb_runs
from resattn.study.callbacks import (
    CheckpointError,
    Diverged,
    DivergenceGuard,
    ResumeCheckpoint,
    RunHistory,
    StudyProgress,
    resume_checkpoint,
)
from resattn.study.store import (
    EXIT_BAD_INPUT,
    EXIT_BUSY,
    EXIT_INTERRUPTED,
    EXIT_NO_CHECKPOINT,
    Divergence,
    RunDir,
    RunLock,
    RunResult,
    RunSpec,
    StoreError,
)
from resattn.summary import model_cost

MASK_IMAGES = 8  # test images whose attention masks are stored for the report's mask grid
PACKAGES = ("resattn", "torch", "torchvision", "lightning", "torchmetrics", "wandb", "numpy")


def git_commit() -> str:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            timeout=10,
            cwd=Path(__file__).resolve().parent,
        )
        return out.stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def package_versions() -> dict[str, str]:
    out = {}
    for name in PACKAGES:
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = "not installed"
    return out


class Interrupted(Exception):
    """Training was stopped by SIGTERM (or Ctrl-C); ``step`` is that of the checkpoint saved then (or None)."""

    def __init__(self, step: int | None) -> None:
        super().__init__(step)
        self.step = step


def train(run_dir: RunDir, wandb_mode: str = "offline", project: str = "resattn", entity: str | None = None):
    """Train the run of ``run_dir`` (resuming from its checkpoint if it has one) and write its result.

    Raises:
        Interrupted: stopped by SIGTERM / Ctrl-C (a checkpoint was saved).
        CheckpointError: a checkpoint could not be written (disk full, ...).
    """
    spec = run_dir.read_spec()
    step = resume_checkpoint(run_dir.checkpoint)
    ckpt_path = run_dir.checkpoint if step is not None else None
    timer = Timer(duration=None)
    history = RunHistory(timer)
    checkpoint = ResumeCheckpoint(run_dir.checkpoint, history)
    callbacks = [StudyProgress(run_dir.progress), history, timer, DivergenceGuard(), checkpoint]
    cli = build_run(["--config", str(run_dir.config)], callbacks=callbacks)
    trainer, model, data = cli.trainer, cli.model, cli.datamodule
    loggers = [CSVLogger(str(run_dir.path), name=run_dir.csv.name)]  # version_0, _1, ...: a segment each
    wandb_run, wandb_info = None, {"mode": wandb_mode}
    if wandb_mode != "disabled" and rank_zero_only.rank == 0:
        try:
            loggers.append(
                wandb_runs.run_logger(spec, run_dir, wandb_mode, project, entity, resume=ckpt_path is not None)
            )
            wandb_run = loggers[-1].experiment
            wandb_info.update(wandb_runs.run_info(wandb_run))
        except Exception as err:  # W&B must never cost a result: the local logs carry on
            print(f"W&B failed to start ({type(err).__name__}: {err}); continuing with local logs.", flush=True)
            wandb_info["error"] = f"{type(err).__name__}: {err}"
    trainer.loggers = loggers
    if ckpt_path is not None:
        history.resuming = {"from_step": step, "at": time.strftime("%Y-%m-%d %H:%M:%S")}
        print(f"Resuming from {ckpt_path} (step {step}).", flush=True)
    try:
        with warnings.catch_warnings():
            # Resuming mid-epoch is exact here: the CIFAR batches skip what was trained (data.TensorBatches).
            warnings.filterwarnings("ignore", message=".*checkpoint that ended before the epoch ended.*")
            trainer.fit(model, data, ckpt_path=ckpt_path, weights_only=False)
    except SIGTERMException as stop:
        if wandb_run is not None:  # this segment ends here; the next one continues the W&B run
            wandb_runs.end_segment(wandb_run, EXIT_INTERRUPTED)
        raise Interrupted(checkpoint.saved_on_stop) from stop
    except Diverged as err:
        return write_result(spec, run_dir, trainer, data, model, history, wandb_run, wandb_info, diverged=err)
    return write_result(spec, run_dir, trainer, data, model, history, wandb_run, wandb_info)


def write_result(
    spec: RunSpec, run_dir: RunDir, trainer, data, model, history, wandb_run, wandb_info, diverged=None
) -> RunResult | None:
    """Test the final weights (and probe them, on the test split), store the masks, write
    ``result.json`` (rank zero only), finish W&B. A diverged run is neither tested nor probed."""
    test, images, masks, probe = {}, None, {}, {}
    if diverged is None:
        test = {k: float(v) for k, v in trainer.test(model, data, verbose=False)[0].items()}
        probe = dict(model.probe_results)
    if not trainer.is_global_zero:
        return None
    if diverged is None:
        images = data.images("test", MASK_IMAGES)[0]
        masks = mask_maps(model.net, normalize(images, data.mean))
        np.savez_compressed(run_dir.masks, images=images.cpu().numpy(), **{k: v.numpy() for k, v in masks.items()})
    cost = model_cost(model.net)
    result = RunResult(
        **spec.model_dump(),
        status="finished" if diverged is None else "diverged",
        git_commit=git_commit(),
        versions=package_versions(),
        python=sys.version.split()[0],
        device=describe_device(trainer.strategy.root_device),
        world_size=trainer.world_size,
        started_at=history.started_at,
        finished_at=datetime.now(timezone.utc).isoformat(),
        wall_time_s=history.wall_time,
        train_images_per_s=history.images_per_second,
        params=cost["params"],
        macs=cost["macs"],
        flops=cost["flops"],
        epochs=history.epochs,
        resumes=history.resumes,
        test=test,
        test_error=100 * test["test/err1"] if test else None,
        probe=probe,
        probe_split="test" if probe else None,
        noise_rate=data.noise_rate,
        wandb=wandb_info,
        diverged=None
        if diverged is None
        else Divergence(step=diverged.step, epoch=diverged.epoch, loss=str(diverged.loss)),
    )
    run_dir.write_result(result)
    if wandb_run is not None:
        wandb_runs.finish_run(wandb_run, result, images, masks, run_dir)
    return result


def watch_parent(expected: int | None) -> None:
    """Stop like on SIGTERM (checkpoint, then exit) when the process that started this one dies, e.g.
    a runner killed with SIGKILL: a daemon thread polls the parent pid every 2 s."""
    parent = os.getppid()
    if expected is not None and parent != expected:  # the runner died before this process started
        sys.exit(EXIT_INTERRUPTED)

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(2)
        os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=watch, daemon=True, name="watch-parent").start()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run_dir", type=RunDir)
    parser.add_argument("--wandb", choices=wandb_runs.WANDB_MODES, default="offline")
    parser.add_argument("--project", default="resattn")
    parser.add_argument("--entity", default=None)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: all cores)")
    parser.add_argument("--parent-pid", type=int, default=None, help="stop (with a checkpoint) when it dies")
    args = parser.parse_args(argv)
    run_dir: RunDir = args.run_dir
    if args.threads:
        torch.set_num_threads(args.threads)
    os.environ.setdefault("WANDB_SILENT", "true")
    # A W&B service inherited from the runner would outlive this process and keep its run id "in use"
    # for the next segment of this run: each worker starts its own, which ends with it.
    os.environ.pop("WANDB_SERVICE", None)
    # Ctrl-C stops like SIGTERM: after the current batch, with a checkpoint (a KeyboardInterrupt could
    # land mid-step and leave a half-updated state behind).
    signal.signal(signal.SIGINT, lambda *_: os.kill(os.getpid(), signal.SIGTERM))
    rank = rank_zero_only.rank  # from the environment: > 0 in processes Lightning starts for DDP
    watch_parent(args.parent_pid if rank == 0 else None)
    lock = RunLock(run_dir)
    if rank == 0 and not lock.acquire(timeout=1.0):  # a runner's lock probe holds it for an instant
        print(f"{run_dir} is being trained by {lock.holder()}; not training it twice.", flush=True)
        return EXIT_BUSY
    try:
        if rank == 0 and run_dir.read_result() is not None:
            print(f"{run_dir} already has a result (written by another runner).", flush=True)
            return EXIT_BUSY
        result = train(run_dir, args.wandb, args.project, args.entity)
    except StoreError as err:
        print(f"error: {err}", flush=True)
        return EXIT_BAD_INPUT
    except Interrupted as stop:
        where = f"checkpoint saved at step {stop.step}" if stop.step else "resumes from its last checkpoint"
        print(f"Interrupted: {where}; run the same command again to continue.", flush=True)
        return EXIT_INTERRUPTED
    except CheckpointError as err:
        print(f"error: {err}", flush=True)
        return EXIT_NO_CHECKPOINT
    finally:
        lock.release()
    if result is not None and result.status == "diverged":
        print(f"Diverged: {result.diverged}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
