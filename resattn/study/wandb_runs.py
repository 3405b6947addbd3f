"""All of resattn's Weights & Biases code: the mode, one W&B run per training run (continued across
resumes), one report run per study configuration (updated, never duplicated), and reading results
back from a W&B project.

``wandb`` is imported only inside the functions that use it.
"""

from __future__ import annotations

import json
import netrc
import os
import re
import sys
from pathlib import Path
from typing import NamedTuple

from resattn.study.record import RunResult, RunSpec
from resattn.study.store import RunDir, write_json_atomic

WANDB_PROJECT = "resattn"  # the default W&B project of runs and reports
WANDB_MODES = ("online", "offline", "disabled")


def credentials() -> bool:
    """Whether W&B credentials are configured here (env var or netrc), without any network call."""
    if os.environ.get("WANDB_API_KEY"):
        return True
    try:
        auth = netrc.netrc(os.environ.get("NETRC"))  # None: ~/.netrc
    except (OSError, netrc.NetrcParseError):
        return False
    host = os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai").split("://")[-1].rstrip("/")
    return auth.authenticators(host) is not None


def decide_mode(requested: str | None) -> str:
    """The W&B mode, decided once before any run starts: the request, else WANDB_MODE, else
    online with credentials and offline without (never a fallback after a failed online start)."""
    mode = requested or os.environ.get("WANDB_MODE")
    if mode == "dryrun":
        mode = "offline"
    if mode is None:
        return "online" if credentials() else "offline"
    if mode not in WANDB_MODES:
        raise ValueError(f"--wandb {mode!r}; allowed: {', '.join(WANDB_MODES)}.")
    return mode


def run_logger(
    spec: RunSpec, run_dir: RunDir, mode: str, project: str, entity: str | None, resume: bool, prefix: str | None = None
):
    """A WandbLogger for one training run, started now so that a failure is seen here, not mid-training.

    A run resumed from its checkpoint continues its W&B run (same id, ``resume="allow"``); a run
    that starts from scratch gets a new W&B run whose config names the ids of abandoned earlier
    attempts. The ids live in ``wandb.json``. In a pack every member has its own W&B run in the
    one process (``reinit="create_new"``), which logs only the metrics named ``prefix...`` (the
    member's), without the prefix.
    """
    from lightning.pytorch.loggers import WandbLogger

    class MemberLogger(WandbLogger):
        def log_metrics(self, metrics: dict, step: int | None = None) -> None:
            own = {k[len(prefix) :]: v for k, v in metrics.items() if k.startswith(prefix)}
            if own:
                super().log_metrics(own, step)

    ids = json.loads(run_dir.wandb_ids.read_text()) if run_dir.wandb_ids.is_file() else {}
    if not resume and ids.get("id"):
        ids = {"abandoned": [*ids.get("abandoned", []), ids["id"]]}
    extra = {"id": ids["id"], "resume": "allow"} if ids.get("id") else {}
    logger = (WandbLogger if prefix is None else MemberLogger)(
        project=project,
        entity=entity,
        group=spec.study,
        job_type=spec.variant,
        name=f"{spec.variant}-s{spec.seed}",
        tags=[f"{k}={v}" for k, v in spec.levels.items()] + [f"profile={spec.profile}", spec.configuration],
        config={**spec.dump(), "abandoned_wandb_runs": ids.get("abandoned", [])},
        mode=mode,
        save_dir=str(run_dir.path),
        reinit="create_new",
        **extra,
    )
    experiment = logger.experiment
    ids["id"] = experiment.id
    ids.setdefault("segments", []).append(str(experiment.dir))
    write_json_atomic(run_dir.wandb_ids, ids)
    return logger


def run_info(wandb_run) -> dict[str, str]:
    """What a result records of its W&B run: id and local folder."""
    return {"id": wandb_run.id, "dir": str(wandb_run.dir)}


def end_segment(wandb_run, exit_code: int) -> None:
    """A stopped run's W&B segment ends here; the next segment continues the same W&B run."""
    wandb_run.mark_preempting()
    wandb_run.finish(exit_code=exit_code)


def finish_run(wandb_run, result: RunResult, images, masks: dict, run_dir: RunDir) -> None:
    """Summary (status, test error, cost), test images and their attention masks as media, and result.json."""
    import wandb

    summary = {"status": result.status, "params": result.params, "macs": result.macs, "flops": result.flops}
    if result.test_error is not None:
        summary["test_error"] = result.test_error
    summary.update({f"probe/{k}": v for k, v in result.probe.items()})  # the final weights' probe
    if result.diverged is not None:
        summary.update({f"diverged/{k}": v for k, v in result.diverged.model_dump().items()})
    wandb_run.summary.update({**summary, **result.test})
    if images is not None:
        wandb_run.log(
            {
                "images": [wandb.Image(img.transpose(1, 2, 0)) for img in images.cpu().numpy()],
                **{f"masks/{k}": [wandb.Image(m.numpy()) for m in v] for k, v in masks.items()},
            }
        )
    wandb_run.save(str(run_dir.result), base_path=str(run_dir.path), policy="now")
    wandb_run.finish(exit_code=0 if result.status == "finished" else 1)


def sync_dirs(run_dirs: list[RunDir]) -> list[Path]:
    """The offline W&B folders worth uploading (``wandb sync``): every segment of each run's current
    W&B run; attempts abandoned by a restart from scratch (``abandoned`` in ``wandb.json``) are left out."""
    out = []
    for run_dir in run_dirs:
        if run_dir.wandb_ids.is_file():
            for segment in json.loads(run_dir.wandb_ids.read_text()).get("segments", []):
                folder = Path(segment)
                out.append(folder.parent if folder.name == "files" else folder)
    return out


def report_run_id(study: str, configuration: str) -> str:
    """The W&B id of a study configuration's report run: the same on every invocation, so the
    report run is updated (``resume="allow"``), never duplicated."""
    return re.sub(r"[^A-Za-z0-9_-]", "-", f"report-{study}-{configuration}")[:64]


class Target(NamedTuple):
    """Where W&B records go: the mode, the project and the entity (None: the default one)."""

    mode: str
    project: str
    entity: str | None


def log_report(
    study: str, configuration: str, table, files: list[Path], save_dir: Path, target: Target, out=None
) -> None:
    """The report's table and plots in the study's W&B group (job type ``report``), one run per configuration."""
    out = out or sys.stdout
    mode, project, entity = target
    try:
        import wandb

        os.environ.setdefault("WANDB_SILENT", "true")
        save_dir.mkdir(parents=True, exist_ok=True)
        run = wandb.init(
            project=project,
            entity=entity,
            group=study,
            job_type="report",
            name=f"{study}-{configuration}-report",
            id=report_run_id(study, configuration),
            resume="allow",
            mode=mode,
            dir=str(save_dir),
            reinit="create_new",
        )
        run.log(
            {
                "table": wandb.Table(dataframe=table),
                **{f"plots/{p.stem}": wandb.Image(str(p)) for p in files if p.suffix == ".png"},
            }
        )
        run.finish()
    except Exception as err:  # the files on disk are the report; W&B is a copy
        print(f"W&B: could not log the report ({type(err).__name__}: {err}); the files are in place.", file=out)


def results_from_project(path: str, study: str, download_to: Path) -> list[RunResult]:
    """The ``result.json`` of every run in the W&B group ``study`` of project ``ENTITY/PROJECT``."""
    import wandb

    results = []
    for run in wandb.Api().runs(path, filters={"group": study, "jobType": {"$ne": "report"}}):
        target = RunDir(download_to / run.id)
        try:
            run.file(target.result.name).download(root=str(target.path), replace=True)
        except Exception as err:  # a run that never finished has no result file
            print(f"skipping W&B run {run.name}: no result.json ({err})", file=sys.stderr)
            continue
        result = target.read_result(own=False)
        if result is not None:
            results.append(result)
    return results
