"""Every executor writes the same results (issue #6): local processes, Ray tasks, a SLURM array
(through submitit's local executor), and multi-process (DDP) runs that only rank zero records."""

import importlib.util
import sys
from datetime import datetime
from pathlib import Path

import pytest

from resattn.study.executors import require
from resattn.study.options import StudyOptions
from resattn.study.plan import plan_study
from resattn.study.runner import run_study
from resattn.study.spec import parse_overrides
from resattn.study.store import RunDir, study_results

# Skips decided before any fixture trains.
needs_ray = pytest.mark.skipif(importlib.util.find_spec("ray") is None, reason="the ray extra is not installed")
needs_submitit = pytest.mark.skipif(importlib.util.find_spec("submitit") is None, reason="the slurm extra is missing")

# What must not depend on where a run trained (timings, devices and W&B ids may).
SAME = ("run_id", "status", "seed", "config", "test", "test_error", "probe", "params", "flops", "noise_rate")


def _study(tmp_path: Path, name: str, **kwargs) -> dict[str, dict]:
    runs = tmp_path / name / "runs"
    options = StudyOptions(
        study="mask_structure",
        profile="smoke",
        seeds=1,
        runs_dir=runs,
        wandb="disabled",
        jobs=2,
        cpus_per_run=1,
        **kwargs,
    )
    outcome = run_study(plan_study(options), options)
    assert outcome.failed == 0
    return {r.run_id: r.dump() for r in study_results(runs, "mask_structure")}


def _same(results: dict[str, dict], reference: dict[str, dict]) -> None:
    assert results.keys() == reference.keys() and len(results) == 3
    for run_id, r in results.items():
        ref = reference[run_id]
        assert {k: r[k] for k in SAME} == {k: ref[k] for k in SAME}, run_id
        drop = ("step",)
        assert [{k: v for k, v in e.items() if k not in drop} for e in r["epochs"]] == [
            {k: v for k, v in e.items() if k not in drop} for e in ref["epochs"]
        ]


def _overlap(results: dict[str, dict]) -> bool:
    """Whether two of the runs trained at the same time."""
    spans = [
        (datetime.fromisoformat(r["started_at"]), datetime.fromisoformat(r["finished_at"])) for r in results.values()
    ]
    return any(max(s1, s2) < min(e1, e2) for i, (s1, e1) in enumerate(spans) for s2, e2 in spans[i + 1 :])


@pytest.fixture(scope="module")
def local_results(tmp_path_factory):
    return _study(tmp_path_factory.mktemp("local"), "local", executor="local")


@pytest.mark.slow
@needs_ray
def test_ray_executor_runs_in_parallel_and_matches_the_local_executor(tmp_path, local_results):
    results = _study(tmp_path, "ray", executor="ray")
    _same(results, local_results)
    assert _overlap(results), "the two Ray tasks did not train at the same time"


@pytest.mark.slow
@needs_submitit
def test_slurm_executor_via_submitit_local_matches_the_local_executor(tmp_path, local_results):
    results = _study(tmp_path, "slurm", executor="slurm", slurm={"cluster": "local", "timeout_min": 20})
    _same(results, local_results)
    logs = list((tmp_path / "slurm" / "runs" / "mask_structure" / "_slurm").glob("*_log.out"))
    assert len(logs) == 3  # three submitit jobs ran the per-run entry point


def test_a_missing_extra_says_which_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # as if ray were not installed
    with pytest.raises(ImportError, match=r"pip install -e '\.\[ray\]'"):
        require("ray")


@pytest.mark.slow
def test_a_ddp_run_is_recorded_once_by_rank_zero(tmp_path):
    ddp = parse_overrides(["trainer.accelerator=cpu", "trainer.devices=2", "trainer.strategy=ddp"])
    runs = tmp_path / "runs"
    options = StudyOptions(
        study="mask_structure", profile="smoke", seeds=1, overrides=ddp, runs_dir=runs, wandb="offline"
    )
    outcome = run_study(plan_study(options), options)
    assert outcome.failed == 0
    for result in study_results(runs, "mask_structure"):
        run_dir = RunDir.of(runs, result)
        assert result.world_size == 2 and result.status == "finished" and result.test["test/err1"] >= 0
        assert len(list(run_dir.path.glob("wandb/offline-run-*"))) == 1  # rank 1 never started W&B
        log = run_dir.log.read_text()
        assert "GLOBAL_RANK: 1" in log and "Traceback" not in log
