"""What a result says it was trained on: the data's fingerprint in the run id (the same files in
another folder keep the id, other files get another), the realised image counts and a hash of the
images in result.json (issue 17, item 8); what code trained it: resattn's version, the commit and
whether the checkout had uncommitted changes (issue 18, item 5)."""

import pickle
import shutil
import subprocess
from importlib.metadata import version

import pytest

from resattn.cifar import data_fingerprint, official_fingerprint
from resattn.data import CIFARDataModule
from resattn.provenance import code_provenance, installed_version
from resattn.study import preflight
from resattn.study.spec import expand, load_profile, load_study
from tests.conftest import write_cifar

CPU = {"trainer.precision": "32-true"}


def _relabel_one(folder):
    path = folder / "cifar-10-batches-py" / "data_batch_3"
    batch = pickle.load(open(path, "rb"), encoding="latin1")
    batch["labels"][0] = (batch["labels"][0] + 1) % 10
    pickle.dump(batch, open(path, "wb"))


@pytest.fixture
def three_folders(tmp_path):
    """The same CIFAR files in ``a`` and ``b``; in ``c`` one label changed."""
    write_cifar(tmp_path / "a", "cifar10")
    for name in ("b", "c"):
        shutil.copytree(tmp_path / "a", tmp_path / name)
    _relabel_one(tmp_path / "c")
    return [tmp_path / n for n in "abc"]


def _ids(data_dir, *settings):
    overrides = {"data.data_dir": str(data_dir), **dict(s.split("=") for s in settings)}
    runs = expand(load_study("mask_structure"), load_profile("quick"), 1, overrides, defaults=CPU)
    return [r.run_id for r in preflight.resolve(runs)[0]]


def test_the_run_id_follows_the_data_content_not_its_folder(three_folders):
    a, b, c = three_folders
    assert _ids(a) == _ids(b)  # the same files in another folder: the same runs
    assert not set(_ids(a)) & set(_ids(c))  # one label changed: other runs
    assert not set(_ids(a)) & set(_ids(a, "data.train_size=100"))  # another subset: other runs
    spec = preflight.resolve(expand(load_study("mask_structure"), load_profile("quick"), 1, {"data.data_dir": str(a)}))
    run = spec[0][0]
    assert run.data_fingerprint == data_fingerprint(a, "cifar10") and not run.data_official
    assert run.configuration == f"quick-data{run.data_fingerprint[:6]}"  # not the official files: its own report


def test_the_official_files_have_their_fingerprint_before_they_are_downloaded(tmp_path):
    assert data_fingerprint(tmp_path / "nothing", "cifar10", download=True) == official_fingerprint("cifar10")
    assert data_fingerprint(tmp_path / "nothing", "cifar10") is None  # missing, no download: the data check says so
    assert official_fingerprint("cifar10") != official_fingerprint("cifar100")
    assert official_fingerprint("synthetic") is None  # generated data is its settings


def test_the_provenance_counts_the_images_used_and_hashes_their_content(three_folders):
    a, b, c = three_folders

    def provenance(folder, **kw):
        data = CIFARDataModule(data_dir=str(folder), **kw)
        data.setup()
        return data.provenance

    p = provenance(a, train_size=120, test_size=50)
    assert (p["train_images"], p["val_images"], p["test_images"]) == (120, 0, 50)
    assert provenance(b, train_size=120, test_size=50) == p
    assert provenance(a, train_size=150, test_size=50)["train_images"] == 150
    assert provenance(a, val_size=20)["val_images"] == 20 and provenance(a, val_size=20)["train_images"] == 180
    assert provenance(c)["content"] != provenance(a)["content"]  # one label of 200 differs
    assert provenance(a, label_noise=0.3)["content"] != provenance(a)["content"]  # noisy labels are other data


def test_a_worker_refuses_data_that_changed_since_the_run_was_planned(three_folders):
    from resattn.study.store import RunDir, StoreError
    from resattn.study.worker import check_data_files

    a = three_folders[0]
    run = preflight.resolve(expand(load_study("mask_structure"), load_profile("quick"), 1, {"data.data_dir": str(a)}))[
        0
    ][0]
    check_data_files(run, RunDir(a / "run"))  # the files it was planned on: fine
    _relabel_one(a)
    with pytest.raises(StoreError, match="fingerprint .* not .* as when the run was planned"):
        check_data_files(run, RunDir(a / "run"))


# What code trained a result (issue 18, item 5): version, commit, uncommitted changes.


def _git(folder, *args):
    subprocess.run(
        ["git", "-c", "user.name=t", "-c", "user.email=t@t", *args], cwd=folder, check=True, capture_output=True
    )


def test_a_checkout_records_its_commit_and_whether_it_has_uncommitted_changes(tmp_path):
    package = tmp_path / "repo" / "pkg"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("x = 1\n")
    (tmp_path / "repo" / ".gitignore").write_text("/runs/\n")
    _git(tmp_path / "repo", "init", "-q")
    _git(tmp_path / "repo", "add", ".")
    _git(tmp_path / "repo", "commit", "-qm", "one")
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=package, capture_output=True, text=True).stdout.strip()
    clean = code_provenance(package)
    assert clean == {"version": installed_version(), "git_commit": head, "git_dirty": False}
    (tmp_path / "repo" / "runs").mkdir()
    (tmp_path / "repo" / "runs" / "result.json").write_text("{}")  # ignored by .gitignore: still clean
    (tmp_path / "repo" / "reports").mkdir()
    (tmp_path / "repo" / "reports" / "table.md").write_text("a report")  # what studies write: still clean
    assert code_provenance(package)["git_dirty"] is False
    (package / "__init__.py").write_text("x = 2\n")  # an uncommitted change of the code
    assert code_provenance(package) == {"version": installed_version(), "git_commit": head, "git_dirty": True}
    _git(tmp_path / "repo", "checkout", "-q", "--", ".")
    (package / "new.py").write_text("")  # an untracked module the code may import
    assert code_provenance(package)["git_dirty"] is True


def test_an_installed_package_records_its_version_and_no_commit(tmp_path):
    package = tmp_path / "site-packages" / "pkg"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("")
    expected = {"version": version("resattn"), "git_commit": None, "git_dirty": None}
    assert code_provenance(package) == expected
    _git(tmp_path, "init", "-q")  # a virtual environment inside another project's checkout, which ignores it
    assert code_provenance(package) == expected
