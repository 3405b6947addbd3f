"""Every user setting has a declared range (issue #20): the declarations cover every argument of
the classes, accept their defaults, are listed in docs/bad-input.md, and every value just outside
a range, or of the wrong type, is refused by the study runner and the single-run CLI alike with
exit 2, one line naming the setting, and nothing written."""

import inspect
import shutil
import typing
from pathlib import Path

import lightning as L
import pytest

from resattn.cli.fit import CLASSES
from resattn.cli.study import study_main
from resattn.study.spec import PRECISIONS, SETTINGS, load_study, ranges_markdown
from tests.test_cli import _in_process
from tests.test_preflight import _finished_run, _snapshot

ROOT = Path(__file__).resolve().parents[1]
SECTION_CLASSES = {**CLASSES, "trainer": L.Trainer}
DECLARED = [(section, name) for section, table in SETTINGS.items() for name in table]


@pytest.mark.parametrize("section", list(SETTINGS))
def test_every_argument_has_a_declared_range_and_its_default_is_in_it(section):
    """Fails when a class gains an argument (a new setting) without a declaration, or a declaration
    outlives its argument."""
    parameters = {k: p for k, p in inspect.signature(SECTION_CLASSES[section]).parameters.items() if k != "self"}
    assert set(SETTINGS[section]) == set(parameters), set(SETTINGS[section]) ^ set(parameters)
    for name, parameter in parameters.items():
        assert SETTINGS[section][name].takes(parameter.default), (section, name, parameter.default)


def test_the_precisions_are_lightnings():
    literals = typing.get_args(inspect.signature(L.Trainer).parameters["precision"].annotation)
    lightning = {
        v for literal in literals if typing.get_origin(literal) is typing.Literal for v in typing.get_args(literal)
    }
    assert set(PRECISIONS) == lightning


def test_the_docs_list_the_declared_ranges():
    """docs/bad-input.md holds the table `python -m resattn settings` prints, generated from the declarations."""
    assert ranges_markdown() in (ROOT / "docs" / "bad-input.md").read_text()


def test_every_shipped_study_and_profile_is_within_the_ranges(capsys):
    from resattn.study.spec import available_studies, check_runs, expand, load_profile, profile_names

    for name in available_studies():
        for profile in profile_names():
            check_runs(expand(load_study(name), load_profile(profile), 1))


def _bad_values(section: str, name: str) -> list:
    """A value just outside each of the setting's ranges, and one of the wrong type."""
    declared = SETTINGS[section][name]
    wrong_type = [[1]] if declared.takes("abc") or section == "trainer" and name == "devices" else "abc"
    return [*declared.outside(), wrong_type]


def _yaml(value) -> str:
    return str(value).replace("'", "") if not isinstance(value, str) else value


@pytest.fixture(scope="module")
def _store_template(tmp_path_factory):
    folder = tmp_path_factory.mktemp("store")
    _finished_run(folder)
    (folder / "reports").mkdir()
    return folder


@pytest.fixture
def store(_store_template, tmp_path, monkeypatch):
    """A runs folder with a finished run, and a reports folder (built once, copied per test)."""
    shutil.copytree(_store_template, tmp_path, dirs_exist_ok=True)
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.mark.parametrize("section, name", DECLARED)
def test_the_study_runner_refuses_each_value_outside_its_range(store, capsys, section, name):
    for value in _bad_values(section, name):
        before = _snapshot(store)
        args = [
            "mask_structure",
            "--profile",
            "smoke",
            "--wandb",
            "disabled",
            "--set",
            f"{section}.{name}={_yaml(value)}",
        ]
        code = study_main([*args, "--runs-dir", str(store / "runs"), "--reports-dir", str(store / "reports")])
        err = capsys.readouterr().err
        assert code == 2, (value, err)
        assert len(err.strip().splitlines()) == 1 and f"{section}.{name}" in err, err
        assert _snapshot(store) == before, value


@pytest.mark.parametrize("section, name", [d for d in DECLARED if d != ("model", "num_classes")])
def test_the_single_run_cli_refuses_each_value_outside_its_range(tmp_path, capsys, monkeypatch, section, name):
    """model.num_classes is the data's (linked), not a flag."""
    monkeypatch.chdir(tmp_path)
    for value in _bad_values(section, name):
        if isinstance(value, list) and SETTINGS[section][name].takes("x"):
            continue  # a string setting: a command line gives strings only
        code, err = _in_process(capsys, "fit", f"--{section}.{name}", _yaml(value))
        assert code == 2, (value, err)
        lines = [line for line in err.strip().splitlines() if "eed set to" not in line]  # Lightning's seed note
        assert len(lines) == 1 and name in lines[0], err  # `section.name`, or Lightning's `Trainer(name=...)`
    assert not any(tmp_path.iterdir())
