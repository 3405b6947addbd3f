"""A plain install (not editable) carries the study YAMLs and the `resattn` command (issue #10)."""

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from resattn.study.spec import ABLATIONS, available_studies

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_the_wheel_ships_the_studies_and_the_console_script(tmp_path):
    done = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", str(ROOT), "--no-deps", "-q", "-w", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    wheel = zipfile.ZipFile(next(tmp_path.glob("resattn-*.whl")))
    names = set(wheel.namelist())
    for study in [*available_studies(), "profiles"]:
        assert f"resattn/ablations/{study}.yaml" in names
    assert {"resattn/cli/study.py", "resattn/study/store.py", "resattn/report/plots.py"} <= names
    assert {"resattn/study/worker.py", "resattn/figures.py", "resattn/provenance.py"} <= names  # the worker's entry
    entry_points = next(n for n in names if n.endswith("entry_points.txt"))
    assert "resattn = resattn.__main__:main" in wheel.read(entry_points).decode()
    assert not [n for n in names if n.startswith(("tests/", "studies/", "build/"))]


def test_the_studies_are_package_data():
    assert ABLATIONS.name == "ablations" and (ABLATIONS / "profiles.yaml").is_file()
    done = subprocess.run(
        [sys.executable, "-m", "resattn", "study", "--list"], capture_output=True, text=True, timeout=60, cwd="/"
    )
    assert done.returncode == 0 and "ARL_vs_NAL" in done.stdout, done.stderr


def test_the_architecture_tree_names_every_module():
    """docs/architecture.md's tree names each module by its path under resattn/ (renames update it)."""
    tree = (ROOT / "docs" / "architecture.md").read_text().split("## The tree", 1)[1]
    modules = [p.relative_to(ROOT / "resattn").as_posix() for p in (ROOT / "resattn").rglob("*.py")]
    missing = [m for m in modules if m not in ("study/__init__.py",) and f"\n  {m} " not in tree]
    assert missing == []
