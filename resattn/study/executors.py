"""Where the runs of a study train: on this machine (``local``), as Ray tasks (``ray``) or as a SLURM
job array through submitit (``slurm``).

Every executor starts the same per-run entry point, ``python -m resattn.study.worker RUN_DIR``
(or the run folders of a pack: one task, with its GPUs), in its own process, and that process
writes the run's files (checkpoint, progress, result), so results do not depend on where a run
trained. The runs folder must be visible at the same path
from every machine (a shared file system) for the ``ray`` and ``slurm`` executors.
"""

from __future__ import annotations

import importlib
import os
import signal
import subprocess
import sys
import tempfile
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from resattn.study.options import StudyOptions, check_slurm
from resattn.study.plan import StudyPlan, Task
from resattn.study.store import study_dir

EXTRAS = {"ray": ("ray", "ray"), "slurm": ("submitit", "slurm")}  # executor -> (module, pip extra)


def start_worker(task: Task, threads: int | None, log, **popen) -> subprocess.Popen:
    """Start ``python -m resattn.study.worker RUN_DIR [RUN_DIR ...] --options JSON`` as a child of this
    process (which it watches: it stops with a checkpoint if this process dies), output to ``log``:
    the task's :class:`WorkerOptions` whole, with ``threads`` and this process's id."""
    options = task.options.model_copy(update={"threads": threads, "parent_pid": os.getpid()})
    cmd = [sys.executable, "-m", "resattn.study.worker", *(str(r) for r in task.runs)]
    cmd += ["--options", options.model_dump_json()]
    env = {**os.environ, **({"OMP_NUM_THREADS": str(threads)} if threads else {})}
    return subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, **popen)


def run_worker(task: Task, threads: int | None = None) -> int:
    """Run the worker of ``task`` to its end, output appended to ``train.log``; its exit code. On
    KeyboardInterrupt (how Ray cancels a task) the worker is asked to stop with SIGTERM, so that it
    saves a checkpoint. The body of a ``ray`` task and of a ``slurm`` array element."""
    with open(task.run_dir.log, "a") as log:
        proc = start_worker(task, threads, log)
        try:
            return proc.wait()
        except KeyboardInterrupt:
            proc.send_signal(signal.SIGTERM)
            proc.wait()
            raise


def require(executor: str):
    """The module an executor needs, or an ImportError that says which extra to install."""
    module, extra = EXTRAS[executor]
    try:
        return importlib.import_module(module)
    except ImportError as err:
        raise ImportError(
            f"--executor {executor} needs the {module!r} package: pip install -e '.[{extra}]' "
            f"(or pip install 'resattn[{extra}]')."
        ) from err


@dataclass
class LocalExecutor:
    """Up to ``jobs`` runs at once on this machine, each a child process with ``threads`` CPU threads."""

    jobs: int = 1
    threads: int | None = None
    name: str = "local"
    _procs: dict[str, subprocess.Popen] = field(default_factory=dict)
    _stopping: threading.Event = field(default_factory=threading.Event)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def _one(self, task: Task, started: Callable[[Task], None]) -> int:
        if self._stopping.is_set():
            return -signal.SIGTERM
        with open(task.run_dir.log, "a") as log:
            # Its own session: Ctrl-C reaches the runner only, which asks each worker to stop (SIGTERM).
            with self._lock:
                proc = start_worker(task, self.threads, log, start_new_session=True)
                self._procs[task.run_id] = proc
            started(task)
            code = proc.wait()
        with self._lock:
            self._procs.pop(task.run_id, None)
        return code

    def run(self, tasks: list[Task], started: Callable[[Task], None], done: Callable[[Task, int], None]) -> None:
        def one(task: Task) -> None:
            done(task, self._one(task, started))

        with ThreadPoolExecutor(max_workers=self.jobs) as pool:
            for future in [pool.submit(one, t) for t in tasks]:
                future.result()

    def stop(self) -> None:
        """Start nothing new; ask every running worker to stop (it checkpoints, then exits)."""
        self._stopping.set()
        with self._lock:
            for proc in self._procs.values():
                proc.send_signal(signal.SIGTERM)


@dataclass
class RayExecutor:
    """Each run a Ray task with ``cpus``/``gpus`` per run, on the cluster at ``address`` (``auto``: the
    cluster this machine belongs to; None: ``RAY_ADDRESS`` if set, else a new local Ray instance).
    Ray resubmits a task lost with its worker or node up to ``max_retries`` times; the run then
    resumes from its checkpoint."""

    cpus: float = 1
    gpus: float = 0
    address: str | None = None
    max_retries: int = 0
    name: str = "ray"
    _refs: list = field(default_factory=list)

    def __post_init__(self) -> None:
        self._ray = require("ray")

    def run(self, tasks: list[Task], started: Callable[[Task], None], done: Callable[[Task, int], None]) -> None:
        ray = self._ray
        own = not ray.is_initialized()
        if own:
            ray.init(address=self.address, include_dashboard=False, log_to_driver=False, configure_logging=False)
        try:
            remote = ray.remote(run_worker).options(
                num_cpus=self.cpus, num_gpus=self.gpus, max_retries=self.max_retries, retry_exceptions=False
            )
            refs = {remote.remote(t, max(1, int(self.cpus))): t for t in tasks}
            self._refs = list(refs)
            for t in tasks:
                started(t)
            pending = list(refs)
            while pending:
                ready, pending = ray.wait(pending, num_returns=1)
                task = refs[ready[0]]
                try:
                    code = ray.get(ready[0])
                except ray.exceptions.TaskCancelledError:
                    code = -signal.SIGTERM
                except ray.exceptions.RayError as err:  # lost with its node after max_retries, ...
                    print(f"{task.run_id}: Ray task failed: {type(err).__name__}: {err}", flush=True)
                    code = 1
                done(task, code)
        finally:
            if own:
                ray.shutdown()

    def stop(self) -> None:
        for ref in self._refs:
            self._ray.cancel(ref)  # KeyboardInterrupt in the task: its worker gets SIGTERM and checkpoints


@dataclass
class SlurmExecutor:
    """A submitit job array, one element per run, at most ``jobs`` at once, with ``cpus``/``gpus`` per
    run; ``parameters`` go to submitit as they are (``slurm_partition``, ``timeout_min``, ...; and
    ``cluster``: ``local`` runs the array on this machine with submitit's local executor). A run
    with ``trainer.devices`` > 1 gets that many tasks per node (one per process, as Lightning
    expects under SLURM) and ``trainer.num_nodes`` nodes."""

    folder: Path
    cpus: int = 1
    gpus: int = 0
    jobs: int = 1
    parameters: dict = field(default_factory=dict)
    name: str = "slurm"
    _jobs: list = field(default_factory=list)

    def __post_init__(self) -> None:
        self._submitit = require("slurm")
        with tempfile.TemporaryDirectory() as scratch:  # bad parameters fail now, and nothing is written
            self._executor(Path(scratch))

    def _executor(self, folder: Path):
        check_slurm(self.parameters)
        parameters = dict(self.parameters)
        cluster = parameters.pop("cluster", None)
        executor = self._submitit.AutoExecutor(folder=str(folder), cluster=cluster)
        gpus = {"gpus_per_node": self.gpus} if self.gpus else {}
        try:
            executor.update_parameters(
                cpus_per_task=self.cpus, slurm_array_parallelism=self.jobs, name="resattn", **gpus, **parameters
            )
        except Exception as err:  # submitit names the unknown or mistyped parameter
            raise ValueError(f"--slurm: {' '.join(str(err).split())}") from err
        return executor

    def run(self, tasks: list[Task], started: Callable[[Task], None], done: Callable[[Task, int], None]) -> None:
        self._jobs = self._executor(self.folder).map_array(run_worker, tasks, [self.cpus] * len(tasks))
        for t in tasks:
            started(t)
        for job, task in zip(self._jobs, tasks):
            try:
                code = job.result()
            except Exception as err:  # the job failed outside the worker (SLURM, submitit): see its logs
                print(f"{task.run_id}: SLURM job {job.job_id} failed: {err}", flush=True)
                code = 1
            done(task, code)

    def stop(self) -> None:
        for job in self._jobs:
            job.cancel(check=False)


def make_executor(plan: StudyPlan, options: StudyOptions):
    """The executor of ``--executor`` for the runs of ``plan``, with the options' jobs, CPUs, GPUs,
    retries, Ray address and ``--slurm`` parameters; a missing extra or a bad parameter fails here,
    before any run. Locally, each of several runs at once gets its share of the cores (unless
    ``--cpus-per-run``); under SLURM, a run with ``trainer.devices`` > 1 gets a task per process."""
    jobs, cpus = options.jobs, options.cpus_per_run
    if options.executor == "local":
        threads = int(cpus) if cpus else (max(1, (os.cpu_count() or 1) // jobs) if jobs > 1 else None)
        return LocalExecutor(jobs=jobs, threads=threads)
    if options.executor == "ray":
        gpus, address = options.gpus_per_run, options.ray_address
        return RayExecutor(cpus=cpus or 1, gpus=gpus, address=address, max_retries=options.max_retries)
    parameters = dict(options.slurm)
    if plan.trainer.num_devices > 1:  # DDP: one SLURM task per process
        parameters.setdefault("tasks_per_node", plan.trainer.num_devices)
        parameters.setdefault("nodes", plan.trainer.num_nodes)
    return SlurmExecutor(
        folder=study_dir(options.runs_dir, plan.study.name, "slurm"),
        cpus=int(cpus or 1),
        gpus=int(options.gpus_per_run),
        jobs=jobs,
        parameters=parameters,
    )
