"""The study runner: every variant x seed of a study, each in its own process (on an executor).

Finished runs (a readable ``result.json``) are skipped and interrupted runs resume from their
checkpoints, so a study can be run again, after any interruption, to fill in what is missing;
``force`` retrains, ``dry_run`` only lists. Several runners may work on one study at once: each
run is trained by whichever holds its lock.
"""

from __future__ import annotations

import functools
import json
import math
import os
import signal
import sys
import threading
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

from tqdm import tqdm

from resattn.study import wandb_runs
from resattn.study.executors import (
    EXECUTORS,
    LocalExecutor,
    RayExecutor,
    SlurmExecutor,
    Task,
    check_reachable,
    check_slurm,
)
from resattn.study.preflight import check_folder
from resattn.study.record import RunSpec
from resattn.study.spec import Study, check_runs, expand, load_profile, load_study, pick_variants, plural
from resattn.study.store import (
    EXIT_BUSY,
    EXIT_INTERRUPTED,
    EXIT_NO_CHECKPOINT,
    RunDir,
    RunLock,
    StoreError,
    is_locked,
    pack_dir,
    study_dir,
)


def fmt_time(seconds: float) -> str:
    if seconds < 10:
        return f"{seconds:.1f}s"
    seconds = int(seconds)
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


class Progress:
    """Thread-safe progress of a study: per-run fractions weighted by run cost, with the ETA; a tqdm
    bar on a terminal, plain lines (with the share done and ETA) in a log. Both count from what was
    left when this invocation started: a run resumed at 90% starts at its 90% (its first report),
    so the share is of the work left and the ETA comes from the pace of this invocation."""

    def __init__(self, study: str, costs: dict[str, float], out) -> None:
        self.study, self.out = study, out
        self.total = len(costs)
        self.costs = {k: v / (sum(costs.values()) or 1) for k, v in costs.items()}
        self.done: set[str] = set()
        self.fractions: dict[str, float] = {}
        self.started_at: dict[str, float] = {}  # each run's fraction when this invocation started it
        self.start = time.time()
        self.lock = threading.Lock()
        tty = getattr(out, "isatty", lambda: False)()
        self.bar = (
            tqdm(total=100, desc=study, unit="%", file=out, bar_format="{l_bar}{bar}| {elapsed}<{remaining}")
            if tty and self.total
            else None
        )

    def finished(self) -> float:
        """Share of the work left at the start (by cost) that this invocation has done, in [0, 1]."""
        left = {k: c * (1 - self.started_at.get(k, 0.0)) for k, c in self.costs.items()}
        done = sum(left[k] for k in self.done)
        done += sum(self.costs[k] * (f - self.started_at[k]) for k, f in self.fractions.items() if k not in self.done)
        return min(1.0, done / (sum(left.values()) or 1))

    def eta(self) -> str:
        finished = self.finished()
        elapsed = time.time() - self.start
        if finished <= 0:
            return f"0% | elapsed {fmt_time(elapsed)} | ETA unknown"
        return (
            f"{100 * finished:.0f}% | elapsed {fmt_time(elapsed)} | ETA {fmt_time(elapsed / finished * (1 - finished))}"
        )

    def say(self, index: int, run_id: str, message: str) -> None:
        with self.lock:
            line = f"[{self.study} {index}/{self.total}] {run_id} {message}"
            if self.bar is not None:
                self.bar.write(line, file=self.out)
            else:
                print(f"{line} | study {self.eta()}", file=self.out, flush=True)

    def _refresh(self) -> None:
        if self.bar is not None:
            self.bar.n = round(100 * self.finished(), 1)
            self.bar.refresh()

    def update(self, run_id: str, fraction: float) -> None:
        with self.lock:
            self.fractions[run_id] = min(max(fraction, 0.0), 1.0)
            # the lowest fraction heard: a resumed run's progress.json may first show where it was stopped
            self.started_at[run_id] = min(self.started_at.get(run_id, 1.0), self.fractions[run_id])
            self._refresh()

    def finish(self, run_id: str) -> None:
        with self.lock:
            self.fractions.pop(run_id, None)
            self.done.add(run_id)
            self._refresh()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


class Monitor:
    """Polls ``progress.json`` of the runs in flight (whatever the executor) and prints each new epoch."""

    def __init__(self, progress: Progress, index: dict[str, int], every: float = 1.0) -> None:
        self.progress, self.index, self.every = progress, index, every
        self.active: dict[str, RunDir] = {}
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
                    info = json.loads(run_dir.progress.read_text())
                except (OSError, ValueError):
                    continue
                self.progress.update(run_id, info.get("fraction", 0.0))
                if info.get("epoch") != self.epochs.get(run_id) and run_id in self.active:
                    self.epochs[run_id] = info.get("epoch")
                    extra = "".join(
                        f", {k} {info[k]:.4g}{'%' if k == 'val/err1' else ''}"
                        for k in ("train/loss", "val/err1")
                        if k in info
                    )
                    total = info.get("max_epochs") or -1  # -1: the run is bounded by max_steps
                    epoch = f"{info['epoch'] + 1}/{total}" if total > 0 else f"{info['epoch'] + 1}"
                    self.progress.say(self.index[run_id], run_id, f"epoch {epoch}{extra}")


def log_tail(run_dir: RunDir, lines: int = 15) -> str:
    try:
        return "".join(run_dir.log.read_text().splitlines(keepends=True)[-lines:])
    except OSError:
        return "(no log)"


def make_executor(
    kind: str,
    study: str,
    trainer,
    jobs: int,
    runs_dir: Path,
    cpus_per_run: float | None,
    gpus_per_run: float,
    ray_address: str | None,
    max_retries: int,
    slurm: dict | None,
):
    """The executor of ``--executor`` for runs with the resolved Lightning ``trainer``; a missing extra or
    a bad parameter fails here, before any run."""
    if kind == "local":
        threads = int(cpus_per_run) if cpus_per_run else (max(1, (os.cpu_count() or 1) // jobs) if jobs > 1 else None)
        return LocalExecutor(jobs=jobs, threads=threads)
    if kind == "ray":
        return RayExecutor(cpus=cpus_per_run or 1, gpus=gpus_per_run, address=ray_address, max_retries=max_retries)
    parameters = dict(slurm or {})  # slurm
    if trainer.num_devices > 1:  # DDP: one SLURM task per process
        parameters.setdefault("tasks_per_node", trainer.num_devices)
        parameters.setdefault("nodes", trainer.num_nodes)
    return SlurmExecutor(
        folder=study_dir(runs_dir, study, "slurm"),
        cpus=int(cpus_per_run or 1),
        gpus=int(gpus_per_run),
        jobs=jobs,
        parameters=parameters,
    )


class StudyError(RuntimeError):
    """A failure after the study started writing (not bad input): exit code 1, with the message."""


class StopRequested(Exception):
    """The runner got SIGINT / SIGTERM: the workers were asked to checkpoint and stop."""


@dataclass(frozen=True)
class StudyOutcome:
    """What a study invocation did: its runs (with resolved settings) and how many failed."""

    study: Study
    runs: list[RunSpec]
    failed: int
    wandb_mode: str


MAX_PACK = 64


def check_options(
    seeds: int | None,
    jobs: int,
    cpus_per_run: float | None,
    gpus_per_run: float,
    max_retries: int,
    executor: str,
    pack: int | None = None,
) -> None:
    """The runner's own numeric and choice options (each named as its flag), before anything else."""
    checks = [
        (
            "--pack",
            pack,
            pack is None or (isinstance(pack, int) and 1 <= pack <= MAX_PACK),
            f"an integer in [1, {MAX_PACK}]",
        ),
        ("--seeds", seeds, seeds is None or (isinstance(seeds, int) and 1 <= seeds <= 1000), "an integer in [1, 1000]"),
        ("--jobs", jobs, isinstance(jobs, int) and jobs >= 1, "an integer >= 1"),
        (
            "--cpus-per-run",
            cpus_per_run,
            cpus_per_run is None
            or (0 < cpus_per_run < math.inf and (executor == "ray" or float(cpus_per_run).is_integer())),
            "a whole number >= 1 (Ray takes fractions > 0)",
        ),
        ("--gpus-per-run", gpus_per_run, 0 <= gpus_per_run < math.inf, "a number >= 0"),
        ("--max-retries", max_retries, isinstance(max_retries, int) and max_retries >= 0, "an integer >= 0"),
        ("--executor", executor, executor in EXECUTORS, f"one of {', '.join(EXECUTORS)}"),
    ]
    for flag, value, ok, allowed in checks:
        if not ok:
            raise ValueError(f"{flag} {value!r}: must be {allowed}.")


def run_study(
    study_name: str,
    profile: str = "quick",
    seeds: int | None = None,
    overrides: dict | None = None,
    jobs: int = 1,
    force: bool = False,
    dry_run: bool = False,
    runs_dir: Path = Path("runs"),
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
    pack: int | None = None,
    variants: list[str] | None = None,
) -> StudyOutcome:
    """Train what is missing of a study. Runs with a result (finished or diverged) are skipped; a run
    with a checkpoint resumes from it; a run whose lock another runner holds is left to it (and
    waited for at the end). A failed run is retried up to ``max_retries`` times (from its
    checkpoint). ``force`` retrains: earlier results and checkpoints are moved aside into the run's
    ``attic/``, never deleted. ``pack`` trains up to that many seeds of a variant in one process as
    one vectorised model (default: :func:`resattn.study.preflight.default_pack`). ``variants``: train
    only the variants so named (:func:`resattn.study.spec.pick_variants`). Everything is
    checked first (options, settings, data, folders), so bad input fails before anything is
    created, moved or deleted.

    Raises:
        ValueError: bad input (unknown study / profile / setting, wrong type, missing data, ...).
        StopRequested: SIGINT / SIGTERM arrived; the runs in flight saved checkpoints.
    """
    out = out or sys.stdout
    check_options(seeds, jobs, cpus_per_run, gpus_per_run, max_retries, executor, pack)
    if slurm and executor != "slurm":
        raise ValueError(f"--slurm is for --executor slurm, not --executor {executor}.")
    if executor == "slurm":  # checked even when nothing is left to train: the flags are checked, always
        check_slurm(slurm or {})
    if executor == "ray":
        check_reachable(ray_address or os.environ.get("RAY_ADDRESS"))
    check_folder(runs_dir, "--runs-dir")
    study = load_study(study_name)
    prof = load_profile(profile)
    wandb_mode = wandb_runs.decide_mode(wandb)
    planned = functools.partial(expand, study, prof, seeds, overrides, variants=variants)
    check_runs(planned())  # every value against its declared range, before torch
    from resattn.study import preflight  # torch: only once the cheap checks passed

    precision = preflight.default_precision(planned())
    runs, built = preflight.resolve(planned(defaults={"trainer.precision": precision}))
    size = pack or preflight.default_pack(runs, built)
    if size > 1 and any(b.cli.trainer.num_devices > 1 or b.cli.trainer.num_nodes > 1 for b in built.values()):
        raise ValueError(f"--pack {size}: a pack trains on one device; with trainer.devices > 1 use --pack 1.")
    dirs = {r.run_id: RunDir.of(runs_dir, r) for r in runs}
    has_result = {r.run_id: dirs[r.run_id].read_result() is not None for r in runs}  # a bad result: StoreError
    todo = [r for r in runs if force or not has_result[r.run_id]]
    units = plan_units(todo, dirs, size)
    unit_of = {m.name: u for u in units for m in u.runs}
    resumable = [
        r
        for r in todo
        if not force and (dirs[r.run_id].checkpoint.is_file() or unit_of[r.run_id].run_dir.checkpoint.is_file())
    ]
    print(
        f"Study {study.name} ({study.paper_table}: {study.title}); profile {prof.name}: {prof.description}.", file=out
    )
    precisions, configurations = sorted({r.precision for r in runs}), sorted({r.configuration for r in runs})
    print(f"  precision {', '.join(precisions)}; configuration {', '.join(configurations)}", file=out)
    for key, value in runs[0].reductions.items():
        print(f"  reduced: {key} = {value}", file=out)
    packs, n_variants = sum(len(u.members) > 1 for u in units), len(pick_variants(study, variants))
    packed = f" in {len(units)} process(es), {packs} pack(s) of up to {size} seeds" if size > 1 else ""
    print(
        f"{len(runs)} runs ({plural(n_variants, 'variant')} x {plural(seeds or prof.seeds, 'seed')}): "
        f"{len(runs) - len(todo)} finished, {len(todo)} to train{packed} ({len(resumable)} from a checkpoint); "
        f"executor {executor}; W&B {wandb_mode}, project {project}.",
        file=out,
    )
    if dry_run and todo:  # the data the real command needs: present, or what it would do about it
        try:
            preflight.check_data(todo, fetch=False)
        except ValueError as err:
            if not all(r.config["data"].get("download") for r in todo):  # absent: the class default, off
                raise
            print(f"  data: not here yet; the command will first try to download it (needs a network): {err}", file=out)
    if dry_run or not todo:
        for run in runs if dry_run else []:
            state = ("resumes" if run in resumable else "to train") if run in todo else "finished"
            unit = unit_of.get(run.run_id)
            where = f" (pack {unit.run_id})" if unit is not None and unit.members else ""
            print(f"  {run.run_id}  {state}  {dirs[run.run_id]}{where}", file=out)
        return StudyOutcome(study, runs, 0, wandb_mode)
    trainer = built[todo[0].run_id].cli.trainer
    pool = make_executor(
        executor, study.name, trainer, jobs, runs_dir, cpus_per_run, gpus_per_run, ray_address, max_retries, slurm
    )
    preflight.check_space(runs_dir, built, jobs if executor == "local" else 1)
    run_costs = preflight.costs(todo, built, preflight.check_data(todo))  # data last: it may download
    try:
        return StudyOutcome(
            study,
            runs,
            train(
                todo,
                dirs,
                resumable,
                pool,
                units,
                run_costs,
                force,
                out,
                study.name,
                max_retries,
                poll,
                wandb_mode,
                project,
                entity,
            ),
            wandb_mode,
        )
    except StoreError as err:  # e.g. a result another process wrote meanwhile is malformed
        raise StudyError(str(err)) from err


def plan_units(todo: list[RunSpec], dirs: dict[str, RunDir], size: int) -> list[Task]:
    """The units of training: each run alone (``size`` 1), or the runs of each variant in packs of up
    to ``size`` seeds (in seed order; the same runs give the same packs, so a pack resumes as one)."""
    if size == 1:
        return [Task(r.run_id, dirs[r.run_id]) for r in todo]
    groups: dict[tuple, list[RunSpec]] = {}
    for run in todo:
        groups.setdefault((run.variant, run.settings_digest), []).append(run)
    units = []
    for group in groups.values():
        group.sort(key=lambda r: r.seed)
        for i in range(0, len(group), size):
            members = tuple(dirs[r.run_id] for r in group[i : i + size])
            if len(members) == 1:
                units.append(Task(members[0].name, members[0]))
            else:
                folder = pack_dir(list(members))
                units.append(Task(folder.name, folder, members=members))
    return units


def train(
    todo, dirs, resumable, pool, units, run_costs, force, out, name, max_retries, poll, wandb_mode, project, entity
):
    """Write each run's spec (moving earlier work aside with ``force``), then schedule; the failures."""
    from resattn.study.callbacks import resume_checkpoint

    for run in todo:  # from here on, files are written
        run_dir = dirs[run.run_id]
        if force and not is_locked(run_dir) and (aside := run_dir.move_aside()) is not None:
            print(f"  --force: moved the earlier result and checkpoint of {run.run_id} to {aside}", file=out)
        elif run in resumable and not is_locked(run_dir):
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                resume_checkpoint(run_dir.checkpoint)  # an unreadable one is moved aside, said here
            for warning in caught:
                print(f"  warning: {warning.message}", file=out)
        run_dir.write_spec(run)
    for unit in units:
        if unit.members:
            if force and not any(is_locked(m) for m in unit.members) and (aside := unit.run_dir.move_aside()):
                print(f"  --force: moved the earlier checkpoint of {unit.run_id} to {aside}", file=out)
            unit.run_dir.path.mkdir(parents=True, exist_ok=True)
    options = ("--wandb", wandb_mode, "--project", project, *(("--entity", entity) if entity else ()))
    tasks = {u.run_id: Task(u.run_id, u.run_dir, options, u.members) for u in units}
    costs = {u.run_id: sum(run_costs[m.name] for m in u.runs) for u in units}
    progress = Progress(name, costs, out)
    index = {u.run_id: i for i, u in enumerate(units, 1)}
    try:
        failed = schedule(tasks, pool, progress, index, max_retries, poll)
    finally:
        progress.close()
    if failed:
        print(f"{failed} run(s) failed; run the same command again to retry them (from their checkpoints).", file=out)
    return failed


def schedule(
    tasks: dict[str, Task], pool, progress: Progress, index: dict[str, int], max_retries: int, poll: float
) -> int:
    """Train ``tasks`` with ``pool`` until each has a result, failed more than ``max_retries`` times,
    or (for a run another runner holds) got its result from that runner. Returns the failures."""
    attempts: dict[str, int] = {}
    failed: set[str] = set()
    started_ids: set[str] = set()
    stop = threading.Event()

    def started(task: Task) -> None:
        monitor.active[task.run_id] = task.run_dir
        started_ids.add(task.run_id)
        verb = "started" if pool.name == "local" else f"submitted to {pool.name}"
        if task.members:
            verb += f" (a pack of {len(task.members)}: {', '.join(m.name for m in task.members)})"
        again = f" (attempt {attempts[task.run_id] + 1})" if attempts.get(task.run_id) else ""
        progress.say(index[task.run_id], task.run_id, verb + again)

    def done(task: Task, code: int) -> None:
        monitor.active.pop(task.run_id, None)
        i = index[task.run_id]
        results = {r.name: r.read_result() for r in task.runs} if code == 0 else {}
        if code == 0 and all(results.values()):
            progress.finish(task.run_id)
            for run_id, result in results.items():
                if result.status == "diverged":
                    d = result.diverged
                    progress.say(i, run_id, f"DIVERGED at step {d.step} (loss {d.loss}); recorded as such")
                else:
                    progress.say(
                        i, run_id, f"finished: test error {result.test_error:.2f}% in {fmt_time(result.wall_time_s)}"
                    )
        elif code == EXIT_BUSY or (code == 0 and any(results.values())):  # another runner has (some of) it
            for run_id, result in results.items():
                if result is not None:
                    progress.say(i, run_id, f"has its result ({result.status})")
            progress.say(i, task.run_id, "taken by another runner meanwhile" + (" (in part)" if results else ""))
        elif stop.is_set() and task.run_id not in started_ids:
            progress.say(i, task.run_id, "not started")
        elif code in (EXIT_INTERRUPTED, -signal.SIGTERM) and stop.is_set():
            kept = "its checkpoint is kept" if task.run_dir.checkpoint.is_file() else "it had no checkpoint yet"
            progress.say(i, task.run_id, f"stopped; {kept}")
        else:
            attempts[task.run_id] = attempts.get(task.run_id, 0) + 1
            retry = attempts[task.run_id] <= max_retries and not stop.is_set() and code != EXIT_NO_CHECKPOINT
            progress.say(
                i,
                task.run_id,
                f"FAILED (exit code {code}){'; retrying' if retry else ''}; log {task.run_dir.log}:\n"
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
                # A run with a result now was finished (here or by another runner); a pack is pending
                # while any of its runs is, and free while no other process holds any of them.
                pending = [
                    k for k in pending if k not in failed and any(r.read_result() is None for r in tasks[k].runs)
                ]
                free = [k for k in pending if not any(is_locked(r) for r in tasks[k].runs)]
                for k in sorted(set(pending) - set(free) - announced):
                    held = next(r for r in tasks[k].runs if is_locked(r))
                    progress.say(index[k], k, f"is being trained by {RunLock(held).holder()}: waiting for it")
                    announced.add(k)
                for k in set(tasks) - set(pending) - progress.done - failed:
                    progress.finish(k)
                if free:
                    pool.run([tasks[k] for k in free], started, done)
                elif pending:
                    stop.wait(poll)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    if stop.is_set():
        raise StopRequested(
            "interrupted: each run in flight kept a checkpoint if it had one; run the same command again to continue."
        )
    return len(failed)
