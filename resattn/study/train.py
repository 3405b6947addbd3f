"""One study run in its own process: ``python -m resattn.study.train RUN_DIR [--wandb MODE ...]``.

The per-run entry point of every executor. Reads ``RUN_DIR/run.json`` (written by the runner),
takes the run's lock (``RUN_DIR/lock``), resumes from ``RUN_DIR/checkpoints/last.ckpt`` if there
is one, trains with a Lightning Trainer, logs to CSV and Weights & Biases, and writes
``RUN_DIR/result.json`` atomically; ``RUN_DIR/progress.json`` tells the runner how far it is.

Exit codes: 0 a result was written (finished or diverged) or already there; 75 another process
holds the run's lock; 143 stopped by SIGTERM / Ctrl-C (checkpoint saved: run again to resume);
74 a checkpoint could not be written (disk full); anything else: the run failed (see its log).
"""

from __future__ import annotations

import argparse
import json
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

import lightning as L
import numpy as np
import torch
from lightning.fabric.utilities.rank_zero import rank_zero_only
from lightning.pytorch.loggers import CSVLogger
from lightning.pytorch.utilities.exceptions import SIGTERMException

from resattn.data import CIFARDataModule, normalize
from resattn.machine import describe_device
from resattn.module import ResidualAttentionClassifier
from resattn.probes import mask_maps
from resattn.study.callbacks import (
    CheckpointError,
    Diverged,
    DivergenceGuard,
    ResumeCheckpoint,
    RunHistory,
    StudyProgress,
)
from resattn.study.locks import RunLock
from resattn.study.results import read_result, write_json_atomic
from resattn.summary import model_cost

MASK_IMAGES = 8  # test images whose attention masks are stored for the report's mask grid
CHECKPOINT = "last.ckpt"
EXIT_BUSY, EXIT_NO_CHECKPOINT, EXIT_INTERRUPTED = 75, 74, 143
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


def wandb_logger(run: dict, run_dir: Path, mode: str, project: str, entity: str | None, resume: bool):
    """A WandbLogger for this run, started now so that a failure is seen here, not mid-training.

    A run resumed from its checkpoint continues its W&B run (same id, ``resume="allow"``); a run
    that starts from scratch gets a new W&B run whose config names the ids of abandoned earlier
    attempts. The ids live in ``RUN_DIR/wandb.json``.
    """
    from lightning.pytorch.loggers import WandbLogger

    ids_path = run_dir / "wandb.json"
    ids = json.loads(ids_path.read_text()) if ids_path.is_file() else {}
    if not resume and ids.get("id"):
        ids = {"abandoned": [*ids.get("abandoned", []), ids["id"]]}
    extra = {"id": ids["id"], "resume": "allow"} if ids.get("id") else {}
    logger = WandbLogger(
        project=project,
        entity=entity,
        group=run["study"],
        job_type=run["variant"],
        name=f"{run['variant']}-s{run['seed']}",
        tags=[f"{k}={v}" for k, v in run["levels"].items()] + [f"profile={run['profile']}"],
        config={**run, "abandoned_wandb_runs": ids.get("abandoned", [])},
        mode=mode,
        save_dir=str(run_dir),
        **extra,
    )
    experiment = logger.experiment
    ids["id"] = experiment.id
    ids.setdefault("segments", []).append(str(experiment.dir))
    write_json_atomic(ids_path, ids)
    return logger


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


class Interrupted(Exception):
    """Training was stopped by SIGTERM (or Ctrl-C); ``step`` is that of the checkpoint saved then (or None)."""

    def __init__(self, step: int | None) -> None:
        super().__init__(step)
        self.step = step


def train(run_dir: Path, wandb_mode: str = "offline", project: str = "resattn", entity: str | None = None) -> dict:
    """Train the run of ``run_dir`` (resuming from its checkpoint if it has one) and write its result.

    Raises:
        Interrupted: stopped by SIGTERM / Ctrl-C (a checkpoint was saved).
        CheckpointError: a checkpoint could not be written (disk full, ...).
    """
    run = json.loads((run_dir / "run.json").read_text())
    config = run["config"]
    L.seed_everything(run["seed"], workers=True, verbose=False)
    data = CIFARDataModule(**config["data"])
    model = ResidualAttentionClassifier(**{**config["model"], "num_classes": data.num_classes})
    path = run_dir / "checkpoints" / CHECKPOINT
    step = resume_checkpoint(path)
    ckpt_path = path if step is not None else None
    history = RunHistory()
    checkpoint = ResumeCheckpoint(path, history)
    loggers = [CSVLogger(str(run_dir), name="csv")]  # version_0, version_1, ...: one per segment of a resumed run
    wandb_run, wandb_info = None, {"mode": wandb_mode}
    if wandb_mode != "disabled" and rank_zero_only.rank == 0:
        try:
            loggers.append(wandb_logger(run, run_dir, wandb_mode, project, entity, resume=ckpt_path is not None))
            wandb_run = loggers[-1].experiment
            wandb_info.update(id=wandb_run.id, dir=str(wandb_run.dir))
        except Exception as err:  # W&B must never cost a result: the local logs carry on
            print(f"W&B failed to start ({type(err).__name__}: {err}); continuing with local logs.", flush=True)
            wandb_info["error"] = f"{type(err).__name__}: {err}"
    trainer_settings = {
        "accelerator": "auto",
        "devices": 1,
        "precision": "bf16-mixed" if torch.cuda.is_available() else "32-true",
        **config["trainer"],
    }
    trainer = L.Trainer(
        **trainer_settings,
        logger=loggers,
        callbacks=[StudyProgress(run_dir / "progress.json"), history, DivergenceGuard(), checkpoint],
        enable_checkpointing=True,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        log_every_n_steps=10**9,  # everything is logged per epoch: no per-step logging overhead
    )
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
            wandb_run.mark_preempting()
            wandb_run.finish(exit_code=EXIT_INTERRUPTED)
        raise Interrupted(checkpoint.saved_on_stop) from stop
    except Diverged as err:
        return write_result(run, run_dir, trainer, data, model, history, wandb_run, wandb_info, diverged=err)
    return write_result(run, run_dir, trainer, data, model, history, wandb_run, wandb_info)


def write_result(run, run_dir, trainer, data, model, history, wandb_run, wandb_info, diverged=None) -> dict:
    """Test the final weights, store the masks, write ``result.json`` (rank zero only), finish W&B."""
    probe = dict(model.probe_results)
    test, images, masks = {}, None, {}
    if diverged is None:
        test = {k: float(v) for k, v in trainer.test(model, data, verbose=False)[0].items()}
    if not trainer.is_global_zero:
        return {}
    if diverged is None:
        images = data.images("test", MASK_IMAGES)[0]
        masks = mask_maps(model.net, normalize(images, data.mean))
        np.savez_compressed(
            run_dir / "masks.npz", images=images.cpu().numpy(), **{k: v.numpy() for k, v in masks.items()}
        )
    cost = model_cost(model.net)
    result = {
        **run,
        "status": "finished" if diverged is None else "diverged",
        "git_commit": git_commit(),
        "versions": package_versions(),
        "python": sys.version.split()[0],
        "device": describe_device(trainer.strategy.root_device),
        "world_size": trainer.world_size,
        "started_at": history.started_at,
        "finished_at": datetime.now(timezone.utc).isoformat(),
        "wall_time_s": history.wall_time,
        "train_images_per_s": history.images_per_second,
        "params": cost["params"],
        "macs": cost["macs"],
        "flops": cost["flops"],
        "epochs": history.epochs,
        "resumes": history.resumes,
        "test": test,
        "test_error": 100 * test["test/err1"] if test else None,
        "probe": probe,
        "noise_rate": data.noise_rate,
        "wandb": wandb_info,
    }
    if diverged is not None:
        result["diverged"] = {"step": diverged.step, "epoch": diverged.epoch, "loss": str(diverged.loss)}
    write_json_atomic(run_dir / "result.json", result)
    if wandb_run is not None:
        finish_wandb(wandb_run, result, images, masks, run_dir)
    return result


def finish_wandb(wandb_run, result: dict, images: torch.Tensor | None, masks: dict, run_dir: Path) -> None:
    """Summary (status, test error, cost), test images and their attention masks as media, and result.json."""
    import wandb

    summary = {"status": result["status"], **{k: result[k] for k in ("params", "macs", "flops")}}
    if result["test_error"] is not None:
        summary["test_error"] = result["test_error"]
    if "diverged" in result:
        summary.update({f"diverged/{k}": v for k, v in result["diverged"].items()})
    wandb_run.summary.update(summary)
    if images is not None:
        wandb_run.log(
            {
                "images": [wandb.Image(img.transpose(1, 2, 0)) for img in images.cpu().numpy()],
                **{f"masks/{k}": [wandb.Image(m.numpy()) for m in v] for k, v in masks.items()},
            }
        )
    wandb_run.save(str(run_dir / "result.json"), base_path=str(run_dir), policy="now")
    wandb_run.finish(exit_code=0 if result["status"] == "finished" else 1)


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
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--wandb", choices=["online", "offline", "disabled"], default="offline")
    parser.add_argument("--project", default="resattn")
    parser.add_argument("--entity", default=None)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: all cores)")
    parser.add_argument("--parent-pid", type=int, default=None, help="stop (with a checkpoint) when it dies")
    args = parser.parse_args(argv)
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
    lock = RunLock(args.run_dir)
    if rank == 0 and not lock.acquire():
        print(f"{args.run_dir} is being trained by {lock.holder()}; not training it twice.", flush=True)
        return EXIT_BUSY
    try:
        if rank == 0 and read_result(args.run_dir) is not None:
            print(f"{args.run_dir} already has a result (finished by another runner).", flush=True)
            return 0
        result = train(args.run_dir, args.wandb, args.project, args.entity)
    except Interrupted as stop:
        where = f"checkpoint saved at step {stop.step}" if stop.step else "resumes from its last checkpoint"
        print(f"Interrupted: {where}; run the same command again to continue.", flush=True)
        return EXIT_INTERRUPTED
    except CheckpointError as err:
        print(f"error: {err}", flush=True)
        return EXIT_NO_CHECKPOINT
    finally:
        lock.release()
    if result.get("status") == "diverged":
        print(f"Diverged: {result['diverged']}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
