"""Bad input is answered before anything is created, moved or deleted, with exit code 2 and one line
naming the flag or setting (issues #5, #10, #14). No training here: the fast tier."""

import resource
import subprocess
import sys
from pathlib import Path

import pytest

from resattn.cli.study import study_main
from resattn.study.spec import expand, load_profile, load_study
from resattn.study.store import RunDir
from tests.conftest import write_cifar
from tests.test_store import _result

ROOT = Path(__file__).resolve().parents[1]


def _main(tmp_path, capsys, *args):
    code = study_main(
        [
            "mask_structure",
            "--profile",
            "smoke",
            "--wandb",
            "disabled",
            "--runs-dir",
            str(tmp_path / "runs"),
            "--reports-dir",
            str(tmp_path / "reports"),
            *args,
        ]
    )
    captured = capsys.readouterr()
    return code, captured.out + captured.err


@pytest.mark.parametrize(
    "args, words",
    [
        (["--set", "model.colour=red"], ["unknown setting model.colour", "depth", "width"]),
        (["--set", "model.widht=0.5"], ["model.widht", "did you mean width"]),
        (["--set", "model.width=abc"], ["model.width='abc'", "a number in (0, 8]"]),
        (["--set", "model.width=-1"], ["model.width=-1", "(0, 8]"]),
        (["--set", "model.depth=57"], ["depth=57", "56, 92, 128"]),
        (["--set", "model.attention_learning=xyz"], ["model.attention_learning", "'arl', 'nal', 'none'"]),
        (["--set", "trainer.max_epochs=many"], ["trainer.max_epochs='many'", "an integer >= 1"]),
        (["--set", "trainer.accelerator=gpu"], ["trainer.accelerator=gpu", "no usable CUDA GPU"]),
        (["--set", "modle.width=0.5"], ["'modle.width'", "did you mean model.width?"]),
        (
            ["--set", "data.dataset=cifar10", "--data_dir", "{tmp}/data"],  # the download fails: no network here
            ["cifar10 not found", "{tmp}/data", "--data_dir", "--download"],
        ),
        (
            ["--set", "data.dataset=cifar10", "--data_dir", "{tmp}/data", "--no-download"],
            ["cifar10 not found", "{tmp}/data", "--data_dir", "--download"],
        ),
        (["--jobs", "0"], ["--jobs 0", ">= 1"]),
        (["--seeds", "-1"], ["--seeds -1", "[1, 1000]"]),
        (["--seeds", "0"], ["--seeds 0", "[1, 1000]"]),
        (["--cpus-per-run", "0"], ["--cpus-per-run 0", "> 0"]),
        (["--max-retries", "-2"], ["--max-retries -2", ">= 0"]),
        (["--profile", "huge"], ["unknown profile 'huge'", "smoke"]),
        (["--set", "width=3"], ["model.<arg>"]),
        (["--set", "model.mask_structure=local_conv"], ["--set model.mask_structure", "this study varies it"]),
        (["--set", "data.batch_size=0"], ["data.batch_size=0", ">= 1"]),
        (["--set", "data.val_size=-5"], ["val_size=-5", ">= 0"]),
        (["--set", "data.synthetic_size=[0, 10]"], ["synthetic_size", ">= 1"]),
        (["--seeds", "100000"], ["--seeds 100000", "[1, 1000]"]),
        (["--slurm", "timeout_min=5"], ["--slurm is for --executor slurm"]),
        (["--executor", "slurm"], ["--executor slurm: no SLURM here", "--slurm cluster=local"]),
        (
            ["--dry-run", "--set", "data.dataset=cifar10", "--data_dir", "{tmp}/data", "--no-download"],
            ["cifar10 not found"],
        ),
    ],
)
def test_bad_input_exits_2_and_writes_nothing(tmp_path, capsys, args, words):
    code, out = _main(tmp_path, capsys, *(a.replace("{tmp}", str(tmp_path)) for a in args))
    assert code == 2, out
    for word in words:
        assert word.replace("{tmp}", str(tmp_path)) in out
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_unwritable_targets_are_named(tmp_path, capsys):
    (tmp_path / "file").write_text("not a folder")
    code, out = _main(tmp_path, capsys, "--runs-dir", str(tmp_path / "file" / "runs"))
    assert code == 2 and "--runs-dir" in out and "is a file" in out
    code, out = _main(tmp_path, capsys, "--reports-dir", str(tmp_path / "file"))
    assert code == 2 and "--reports-dir" in out and "is a file" in out
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file"]


def _finished_run(tmp_path) -> RunDir:
    from resattn.study.preflight import resolve

    spec = resolve(
        expand(load_study("mask_structure"), load_profile("smoke"), 1, defaults={"trainer.precision": "32-true"})
    )[0][0]
    run_dir = RunDir.of(tmp_path / "runs", spec)
    run_dir.write_spec(spec)
    run_dir.write_result(_result(spec))
    run_dir.checkpoint.parent.mkdir()
    run_dir.checkpoint.write_bytes(b"trained weights")
    return run_dir


def _snapshot(folder: Path) -> dict:
    return {p: p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_force_with_a_bad_flag_loses_nothing(tmp_path, capsys):
    run_dir = _finished_run(tmp_path)
    before = _snapshot(tmp_path)
    code, out = _main(tmp_path, capsys, "--force", "--jobs", "0")
    assert code == 2 and "--jobs 0" in out
    assert _snapshot(tmp_path) == before and run_dir.checkpoint.read_bytes() == b"trained weights"


def test_a_garbage_result_is_an_error_naming_the_file(tmp_path, capsys):
    run_dir = _finished_run(tmp_path)
    run_dir.result.write_text("garbage")
    before = _snapshot(tmp_path)
    code, out = _main(tmp_path, capsys)
    assert code == 2 and str(run_dir.result) in out and "not valid JSON" in out
    assert _snapshot(tmp_path) == before


def test_corrupt_dataset_file_is_named(tmp_path, capsys):
    write_cifar(tmp_path / "data")
    (tmp_path / "data" / "cifar-10-batches-py" / "data_batch_3").write_bytes(b"not a pickle")
    code, out = _main(tmp_path, capsys, "--data_dir", str(tmp_path / "data"), "--set", "data.dataset=cifar10")
    assert code == 2 and "data_batch_3 is not a readable CIFAR batch file" in out
    assert not (tmp_path / "runs").exists()


def test_dry_run_lists_the_runs_and_writes_nothing(tmp_path, capsys):
    run_dir = _finished_run(tmp_path)
    before = _snapshot(tmp_path)
    code, out = _main(tmp_path, capsys, "--dry-run", "--seeds", "2")
    assert code == 0 and out.count("  to train  ") == 5 and f"{run_dir.name}  finished" in out
    assert _snapshot(tmp_path) == before


def test_a_bad_slurm_parameter_fails_before_anything_is_written(tmp_path, capsys):
    pytest.importorskip("submitit")
    slurm = ["--slurm", "cluster=local", "--slurm", "slurm_colour=red"]
    code, out = _main(tmp_path, capsys, "--executor", "slurm", *slurm)
    assert code == 2 and "colour" in out
    assert not (tmp_path / "runs").exists()


def test_the_study_command_answers_a_typo_in_under_a_second(tmp_path):
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    done = subprocess.run(
        [sys.executable, str(ROOT / "studies" / "run.py"), "ARL_vs_NLA"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
    )
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime  # CPU time: robust to a busy machine
    assert done.returncode == 2 and "available: ARL_vs_NAL" in done.stderr
    assert cpu < 1.0, f"{cpu:.2f} s of CPU"
    assert not any(tmp_path.iterdir())


def test_list_shows_each_study_with_its_paper_table_and_finished_runs(tmp_path, capsys):
    _finished_run(tmp_path)
    assert study_main(["--list", "--runs-dir", str(tmp_path / "runs")]) == 0
    lines = {line.split()[0]: line for line in capsys.readouterr().out.splitlines()[1:]}
    assert set(lines) >= {"ARL_vs_NAL", "mask_structure"}
    assert "Table 4" in lines["mask_structure"] and lines["mask_structure"].split()[-1] == "1"
    assert lines["ARL_vs_NAL"].split()[-1] == "0"


def test_an_unreachable_ray_cluster_is_bad_input(tmp_path, capsys):
    pytest.importorskip("ray")
    code, out = _main(tmp_path, capsys, "--executor", "ray", "--ray-address", "127.0.0.1:1")
    assert code == 2 and "--ray-address 127.0.0.1:1: nothing answers there" in out
    assert sorted(p.name for p in tmp_path.iterdir()) == []
