"""Trained models out (issue #13): load_run from a study run, a checkpoint or an export; predict;
export round trip; masks over any image; bad input answered with one line, exit 2, nothing written."""

import json
import shutil

import lightning as L
import numpy as np
import pytest
import torch
from PIL import Image

from resattn import load_run
from resattn.__main__ import main
from resattn.data import CIFARDataModule
from resattn.module import ResidualAttentionClassifier
from resattn.study.store import study_runs
from resattn.trained import CARD, CONFIG, WEIGHTS, RunError, export, read_images


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """A real Lightning checkpoint of a tiny fit on synthetic data (in-process)."""
    folder = tmp_path_factory.mktemp("fit")
    L.seed_everything(0)
    model = ResidualAttentionClassifier(depth=56, width=0.125)
    data = CIFARDataModule(dataset="synthetic", synthetic_size=(64, 16), batch_size=16)
    trainer = L.Trainer(
        accelerator="cpu",
        max_epochs=1,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=folder,
        num_sanity_val_steps=0,
    )
    trainer.fit(model, data)
    path = folder / "model.ckpt"
    trainer.save_checkpoint(path)
    return path, data


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    folder = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (120, 90, 3), dtype=np.uint8)).save(folder / "photo.jpg")
    Image.fromarray(rng.integers(0, 256, (40, 40), dtype=np.uint8)).save(folder / "grey.png")  # 1 channel
    (folder / "notes.png").write_text("not an image")
    return folder


def _snapshot(folder):
    return {p: p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_a_checkpoint_loads_with_its_training_mean_and_classes(checkpoint):
    path, data = checkpoint
    model = load_run(path)
    assert not model.net.training and model.config.depth == 56 and model.config.width == 0.125
    assert torch.equal(model.mean, data.mean) and model.classes == [f"pattern {i}" for i in range(10)]
    x = torch.randn(2, 3, 32, 32)
    trained = ResidualAttentionClassifier.load_from_checkpoint(path, map_location="cpu").net.eval()
    with torch.no_grad():
        assert torch.allclose(model.net(x), trained(x))


def test_a_checkpoint_written_before_the_gate_settings_loads(checkpoint, tmp_path):
    """A checkpoint of a version without ``attention_block`` and ``unit_gate`` among its
    hyperparameters loads as the network it trained: those settings' defaults."""
    ckpt = torch.load(checkpoint[0], map_location="cpu", weights_only=False)
    for name in ("attention_block", "unit_gate"):
        del ckpt["hyper_parameters"][name]
    torch.save(ckpt, tmp_path / "old.ckpt")
    model = load_run(tmp_path / "old.ckpt")
    assert model.config == load_run(checkpoint[0]).config
    assert (model.config.attention_block, model.config.unit_gate) == ("soft_mask", "none")


def test_export_round_trip_gives_the_same_network(checkpoint, images, tmp_path):
    path, _ = checkpoint
    model = load_run(path)
    written = export(model, tmp_path / "export")
    assert [p.name for p in written] == [WEIGHTS, CONFIG, CARD]
    moved = tmp_path / "elsewhere"
    shutil.copytree(tmp_path / "export", moved)  # no study folder, no checkpoint, no data
    again = load_run(moved)
    assert again.config == model.config and again.classes == model.classes and torch.equal(again.mean, model.mean)
    shown, x = again.preprocess(read_images([str(images / "photo.jpg"), str(images / "grey.png")]))
    assert shown.shape == (2, 3, 32, 32) and shown.dtype == torch.uint8  # resized, grey made RGB
    with torch.no_grad():
        assert torch.equal(again.net(x), model.net(x))
    info = json.loads((moved / CONFIG).read_text())
    assert info["model"]["depth"] == 56 and len(info["classes"]) == 10
    assert "Attention-56" in (moved / CARD).read_text()
    modes = {p.name: p.stat().st_mode & 0o777 for p in written}
    assert len(set(modes.values())) == 1, modes  # the weights are as readable as the card


def test_preprocess_takes_one_image_and_names_a_bad_one(checkpoint):
    model = load_run(checkpoint[0])
    one = torch.randint(0, 256, (3, 40, 50), dtype=torch.uint8)
    assert model.preprocess(one)[0].shape == (1, 3, 32, 32)
    for bad, words in ((torch.zeros(4, 40, 50, dtype=torch.uint8), "(4, 40, 50)"), (one.float(), "torch.float32")):
        with pytest.raises(ValueError, match=r"image 1: expected a uint8 RGB tensor") as err:
            model.preprocess([one, bad])
        assert words in str(err.value)


def test_predict_prints_the_top_classes_by_name(checkpoint, images, capsys):
    path, _ = checkpoint
    assert main(["predict", str(path), str(images / "photo.jpg"), "--top", "3"]) == 0
    line = capsys.readouterr().out.strip()
    assert line.startswith(f"{images / 'photo.jpg'} (90x120): pattern ") and line.count("%") == 3


def test_masks_draws_a_png(checkpoint, images, tmp_path):
    path, _ = checkpoint
    out = tmp_path / "masks.png"
    assert (
        main(
            [
                "masks",
                str(path),
                str(images / "photo.jpg"),
                str(images / "grey.png"),
                "--out",
                str(out),
                "--channels",
                "1",
            ]
        )
        == 0
    )
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize(
    "args, words",
    [
        (["masks", "{ckpt}", "{images}/notes.png", "--out", "{tmp}/m.png"], ["notes.png", "not an image"]),
        (["masks", "{ckpt}", "{images}/nothere.png", "--out", "{tmp}/m.png"], ["nothere.png", "no such image"]),
        (["masks", "{tmp}/no_run", "{images}/photo.jpg", "--out", "{tmp}/m.png"], ["no_run", "does not exist"]),
        (["masks", "{ckpt}", "{images}/photo.jpg", "--out", "{tmp}/m.jpg"], ["--out", ".png"]),
        (["masks", "{ckpt}", "{images}/photo.jpg", "--out", "{tmp}/m.png", "--channels", "-1"], ["--channels"]),
        (["predict", "{images}/notes.png", "{images}/photo.jpg"], ["notes.png", "not a readable resattn checkpoint"]),
        (["predict", "{ckpt}", "{images}/photo.jpg", "--top", "0"], ["--top 0"]),
        (["export", "{tmp}", "--out", "{tmp}/export"], ["not a study run folder"]),
    ],
)
def test_bad_input_is_one_line_and_writes_nothing(checkpoint, images, tmp_path, capsys, args, words):
    fill = {"ckpt": str(checkpoint[0]), "images": str(images), "tmp": str(tmp_path)}
    before = _snapshot(tmp_path)
    assert main([a.format(**fill) for a in args]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and len(err.splitlines()) == 1
    for word in words:
        assert word.format(**fill) in err
    assert _snapshot(tmp_path) == before


@pytest.fixture(scope="module")
def study_run(tmp_path_factory):
    """A real study run (the smoke profile's worker process), and one run of the study without weights."""
    from resattn.cli.study import study_main

    folder = tmp_path_factory.mktemp("study")
    yaml = folder / "one.yaml"
    yaml.write_text("title: one run\nfactors: {attention_learning: [arl]}\nreference: {attention_learning: arl}\n")
    assert (
        study_main(
            [
                str(yaml),
                "--profile",
                "smoke",
                "--wandb",
                "disabled",
                "--runs-dir",
                str(folder / "runs"),
                "--reports-dir",
                str(folder / "reports"),
            ]
        )
        == 0
    )
    (run_dir,) = study_runs(folder / "runs", "one")
    return run_dir


@pytest.mark.slow
def test_a_study_run_loads_exports_and_draws_its_masks(study_run, images, tmp_path, capsys):
    model = load_run(study_run.path)
    result = study_run.read_result()
    card = model.card
    assert card["finished"] and card["test_error"] == result.test_error and card["seed"] == result.seed
    assert card["run_id"] == study_run.name and card["git_commit"] == result.git_commit
    assert main(["export", str(study_run.path), "--out", str(tmp_path / "export")]) == 0
    text = (tmp_path / "export" / CARD).read_text()
    assert f"{result.test_error:.2f}%" in text and study_run.name in text and result.profile in text
    assert main(["masks", str(study_run.path), str(images / "photo.jpg"), "--out", str(tmp_path / "m.png")]) == 0
    assert main(["predict", str(tmp_path / "export"), str(images / "grey.png")]) == 0
    assert "pattern" in capsys.readouterr().out


@pytest.mark.slow
def test_a_run_without_weights_is_named(study_run, images, tmp_path, capsys):
    copy = tmp_path / study_run.name
    shutil.copytree(study_run.path, copy)
    shutil.rmtree(copy / "checkpoints")
    before = _snapshot(tmp_path)
    assert main(["masks", str(copy), str(images / "photo.jpg"), "--out", str(tmp_path / "m.png")]) == 2
    assert "has no weights" in capsys.readouterr().err
    assert _snapshot(tmp_path) == before
    with pytest.raises(RunError, match="has no weights"):
        load_run(copy)


@pytest.fixture(scope="module")
def foreign(checkpoint, tmp_path_factory):
    """A checkpoint whose weights belong to another network, and an export whose config.json has no model."""
    folder = tmp_path_factory.mktemp("foreign")
    ckpt = torch.load(checkpoint[0], map_location="cpu", weights_only=False)
    ckpt["hyper_parameters"]["width"] = 0.25  # the weights are of width 0.125
    torch.save(ckpt, folder / "other.ckpt")
    export(load_run(checkpoint[0]), folder / "export")
    info = json.loads((folder / "export" / CONFIG).read_text())
    del info["model"]
    (folder / "export" / CONFIG).write_text(json.dumps(info))
    return folder


@pytest.mark.parametrize("command", ["predict", "masks", "export"])
@pytest.mark.parametrize("what, words", [("other.ckpt", ["do not fit"]), ("export", ["config.json", "model"])])
def test_a_foreign_checkpoint_or_a_broken_export_is_one_line(foreign, images, tmp_path, capsys, command, what, words):
    """Defect 8 (issue #20): a RuntimeError with kilobytes of key names, or a KeyError traceback."""
    args = {
        "predict": [str(images / "photo.jpg")],
        "masks": [str(images / "photo.jpg"), "--out", str(tmp_path / "m.png")],
    }
    code = main([command, str(foreign / what), *args.get(command, ["--out", str(tmp_path / "out")])])
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.startswith("error: ") and len(err.splitlines()) == 1 and len(err) < 400, err
    for word in [str(foreign / what), *words]:
        assert word in err
    assert not any(tmp_path.iterdir())


def test_masks_refuses_more_channels_than_the_masks_have(checkpoint, images, tmp_path, capsys):
    """Defect 7: --channels 60 wrote a 38,544-pixel-wide PNG of empty axes."""
    args = [
        "masks",
        str(checkpoint[0]),
        str(images / "photo.jpg"),
        "--out",
        str(tmp_path / "m.png"),
        "--channels",
        "60",
    ]
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert "--channels 60" in err and "at most" in err and len(err.splitlines()) == 1, err
    assert not any(tmp_path.iterdir())


def test_the_model_card_says_what_code_trained_it(checkpoint):
    from dataclasses import replace

    from resattn.trained import model_card

    model = load_run(checkpoint[0])
    card = {"version": "0.1.0", "git_commit": "abc123", "git_dirty": True}
    text = model_card(replace(model, card=card))
    assert "| resattn | 0.1.0 |" in text and "| commit | abc123 (with uncommitted changes) |" in text
    assert "| commit | abc123 (clean) |" in model_card(replace(model, card={**card, "git_dirty": False}))
    assert "| commit | — |" in model_card(model)  # a bare checkpoint: no run, no commit


def test_trained_models_and_the_figures_they_draw_import_nothing_of_the_report():
    """trained.py sits below report/: what both draw with is resattn.figures (issue 18, item 4)."""
    import ast
    from pathlib import Path

    import resattn

    root = Path(resattn.__file__).parent
    for name in ("trained.py", "figures.py"):
        tree = ast.parse((root / name).read_text())
        modules = {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
        modules |= {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
        assert not {m for m in modules if m and m.startswith("resattn.report")}, name
