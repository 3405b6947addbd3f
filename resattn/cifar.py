"""The CIFAR-10 / CIFAR-100 files: found in a folder or downloaded (md5 checked), read as uint8
tensors, fingerprinted by their content, and their class names.

torchvision's dataset classes carry the official archive names, URLs and md5 sums; the files are
read here without them, so that short or re-packed batches in the official pickle format load too.
"""

from __future__ import annotations

import hashlib
import pickle
import shutil
from pathlib import Path

import numpy as np
import torch
import torchvision
from torchvision.datasets.utils import calculate_md5, download_and_extract_archive

from resattn.config import NUM_CLASSES

# torchvision's dataset classes carry the official archive names, URLs and md5 sums.
CIFAR = {
    "cifar10": (torchvision.datasets.CIFAR10, [f"data_batch_{i}" for i in range(1, 6)], ["test_batch"], "labels"),
    "cifar100": (torchvision.datasets.CIFAR100, ["train"], ["test"], "fine_labels"),
}


def cifar_folder(data_dir: str | Path, dataset: str) -> Path | None:
    """The ``cifar-10-batches-py`` / ``cifar-100-python`` folder: ``data_dir`` itself or inside it."""
    data_dir = Path(data_dir).expanduser()
    base = CIFAR[dataset][0].base_folder
    for candidate in (data_dir, data_dir / base):
        if candidate.name == base and candidate.is_dir():
            return candidate
    return None


def download_cifar(data_dir: str | Path, dataset: str) -> Path:
    """Download (with a progress bar) and extract the official archive into ``data_dir``; its md5 is
    checked. A failed download leaves nothing behind: the folders it created are removed."""
    cls = CIFAR[dataset][0]
    data_dir = Path(data_dir).expanduser()
    created = next((p for p in reversed([data_dir, *data_dir.parents]) if not p.exists()), None)
    try:
        download_and_extract_archive(cls.url, str(data_dir), filename=cls.filename, md5=cls.tgz_md5)
    except BaseException:
        if created is not None:
            shutil.rmtree(created, ignore_errors=True)
        raise
    return data_dir / cls.base_folder


def _missing_cifar(data_dir: str | Path, dataset: str, why: str = "") -> FileNotFoundError:
    cls = CIFAR[dataset][0]
    data_dir = Path(data_dir).expanduser().resolve()
    return FileNotFoundError(
        f"{dataset} not found: looked for {data_dir / cls.base_folder} and for {data_dir} being that folder"
        f"{why}. Point to a folder that holds it (a study: --data_dir DIR; a single run: --data.data_dir DIR), or "
        f"download it on a machine with internet access (a study: --download; a single run: --data.download true), "
        f"or download {cls.url} yourself and extract it into {data_dir}."
    )


def load_cifar(data_dir: str | Path, dataset: str, train: bool, download: bool = False):
    """Load one split as ``(images uint8 (N, 3, 32, 32), labels int64 (N,))``.

    An existing folder is read as is: the per-file md5 sums are not insisted on, so short or
    re-packed batches in the official pickle format load too.
    """
    if Path(data_dir).expanduser().is_file():
        raise FileNotFoundError(
            f"{dataset}: the data folder {data_dir} is a file, not a folder; point --data_dir (a single run: "
            f"--data.data_dir) at the folder that holds (or is to receive) {CIFAR[dataset][0].base_folder}."
        )
    folder = cifar_folder(data_dir, dataset)
    if folder is None and download:
        try:
            folder = download_cifar(data_dir, dataset)
        except Exception as err:  # network down, disk full, bad md5: say where and what to do
            raise _missing_cifar(data_dir, dataset, f" (download failed: {err})") from err
    if folder is None:
        raise _missing_cifar(data_dir, dataset)
    _, train_files, test_files, label_key = CIFAR[dataset]
    images, labels = [], []
    for name in train_files if train else test_files:
        path = folder / name
        if not path.is_file():
            raise _missing_cifar(data_dir, dataset, f" ({path} is missing)")
        try:
            with open(path, "rb") as f:
                entry = pickle.load(f, encoding="latin1")
            images.append(np.asarray(entry["data"], dtype=np.uint8).reshape(-1, 3, 32, 32))
            labels.append(np.asarray(entry[label_key], dtype=np.int64))
        except Exception as err:
            raise ValueError(
                f"{path} is not a readable CIFAR batch file ({type(err).__name__}: {err}); delete the folder "
                "and download the dataset again."
            ) from err
    return torch.from_numpy(np.concatenate(images)), torch.from_numpy(np.concatenate(labels))


def data_fingerprint(data_dir: str | Path, dataset: str, download: bool = False) -> str | None:
    """A hash of the content of a CIFAR data set's files (pixels and labels, not their path): the
    md5 of each file the splits are read from, in order. The official files give the md5 sums that
    torchvision lists, so data that ``download`` would fetch has its fingerprint before it is here.
    None for other data sets (generated data is its settings; an image folder is its path) and for
    a CIFAR folder that is missing without ``download`` (the data check then says where to get it).

    The md5 of the files is the study runner's, at planning (about 0.3 s for CIFAR-10); the images
    a run used are fingerprinted in :meth:`resattn.data.CIFARDataModule.setup` (``provenance``)."""
    if dataset not in CIFAR:
        return None
    folder = cifar_folder(data_dir, dataset)
    if folder is None:
        return official_fingerprint(dataset) if download else None
    sums = {}
    for name in _split_files(dataset):
        try:
            sums[name] = calculate_md5(folder / name)
        except FileNotFoundError:
            raise _missing_cifar(data_dir, dataset, f" ({folder / name} is missing)") from None
    return _fingerprint(dataset, sums)


def official_fingerprint(dataset: str) -> str | None:
    """The fingerprint of the official CIFAR files (:func:`data_fingerprint`), from the md5 sums
    torchvision lists; None for other data."""
    if dataset not in CIFAR:
        return None
    cls = CIFAR[dataset][0]
    return _fingerprint(dataset, dict(cls.train_list + cls.test_list))


def _split_files(dataset: str) -> list[str]:
    """The files the training and test splits are read from, in that order."""
    _, train_files, test_files, _ = CIFAR[dataset]
    return [*train_files, *test_files]


def _fingerprint(dataset: str, sums: dict[str, str]) -> str:
    """The fingerprint of the files with these md5 sums (``name -> md5``)."""
    return hashlib.sha1(" ".join(f"{n}:{sums[n]}" for n in _split_files(dataset)).encode()).hexdigest()[:12]


def cifar_classes(data_dir: str | Path, dataset: str) -> list[str]:
    """The class names from the data set's meta file (``batches.meta`` / ``meta``), or ``class i``
    where there is none (a re-packed folder)."""
    cls, classes = CIFAR[dataset][0], NUM_CLASSES[dataset]
    folder = cifar_folder(data_dir, dataset)
    try:
        with open(folder / cls.meta["filename"], "rb") as f:
            names = [str(n) for n in pickle.load(f, encoding="latin1")[cls.meta["key"]]]
        if len(names) == classes:
            return names
    except (OSError, TypeError, KeyError, pickle.UnpicklingError, EOFError):
        pass
    return [f"class {i}" for i in range(classes)]
