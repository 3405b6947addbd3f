"""The run store: one RunDir naming every file, typed records validated when read, run identity,
locks (issue #10)."""

import json
import subprocess
import sys

import pytest

from resattn.study.record import RunResult
from resattn.study.spec import expand, load_profile, load_study, parse_overrides
from resattn.study.store import RunDir, StoreError, is_locked, study_results

PREC = {"trainer.precision": "32-true"}


def _runs(*overrides, profile="smoke", study="mask_structure", seeds=1):
    return expand(load_study(study), load_profile(profile), seeds, parse_overrides(list(overrides)), defaults=PREC)


def _result(spec, **changes) -> RunResult:
    fields = dict(
        status="finished",
        git_commit="abc",
        versions={},
        python="3.11",
        device="cpu",
        world_size=1,
        started_at="t0",
        finished_at="t1",
        wall_time_s=1.0,
        train_images_per_s=10.0,
        params=1,
        macs=2,
        flops=4,
        epochs=[{"epoch": 0, "val/err1": 0.5}],
        resumes=[],
        test={"test/err1": 0.5},
        test_error=50.0,
        probe={},
        noise_rate=None,
        wandb={"mode": "disabled"},
    )
    return RunResult(**spec.model_dump(), **{**fields, **changes})


@pytest.mark.parametrize(
    "setting",
    [
        "data.data_dir=/elsewhere",
        "data.download=true",
        "data.eval_batch_size=7",
        "data.num_workers=0",
        "trainer.accelerator=cpu",
        "model.channels_last=false",
        "trainer.enable_progress_bar=true",
    ],
)
def test_settings_that_do_not_change_the_result_keep_the_run_id(setting):
    assert [r.run_id for r in _runs(setting)] == [r.run_id for r in _runs()]


@pytest.mark.parametrize(
    "setting",
    [
        "model.width=0.25",
        "data.label_noise=0.1",
        "trainer.max_epochs=2",
        "data.batch_size=16",
        "trainer.precision=bf16-mixed",
        "trainer.devices=2",
        "model.lr=0.05",
    ],
)
def test_settings_that_change_the_result_change_the_run_id(setting):
    assert not {r.run_id for r in _runs(setting)} & {r.run_id for r in _runs()}


def test_resolved_settings_make_the_id_whatever_way_they_are_spelled(tmp_path):
    from resattn.study.preflight import resolve

    ids = [r.run_id for r in resolve(_runs())[0]]
    assert [r.run_id for r in resolve(_runs("model.lr=0.1", "data.label_noise=0.0"))[0]] == ids  # the defaults
    assert [r.run_id for r in resolve(_runs("trainer.precision=32"))[0]] == ids  # 32 is 32-true
    resolved = resolve(_runs())[0][0]
    assert resolved.config["trainer"]["precision"] == "32-true" and resolved.config["data"]["data_dir"].startswith("/")
    assert "lr" not in resolved.config["model"] and resolved.config["model"]["width"] == 0.125
    for d in "ab":
        for split in ("train", "val"):
            for c in ("cat", "dog"):
                (tmp_path / d / split / c).mkdir(parents=True)
    image_folders = [
        resolve(_runs("data.dataset=imagefolder", f"data.data_dir={tmp_path / d}"))[0][0].run_id for d in "ab"
    ]
    assert image_folders[0] != image_folders[1]  # there, the folder is the data


def test_the_configuration_names_profile_precision_and_changed_settings():
    assert {r.configuration for r in _runs()} == {"smoke"}
    assert {r.configuration for r in _runs("data.data_dir=/x")} == {"smoke"}  # where data lies: same report
    changed = {r.configuration for r in _runs("model.width=0.25")}
    assert len(changed) == 1 and changed.pop().startswith("smoke-")
    assert {r.configuration for r in _runs("trainer.precision=bf16-mixed")} == {"smoke-bf16-mixed"}
    assert {r.configuration for r in _runs("model.width=0.125")} == {"smoke"}  # what the profile sets already


def test_spec_and_result_round_trip_and_config_yaml_is_the_cli_format(tmp_path):
    spec = _runs()[0]
    run_dir = RunDir.of(tmp_path, spec)
    run_dir.write_spec(spec)
    assert run_dir.read_spec() == spec and run_dir.read_result() is None
    import yaml

    assert yaml.safe_load(run_dir.config.read_text()) == spec.config
    assert set(spec.config) == {"seed_everything", "model", "data", "trainer"}
    result = _result(spec)
    run_dir.write_result(result)
    assert run_dir.read_result() == result and json.loads(run_dir.result.read_text())["run_id"] == spec.run_id
    assert study_results(tmp_path, spec.study) == [result]


@pytest.mark.parametrize(
    "text, words",
    [
        ("{not json", ["not valid JSON"]),
        ('{"status": "finished"}', ["not a valid result", "study"]),
        ("[1, 2]", ["not a valid result"]),
    ],
)
def test_a_malformed_result_is_an_error_naming_the_file(tmp_path, text, words):
    spec = _runs()[0]
    run_dir = RunDir.of(tmp_path, spec)
    run_dir.write_spec(spec)
    run_dir.result.write_text(text)
    with pytest.raises(StoreError) as err:
        run_dir.read_result()
    assert str(run_dir.result) in str(err.value)
    for word in words:
        assert word in str(err.value)
    with pytest.raises(StoreError):
        study_results(tmp_path, spec.study)


def test_move_aside_keeps_the_result_and_checkpoint(tmp_path):
    spec = _runs()[0]
    run_dir = RunDir.of(tmp_path, spec)
    run_dir.write_spec(spec)
    run_dir.write_result(_result(spec))
    run_dir.checkpoint.parent.mkdir()
    run_dir.checkpoint.write_bytes(b"weights")
    aside = run_dir.move_aside()
    assert aside.parent == run_dir.attic
    assert (aside / "result.json").is_file() and (aside / "checkpoints" / "last.ckpt").read_bytes() == b"weights"
    assert run_dir.read_result() is None and not run_dir.checkpoint.exists()
    assert run_dir.move_aside() is None  # nothing left to move


def test_a_run_lock_is_exclusive_names_its_holder_and_is_freed_when_its_holder_is_killed(tmp_path):
    run_dir = RunDir(tmp_path / "run")
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import time; from resattn.study.store import RunDir; "
            f"lock = RunDir({str(run_dir.path)!r}).run_lock(); assert lock.acquire(); print('held', flush=True); "
            "time.sleep(600)",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        lock = run_dir.run_lock()
        assert is_locked(run_dir) and not lock.acquire()
        assert lock.holder().startswith(f"pid {holder.pid} on ")
    finally:
        holder.kill()  # SIGKILL: the lock dies with its holder (never stale)
        holder.wait()
    assert not is_locked(run_dir)
    assert lock.acquire()
    lock.release()


def test_no_path_of_the_run_layout_is_spelled_outside_the_store():
    from pathlib import Path

    root = Path(__file__).resolve().parents[1] / "resattn"
    names = (
        '"result.json"',
        '"progress.json"',
        '"run.json"',
        '"last.ckpt"',
        '"wandb.json"',
        '"masks.npz"',
        '"train.log"',
        '"latest.json"',
        '"config.yaml"',
        '"_slurm"',
        '"_wandb"',
        '"_report',
        '"lock"',
    )
    offenders = [(p.name, n) for p in root.rglob("*.py") if p.name != "store.py" for n in names if n in p.read_text()]
    assert offenders == []


def test_wandb_dirs_leave_out_abandoned_attempts(tmp_path):
    from resattn.study.wandb_runs import sync_dirs

    spec = _runs()[0]
    run_dir = RunDir.of(tmp_path, spec)
    run_dir.write_spec(spec)
    current = run_dir.path / "wandb" / "offline-run-2-new"
    run_dir.wandb_ids.write_text(json.dumps({"abandoned": ["old"], "id": "new", "segments": [str(current / "files")]}))
    assert sync_dirs([run_dir]) == [current]


def test_a_result_written_before_errors_were_in_percent_reads_in_percent():
    """Results of earlier versions logged ``val/err1`` as a fraction and lack ``error_unit``; new
    ones log percent. Both read in percent."""
    spec = _runs()[0]
    old = _result(spec)  # the fields of an earlier result.json: no error_unit
    new = _result(spec, epochs=[{"epoch": 0, "val/err1": 50.0}], test={"test/err1": 50.0}, error_unit="percent")
    assert old.error_unit == "fraction" and old.epoch_error(old.epochs[0]) == 50.0
    assert new.epoch_error(new.epochs[0]) == 50.0 and new.epoch_error({"epoch": 0}) is None


def test_a_result_written_before_code_provenance_was_recorded_still_reads(tmp_path):
    """Results of earlier versions lack ``version``, ``git_dirty`` and ``config_digest`` and may say
    ``git_commit: "unknown"``; they read, with the new fields None."""
    spec = _runs()[0]
    run_dir = RunDir.of(tmp_path, spec)
    run_dir.write_spec(spec)
    old = _result(spec, git_commit="unknown").dump()
    for field in ("version", "git_dirty", "config_digest"):
        del old[field]
    run_dir.result.write_text(json.dumps(old))
    result = run_dir.read_result()
    assert result.git_commit == "unknown" and (result.version, result.git_dirty, result.config_digest) == (None,) * 3
    new = _result(spec, git_commit=None, version="0.1.0", git_dirty=False, config_digest="0123456789abcdef")
    run_dir.write_result(new)
    assert run_dir.read_result() == new  # an installed package: no commit
