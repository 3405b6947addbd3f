import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
sys.path.insert(0, str(BENCHMARKS))

import gpu_check  # noqa: E402
import throughput  # noqa: E402


def test_throughput_benchmark_runs_and_reports_every_column(capsys):
    rows = throughput.main(
        [
            "--depth",
            "56",
            "--width",
            "0.125",
            "--steps",
            "2",
            "--warmup",
            "1",
            "--repeats",
            "1",
            "--data-images",
            "2000",
        ]
    )
    out = capsys.readouterr().out
    assert "Machine: cpu:" in out and "matmul peak" in out
    assert out.count("| Attention-56 | 0.125 |") == 1
    row = rows[0]
    assert row["plain"] > 0 and row["lightning"] > 0 and row["flops"] > 0


def test_the_packing_benchmark_compares_separate_packed_and_the_studys_packed_step(capsys):
    rows = throughput.main(
        ["--packed", "2", "--depth", "56", "--width", "0.125", "--steps", "1", "--warmup", "1", "--repeats", "1"]
    )
    out = capsys.readouterr().out
    assert "packed / separate" in out and "Lightning packed step" in out and [r["k"] for r in rows] == [2]
    assert all(r["packed"] > 0 and r["separate"] > 0 and r["lightning"] > 0 for r in rows)
    assert rows[0]["channels_last"] is True  # the study's layout, not a contiguous copy


def test_the_gpu_check_dry_run_lists_every_stage_with_its_budget(capsys):
    assert gpu_check.main(["--dry-run"]) == 0
    out = capsys.readouterr().out
    for stage in gpu_check.STAGES:
        assert f"{stage.name:<10} {stage.budget_s:5.0f} s" in out
    assert f"within {sum(s.budget_s for s in gpu_check.STAGES):.0f} s overall" in out


def test_the_gpu_check_without_cuda_says_so_in_one_line_and_exits_2():
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}
    done = subprocess.run(
        [sys.executable, str(BENCHMARKS / "gpu_check.py")], env=env, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 2 and done.stdout == ""
    assert done.stderr.count("\n") == 1 and done.stderr.startswith("gpu_check: no CUDA GPU on this machine")


def check_for(tmp_path, budget=100.0):
    args = argparse.Namespace(device="cpu", tiny=True, budget=budget)
    return gpu_check.Check(args, gpu_check.TINY, tmp_path, "gpu_check.py --test")


def test_gpu_check_stages_are_stopped_at_their_budget_skipped_when_none_is_left_and_failures_recorded(tmp_path):
    def fails(check, stage):
        raise RuntimeError("out of memory")

    def overruns(check, stage):
        stage["rows"].append({**check.key("plain", 56), "error": None})  # measured before the budget ran out
        time.sleep(60)

    stages = [
        gpu_check.Stage("fails", 10, "raises", fails),
        gpu_check.Stage("overruns", 10, "sleeps past the overall budget", overruns),
        gpu_check.Stage("last", 10, "never starts", fails),
    ]
    check = check_for(tmp_path, budget=0.3)
    assert gpu_check.run_stages(check, stages, 1.0) == 1
    report = json.loads((tmp_path / "gpu_check.json").read_text())
    status = {s["name"]: s["status"] for s in report["stages"]}
    assert status == {
        "fails": "failed",
        "overruns": "stopped at its budget (0 s)",
        "last": "skipped: the overall budget ran out",
    }
    assert report["stages"][0]["error"] == "RuntimeError: out of memory" and report["stages"][1]["rows"]
    md = (tmp_path / "gpu_check.md").read_text()
    assert "## fails: failed" in md and "`RuntimeError: out of memory`" in md and "## last: skipped" in md


def test_the_projection_packs_ceil_5_over_k_per_variant_scaled_by_multiply_adds(tmp_path):
    check = check_for(tmp_path)
    check.costs = {"arl-92": {"depth": 92, "macs": 100}, "nal-164": {"depth": 164, "macs": 300}}
    key = check.key("packed", 92, k=2)
    check.report["stages"].append({"rows": [{**key, "img_s": 128.0, "ms_step": 1000.0}]})  # 1 s per step
    (p,) = gpu_check.projection(check)
    packs = 3  # ceil(5 / 2) per variant; Attention-164 scaled from Attention-92 by 300 / 100 multiply-adds
    steps = {name: gpu_check.load_profile(name).settings["trainer.max_steps"] for name in ("gpu", "paper")}
    assert p["gpu_hours"] == pytest.approx(steps["gpu"] * packs * (1 + 3) / 3600)
    assert p["paper_hours"] == pytest.approx(steps["paper"] * packs * 4 / 3600)
    assert p["study_goal"] == pytest.approx(4 / p["paper_hours"])
    assert p["run_minutes"] == pytest.approx(steps["paper"] / 60) and p["run_goal"] == pytest.approx(
        15 / p["run_minutes"]
    )


@pytest.mark.slow
def test_every_gpu_check_stage_runs_on_the_cpu_at_tiny_sizes(tmp_path):
    """Each stage's code, once, on the CPU (compile with aot_eager): what must not first break on a GPU."""
    code = gpu_check.main(["--device", "cpu", "--tiny", "--scale", "100", "--budget", "100000", "--out", str(tmp_path)])
    report = json.loads((tmp_path / "gpu_check.json").read_text())
    assert [s["name"] for s in report["stages"]] == [s.name for s in gpu_check.STAGES]
    assert {s["status"] for s in report["stages"]} == {"done"} and code == 0
    for stage in report["stages"]:
        assert all(r["error"] is None and r["img_s"] is not None for r in stage["rows"]), stage["name"]
    study = report["stages"][4]
    assert study["returncode"] == 0 and len(study["rows"]) == 4 and len(study["reports"]) == 1
    loops = {r["loop"] for s in report["stages"] for r in s["rows"] if "loop" in r}
    assert loops == {"plain", "separate", "packed", "lightning", "lightning-packed"}
    assert report["projection"] and all(p["study_goal"] > 0 for p in report["projection"])
    md = (tmp_path / "gpu_check.md").read_text()
    assert "## Projection and the goal" in md and all(f"## {s.name}: done" in md for s in gpu_check.STAGES)
