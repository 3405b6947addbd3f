"""A study survives interruption, concurrent runners, divergence and bad input (issue #5)."""

import json
import os
import resource
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from resattn.cli.study import study_main
from resattn.study.callbacks import CheckpointError, ensure_space
from resattn.study.preflight import resolve
from resattn.study.spec import expand, load_profile, load_study, parse_overrides
from resattn.study.store import RunDir, is_locked, pack_dir, study_results

ROOT = Path(__file__).resolve().parents[1]
# 3 epochs of 10 steps: long enough to interrupt mid-epoch, seconds per run.
SHORT = ["trainer.max_epochs=3", "data.synthetic_size=[320, 64]", "data.eval_batch_size=16"]
RUN = [sys.executable, str(ROOT / "studies" / "run.py"), "mask_structure", "--profile", "smoke", "--wandb", "offline"]


def _specs(seeds: int, overrides=SHORT):
    """mask_structure's smoke runs with ``overrides``, resolved as the runner resolves them."""
    return resolve(
        expand(
            load_study("mask_structure"),
            load_profile("smoke"),
            seeds,
            parse_overrides(overrides),
            defaults={"trainer.precision": "32-true"},
        )
    )[0]


def _written(tmp_path: Path, name: str, run) -> Path:
    run_dir = RunDir.of(tmp_path / name, run)
    run_dir.write_spec(run)
    return run_dir.path


def _run_dir(tmp_path: Path, name: str, overrides=SHORT) -> Path:
    return _written(tmp_path, name, _specs(1, overrides)[0])


def _worker(run_dir: Path, *extra: str, **popen) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "resattn.study.worker", str(run_dir), "--wandb", "offline", *extra]
    return subprocess.Popen(cmd, stdout=open(run_dir / "train.log", "a"), stderr=subprocess.STDOUT, **popen)


def _wait_for_step(run_dir: Path, step: int, proc: subprocess.Popen, timeout: float = 240) -> None:
    end = time.time() + timeout
    while time.time() < end:
        assert proc.poll() is None, (run_dir / "train.log").read_text()[-3000:]
        try:
            if json.loads((run_dir / "progress.json").read_text())["step"] >= step:
                return
        except (OSError, ValueError, KeyError):
            pass
        time.sleep(0.05)
    raise TimeoutError(f"{run_dir} did not reach step {step}")


def _result(run_dir: Path) -> dict:
    return json.loads((run_dir / "result.json").read_text())


@pytest.mark.slow
def test_an_interrupted_run_resumes_to_the_result_of_an_uninterrupted_one(tmp_path):
    import wandb

    # A W&B service in this process (as in a runner that logged a report): workers must not share it.
    wandb.init(mode="offline", dir=str(tmp_path), project="resattn-test").finish()
    assert "WANDB_SERVICE" in os.environ
    reference = _run_dir(tmp_path, "reference")
    assert _worker(reference).wait(timeout=300) == 0
    run_dir = _run_dir(tmp_path, "interrupted")
    proc = _worker(run_dir)
    _wait_for_step(run_dir, 15, proc)  # mid-epoch 2: SIGTERM -> checkpoint after the current batch
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=120) == 143
    assert (run_dir / "checkpoints" / "last.ckpt").is_file() and not (run_dir / "result.json").exists()
    proc = _worker(run_dir)
    _wait_for_step(run_dir, 25, proc)  # SIGKILL: no warning at all; resumes from the last checkpoint
    proc.kill()
    proc.wait()
    assert _worker(run_dir).wait(timeout=300) == 0

    a, b = _result(reference), _result(run_dir)
    assert [r["from_step"] for r in b["resumes"]] == [16, 20] and a["resumes"] == []
    assert b["epochs"] == a["epochs"]  # every metric of every epoch, train and validation
    assert b["test"] == a["test"] and b["probe"] == a["probe"]
    # one W&B run, continued by each segment (same id), never a silent duplicate
    ids = json.loads((run_dir / "wandb.json").read_text())
    assert b["wandb"].get("id") == ids["id"] and len(ids["segments"]) == 3, (b["wandb"], ids)
    assert all(ids["id"] in seg for seg in ids["segments"])


@pytest.mark.slow
def test_runner_killed_with_sigkill_continues_and_writes_each_result_once(tmp_path):
    cmd = RUN + ["--seeds", "2", "--runs-dir", str(tmp_path / "runs"), "--reports-dir", str(tmp_path / "reports")]
    cmd += [f"--set={s}" for s in SHORT]
    study = tmp_path / "runs" / "mask_structure"
    first = subprocess.Popen(cmd, stdout=open(tmp_path / "first.log", "w"), stderr=subprocess.STDOUT)
    end = time.time() + 300
    while not list(study.glob("*/result.json")):  # one run done ...
        assert time.time() < end and first.poll() is None, (tmp_path / "first.log").read_text()
        time.sleep(0.1)
    finished_before = {p.parent.name: p.stat().st_mtime for p in study.glob("*/result.json")}
    while not (started := [d for d in study.glob("*/lock") if d.parent.name not in finished_before]):
        assert time.time() < end and first.poll() is None, (tmp_path / "first.log").read_text()
        time.sleep(0.1)
    in_flight = started[0].parent
    _wait_for_step(in_flight, 15, first)  # ... and the next one mid-way
    first.kill()  # SIGKILL: the runner cannot react; its worker sees it gone and checkpoints
    first.wait()

    second = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert second.returncode == 0, second.stdout + second.stderr
    results = {p.parent.name: _result(p.parent) for p in study.glob("*/result.json")}
    assert len(results) == 6 and all(r["status"] == "finished" for r in results.values())
    assert not list(study.rglob("*.tmp*")), "a temporary file was left behind"
    for name, mtime in finished_before.items():  # finished runs were not trained again
        assert (study / name / "result.json").stat().st_mtime == mtime
    assert results[in_flight.name]["resumes"][0]["from_step"] >= 15  # resumed, not restarted
    assert f"{in_flight.name} started" in second.stdout
    assert len(list((study / in_flight.name / "csv").glob("version_*"))) == 2  # two segments, no more
    table = pd.read_csv(next((tmp_path / "reports" / "mask_structure").iterdir()) / "table.csv")
    assert table["seeds"].tolist() == [2, 2, 2]


@pytest.mark.slow
def test_ctrl_c_stops_the_runner_with_checkpoints_and_the_same_command_continues(tmp_path):
    cmd = RUN + ["--seeds", "1", "--runs-dir", str(tmp_path / "runs"), "--reports-dir", str(tmp_path / "reports")]
    cmd += [f"--set={s}" for s in SHORT]
    runner = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    study = tmp_path / "runs" / "mask_structure"
    end = time.time() + 300
    while not list(study.glob("*/progress.json")):
        assert time.time() < end and runner.poll() is None
        time.sleep(0.1)
    run_dir = next(study.glob("*/progress.json")).parent
    _wait_for_step(run_dir, 12, runner)
    runner.send_signal(signal.SIGINT)
    out = runner.communicate(timeout=120)[0]
    assert runner.returncode == 130, out
    assert "SIGINT: asking the runs in flight to save a checkpoint" in out
    assert out.count("stopped; its checkpoint is kept") == 1 and out.count(" not started") == 2  # 1 of 3 ran
    assert (run_dir / "checkpoints" / "last.ckpt").is_file() and not (run_dir / "result.json").exists()
    assert not is_locked(RunDir(run_dir))
    again = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stdout + again.stderr
    assert "3 to train (1 from a checkpoint)" in again.stdout
    assert _result(run_dir)["resumes"][0]["from_step"] >= 12


@pytest.mark.slow
def test_two_runners_at_once_train_every_run_exactly_once(tmp_path):
    cmd = RUN + ["--seeds", "2", "--runs-dir", str(tmp_path / "runs"), "--reports-dir", str(tmp_path / "reports")]
    procs = [subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for _ in range(2)]
    outs = [p.communicate(timeout=600)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    study = tmp_path / "runs" / "mask_structure"
    runs = [d for d in study.iterdir() if d.is_dir() and not d.name.startswith("_")]
    assert len(runs) == 6 and all(_result(d)["status"] == "finished" for d in runs)
    for d in runs:  # one training segment each: nobody trained a run the other one had
        assert len(list((d / "csv").glob("version_*"))) == 1, d.name
        assert _result(d)["resumes"] == []
    assert sum(o.count(" started") for o in outs) >= 6
    # each run is announced as finished once, by the runner that trained it; never by the other one
    assert sum(o.count("finished: test error") for o in outs) == 6


@pytest.mark.slow
def test_a_diverged_run_is_recorded_and_the_study_goes_on(tmp_path, capsys):
    args = [
        "mask_structure",
        "--profile",
        "smoke",
        "--set",
        "model.lr=1.0e+30",
        "--runs-dir",
        str(tmp_path / "runs"),
        "--reports-dir",
        str(tmp_path / "reports"),
        "--wandb",
        "disabled",
    ]
    assert study_main(args) == 0
    out = capsys.readouterr().out
    results = study_results(tmp_path / "runs", "mask_structure")
    assert len(results) == 3 and {r.status for r in results} == {"diverged"}
    for r in results:
        assert r.diverged.step >= 1 and r.diverged.loss in ("nan", "inf", "-inf")
        assert r.test_error is None
    assert out.count("DIVERGED at step") == 3
    report = next((tmp_path / "reports" / "mask_structure").iterdir())
    assert "Diverged runs (3" in (report / "table.md").read_text()
    table = (report / "table.md").read_text()  # diverged runs are their own outcome (issue 17 item 7):
    assert "| hourglass | 0 (1 diverged) |" in table  # no converged seed, one diverged run
    assert "| local_conv_matched | 0 (1 diverged, Fisher p 1.00 vs ref) |" in table  # against the reference's
    summary = pd.read_csv(report / "table.csv")
    assert summary["diverged"].tolist() == [1, 1, 1] and summary["seeds"].tolist() == [0, 0, 0]
    # diverged runs count as done: the same command trains nothing
    assert study_main(args) == 0
    assert "3 finished, 0 to train" in capsys.readouterr().out


@pytest.mark.slow
def test_unreadable_checkpoint_is_moved_aside_and_wandb_failure_is_recorded(tmp_path, monkeypatch):
    run_dir = _run_dir(tmp_path, "run", ["data.synthetic_size=[64, 32]"])
    (run_dir / "checkpoints").mkdir()
    (run_dir / "checkpoints" / "last.ckpt").write_bytes(b"\0garbage")
    env = {k: v for k, v in os.environ.items() if not k.startswith("WANDB_")}
    env["NETRC"] = str(tmp_path / "no-netrc")  # no W&B credentials: an online start fails at once
    cmd = [sys.executable, "-m", "resattn.study.worker", str(run_dir), "--wandb", "online"]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    assert done.returncode == 0, done.stdout + done.stderr
    log = done.stdout + done.stderr
    assert "is unreadable" in log and "from scratch" in log
    aside = list((run_dir / "checkpoints").glob("last.ckpt.unreadable-*"))
    assert len(aside) == 1 and aside[0].read_bytes() == b"\0garbage"
    result = _result(run_dir)
    assert result["status"] == "finished" and result["resumes"] == []
    assert "W&B failed to start" in log and result["wandb"]["mode"] == "online" and result["wandb"]["error"]


def test_no_disk_space_for_a_checkpoint_is_a_clear_error(tmp_path):
    with pytest.raises(CheckpointError, match="no disk space for the checkpoint .* MiB are free"):
        ensure_space(tmp_path / "last.ckpt", needed=2**62)
    ensure_space(tmp_path / "last.ckpt", needed=1024)  # plenty of room: no error


@pytest.mark.slow
def test_a_failing_checkpoint_write_stops_the_run_cleanly(tmp_path):
    """A real write failure (the OS refuses a file over 64 KiB, as on a full disk): exit 74, a clear
    message, no partial checkpoint, no result."""
    run_dir = _run_dir(tmp_path, "run", ["data.synthetic_size=[64, 32]", "trainer.max_epochs=2"])

    def limit_file_size():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a failing write, not a killed process
        resource.setrlimit(resource.RLIMIT_FSIZE, (64 * 1024, 64 * 1024))

    proc = _worker(run_dir, "--wandb", "disabled", preexec_fn=limit_file_size)
    assert proc.wait(timeout=300) == 74
    log = (run_dir / "train.log").read_text()
    assert "error: could not write the checkpoint" in log and "File too large" in log
    assert not (run_dir / "result.json").exists()
    assert not [p for p in (run_dir / "checkpoints").iterdir()], "a partial checkpoint was left behind"


@pytest.mark.slow
def test_the_runner_says_when_it_sets_an_unreadable_checkpoint_aside(tmp_path, capsys):
    spec = resolve(
        expand(load_study("mask_structure"), load_profile("smoke"), 1, defaults={"trainer.precision": "32-true"})
    )[0][0]
    run_dir = RunDir.of(tmp_path / "runs", spec)
    run_dir.write_spec(spec)
    run_dir.checkpoint.parent.mkdir()
    run_dir.checkpoint.write_bytes(b"\0garbage")
    args = [
        "mask_structure",
        "--profile",
        "smoke",
        "--runs-dir",
        str(tmp_path / "runs"),
        "--reports-dir",
        str(tmp_path / "reports"),
        "--wandb",
        "disabled",
    ]
    assert study_main(args) == 0
    out = capsys.readouterr().out
    assert f"warning: checkpoint {run_dir.checkpoint} is unreadable" in out and "from scratch" in out
    assert run_dir.read_result().resumes == []


def _pack_dirs(tmp_path: Path, name: str) -> list[Path]:
    """The two seeds of the hourglass variant, written as runs of a pack."""
    return [_written(tmp_path, name, run) for run in _specs(2) if run.variant == "hourglass"]


def _pack_worker(dirs: list[Path]) -> subprocess.Popen:
    folder = pack_dir([RunDir(d) for d in dirs]).path
    folder.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "resattn.study.worker", *map(str, dirs), "--wandb", "offline"]
    return subprocess.Popen(cmd, stdout=open(folder / "train.log", "a"), stderr=subprocess.STDOUT)


@pytest.mark.slow
def test_an_interrupted_pack_resumes_as_a_pack_to_the_results_of_an_uninterrupted_one(tmp_path):
    reference = _pack_dirs(tmp_path, "reference")
    assert _pack_worker(reference).wait(timeout=300) == 0
    dirs = _pack_dirs(tmp_path, "interrupted")
    folder = pack_dir([RunDir(d) for d in dirs]).path
    proc = _pack_worker(dirs)
    _wait_for_step(folder, 15, proc)  # the pack's progress: mid-epoch 2
    assert all(is_locked(RunDir(d)) for d in dirs)  # the pack holds the lock of each of its runs
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=120) == 143
    assert (folder / "checkpoints" / "last.ckpt").is_file()
    assert not any((d / "result.json").exists() or is_locked(RunDir(d)) for d in dirs)
    assert _pack_worker(dirs).wait(timeout=300) == 0
    for ref, run in zip(reference, dirs):
        a, b = _result(ref), _result(run)
        assert [r["from_step"] for r in b["resumes"]] == [16] and a["resumes"] == []
        assert b["epochs"] == a["epochs"] and b["test"] == a["test"] and b["probe"] == a["probe"]
        assert b["pack"]["runs"] == [d.name for d in dirs] and b["seed"] == a["seed"]
        ids = json.loads((run / "wandb.json").read_text())  # each seed its own W&B run, continued
        assert b["wandb"]["id"] == ids["id"] and len(ids["segments"]) == 2
    assert _result(dirs[0])["test"] != _result(dirs[1])["test"]  # two seeds, two networks
