import json
import math
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
from scipy import stats

from resattn.report.stats import holm, summarise
from resattn.study.runner import decide_wandb_mode, run_study
from resattn.study.spec import (
    SpecError,
    available_studies,
    expand,
    load_profile,
    load_study,
    parse_overrides,
)
from tests.wandb_records import history_and_summary

ROOT = Path(__file__).resolve().parents[1]


def test_every_paper_table_has_a_study():
    assert set(available_studies()) >= {"ARL_vs_NAL", "attention_type", "mask_structure", "noisy_labels",
                                         "cifar_benchmarks"}
    study = load_study("ARL_vs_NAL")
    assert len(study.variants()) == 8 and study.paper[("nal", "164")] == 7.18
    assert study.reference_of(("nal", "128")) == ("arl", "128")


def _write(tmp_path, text, name="broken"):
    (tmp_path / f"{name}.yaml").write_text(text)
    return tmp_path


@pytest.mark.parametrize(
    "text, words",
    [
        ("title: t\nfactors: {depth: [56}\n", ["broken.yaml", "line 2"]),
        ("title: t\nfactors: {depth: [56]}\nreference: {depth: 56}\ncolour: red\n", ["broken.yaml", "'colour'"]),
        ("title: t\nfactors: {depth: [56]}\n", ["broken.yaml", "'reference'"]),
        ("title: t\nfactors: {depth: [56]}\nreference: {width: 1}\n", ["reference.width", "depth"]),
        ("title: t\nfactors: {depth: [56]}\nreference: {depth: 92}\n", ["reference.depth", "56"]),
        ("title: t\nfactors: {depth: [56]}\nreference: {depth: 56}\npaper: {92: 5.0}\n", ["paper.92", "56"]),
        ("title: t\nfactors: {depth: [56]}\nreference: {depth: 56}\npaper: {56: high}\n", ["paper.56", "a number"]),
        ("title: t\nfactors: {net: {a: {width: 1}}}\nreference: {net: a}\n", ["factors.net.a.width", "model.<arg>"]),
    ],
)
def test_malformed_study_names_file_key_and_expectation(tmp_path, text, words):
    with pytest.raises(ValueError) as err:
        load_study("broken", root=_write(tmp_path, text))
    for word in words:
        assert word in str(err.value)


def test_unknown_study_lists_the_available_ones():
    with pytest.raises(ValueError, match="available: .*ARL_vs_NAL"):
        load_study("ARL_vs_NLA")


def test_run_ids_are_stable_and_follow_the_config():
    study, quick = load_study("noisy_labels"), load_profile("quick")
    a, b = expand(study, quick, 2), expand(study, quick, 2)
    assert [r.run_id for r in a] == [r.run_id for r in b] and len({r.run_id for r in a}) == 16
    changed = expand(study, quick, 2, parse_overrides(["model.width=0.5"]))
    assert not {r.run_id for r in a} & {r.run_id for r in changed}
    run = next(r for r in a if r.variant == "ResNet-164-0.5" and r.seed == 1)
    assert run.config["model"]["depth"] == 164 and run.config["model"]["attention_learning"] == "none"
    assert run.config["data"]["label_noise"] == 0.5 and run.config["data"]["noise_seed"] == run.seed


def test_smoke_profile_swaps_in_synthetic_data_with_the_class_count():
    runs = expand(load_study("cifar_benchmarks"), load_profile("smoke"))
    data = {r.levels["dataset"]: r.config["data"] for r in runs}
    assert data["cifar100"]["dataset"] == "synthetic" and data["cifar100"]["synthetic_classes"] == 100
    assert "synthetic (paper: CIFAR)" in runs[0].reductions["data.dataset"]


def test_overrides_are_validated():
    assert parse_overrides(["trainer.max_epochs=3", "data.synthetic_size=[8, 4]"]) == {
        "trainer.max_epochs": 3, "data.synthetic_size": [8, 4]}
    with pytest.raises(SpecError, match="model.<arg>"):
        parse_overrides(["width=3"])
    with pytest.raises(ValueError, match="KEY=VALUE"):
        parse_overrides(["model.width"])


def test_wandb_mode_is_decided_before_any_run(monkeypatch, tmp_path):
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.setenv("NETRC", str(tmp_path / "netrc"))
    assert decide_wandb_mode(None) == "offline"
    (tmp_path / "netrc").write_text("machine api.wandb.ai\n  login user\n  password secret\n")
    assert decide_wandb_mode(None) == "online"
    assert decide_wandb_mode("disabled") == "disabled"
    with pytest.raises(ValueError, match="online, offline, disabled"):
        decide_wandb_mode("cloud")


def test_holm_matches_the_textbook_procedure():
    assert holm([0.01, 0.04, 0.03, math.nan]) == pytest.approx([0.03, 0.06, 0.06, math.nan], nan_ok=True)
    assert holm([0.5, 0.9]) == [1.0, 1.0]


def test_summary_statistics():
    study = load_study("mask_structure")
    hour, local = [5.0, 6.0, 7.0], [7.5, 6.5, 9.0]
    results = [{"variant": v, "seed": s, "status": "finished", "test_error": e, "params": 1e6, "flops": 2e9,
                "wall_time_s": 60, "train_images_per_s": 100}
               for v, errs in (("hourglass", hour), ("local_conv", local)) for s, e in enumerate(errs)]
    df = summarise(study, results).set_index("variant")
    assert df.loc["hourglass", "error_mean"] == pytest.approx(6.0)
    assert df.loc["hourglass", "error_std"] == pytest.approx(1.0)
    half = stats.t.ppf(0.975, 2) / math.sqrt(3)
    assert df.loc["hourglass", "ci95_low"] == pytest.approx(6.0 - half)
    assert df.loc["local_conv", "diff_vs_ref"] == pytest.approx(5 / 3)
    assert df.loc["local_conv", "p_value"] == pytest.approx(stats.ttest_rel(local, hour).pvalue)
    assert df.loc["local_conv", "direction_reproduced"] == "yes"  # paper: 6.48 > 5.52
    assert df.loc["hourglass", "direction_reproduced"] == "reference"


def _study(name, tmp_path, capsys, **kwargs):
    failed = run_study(name, "smoke", runs_dir=tmp_path / "runs", reports_dir=tmp_path / "reports",
                       wandb="offline", jobs=2, **kwargs)
    return failed, capsys.readouterr().out


def _results(tmp_path, name):
    return {p.parent.name: json.loads(p.read_text()) for p in (tmp_path / "runs" / name).glob("*/result.json")}


@pytest.mark.slow
@pytest.mark.parametrize("name", ["ARL_vs_NAL", "attention_type", "noisy_labels", "cifar_benchmarks"])
def test_every_study_runs_end_to_end_in_the_smoke_profile(name, tmp_path, capsys):
    failed, out = _study(name, tmp_path, capsys)
    assert failed == 0, out
    study = load_study(name)
    results = _results(tmp_path, name)
    assert len(results) == len(study.variants())
    table = pd.read_csv(tmp_path / "reports" / name / "table.csv").set_index("variant")
    for r in results.values():
        assert table.loc[r["variant"], "error_mean"] == pytest.approx(r["test_error"])
        assert r["status"] == "finished" and r["reductions"]["model.width"].startswith("0.125")
        assert r["params"] > 0 and r["flops"] > 0 and r["epochs"] and r["probe"]["stage1_rel"] == 1.0
    for f in ("table.md", "table.tex", "error.png", "curves.png"):
        assert (tmp_path / "reports" / name / f).stat().st_size > 0
    if name == "ARL_vs_NAL":
        assert (tmp_path / "reports" / name / "depth.png").is_file()
        assert (tmp_path / "reports" / name / "response.png").is_file()
        assert (tmp_path / "reports" / name / "masks.png").is_file()
    if name == "noisy_labels":
        assert all(r["noise_rate"] is not None for r in results.values())


@pytest.mark.slow
def test_study_resumes_skips_finished_runs_and_logs_to_offline_wandb(tmp_path, capsys):
    failed, out = _study("mask_structure", tmp_path, capsys, seeds=2)
    assert failed == 0, out
    results = _results(tmp_path, "mask_structure")
    assert len(results) == 4

    # a real offline W&B run per training run, holding the metrics
    run = next(iter(results.values()))
    files = list((tmp_path / "runs" / "mask_structure" / run["run_id"] / "wandb").glob("offline-run-*/run-*.wandb"))
    assert len(files) == 1
    history, summary = history_and_summary(files[0])
    assert any("val/err1" in row for row in history) and any("train/loss" in row for row in history)
    assert summary["test_error"] == pytest.approx(run["test_error"])
    assert summary["test/err1"] == pytest.approx(run["test"]["test/err1"])

    # the report's table is the stored results'
    table = pd.read_csv(tmp_path / "reports" / "mask_structure" / "table.csv").set_index("variant")
    hour = [r["test_error"] for r in results.values() if r["variant"] == "hourglass"]
    local = {r["seed"]: r["test_error"] for r in results.values() if r["variant"] == "local_conv"}
    assert table.loc["hourglass", "seeds"] == 2
    assert table.loc["hourglass", "error_mean"] == pytest.approx(sum(hour) / 2)
    hour_by_seed = {r["seed"]: r["test_error"] for r in results.values() if r["variant"] == "hourglass"}
    assert table.loc["local_conv", "diff_vs_ref"] == pytest.approx(
        sum(local[s] - hour_by_seed[s] for s in (0, 1)) / 2)

    # the same command again trains nothing
    mtimes = {k: (tmp_path / "runs" / "mask_structure" / k / "result.json").stat().st_mtime for k in results}
    failed, out = _study("mask_structure", tmp_path, capsys, seeds=2)
    assert failed == 0 and "4 finished, 0 to train" in out and "started" not in out
    assert mtimes == {k: (tmp_path / "runs" / "mask_structure" / k / "result.json").stat().st_mtime for k in results}

    # deleting one result retrains that run only
    victim = sorted(results)[1]
    (tmp_path / "runs" / "mask_structure" / victim / "result.json").unlink()
    failed, out = _study("mask_structure", tmp_path, capsys, seeds=2)
    assert failed == 0 and "3 finished, 1 to train" in out
    assert out.count(" started") == 1 and f"{victim} started" in out

    # the report regenerates from stored results alone
    shutil.rmtree(tmp_path / "reports")
    cmd = [sys.executable, str(ROOT / "studies" / "report.py"), "mask_structure", "--runs-dir",
           str(tmp_path / "runs"), "--reports-dir", str(tmp_path / "reports")]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    again = pd.read_csv(tmp_path / "reports" / "mask_structure" / "table.csv").set_index("variant")
    assert again.loc["local_conv", "error_mean"] == pytest.approx(table.loc["local_conv", "error_mean"], rel=0.5)
    assert again.loc["hourglass", "seeds"] == 2


def test_run_cli_errors_and_dry_run(tmp_path):
    cmd = [sys.executable, str(ROOT / "studies" / "run.py")]
    bad = subprocess.run(cmd + ["ARL_vs_NLA"], capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and "available:" in bad.stderr and "ARL_vs_NAL" in bad.stderr
    bad = subprocess.run(cmd + ["mask_structure", "--profile", "huge"], capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and "smoke" in bad.stderr
    dry = subprocess.run(cmd + ["mask_structure", "--profile", "smoke", "--dry-run", "--runs-dir", str(tmp_path)],
                         capture_output=True, text=True, timeout=120)
    assert dry.returncode == 0 and dry.stdout.count("to train") == 3 and not any(tmp_path.iterdir())
