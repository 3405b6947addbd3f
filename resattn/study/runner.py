"""The study runner: every variant x seed of a study, each in its own process, then the report.

Finished runs (a readable ``result.json``) are skipped, so a study can be run again to fill in
what is missing; ``force`` retrains, ``dry_run`` only lists.
"""

from __future__ import annotations

import json
import netrc
import os
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from resattn.study.results import read_result, write_json_atomic
from resattn.study.spec import Run, expand, load_profile, load_study

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


def launch(
    run: Run,
    run_dir: Path,
    index: int,
    progress: Progress,
    wandb_mode: str,
    project: str,
    entity: str | None,
    threads: int | None,
) -> bool:
    """Train one run in a child process; True if it wrote its result."""
    run_dir.mkdir(parents=True, exist_ok=True)
    write_json_atomic(run_dir / "run.json", run.to_dict())
    cmd = [sys.executable, "-m", "resattn.study.train", str(run_dir), "--wandb", wandb_mode, "--project", project]
    if entity:
        cmd += ["--entity", entity]
    if threads:
        cmd += ["--threads", str(threads)]
    progress.say(index, run.run_id, "started")
    last_epoch = None
    with open(run_dir / "train.log", "a") as log:
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1)
        for line in proc.stdout:
            if line.startswith("@progress "):
                info = json.loads(line[len("@progress ") :])
                progress.update(run.run_id, info.get("fraction", 0.0))
                if info.get("epoch") != last_epoch:
                    last_epoch = info.get("epoch")
                    extra = "".join(f", {k} {info[k]}" for k in ("train/loss", "val/err1") if k in info)
                    total = info.get("max_epochs") or -1  # -1: the run is bounded by max_steps
                    epochs = f"{last_epoch + 1}/{total}" if total > 0 else f"{last_epoch + 1}"
                    progress.say(index, run.run_id, f"epoch {epochs}{extra}")
            else:
                log.write(line)
                log.flush()
        code = proc.wait()
    progress.finish(run.run_id)
    result = read_result(run_dir)
    if code != 0 or result is None:
        tail = "".join((run_dir / "train.log").read_text().splitlines(keepends=True)[-15:])
        progress.say(index, run.run_id, f"FAILED (exit code {code}); log {run_dir / 'train.log'}:\n{tail}")
        return False
    progress.say(
        index, run.run_id, f"finished: test error {result['test_error']:.2f}% in {fmt_time(result['wall_time_s'])}"
    )
    return True


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
) -> int:
    """Train what is missing of a study, then write its report. Returns the number of failed runs."""
    out = out or sys.stdout
    study = load_study(study_name)
    prof = load_profile(profile)
    runs = expand(study, prof, seeds, overrides)
    wandb_mode = decide_wandb_mode(wandb)
    todo = [r for r in runs if force or read_result(run_dir_of(runs_dir, r)) is None]
    print(
        f"Study {study.name} ({study.paper_table}: {study.title}); profile {prof.name}: {prof.description}.", file=out
    )
    for key, value in runs[0].reductions.items():
        print(f"  reduced: {key} = {value}", file=out)
    print(
        f"{len(runs)} runs ({len(study.variants())} variants x {seeds or prof.seeds} seeds): "
        f"{len(runs) - len(todo)} finished, {len(todo)} to train; W&B {wandb_mode}, project {project}.",
        file=out,
    )
    if dry_run:
        for run in runs:
            state = "to train" if run in todo else "finished"
            print(f"  {run.run_id}  {state}  {run_dir_of(runs_dir, run)}", file=out)
        return 0
    write_json_atomic(
        Path(runs_dir) / study.name / "latest.json",
        {"profile": prof.name, "seeds": seeds, "overrides": overrides or {}},
    )
    progress = Progress(study.name, {r.run_id: run_cost(r) for r in todo}, out)
    threads = max(1, (os.cpu_count() or 1) // jobs) if jobs > 1 else None
    with ThreadPoolExecutor(max_workers=jobs) as pool:
        futures = [
            pool.submit(launch, run, run_dir_of(runs_dir, run), i, progress, wandb_mode, project, entity, threads)
            for i, run in enumerate(todo, 1)
        ]
        failed = sum(not f.result() for f in futures)
    from resattn.report import build_report

    written = build_report(
        study, runs, runs_dir, reports_dir, wandb_mode=wandb_mode, project=project, entity=entity, out=out
    )
    if written:
        print(f"Report: {', '.join(str(p) for p in written)}", file=out)
    if failed:
        print(f"{failed} run(s) failed; run the same command again to retry them.", file=out)
    return failed
