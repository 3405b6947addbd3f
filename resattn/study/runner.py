"""The study runner: every variant x seed of a study, each in its own process, then the report.

Finished runs (a readable ``result.json``) are skipped and interrupted runs resume from their
checkpoints, so a study can be run again, after any interruption, to fill in what is missing;
``force`` retrains, ``dry_run`` only lists. Several runners may work on one study at once: each
run is trained by whichever holds its lock.
"""

from __future__ import annotations

import json
import netrc
import os
import shutil
import signal
import sys
import threading
import time
from pathlib import Path

from resattn.study.executors import EXECUTORS, LocalExecutor, RayExecutor, SlurmExecutor, Task
from resattn.study.locks import RunLock, is_locked
from resattn.study.results import read_result, write_json_atomic
from resattn.study.spec import Run, check_data, expand, load_profile, load_study, validate_settings
from resattn.study.train import CHECKPOINT, EXIT_BUSY, EXIT_INTERRUPTED, EXIT_NO_CHECKPOINT

WANDB_MODES = ("online", "offline", "disabled")


def wandb_credentials() -> bool:
    """Whether W&B credentials are configured here (env var or netrc), without any network call."""
    if os.environ.get("WANDB_API_KEY"):
        return True
    try:
        auth = netrc.netrc(os.environ.get("NETRC"))  # None: ~/.netrc
    except (OSError, netrc.NetrcParseError):
        return False
    host = os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai").split("://")[-1].rstrip("/")
    return auth.authenticators(host) is not None


def decide_wandb_mode(requested: str | None) -> str:
    """The W&B mode, decided once before any run starts: the request, else WANDB_MODE, else
    online with credentials and offline without (never a fallback after a failed online start)."""
    mode = requested or os.environ.get("WANDB_MODE")
    if mode == "dryrun":
        mode = "offline"
    if mode is None:
        return "online" if wandb_credentials() else "offline"
    if mode not in WANDB_MODES:
        raise ValueError(f"--wandb {mode!r}; allowed: {', '.join(WANDB_MODES)}.")
    return mode


def fmt_time(seconds: float) -> str:
    seconds = int(seconds)
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


def run_cost(run: Run) -> float:
    """Rough relative cost of a run, for the ETA: depth x width^2 (x 1.5 with soft masks: the measured
    MAC ratio of Attention-92 to its mask-free trunk) x training images x epochs (or steps x batch)."""
    model = run.config["model"]
    flops = model.get("depth", 56) * model.get("width", 1.0) ** 2
    flops *= 1.0 if model.get("attention_learning") == "none" else 1.5
    data, trainer = run.config["data"], run.config["trainer"]
    if trainer.get("max_steps", -1) > 0:
        return flops * trainer["max_steps"] * data.get("batch_size", 64)
    images = data.get("train_size") or 50_000
    return flops * images * trainer.get("max_epochs", 1)


class Progress:
    """Thread-safe progress of a study: per-run fractions weighted by run cost, printed with the ETA."""

    def __init__(self, study: str, costs: dict[str, float], out) -> None:
        self.study, self.out = study, out
        self.total = len(costs)
        self.costs = {k: v / (sum(costs.values()) or 1) for k, v in costs.items()}
        self.done = 0.0
        self.fractions: dict[str, float] = {}
        self.start = time.time()
        self.lock = threading.Lock()

    def eta(self) -> str:
        finished = self.done + sum(self.costs[k] * f for k, f in self.fractions.items())
        if finished <= 0:
            return "ETA unknown"
        remaining = (time.time() - self.start) / finished * (1 - finished)
        elapsed = fmt_time(time.time() - self.start)
        return f"{100 * finished:.0f}% | elapsed {elapsed} | ETA {fmt_time(remaining)}"

    def say(self, index: int, run_id: str, message: str) -> None:
        with self.lock:
            print(
                f"[{self.study} {index}/{self.total}] {run_id} {message} | study {self.eta()}",
                file=self.out,
                flush=True,
            )

    def update(self, run_id: str, fraction: float) -> None:
        with self.lock:
            self.fractions[run_id] = min(max(fraction, 0.0), 1.0)

    def finish(self, run_id: str) -> None:
        with self.lock:
            self.fractions.pop(run_id, None)
            self.done += self.costs[run_id]


def run_dir_of(runs_dir: Path, run: Run) -> Path:
    return Path(runs_dir) / run.study / run.run_id


class Monitor:
    """Polls ``progress.json`` of the runs in flight (whatever the executor) and prints each new epoch."""

    def __init__(self, progress: Progress, index: dict[str, int], every: float = 1.0) -> None:
        self.progress, self.index, self.every = progress, index, every
        self.active: dict[str, Path] = {}
        self.epochs: dict[str, int] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True, name="progress")

    def __enter__(self) -> Monitor:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()

    def _loop(self) -> None:
        while not self._stop.wait(self.every):
            for run_id, run_dir in list(self.active.items()):
                try:
                    info = json.loads((run_dir / "progress.json").read_text())
                except (OSError, ValueError):
                    continue
                self.progress.update(run_id, info.get("fraction", 0.0))
                if info.get("epoch") != self.epochs.get(run_id) and run_id in self.active:
                    self.epochs[run_id] = info.get("epoch")
                    extra = "".join(f", {k} {info[k]}" for k in ("train/loss", "val/err1") if k in info)
                    total = info.get("max_epochs") or -1  # -1: the run is bounded by max_steps
                    epoch = f"{info['epoch'] + 1}/{total}" if total > 0 else f"{info['epoch'] + 1}"
                    self.progress.say(self.index[run_id], run_id, f"epoch {epoch}{extra}")


def log_tail(run_dir: Path, lines: int = 15) -> str:
    try:
        return "".join((run_dir / "train.log").read_text().splitlines(keepends=True)[-lines:])
    except OSError:
        return "(no log)"


def make_executor(
    kind: str,
    runs: list[Run],
    jobs: int,
    runs_dir: Path,
    cpus_per_run: float | None,
    gpus_per_run: float,
    ray_address: str | None,
    max_retries: int,
    slurm: dict | None,
):
    """The executor of ``--executor``; a missing extra or a bad parameter fails here, before any run."""
    if kind == "local":
        threads = int(cpus_per_run) if cpus_per_run else (max(1, (os.cpu_count() or 1) // jobs) if jobs > 1 else None)
        return LocalExecutor(jobs=jobs, threads=threads)
    if kind == "ray":
        return RayExecutor(cpus=cpus_per_run or 1, gpus=gpus_per_run, address=ray_address, max_retries=max_retries)
    parameters = dict(slurm or {})  # slurm
    trainer = runs[0].config["trainer"]
    if isinstance(trainer.get("devices"), int) and trainer["devices"] > 1:  # DDP: one SLURM task per process
        parameters.setdefault("tasks_per_node", trainer["devices"])
        parameters.setdefault("nodes", trainer.get("num_nodes", 1))
    return SlurmExecutor(
        folder=Path(runs_dir) / runs[0].study / "_slurm",
        cpus=int(cpus_per_run or 1),
        gpus=int(gpus_per_run),
        jobs=jobs,
        parameters=parameters,
    )


class StopRequested(Exception):
    """The runner got SIGINT / SIGTERM: the workers were asked to checkpoint and stop."""


def run_study(
    study_name: str,
    profile: str = "quick",
    seeds: int | None = None,
    overrides: dict | None = None,
    jobs: int = 1,
    force: bool = False,
    dry_run: bool = False,
    runs_dir: Path = Path("runs"),
    reports_dir: Path = Path("reports"),
    wandb: str | None = None,
    project: str = "resattn",
    entity: str | None = None,
    out=None,
    executor: str = "local",
    cpus_per_run: float | None = None,
    gpus_per_run: float = 0,
    ray_address: str | None = None,
    max_retries: int = 1,
    slurm: dict | None = None,
    poll: float = 5.0,
) -> int:
    """Train what is missing of a study, then write its report. Returns the number of failed runs.

    Runs with a result (finished or diverged) are skipped; a run with a checkpoint resumes from it;
    a run whose lock another runner holds is left to it (and waited for at the end). A failed run
    is retried up to ``max_retries`` times (from its checkpoint). Everything the runs will need is
    checked first (settings, data), so bad input fails before anything is written.

    Raises:
        ValueError: bad input (unknown study / profile / setting, wrong type, missing data, ...).
        StopRequested: SIGINT / SIGTERM arrived; the runs in flight saved checkpoints.
    """
    out = out or sys.stdout
    study = load_study(study_name)
    prof = load_profile(profile)
    runs = expand(study, prof, seeds, overrides)
    validate_settings(runs)
    wandb_mode = decide_wandb_mode(wandb)
    if executor not in EXECUTORS:
        raise ValueError(f"--executor {executor!r}; allowed: {', '.join(EXECUTORS)}.")
    todo = [r for r in runs if force or read_result(run_dir_of(runs_dir, r)) is None]
    print(
        f"Study {study.name} ({study.paper_table}: {study.title}); profile {prof.name}: {prof.description}.", file=out
    )
    for key, value in runs[0].reductions.items():
        print(f"  reduced: {key} = {value}", file=out)
    resumable = [r for r in todo if (run_dir_of(runs_dir, r) / "checkpoints" / CHECKPOINT).is_file() and not force]
    print(
        f"{len(runs)} runs ({len(study.variants())} variants x {seeds or prof.seeds} seeds): "
        f"{len(runs) - len(todo)} finished, {len(todo)} to train ({len(resumable)} from a checkpoint); "
        f"executor {executor}; W&B {wandb_mode}, project {project}.",
        file=out,
    )
    if dry_run:
        for run in runs:
            state = ("resumes" if run in resumable else "to train") if run in todo else "finished"
            print(f"  {run.run_id}  {state}  {run_dir_of(runs_dir, run)}", file=out)
        return 0
    if not todo:
        pool = None
    else:
        check_data(todo)
        pool = make_executor(
            executor, todo, jobs, runs_dir, cpus_per_run, gpus_per_run, ray_address, max_retries, slurm
        )
    write_json_atomic(
        Path(runs_dir) / study.name / "latest.json",
        {"profile": prof.name, "seeds": seeds, "overrides": overrides or {}},
    )
    options = ("--wandb", wandb_mode, "--project", project, *(("--entity", entity) if entity else ()))
    for run in todo:
        run_dir = run_dir_of(runs_dir, run)
        run_dir.mkdir(parents=True, exist_ok=True)
        write_json_atomic(run_dir / "run.json", run.to_dict())
        if force and not is_locked(run_dir):
            shutil.rmtree(run_dir / "checkpoints", ignore_errors=True)
    tasks = {r.run_id: Task(r.run_id, run_dir_of(runs_dir, r), options) for r in todo}
    progress = Progress(study.name, {r.run_id: run_cost(r) for r in todo}, out)
    index = {r.run_id: i for i, r in enumerate(todo, 1)}
    failed = schedule(tasks, pool, progress, index, max_retries, poll, force) if todo else 0
    from resattn.report import build_report

    written = build_report(
        study, runs, runs_dir, reports_dir, wandb_mode=wandb_mode, project=project, entity=entity, out=out
    )
    if written:
        print(f"Report: {', '.join(str(p) for p in written)}", file=out)
    if failed:
        print(f"{failed} run(s) failed; run the same command again to retry them (from their checkpoints).", file=out)
    return failed


def schedule(
    tasks: dict[str, Task], pool, progress: Progress, index: dict[str, int], max_retries: int, poll: float, force: bool
) -> int:
    """Train ``tasks`` with ``pool`` until each has a result, failed more than ``max_retries`` times,
    or (for a run another runner holds) got its result from that runner. Returns the failures."""
    attempts: dict[str, int] = {}
    failed: set[str] = set()
    stop = threading.Event()
    forced = set(tasks) if force else set()

    def started(task: Task) -> None:
        monitor.active[task.run_id] = task.run_dir
        verb = "started" if pool.name == "local" else f"submitted to {pool.name}"
        again = f" (attempt {attempts[task.run_id] + 1})" if attempts.get(task.run_id) else ""
        progress.say(index[task.run_id], task.run_id, verb + again)

    def done(task: Task, code: int) -> None:
        monitor.active.pop(task.run_id, None)
        progress.finish(task.run_id)
        result = read_result(task.run_dir)
        i = index[task.run_id]
        if code == 0 and result is not None:
            forced.discard(task.run_id)
            if result["status"] == "diverged":
                d = result["diverged"]
                progress.say(i, task.run_id, f"DIVERGED at step {d['step']} (loss {d['loss']}); recorded as such")
            else:
                progress.say(
                    i,
                    task.run_id,
                    f"finished: test error {result['test_error']:.2f}% in {fmt_time(result['wall_time_s'])}",
                )
        elif code == EXIT_BUSY:  # another runner took its lock first: stays pending, waited for
            progress.say(i, task.run_id, "taken by another runner meanwhile")
        elif code in (EXIT_INTERRUPTED, -signal.SIGTERM) and stop.is_set():
            progress.say(i, task.run_id, "stopped; its checkpoint is kept")
        else:
            attempts[task.run_id] = attempts.get(task.run_id, 0) + 1
            retry = attempts[task.run_id] <= max_retries and not stop.is_set() and code != EXIT_NO_CHECKPOINT
            progress.say(
                i,
                task.run_id,
                f"FAILED (exit code {code}){'; retrying' if retry else ''}; log {task.run_dir / 'train.log'}:\n"
                + log_tail(task.run_dir),
            )
            if not retry:
                failed.add(task.run_id)

    def on_signal(signum, frame) -> None:
        if not stop.is_set():
            print(
                f"\n{signal.Signals(signum).name}: asking the runs in flight to save a checkpoint and stop ...",
                file=progress.out,
                flush=True,
            )
        stop.set()
        pool.stop()

    main = threading.current_thread() is threading.main_thread()  # signal handlers: main thread only
    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM)} if main else {}
    try:
        with Monitor(progress, index) as monitor:
            pending = list(tasks)
            announced: set[str] = set()
            while pending and not stop.is_set():
                # A run with a result now was finished by another runner (unless we retrain it: --force).
                pending = [
                    k for k in pending if k not in failed and (k in forced or read_result(tasks[k].run_dir) is None)
                ]
                free = [k for k in pending if not is_locked(tasks[k].run_dir)]
                for k in sorted(set(pending) - set(free) - announced):
                    holder = RunLock(tasks[k].run_dir).holder()
                    progress.say(index[k], k, f"is being trained by {holder}: waiting for it")
                    announced.add(k)
                if free:
                    pool.run([tasks[k] for k in free], started, done)
                elif pending:
                    stop.wait(poll)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    if stop.is_set():
        raise StopRequested(
            "interrupted: the runs in flight saved checkpoints; run the same command again to continue."
        )
    return len(failed)
