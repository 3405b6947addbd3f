"""What code trained a result: resattn's version, the commit of its checkout, whether that checkout
had uncommitted changes, and the versions of the packages it ran on.

In a git checkout (``pip install -e .`` or ``PYTHONPATH``) the commit is ``git rev-parse HEAD`` and
the tree is dirty when ``git status --porcelain`` lists anything: changed or staged files, and
untracked files the project's ``.gitignore`` does not ignore (``runs/``, ``wandb/``, ``data/``
are ignored there). ``reports/`` is left out: studies write their reports into it, and some are
committed, so a study's own report must not mark the next run dirty. An installed package (no
checkout, or a virtual environment inside another project's checkout, which does not track this
package's files) has no commit and no dirty flag: its installed version says what it is.

No torch here: the store and the tests read it cheaply.
"""

from __future__ import annotations

import subprocess
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent
PACKAGES = ("resattn", "torch", "torchvision", "lightning", "torchmetrics", "wandb", "numpy")
NOT_CODE = ("reports",)  # folders of the checkout that studies write into: their changes are not the code's


def installed_version(name: str = "resattn") -> str | None:
    """The version pip installed (``importlib.metadata``), or None if the package is not installed."""
    try:
        return version(name)
    except PackageNotFoundError:
        return None


def package_versions() -> dict[str, str]:
    return {name: installed_version(name) or "not installed" for name in PACKAGES}


def _git(args: list[str], cwd: Path) -> str | None:
    """``git``'s output, or None if git is missing, fails or takes over 10 s. ``--no-optional-locks``:
    a worker's ``git status`` never holds the index lock that a commit of the user's needs."""
    try:
        out = subprocess.run(["git", "--no-optional-locks", *args], capture_output=True, text=True, timeout=10, cwd=cwd)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout if out.returncode == 0 else None


def git_checkout(package_dir: Path = PACKAGE_DIR) -> tuple[str | None, bool | None]:
    """``(commit, dirty)`` of the git checkout the package at ``package_dir`` runs from; ``(None,
    None)`` when it runs from none (an installed package) or git cannot tell."""
    tracked = _git(["ls-files", "--", "__init__.py"], package_dir)
    if not tracked or not tracked.strip():  # no checkout, or one that does not track this package
        return None, None
    commit = (_git(["rev-parse", "HEAD"], package_dir) or "").strip() or None
    pathspec = [":/", *(f":(top,exclude){p}" for p in NOT_CODE)]
    status = _git(["status", "--porcelain", "--", *pathspec], package_dir)
    return commit, None if status is None else bool(status.strip())


def code_provenance(package_dir: Path = PACKAGE_DIR) -> dict[str, str | bool | None]:
    """The fields of a result that say what code trained it: ``version``, ``git_commit``, ``git_dirty``."""
    commit, dirty = git_checkout(package_dir)
    return {"version": installed_version(), "git_commit": commit, "git_dirty": dirty}
