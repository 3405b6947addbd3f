"""A CLI fuzz test of the study command (issue #14): seeded random combinations of the runner's flags
and --set values, allowed and forbidden. Each must end with exit 0 or 2, never a traceback, and exit
2 must leave the runs and reports folders byte-identical."""

import random

import pytest

from resattn.cli.study import study_main
from tests.test_preflight import _finished_run, _snapshot

CASES = 200
BAD = 0.06  # chance that one flag or setting takes a forbidden value
FLAGS = {  # flag -> (allowed values, forbidden values); None leaves the flag out
    "--profile": ([None, "smoke"], ["huge", "paper-ish"]),
    "--seeds": ([None, "1", "2"], ["0", "-1", "x"]),
    "--jobs": ([None, "1", "2"], ["0", "-3", "1.5"]),
    "--cpus-per-run": ([None, "1", "0.5"], ["0", "-1"]),
    "--gpus-per-run": ([None, "0"], ["-1"]),
    "--max-retries": ([None, "0", "2"], ["-1"]),
    "--pack": ([None, "1", "2"], ["0", "65", "two"]),
    "--executor": ([None, "local"], ["cloud", "slurm"]),  # slurm: this machine has no SLURM (no sbatch)
    "--wandb": ([None, "disabled", "offline"], ["cloud"]),
    "--data_dir": ([None, "{tmp}/data"], ["{tmp}/runs/mask_structure/.hidden/x"]),
}
SETTINGS = (
    [
        "model.width=0.25",
        "model.depth=92",
        "model.attention_learning=nal",
        "model.normalization=spatial",
        "trainer.accelerator=cpu",
        "trainer.max_epochs=2",
        "data.label_noise=0.3",
        "data.batch_size=16",
        "data.eval_batch_size=7",
        "trainer.precision=bf16-true",
        "model.lr=0.05",
        "model.attention_block=se",
        "model.t=3",
    ],
    [
        "model.width=-1",
        "model.width=abc",
        "model.width=0",
        "model.depth=57",
        "model.attention_learning=xyz",
        "trainer.accelerator=gpu",
        "trainer.max_epochs=many",
        "data.dataset=cifar10",
        "data.label_noise=1.5",
        "model.widht=1",
        "colour=red",
        "model.attention_block=transformer",
    ],
)
SWITCHES = ["--force", "--no-download"]


def _pick(rng: random.Random, allowed: list, forbidden: list):
    return rng.choice(forbidden if rng.random() < BAD else allowed)


def _case(rng: random.Random, tmp: str) -> list[str]:
    args = ["mask_structure" if rng.random() > BAD else "ARL_vs_NLA", "--dry-run"]
    for flag, (allowed, forbidden) in FLAGS.items():
        value = _pick(rng, allowed, forbidden)
        if value is not None:
            args += [flag, value.replace("{tmp}", tmp)]
    args += [switch for switch in SWITCHES if rng.random() < 0.3]
    for _ in range(rng.randint(0, 3)):
        args += ["--set", _pick(rng, *SETTINGS)]
    return args


@pytest.mark.slow
def test_random_flag_combinations_exit_0_or_2_and_bad_ones_write_nothing(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the default data folder (./data) lies in tmp_path too
    _finished_run(tmp_path)
    (tmp_path / "reports").mkdir()
    rng = random.Random(14)
    codes = []
    for _ in range(CASES):
        args = _case(rng, str(tmp_path))
        args += ["--runs-dir", str(tmp_path / "runs"), "--reports-dir", str(tmp_path / "reports")]
        before = _snapshot(tmp_path)
        try:
            code = study_main(args)
        except SystemExit as exit_:  # argparse: a malformed flag value
            code = exit_.code
        out = capsys.readouterr()
        assert code in (0, 2), (args, out)
        if code == 2:
            assert out.err.strip(), args  # a message, naming what was wrong
        assert _snapshot(tmp_path) == before, args  # exit 2, and dry runs, write nothing
        codes.append(code)
    assert codes.count(0) >= 40 and codes.count(2) >= 40, (codes.count(0), codes.count(2))
