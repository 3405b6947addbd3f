"""Studies end to end: statistics, the report, W&B, skip/resume, identity across data folders,
reproducing a run with the single-run CLI (issues #3, #10)."""

import math
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from resattn.cli.report import report_main
from resattn.cli.study import study_main
from resattn.report.stats import holm
from resattn.study.store import RunDir, study_results
from resattn.study.wandb_runs import decide_mode
from tests.wandb_records import history_and_summary

ROOT = Path(__file__).resolve().parents[1]


def test_wandb_mode_is_decided_before_any_run(monkeypatch, tmp_path):
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.setenv("NETRC", str(tmp_path / "netrc"))
    assert decide_mode(None) == "offline"
    (tmp_path / "netrc").write_text("machine api.wandb.ai\n  login user\n  password secret\n")
    assert decide_mode(None) == "online"
    assert decide_mode("disabled") == "disabled"
    with pytest.raises(ValueError, match="online, offline, disabled"):
        decide_mode("cloud")


def test_holm_matches_the_textbook_procedure():
    assert holm([0.01, 0.04, 0.03, math.nan]) == pytest.approx([0.03, 0.06, 0.06, math.nan], nan_ok=True)
    assert holm([0.5, 0.9]) == [1.0, 1.0]


def _study(tmp_path, capsys, name="mask_structure", *args):
    code = study_main(
        [
            name,
            "--profile",
            "smoke",
            "--wandb",
            "offline",
            "--jobs",
            "2",
            "--runs-dir",
            str(tmp_path / "runs"),
            "--reports-dir",
            str(tmp_path / "reports"),
            *args,
        ]
    )
    return code, capsys.readouterr().out


def _results(tmp_path, name="mask_structure"):
    return {r.run_id: r for r in study_results(tmp_path / "runs", name)}


@pytest.mark.slow
def test_arl_vs_nal_runs_end_to_end_in_the_smoke_profile(tmp_path, capsys):
    code, out = _study(tmp_path, capsys, "ARL_vs_NAL")
    assert code == 0, out
    results = _results(tmp_path, "ARL_vs_NAL")
    assert len(results) == 9
    report = tmp_path / "reports" / "ARL_vs_NAL" / "smoke"
    table = pd.read_csv(report / "table.csv").set_index("variant")
    for r in results.values():
        assert table.loc[r.variant, "error_mean"] == pytest.approx(r.test_error)
        assert r.status == "finished" and r.reductions["model.width"].startswith("0.125")
        assert r.params > 0 and r.flops > 0 and len(r.epochs) == 1 and r.probe["stage3_mean_abs"] > 0
        assert r.config["trainer"]["precision"] == "32-true"
        assert (r.data["train_images"], r.data["test_images"]) == (192, 96) and r.data_fingerprint is None  # generated
    for f in (
        "table.md",
        "table.tex",
        "error.png",
        "curves.png",
        "delta.png",
        "response.png",
        "masks.png",
        "mask_stats.png",
    ):
        assert (report / f).stat().st_size > 0


@pytest.mark.slow
def test_a_study_skips_finished_runs_logs_to_wandb_and_keeps_its_ids_across_data_folders(tmp_path, capsys):
    code, out = _study(tmp_path, capsys, "mask_structure", "--seeds", "2")
    assert code == 0, out
    results = _results(tmp_path)
    assert len(results) == 6

    # a real offline W&B run per training run, holding the metrics
    run = next(iter(results.values()))
    run_dir = RunDir.of(tmp_path / "runs", run)
    files = list(run_dir.path.glob("wandb/offline-run-*/run-*.wandb"))
    assert len(files) == 1
    history, summary = history_and_summary(files[0])
    assert any("val/err1" in row for row in history) and any("train/loss" in row for row in history)
    assert summary["test_error"] == pytest.approx(run.test_error)

    # the report's table is the stored results'
    report = tmp_path / "reports" / "mask_structure" / "smoke"
    table = pd.read_csv(report / "table.csv").set_index("variant")
    by = {(r.variant, r.seed): r.test_error for r in results.values()}
    assert table.loc["hourglass", "seeds"] == 2
    assert table.loc["hourglass", "error_mean"] == pytest.approx((by["hourglass", 0] + by["hourglass", 1]) / 2)
    assert table.loc["local_conv", "diff_vs_ref"] == pytest.approx(
        sum(by["local_conv", s] - by["hourglass", s] for s in (0, 1)) / 2
    )

    # the same command again, from another data folder, with --download, another eval batch: nothing to train
    mtimes = {k: RunDir.of(tmp_path / "runs", r).result.stat().st_mtime for k, r in results.items()}
    for extra in (
        [],
        ["--data_dir", str(tmp_path / "elsewhere")],
        ["--no-download"],
        ["--set", "data.eval_batch_size=7"],
    ):
        code, out = _study(tmp_path, capsys, "mask_structure", "--seeds", "2", *extra)
        assert code == 0 and "6 finished, 0 to train" in out and "started" not in out, (extra, out)
    assert mtimes == {k: RunDir.of(tmp_path / "runs", r).result.stat().st_mtime for k, r in results.items()}
    assert sorted(p.name for p in (tmp_path / "reports" / "mask_structure").iterdir()) == ["smoke"]
    # one W&B report run per configuration, updated by every invocation (5 so far), never duplicated
    segments = list((tmp_path / "runs" / "mask_structure" / "_report-smoke" / "wandb").glob("offline-run-*"))
    ids = {f.name for segment in segments for f in segment.glob("run-*.wandb")}  # run-<W&B id>.wandb
    assert len(segments) == 5 and len(ids) == 1, ids
    capsys.readouterr()
    assert report_main(["mask_structure", "--wandb-dirs", "--runs-dir", str(tmp_path / "runs")]) == 0
    dirs = capsys.readouterr().out.split()
    assert len(dirs) == 6 and all(list(Path(d).glob("run-*.wandb")) for d in dirs)  # the training runs only

    # deleting one result retrains that run only
    victim = sorted(results)[1]
    RunDir.of(tmp_path / "runs", results[victim]).result.unlink()
    code, out = _study(tmp_path, capsys, "mask_structure", "--seeds", "2")
    assert code == 0 and "5 finished, 1 to train" in out
    assert out.count(" started") == 1 and f"{victim} started" in out

    # the report regenerates from the run store alone, identically
    before = {p.name: p.read_text() for p in report.glob("table.*")}
    shutil.rmtree(tmp_path / "reports")
    assert (
        report_main(
            ["mask_structure", "--runs-dir", str(tmp_path / "runs"), "--reports-dir", str(tmp_path / "reports")]
        )
        == 0
    )
    after = {p.name: p.read_text() for p in report.glob("table.*")}
    assert after["table.csv"] == before["table.csv"]
    strip = lambda md: [line.split(" Generated ")[0] for line in md.splitlines()]  # noqa: E731
    assert strip(after["table.md"]) == strip(before["table.md"])
    capsys.readouterr()
    assert report_main(["mask_structure", "--list", "--runs-dir", str(tmp_path / "runs")]) == 0
    assert "smoke" in capsys.readouterr().out


@pytest.mark.slow
def test_the_single_run_cli_reproduces_a_study_run_from_its_config(tmp_path, capsys):
    code, out = _study(tmp_path, capsys, "mask_structure", "--set", "data.synthetic_size=[96, 64]")
    assert code == 0, out
    run = next(r for r in _results(tmp_path).values() if r.variant == "local_conv")
    config = RunDir.of(tmp_path / "runs", run).config
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "resattn",
            "fit",
            "--config",
            str(config),
            "--trainer.default_root_dir",
            str(tmp_path / "by_hand"),
        ],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    err1 = float(re.search(r"test/err1\W+([0-9.]+)", done.stdout).group(1))  # the CLI's test table
    assert err1 == pytest.approx(run.test_error, abs=1e-4), (done.stdout, run.test_error)  # one unit: percent
    assert run.error_unit == "percent" and run.epoch_error(run.epochs[-1]) == run.epochs[-1]["val/err1"]


def test_variants_trains_only_the_named_ones_and_refuses_a_pattern_that_names_none(tmp_path, capsys):
    runs = tmp_path / "runs"
    args = ["cifar_benchmarks", "--profile", "smoke", "--dry-run", "--runs-dir", str(runs)]
    assert study_main([*args, "--variants", "cifar10-*", "--variants", "cifar100-ResNet-164"]) == 0
    out = capsys.readouterr().out
    assert re.search(r"\d+ runs \(4 variants x \d+ seeds?\)", out)
    assert "cifar10-Attention-236-s0" in out and "cifar100-ResNet-164-s0" in out and "cifar100-Attention-92" not in out
    assert study_main([*args, "--variants", "cifar1O-*"]) == 2
    err = capsys.readouterr().err
    assert "--variants cifar1O-*: no variant of cifar_benchmarks is named so" in err and "cifar100-ResNet-164" in err
    assert not runs.exists() or not any(runs.iterdir())  # bad input: nothing written
