"""The study runner: every variant x seed of a planned study (:mod:`resattn.study.plan`), each in
its own process (on an executor); what it says while they train is :mod:`resattn.study.progress`.

Finished runs (a readable ``result.json``) are skipped and interrupted runs resume from their
checkpoints, so a study can be run again, after any interruption, to fill in what is missing;
``force`` retrains, ``dry_run`` only lists. Several runners may work on one study at once: each
run is trained by whichever holds its lock.
"""

from __future__ import annotations

import signal
import sys
import threading
import warnings
from dataclasses import dataclass, replace
from typing import TextIO

from resattn.study.definition import Study
from resattn.study.executors import make_executor
from resattn.study.options import StudyOptions
from resattn.study.plan import StudyPlan, Task
from resattn.study.progress import Monitor, Progress, fmt_time, log_tail
from resattn.study.record import RunSpec
from resattn.study.store import (
    EXIT_BUSY,
    EXIT_INTERRUPTED,
    EXIT_NO_CHECKPOINT,
    RunLock,
    StoreError,
    is_locked,
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


def run_study(plan: StudyPlan, options: StudyOptions, out: TextIO | None = None) -> StudyOutcome:
    """Train what is missing of a planned study (:func:`resattn.study.plan.plan_study`, which
    checked everything first, so bad input failed before anything was created, moved or deleted).
    Runs with a result (finished or diverged) were skipped; a run with a checkpoint resumes from it;
    a run whose lock another runner holds is left to it (and waited for at the end). A failed run is
    retried up to ``options.max_retries`` times (from its checkpoint). ``options.force`` retrains:
    earlier results and checkpoints are moved aside into the run's ``attic/``, never deleted. A dry
    run lists the runs and their state.

    Raises:
        ValueError / ImportError: the executor cannot be made (a missing extra, a bad ``--slurm``).
        StopRequested: SIGINT / SIGTERM arrived; the runs in flight saved checkpoints.
        StudyError: a failure after the study started writing.
    """
    out = out or sys.stdout
    if options.dry_run or not plan.todo:
        unit_of = plan.unit_of
        for run in plan.runs if options.dry_run else []:
            state = ("resumes" if run in plan.resumable else "to train") if run in plan.todo else "finished"
            unit = unit_of.get(run.run_id)
            where = f" (pack {unit.run_id})" if unit is not None and unit.members else ""
            print(f"  {run.run_id}  {state}  {plan.dirs[run.run_id]}{where}", file=out)
        return StudyOutcome(plan.study, plan.runs, 0, plan.wandb_mode)
    pool = make_executor(plan, options)
    try:
        return StudyOutcome(plan.study, plan.runs, train(plan, options, pool, out), plan.wandb_mode)
    except StoreError as err:  # e.g. a result another process wrote meanwhile is malformed
        raise StudyError(str(err)) from err


def train(plan: StudyPlan, options: StudyOptions, pool, out: TextIO) -> int:
    """Write each run's spec (moving earlier work aside with ``--force``), then schedule the units
    with ``pool``, each worker started with the study's :class:`WorkerOptions`; the failures."""
    from resattn.study.callbacks import resume_checkpoint

    for run in plan.todo:  # from here on, files are written
        run_dir = plan.dirs[run.run_id]
        if options.force and not is_locked(run_dir) and (aside := run_dir.move_aside()) is not None:
            print(f"  --force: moved the earlier result and checkpoint of {run.run_id} to {aside}", file=out)
        elif run in plan.resumable and not is_locked(run_dir):
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                resume_checkpoint(run_dir.checkpoint)  # an unreadable one is moved aside, said here
            for warning in caught:
                print(f"  warning: {warning.message}", file=out)
        run_dir.write_spec(run)
    for unit in plan.units:
        if unit.members:
            if options.force and not any(is_locked(m) for m in unit.members) and (aside := unit.run_dir.move_aside()):
                print(f"  --force: moved the earlier checkpoint of {unit.run_id} to {aside}", file=out)
            unit.run_dir.path.mkdir(parents=True, exist_ok=True)
    worker = options.worker(plan.wandb_mode)
    tasks = {u.run_id: replace(u, options=worker) for u in plan.units}
    costs = {u.run_id: sum(plan.costs[m.name] for m in u.runs) for u in plan.units}
    progress = Progress(plan.study.name, costs, out)
    index = {u.run_id: i for i, u in enumerate(plan.units, 1)}
    try:
        failed = schedule(tasks, pool, progress, index, options.max_retries, options.poll)
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
