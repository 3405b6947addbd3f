"""The defects a new user found on a fresh clone (issue #20), each reproduced: study files that
are refused whole, with the file named; no torch and no training here (the fast tier)."""

from pathlib import Path

import pytest

from resattn.study.spec import ABLATIONS, load_study

MINIMAL = "title: t\nfactors:\n  depth: [56, 92]\nreference: {depth: '56'}\n"


def _study(tmp_path: Path, text: str, name: str = "mine.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


@pytest.mark.parametrize(
    "text, words",
    [
        (MINIMAL + "exclude: [{depth: ['56', '92']}]\n", ["exclude", "removes every variant"]),  # defect 1
        ("title: t\nfactors:\n  depth: [56, 56]\nreference: {depth: '56'}\n", ["factors.depth", "56", "twice"]),
        ("title: t\nfactors:\n  depth: [56, '56']\nreference: {depth: '56'}\n", ["factors.depth", "56", "twice"]),
        (MINIMAL + "title: again\n", ["line 5", "title", "given twice"]),  # defect 6: a key given twice
    ],
)
def test_a_malformed_study_is_refused_naming_the_file_and_key(tmp_path, text, words):
    path = _study(tmp_path, text)
    with pytest.raises(ValueError) as err:
        load_study(str(path))
    message = str(err.value)
    assert str(path) in message and "\n" not in message
    for word in words:
        assert word in message


def test_a_study_file_named_like_a_shipped_study_is_refused(tmp_path):
    """Defect 3: it would train into runs/ARL_vs_NAL/ and overwrite reports/ARL_vs_NAL/."""
    path = _study(tmp_path, (ABLATIONS / "ARL_vs_NAL.yaml").read_text(), "ARL_vs_NAL.yaml")
    with pytest.raises(ValueError, match="shipped study ARL_vs_NAL.*rename"):
        load_study(str(path))
    assert load_study(str(ABLATIONS / "ARL_vs_NAL.yaml")).name == "ARL_vs_NAL"  # the shipped file by its path


def test_a_file_that_is_not_utf8_is_named(tmp_path):
    path = tmp_path / "latin.yaml"
    path.write_bytes(MINIMAL.replace("t\n", "caf\xe9\n", 1).encode("latin-1"))
    with pytest.raises(ValueError, match=f"{path}: not a UTF-8 text file"):
        load_study(str(path))


def test_a_folder_is_no_study_file(tmp_path):
    (tmp_path / "x.yaml").mkdir()
    for name in (str(tmp_path / "x.yaml"), str(tmp_path) + "/"):
        with pytest.raises(ValueError, match="is a folder, not a study YAML file"):
            load_study(name)


def test_a_missing_file_named_like_a_shipped_study_suggests_it(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ValueError, match="does not exist; did you mean the shipped study ARL_vs_NAL"):
        load_study("ARL_vs_NAL.yaml")


def _cli(capsys, *args) -> tuple[int, str]:
    from tests.test_cli import _in_process

    return _in_process(capsys, *args)


def _smoke_config(tmp_path: Path) -> Path:
    config = tmp_path / "run" / "config.yaml"
    config.parent.mkdir()
    config.write_text(
        "model: {width: 0.125}\ndata: {dataset: synthetic, synthetic_size: [32, 16]}\n"
        f"trainer: {{max_epochs: 1, default_root_dir: {tmp_path / 'logs'}}}\n"
    )
    return config


def test_test_without_a_checkpoint_is_refused(tmp_path, capsys):
    """Defect 5: it tested freshly initialised weights and exited 0."""
    code, err = _cli(capsys, "test", "--config", str(_smoke_config(tmp_path)))
    lines = [line for line in err.strip().splitlines() if "eed set to" not in line]  # Lightning's seed note
    assert code == 2 and "--ckpt_path" in err and len(lines) == 1, err
    assert not (tmp_path / "logs").exists()


def test_a_result_json_given_as_config_is_one_line(tmp_path, capsys):
    """Defect 9: an AttributeError traceback."""
    result = tmp_path / "result.json"
    result.write_text('{"run_id": "x", "config": {"model": {}}, "status": "finished"}')
    code, err = _cli(capsys, "fit", "--config", str(result))
    assert code == 2 and str(result) in err and "config.yaml" in err and len(err.strip().splitlines()) == 1, err


@pytest.mark.parametrize(
    "args, words",
    [
        (["fit", "--config", "missing.yaml"], ["missing.yaml"]),
        (["fit", "--model.normalization", "SPATIAL"], ["model.normalization", "SPATIAL"]),
        (["fit", "--model.widht", "1"], ["--model.widht"]),
        (["summry"], ["summary", "study", "masks"]),
    ],
)
def test_single_run_errors_are_one_line_without_the_usage(tmp_path, capsys, monkeypatch, args, words):
    """Defect 9: an 80-line usage dump came before the error; `summry` listed only fit/validate/test."""
    monkeypatch.chdir(tmp_path)
    code, err = _cli(capsys, *args)
    assert code == 2 and len(err.strip().splitlines()) == 1 and "usage" not in err, err
    for word in words:
        assert word in err


def test_a_resumed_study_counts_its_progress_and_eta_from_what_is_left():
    """Poor case: after a resume the ETA said 12 s for 6.5 minutes of work, the study started at 100%."""
    import io

    from resattn.study.progress import Progress

    progress = Progress("s", {"a": 1.0, "b": 1.0}, io.StringIO())
    progress.update("a", 0.9)  # resumed from a checkpoint at 90%: nothing done by this invocation yet
    progress.update("b", 0.9)
    assert progress.finished() == pytest.approx(0.0)
    progress.start -= 60  # a minute later, both runs have trained half of what was left
    progress.update("a", 0.95)
    progress.update("b", 0.95)
    assert progress.finished() == pytest.approx(0.5)
    assert progress.eta().startswith("50% | elapsed 1m00s | ETA 1m00s"), progress.eta()


def test_a_real_run_with_a_negative_learning_rate_is_refused_before_anything_is_written(tmp_path, capsys):
    """Defect 2: it trained, two worker tracebacks, a run folder and two W&B runs; .nan was accepted."""
    from resattn.cli.study import study_main

    for value in ("-0.1", ".nan"):
        code = study_main(
            ["mask_structure", "--profile", "smoke", "--set", f"model.lr={value}", "--wandb", "offline"]
            + ["--runs-dir", str(tmp_path / "runs"), "--reports-dir", str(tmp_path / "reports")]
        )
        err = capsys.readouterr().err
        assert code == 2 and "model.lr=" in err and "a number > 0" in err and len(err.strip().splitlines()) == 1
    assert not any(tmp_path.iterdir())


def test_error_png_puts_the_variants_compared_at_one_depth_side_by_side():
    """Poor case: error.png put arl-N and nal-N far apart."""
    from resattn.report.plots import side_by_side

    groups = side_by_side(load_study("ARL_vs_NAL"))
    assert groups[:2] == [["arl-56", "nal-56"], ["arl-92", "nal-92"]] and groups[-1] == [
        "arl-164",
        "nal-164",
        "none-164",
    ]
    assert side_by_side(load_study("mask_structure")) == [["hourglass"], ["local_conv_matched"], ["local_conv"]]


def test_curves_give_each_variant_its_colour_and_draw_one_epoch_runs_as_points(tmp_path):
    """Poor case: 9 series in 4 colours, unreadable for 1-epoch runs."""
    from resattn.report import plots
    from tests.test_stats import _arl_vs_nal

    study = load_study("ARL_vs_NAL")
    results = _arl_vs_nal(lambda d, s: 1.0)
    out = plots.learning_curves(results, plots.variant_styles(study), "t", tmp_path / "curves.png")
    assert out.read_bytes()[:4] == b"\x89PNG"
    assert len(set(plots.variant_colours(list(plots.variant_styles(study))).values())) == 9


def test_a_setting_given_twice_with_two_values_is_refused():
    """Defect 6 on the command line: the last of two values won silently."""
    from resattn.study.spec import parse_overrides

    assert parse_overrides(["model.width=0.5", "model.width=0.5"]) == {"model.width": 0.5}
    with pytest.raises(ValueError, match="model.width is given twice, 0.5 and 0.25"):
        parse_overrides(["model.width=0.5", "model.width=0.25"])
