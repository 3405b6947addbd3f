import json
import subprocess
import sys

import pytest
import yaml

from resattn.cli.fit import cli_main
from resattn.config import PRESETS


def _run(*args):
    return subprocess.run([sys.executable, "-m", "resattn", *args], capture_output=True, text=True, timeout=300)


def _in_process(capsys, *args) -> tuple[int, str]:
    """``python -m resattn ARGS`` in this process (no interpreter start): its exit code and stderr. Any
    exception other than SystemExit (a traceback, in a real process) fails the test."""
    from resattn.__main__ import main

    try:
        code = main(list(args))
    except SystemExit as stop:
        code = stop.code
    return code, capsys.readouterr().err


@pytest.mark.parametrize("family, depth", [k for k, v in PRESETS.items() if v.paper_params and k[1] != 452])
def test_summary_reproduces_the_paper_counts(family, depth, capsys):
    from resattn.__main__ import main

    classes = "10" if family == "cifar" else "1000"
    assert main(["summary", "--depth", str(depth), "--family", family, "--num_classes", classes]) == 0
    result = json.loads(capsys.readouterr().out)  # in-process: the command's own JSON
    paper = result["paper_params_millions"] * 1e6
    assert abs(result["params"] - paper) / paper < 0.04
    assert result["flops"] == 2 * result["macs"] > 0


def test_summary_resnet_164_and_bad_flag(capsys):
    from resattn.__main__ import main

    assert main(["summary", "--depth", "164", "--attention_learning", "none"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["name"] == "ResNet-164" and abs(result["params"] / 1.7e6 - 1) < 0.04
    assert result["mask_branch"] is None
    code, err = _in_process(capsys, "summary", "--normalization", "softmax")
    assert code == 2 and "mixed" in err and "spatial" in err


# timm's defaults at the project's widths (resattn/gates.py, README): not reduction 16
GATE_SIZES = {
    ("se", "0.25"): [{"se_hidden": 8}] * 3,
    ("se", "1.0"): [{"se_hidden": 8}, {"se_hidden": 8}, {"se_hidden": 16}],
    ("cbam", "0.25"): [{"cbam_mlp_hidden": h, "cbam_spatial_kernel": 7} for h in (1, 2, 4)],
    ("cbam", "1.0"): [{"cbam_mlp_hidden": h, "cbam_spatial_kernel": 7} for h in (4, 8, 16)],
    ("eca", "0.25"): [{"eca_kernel": 3}] * 3,
    ("eca", "1.0"): [{"eca_kernel": k} for k in (3, 5, 5)],
}


@pytest.mark.parametrize("placement", ["attention_block", "unit_gate"])
@pytest.mark.parametrize("block, width", list(GATE_SIZES))
def test_summary_prints_each_stages_gate_sizes(block, width, placement, capsys):
    from resattn.__main__ import main

    assert main(["summary", f"--{placement}", block, "--width", width]) == 0
    gates = json.loads(capsys.readouterr().out)["gates"]
    channels = [16, 32, 64] if width == "0.25" else [64, 128, 256]
    sizes = GATE_SIZES[block, width]
    expected = [{"stage": i + 1, "channels": c, **g} for i, (c, g) in enumerate(zip(channels, sizes))]
    assert gates == {placement: expected}


def test_summary_of_a_network_without_gates_has_none(capsys):
    from resattn.__main__ import main

    assert main(["summary", "--width", "0.25"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["gates"] == {}
    assert [r["stage"] for r in result["mask_branch"]["stages"]] == [1, 2, 3]  # the soft masks' own cost


def test_fit_flag_validation(capsys):
    code, err = _in_process(capsys, "fit", "--model.attention_learning", "residual")
    assert code == 2 and "arl" in err and "nal" in err


def test_fit_cli_saves_the_resolved_config(tmp_path):
    (tmp_path / "base.yaml").write_text("model:\n  width: 0.125\n  probes: false\n")
    cli = cli_main(
        [
            "fit",
            "--config",
            str(tmp_path / "base.yaml"),
            "--model.attention_learning",
            "nal",
            "--model.mask_structure",
            "local_conv",
            "--data.dataset",
            "synthetic",
            "--data.synthetic_size",
            "[64, 32]",
            "--data.batch_size",
            "16",
            "--trainer.max_epochs",
            "1",
            "--trainer.accelerator",
            "cpu",
            "--trainer.enable_progress_bar",
            "false",
            "--trainer.default_root_dir",
            str(tmp_path),
        ]
    )
    saved = list(tmp_path.rglob("config.yaml"))
    assert saved
    config = yaml.safe_load(saved[0].read_text())
    assert config["model"]["attention_learning"] == "nal" and config["model"]["mask_structure"] == "local_conv"
    assert config["model"]["width"] == 0.125 and config["data"]["dataset"] == "synthetic"
    assert (
        0 <= cli.trainer.callback_metrics["test/err1"] <= 100
    )  # in percent; fit ends with a test of the final weights


@pytest.mark.parametrize(
    "args, words",
    [
        (["predict"], ["resattn predict", "required: run, IMAGE"]),  # ours (trained models), not LightningCLI's
        (["fit", "--optimizer", "Adam"], ["unrecognized arguments: --optimizer Adam"]),
        (["fit", "--model.family", "imagenet", "--model.depth", "128"], ["depth=128 has no imagenet layout", "56, 92"]),
        (["fit", "--trainer.accelerator", "gpu"], ["gpu"]),
        (["fit", "--data.data_dir", "nowhere", "--data.download", "false"], ["cifar10 not found", "--data.data_dir"]),
        (["summary", "--depth", "57"], ["depth=57 is not allowed", "56, 92"]),
    ],
)
def test_single_run_cli_bad_input_is_one_line_not_a_traceback(tmp_path, capsys, monkeypatch, args, words):
    monkeypatch.chdir(tmp_path)
    code, err = _in_process(capsys, *args)
    assert code == 2, err
    for word in words:
        assert word in err


def test_fit_with_a_missing_checkpoint_is_one_line(tmp_path):
    """In a real process: exit code 2 and one line, no traceback."""
    done = _run(
        "fit",
        "--data.dataset",
        "synthetic",
        "--data.synthetic_size",
        "[32, 16]",
        "--model.width",
        "0.125",
        "--trainer.max_epochs",
        "1",
        "--trainer.default_root_dir",
        str(tmp_path),
        "--ckpt_path",
        str(tmp_path / "missing.ckpt"),
    )
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert "missing.ckpt" in done.stderr
