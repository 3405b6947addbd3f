"""One study run (or a pack of seeds) in its own process: ``python -m resattn.study.worker RUN_DIR [RUN_DIR ...]``.

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
import sys
import threading
import time
import warnings
from datetime import datetime, timezone

import numpy as np
import torch
from lightning.fabric.utilities.rank_zero import rank_zero_only
from lightning.pytorch.callbacks import Timer
from lightning.pytorch.loggers import CSVLogger
from lightning.pytorch.utilities.exceptions import SIGTERMException

from resattn.cifar import data_fingerprint
from resattn.cli.fit import build_run
from resattn.config import DEFAULT_DATASET
from resattn.loader import normalize
from resattn.machine import describe_device
from resattn.packing import PREFIX, PackedClassifier, PackedData
from resattn.probes import mask_maps
from resattn.provenance import code_provenance, package_versions
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
from resattn.study.options import WorkerOptions
from resattn.study.record import Divergence, RunResult, RunSpec, digest, pack_bits
from resattn.study.store import (
    EXIT_BAD_INPUT,
    EXIT_BUSY,
    EXIT_INTERRUPTED,
    EXIT_NO_CHECKPOINT,
    RunDir,
    RunLock,
    StoreError,
    pack_dir,
)
from resattn.study.wandb_runs import WANDB_MODES
from resattn.summary import model_cost

MASK_IMAGES = 8  # test images whose attention masks are stored for the report's mask grid


class Interrupted(Exception):
    """Training was stopped by SIGTERM (or Ctrl-C); ``step`` is that of the checkpoint saved then (or None)."""

    def __init__(self, step: int | None) -> None:
        super().__init__(step)
        self.step = step


def member_epochs(epochs: list[dict], k: int) -> list[dict]:
    """The per-epoch metrics of member ``k`` of a pack (logged as ``m{k}/...``), as a run alone logs them."""
    prefix = PREFIX.format(k)
    return [
        {"epoch": e["epoch"], "step": e["step"], **{n[len(prefix) :]: v for n, v in e.items() if n.startswith(prefix)}}
        for e in epochs
    ]


def check_data_files(spec: RunSpec, run_dir: RunDir) -> None:
    """The data files are those the run was planned on (its id holds their fingerprint).

    Raises:
        StoreError: they are not (the files changed, or another machine has other files there).
    """
    if spec.data_fingerprint is None:
        return
    data = spec.config["data"]
    found = data_fingerprint(data["data_dir"], data.get("dataset", DEFAULT_DATASET), data.get("download", False))
    if found != spec.data_fingerprint:
        raise StoreError(
            f"{run_dir}: the data in {data['data_dir']} has fingerprint {found}, not {spec.data_fingerprint} as when "
            "the run was planned (the files changed, or this machine has other files there); run the study again "
            "to plan it on this data."
        )


def train(run_dirs: list[RunDir], options: WorkerOptions) -> list[RunResult | None]:
    """Train the runs of ``run_dirs`` (one, or the seeds of a pack), resuming from the checkpoint of
    the run (or of the pack) if there is one, and write each run's result; W&B as ``options`` say.

    A pack is the seeds of one variant as one vectorised model (:mod:`resattn.packing`); its
    checkpoint, progress and log are in its own folder (:func:`pack_dir`), and each member's
    result, masks, test and probe are its own, from its own weights.

    Raises:
        Interrupted: stopped by SIGTERM / Ctrl-C (a checkpoint was saved).
        CheckpointError: a checkpoint could not be written (disk full, ...).
    """
    specs = [rd.read_spec() for rd in run_dirs]
    for spec, rd in zip(specs, run_dirs):
        check_data_files(spec, rd)
    packed = len(run_dirs) > 1
    folder = pack_dir(run_dirs) if packed else run_dirs[0]
    step = resume_checkpoint(folder.checkpoint)
    ckpt_path = folder.checkpoint if step is not None else None
    timer = Timer(duration=None)
    history, guard = RunHistory(timer), DivergenceGuard()
    checkpoint = ResumeCheckpoint(folder.checkpoint, history)
    callbacks = [StudyProgress(folder.progress), history, timer, guard, checkpoint]
    # Each member is built as a run alone is (seeded by its seed, so initialised as it would be);
    # the first member's Trainer, with the study callbacks, trains the run or the pack.
    clis = [
        build_run(["--config", str(rd.config)], **({"callbacks": callbacks} if i == 0 else {}))
        for i, rd in enumerate(run_dirs)
    ]
    trainer = clis[0].trainer
    if packed:
        model, data = PackedClassifier([c.model for c in clis]), PackedData([c.datamodule for c in clis])
    else:
        model, data = clis[0].model, clis[0].datamodule
    loggers = [CSVLogger(str(folder.path), name=folder.csv.name)]  # version_0, _1, ...: a segment each
    wandb_mode, project, entity = options.wandb_mode, options.project, options.entity
    wandb_sessions = [(None, {"mode": wandb_mode}) for _ in run_dirs]
    if wandb_mode != "disabled" and rank_zero_only.rank == 0:
        for k, (spec, rd) in enumerate(zip(specs, run_dirs)):
            try:
                logger = wandb_runs.run_logger(
                    spec, rd, wandb_mode, project, entity, ckpt_path is not None, PREFIX.format(k) if packed else None
                )
                loggers.append(logger)
                wandb_sessions[k] = (logger.experiment, {"mode": wandb_mode, **wandb_runs.run_info(logger.experiment)})
            except Exception as err:  # W&B must never cost a result: the local logs carry on
                print(f"W&B failed to start ({type(err).__name__}: {err}); continuing with local logs.", flush=True)
                wandb_sessions[k] = (None, {"mode": wandb_mode, "error": f"{type(err).__name__}: {err}"})
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
        for run, _ in wandb_sessions:
            if run is not None:  # this segment ends here; the next one continues the W&B run
                wandb_runs.end_segment(run, EXIT_INTERRUPTED)
        raise Interrupted(checkpoint.saved_on_stop) from stop
    except Diverged:
        pass  # every member diverged: the guard holds where
    pack = (
        {
            "id": folder.name,
            "runs": [rd.name for rd in run_dirs],
            "seeds": [s.seed for s in specs],
            "images_per_s": (history.images_per_second or 0) * len(run_dirs),
        }
        if packed
        else None
    )
    results = []
    for k, (spec, rd, cli) in enumerate(zip(specs, run_dirs, clis)):
        if packed:  # the member's own weights, as a plain network, for its test, probe and masks
            cli.model.net.load_state_dict(model.net.member_state(k))
            if k > 0:
                cli.trainer.loggers = []  # its metrics went to its W&B run with the pack's
        epochs = member_epochs(history.epochs, k) if packed else history.epochs
        results.append(write_result(spec, rd, cli, history, epochs, wandb_sessions[k], guard.diverged.get(k), pack))
    return results


def write_result(
    spec: RunSpec,
    run_dir: RunDir,
    cli,
    history: RunHistory,
    epochs: list[dict],
    wandb_session: tuple,
    diverged: tuple[int, int, float] | None = None,
    pack: dict | None = None,
) -> RunResult | None:
    """Test the final weights of the run ``cli`` built (its trainer, data and model) and probe them,
    on the test split; store the masks, write ``result.json`` (rank zero only), finish W&B
    (``wandb_session``: the W&B run, or None, and what the result records of it). A diverged run
    (``diverged``: its step, epoch and loss) is neither tested nor probed."""
    trainer, data, model = cli.trainer, cli.datamodule, cli.model
    wandb_run, wandb_info = wandb_session
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
    single = trainer.world_size == 1  # several ranks' test images arrive interleaved: no per-image record
    result = RunResult(
        **spec.model_dump(),
        status="finished" if diverged is None else "diverged",
        **code_provenance(),
        config_digest=digest(spec.config, 16),
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
        epochs=epochs,
        resumes=history.resumes,
        test=test,
        test_error=test["test/err1"] if test else None,
        error_unit="percent",
        data=dict(data.provenance),
        probe=probe,
        probe_split="test" if probe else None,
        test_wrong=pack_bits(model.test_wrong) if test and model.test_wrong is not None and single else None,
        noise_rate=data.noise_rate,
        wandb=wandb_info,
        diverged=None if diverged is None else Divergence(step=diverged[0], epoch=diverged[1], loss=str(diverged[2])),
        pack=pack,
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


def parse(argv: list[str] | None = None) -> tuple[list[RunDir], WorkerOptions]:
    """The run folders and the :class:`WorkerOptions` of the command line: the record an executor
    passes whole (``--options JSON``), or the W&B flags given by hand, which change it."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run_dirs", type=RunDir, nargs="+", metavar="RUN_DIR", help="one run, or the runs of a pack")
    parser.add_argument(
        "--options",
        type=WorkerOptions.model_validate_json,
        default=WorkerOptions(),
        metavar="JSON",
        help="the runner's WorkerOptions (resattn.study.options), as JSON",
    )
    parser.add_argument("--wandb", dest="wandb_mode", choices=WANDB_MODES, default=None, help="by hand: W&B mode")
    parser.add_argument("--project", default=None, help="by hand: W&B project")
    parser.add_argument("--entity", default=None, help="by hand: W&B entity")
    args = parser.parse_args(argv)
    by_hand = {k: getattr(args, k) for k in ("wandb_mode", "project", "entity") if getattr(args, k) is not None}
    return args.run_dirs, args.options.model_copy(update=by_hand)


def main(argv: list[str] | None = None) -> int:
    run_dirs, options = parse(argv)
    if options.threads:
        torch.set_num_threads(options.threads)
    os.environ.setdefault("WANDB_SILENT", "true")
    # A W&B service inherited from the runner would outlive this process and keep its run id "in use"
    # for the next segment of this run: each worker starts its own, which ends with it.
    os.environ.pop("WANDB_SERVICE", None)
    # Ctrl-C stops like SIGTERM: after the current batch, with a checkpoint (a KeyboardInterrupt could
    # land mid-step and leave a half-updated state behind).
    signal.signal(signal.SIGINT, lambda *_: os.kill(os.getpid(), signal.SIGTERM))
    rank = rank_zero_only.rank  # from the environment: > 0 in processes Lightning starts for DDP
    watch_parent(options.parent_pid if rank == 0 else None)
    locks, todo = [], []
    try:
        for run_dir in run_dirs:  # a pack trains the members that no other process holds or finished
            lock = RunLock(run_dir)
            if rank == 0 and not lock.acquire(timeout=1.0):  # a runner's lock probe holds it for an instant
                print(f"{run_dir} is being trained by {lock.holder()}; not training it twice.", flush=True)
                continue
            locks.append(lock)
            if rank == 0 and run_dir.read_result() is not None:
                print(f"{run_dir} already has a result (written by another runner).", flush=True)
                continue
            todo.append(run_dir)
        if not todo:
            return EXIT_BUSY
        results = train(todo, options)
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
        for lock in locks:
            lock.release()
    for result in results:
        if result is not None and result.status == "diverged":
            print(f"Diverged: {result.run_id}: {result.diverged}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
