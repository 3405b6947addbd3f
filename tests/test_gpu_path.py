"""The gpu profile's code paths, run on the CPU (issue #19): bf16-mixed, seed packs and
``torch.compile`` (inductor, which compiles C++ on the CPU) through the real runner and worker, and
a compiled packed step against the eager one. CUDA-only parts (CUDA graphs, fused SGD on the GPU,
device memory) are left to ``benchmarks/gpu_check.py`` on a GPU.

Compilation takes minutes on this CPU; each test compiles in one process."""

import copy
import json
import math

import pandas as pd
import pytest

from resattn.cli.fit import build_run
from resattn.cli.study import study_main
from resattn.packing import PackedClassifier, PackedData
from resattn.study.store import RunDir, pack_dir, study_results
from tests.test_packing import SEEDS, _config, _distance
from tests.wandb_records import history_and_summary


@pytest.mark.slow
def test_a_compiled_packed_step_is_the_eager_packed_step():
    """One step of the Lightning packed step (PackedClassifier, ``model.compile=true``, fp32) moves each
    seed's weights as the eager packed step does, to fp32 round-off (measured: 0.07% of the update)."""
    updates = {}
    for compile_ in (False, True):
        configs = [_config(s, epochs=1) for s in SEEDS]
        for config in configs:
            config["model"]["compile"] = compile_
            config["trainer"].update(max_steps=1, limit_val_batches=0)
        members = [build_run(c) for c in configs]
        pack = PackedClassifier([m.model for m in members])
        before = [copy.deepcopy(pack.net.member_state(k)) for k in range(len(SEEDS))]
        members[0].trainer.fit(pack, PackedData([m.datamodule for m in members]))
        assert members[0].trainer.global_step == 1
        assert (pack.net._compiled_call_impl is not None) == compile_  # the pack itself was compiled
        updates[compile_] = [
            {n: v - before[k][n] for n, v in pack.net.member_state(k).items() if v.is_floating_point()}
            for k in range(len(SEEDS))
        ]
    for eager, compiled in zip(updates[False], updates[True]):
        size = _distance(eager, {n: 0 * v for n, v in eager.items()})
        assert size > 0
        assert _distance(eager, compiled) < 0.01 * size


@pytest.mark.slow
def test_the_gpu_profile_trains_a_packed_compiled_bf16_study_on_the_cpu(tmp_path, capsys):
    """The gpu profile (bf16-mixed, width 1.0, batch 64, 32k steps) with a pack of 3 seeds and
    ``model.compile=true``, cut to CPU size (width 0.125, batch 8, 24 steps on synthetic data), through
    studies/run.py's runner and one worker: every seed gets a finished result in bf16, with its
    W&B run, the divergence guard's record (none) and the report."""
    study = tmp_path / "one.yaml"
    study.write_text("title: one\nfactors: {attention_learning: [arl]}\nreference: {attention_learning: arl}\n")
    settings = {
        "data.dataset": "synthetic",
        "data.synthetic_size": "[96, 32]",
        "data.batch_size": "8",
        "model.width": "0.125",
        "model.compile": "true",
        "trainer.max_steps": "24",
    }
    args = [str(study), "--profile", "gpu", "--seeds", "3", "--pack", "3", "--wandb", "offline"]
    args += [f"--set={k}={v}" for k, v in settings.items()]
    args += ["--runs-dir", str(tmp_path / "runs"), "--reports-dir", str(tmp_path / "reports")]
    code = study_main(args)
    out = capsys.readouterr().out
    assert code == 0, out
    assert "1 pack(s) of up to 3 seeds" in out, out
    results = list(study_results(tmp_path / "runs", "one"))
    assert sorted(r.seed for r in results) == [0, 1, 2]
    for r in results:
        assert r.status == "finished" and r.diverged is None, r
        assert r.config["trainer"]["precision"] == "bf16-mixed" and r.config["model"]["compile"] is True
        assert r.epochs[-1]["step"] == 24 and math.isfinite(r.test_error)
        assert len(r.pack["seeds"]) == 3 and r.pack["images_per_s"] > 0
        files = list(RunDir.of(tmp_path / "runs", r).path.glob("wandb/offline-run-*/run-*.wandb"))
        assert len(files) == 1
        history, summary = history_and_summary(files[0])
        assert any("train/loss" in row for row in history)
        assert summary["test_error"] == pytest.approx(r.test_error)
    folder = pack_dir([RunDir.of(tmp_path / "runs", r) for r in sorted(results, key=lambda r: r.seed)])
    progress = json.loads(folder.progress.read_text())
    assert progress["step"] == 24 and math.isfinite(progress["train/loss"])
    table = pd.read_csv(next((tmp_path / "reports" / "one").glob("*/table.csv")))
    assert table["seeds"].tolist() == [3]
    assert table["error_mean"].iloc[0] == pytest.approx(sum(r.test_error for r in results) / 3)
