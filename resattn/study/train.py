"""One study run in its own process: ``python -m resattn.study.train RUN_DIR [--wandb MODE ...]``.

Reads ``RUN_DIR/run.json`` (written by the runner), trains with a Lightning Trainer, logs to CSV
and Weights & Biases, and writes ``RUN_DIR/result.json`` atomically. Lines starting with
``@progress`` on stdout are read by the runner for its progress display.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import lightning as L
import numpy as np
import pandas as pd
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.loggers import CSVLogger

from resattn.data import CIFARDataModule, normalize
from resattn.machine import describe_device
from resattn.module import ResidualAttentionClassifier
from resattn.probes import mask_maps
from resattn.study.results import write_json_atomic
from resattn.summary import model_cost

MASK_IMAGES = 8  # test images whose attention masks are stored for the report's mask grid
PACKAGES = ("resattn", "torch", "torchvision", "lightning", "torchmetrics", "wandb", "numpy")


def progress(**fields) -> None:
    print("@progress " + json.dumps(fields), flush=True)


class StudyProgress(Callback):
    """Reports progress to the runner and times the training steps (validation excluded)."""

    def __init__(self) -> None:
        self.train_time = 0.0
        self.train_images = 0
        self._start = None
        self._every = 1

    def on_train_start(self, trainer, pl_module) -> None:
        self._every = max(1, int(trainer.estimated_stepping_batches) // 50)

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        metrics = {
            k: round(float(v), 4) for k, v in trainer.callback_metrics.items() if k in ("train/loss", "val/err1")
        }
        progress(
            epoch=trainer.current_epoch,
            max_epochs=trainer.max_epochs,
            fraction=trainer.global_step / max(1, trainer.estimated_stepping_batches),
            **metrics,
        )
        self._start, self._batches = time.perf_counter(), 0

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self._batches += 1
        if trainer.global_step % self._every == 0:
            progress(
                epoch=trainer.current_epoch,
                max_epochs=trainer.max_epochs,
                fraction=trainer.global_step / max(1, trainer.estimated_stepping_batches),
            )

    def _stop(self, trainer, batch_size: int) -> None:
        if self._start is None:
            return
        if trainer.current_epoch > 0 or trainer.max_epochs == 1:  # the first epoch is warm-up
            self.train_time += time.perf_counter() - self._start
            self.train_images += self._batches * batch_size
        self._start = None

    def on_validation_epoch_start(self, trainer, pl_module) -> None:
        if trainer.training:
            self._stop(trainer, trainer.datamodule.hparams.batch_size)

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        self._stop(trainer, trainer.datamodule.hparams.batch_size)

    @property
    def images_per_second(self) -> float | None:
        return self.train_images / self.train_time if self.train_time else None


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


def epoch_metrics(csv_path: Path) -> list[dict]:
    """Per-epoch rows of the CSV log: the first logged value of each metric in each epoch."""
    if not csv_path.is_file():
        return []
    df = pd.read_csv(csv_path)
    df = df.drop(columns=["step", *(c for c in df.columns if c.startswith("test/"))], errors="ignore")
    rows = df.groupby("epoch").first().dropna(how="all").reset_index()
    return [{k: (None if pd.isna(v) else float(v)) for k, v in row.items()} for row in rows.to_dict("records")]


def wandb_logger(run: dict, run_dir: Path, mode: str, project: str, entity: str | None):
    """A WandbLogger for this run, started now so that a failure is seen here, not mid-training."""
    from lightning.pytorch.loggers import WandbLogger

    logger = WandbLogger(
        project=project,
        entity=entity,
        group=run["study"],
        job_type=run["variant"],
        name=f"{run['variant']}-s{run['seed']}",
        tags=[f"{k}={v}" for k, v in run["levels"].items()] + [f"profile={run['profile']}"],
        config=run,
        mode=mode,
        save_dir=str(run_dir),
    )
    logger.experiment  # noqa: B018 (starts the run)
    return logger


def train(run_dir: Path, wandb_mode: str = "offline", project: str = "resattn", entity: str | None = None) -> dict:
    run = json.loads((run_dir / "run.json").read_text())
    config = run["config"]
    start = time.time()
    L.seed_everything(run["seed"], workers=True)
    data = CIFARDataModule(**config["data"])
    model = ResidualAttentionClassifier(**{**config["model"], "num_classes": data.num_classes})
    loggers = [CSVLogger(str(run_dir), name="", version="csv")]
    wandb_run, wandb_info = None, {"mode": wandb_mode}
    if wandb_mode != "disabled":
        try:
            loggers.append(wandb_logger(run, run_dir, wandb_mode, project, entity))
            wandb_run = loggers[-1].experiment
            wandb_info.update(id=wandb_run.id, dir=str(wandb_run.dir))
        except Exception as err:  # W&B must never cost a result: the local logs carry on
            print(f"W&B failed to start ({type(err).__name__}: {err}); continuing with local logs.", flush=True)
            wandb_info["error"] = f"{type(err).__name__}: {err}"
    timer = StudyProgress()
    trainer_settings = {
        "accelerator": "auto",
        "devices": 1,
        "precision": "bf16-mixed" if torch.cuda.is_available() else "32-true",
        **config["trainer"],
    }
    trainer = L.Trainer(
        **trainer_settings,
        logger=loggers,
        callbacks=[timer],
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        log_every_n_steps=10**9,  # everything is logged per epoch: no per-step logging overhead
    )
    trainer.fit(model, data)
    probe = dict(model.probe_results)
    test = {k: float(v) for k, v in trainer.test(model, data, verbose=False)[0].items()}
    images = data.images("test", MASK_IMAGES)[0]
    masks = mask_maps(model.net, normalize(images, data.mean))
    np.savez_compressed(run_dir / "masks.npz", images=images.cpu().numpy(), **{k: v.numpy() for k, v in masks.items()})
    cost = model_cost(model.net)
    result = {
        **run,
        "status": "finished",
        "git_commit": git_commit(),
        "versions": package_versions(),
        "python": sys.version.split()[0],
        "device": describe_device(trainer.strategy.root_device),
        "wall_time_s": time.time() - start,
        "train_images_per_s": timer.images_per_second,
        "params": cost["params"],
        "macs": cost["macs"],
        "flops": cost["flops"],
        "epochs": epoch_metrics(run_dir / "csv" / "metrics.csv"),
        "test": test,
        "test_error": 100 * test["test/err1"],
        "probe": probe,
        "noise_rate": data.noise_rate,
        "wandb": wandb_info,
    }
    write_json_atomic(run_dir / "result.json", result)
    if wandb_run is not None:
        finish_wandb(wandb_run, result, images, masks, run_dir)
    return result


def finish_wandb(wandb_run, result: dict, images: torch.Tensor, masks: dict, run_dir: Path) -> None:
    """Summary (test error, cost), test images and their attention masks as media, and result.json."""
    import wandb

    wandb_run.summary.update(
        {"test_error": result["test_error"], **{k: result[k] for k in ("params", "macs", "flops")}}
    )
    wandb_run.log(
        {
            "images": [wandb.Image(img.transpose(1, 2, 0)) for img in images.cpu().numpy()],
            **{f"masks/{k}": [wandb.Image(m.numpy()) for m in v] for k, v in masks.items()},
        }
    )
    wandb_run.save(str(run_dir / "result.json"), base_path=str(run_dir), policy="now")
    wandb_run.finish()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--wandb", choices=["online", "offline", "disabled"], default="offline")
    parser.add_argument("--project", default="resattn")
    parser.add_argument("--entity", default=None)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: all cores)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    os.environ.setdefault("WANDB_SILENT", "true")
    train(args.run_dir, args.wandb, args.project, args.entity)


if __name__ == "__main__":
    main()
