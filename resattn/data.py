"""Data: CIFAR-10/100 (and a synthetic stand-in) as in-memory uint8 tensors, ImageNet-style folders.

CIFAR never goes through per-image Python: the whole split is one uint8 tensor on the training
device, and the paper's augmentation (pad 4, random 32x32 crop, horizontal flip) and per-pixel
mean subtraction run batched, fused into one gather (``augment``).
"""

from __future__ import annotations

import hashlib
import math
import pickle
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Literal

import lightning as L
import numpy as np
import torch
import torchvision
from torchvision.datasets.utils import download_and_extract_archive

from resattn.config import DATA_SETTINGS, DATASETS, DEFAULT_DATASET, NUM_CLASSES
from resattn.ranges import check_values

Dataset = Literal[DATASETS]

# torchvision's dataset classes carry the official archive names, URLs and md5 sums.
CIFAR = {
    "cifar10": (torchvision.datasets.CIFAR10, [f"data_batch_{i}" for i in range(1, 6)], ["test_batch"], "labels"),
    "cifar100": (torchvision.datasets.CIFAR100, ["train"], ["test"], "fine_labels"),
}
PAD = 4  # the paper's augmentation: pad 4, random 32x32 crop, horizontal flip


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
    a run used are fingerprinted in :meth:`CIFARDataModule.setup` (``provenance``)."""
    if dataset not in CIFAR:
        return None
    cls, train_files, test_files, _ = CIFAR[dataset]
    folder = cifar_folder(data_dir, dataset)
    if folder is None:
        sums = dict(cls.train_list + cls.test_list) if download else None
    else:
        sums = {}
        for name in [*train_files, *test_files]:
            try:
                sums[name] = hashlib.file_digest(open(folder / name, "rb"), "md5").hexdigest()
            except FileNotFoundError:
                raise _missing_cifar(data_dir, dataset, f" ({folder / name} is missing)") from None
    if sums is None:
        return None
    return hashlib.sha1(" ".join(f"{n}:{sums[n]}" for n in [*train_files, *test_files]).encode()).hexdigest()[:12]


def official_fingerprint(dataset: str) -> str | None:
    """The fingerprint of the official CIFAR files (:func:`data_fingerprint`), None for other data."""
    return data_fingerprint("/nonexistent", dataset, download=True)


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


def make_synthetic(n: int, num_classes: int = 10, seed: int = 0, size: int = 32):
    """A learnable synthetic CIFAR stand-in: a class pattern at a random position on clutter.

    Each class is a fixed 8x8 black-and-white pattern (the same for every split: drawn from a
    fixed generator), pasted at a uniformly random position over a cluttered, smooth coloured
    background with pixel noise. The class is only visible at one place, so a spatial mask can help.

    Returns:
        images uint8 (n, 3, size, size) and labels int64 (n,).
    """
    patterns = np.random.default_rng(12345).random((num_classes, 4, 4)) < 0.5
    patterns[:, 0, 0], patterns[:, -1, -1] = True, False  # no blank or full patterns
    patterns = np.kron(patterns, np.ones((2, 2), dtype=bool)).astype(np.uint8) * 255  # (K, 8, 8)
    rng = np.random.default_rng(seed)
    coarse = torch.from_numpy(rng.uniform(0, 160, (n, 3, 4, 4)).astype(np.float32))
    images = torch.nn.functional.interpolate(coarse, size=(size, size), mode="bilinear", align_corners=False)
    images = images.numpy() + rng.normal(0, 20, (n, 3, size, size))
    images = np.clip(images, 0, 200).astype(np.uint8)
    labels = rng.integers(0, num_classes, n)
    ys, xs = rng.integers(0, size - 8 + 1, n), rng.integers(0, size - 8 + 1, n)
    for i in range(n):  # once, at generation time
        images[i, :, ys[i] : ys[i] + 8, xs[i] : xs[i] + 8] = patterns[labels[i]]
    return torch.from_numpy(images), torch.from_numpy(labels.astype(np.int64))


def add_label_noise(labels: torch.Tensor, noise: float, num_classes: int, seed: int):
    """Corrupt labels with the paper's confusion matrix Q (section 4.1, Table 5).

    Q has r = 1 - noise on the diagonal and (1 - r) / (K - 1) elsewhere: each label is kept with
    probability r, else replaced by one of the other K - 1 classes uniformly. Sampled once, with
    ``seed``.

    Returns:
        the noisy labels and the realised noise rate (fraction of labels changed).
    """
    if not 0.0 <= noise < 1.0:
        raise ValueError(f"label_noise={noise!r} must be in [0, 1): it is the noise level 1 - r.")
    rng = np.random.default_rng(seed)
    n = labels.numel()
    flip = torch.from_numpy(rng.random(n) < noise)
    offset = torch.from_numpy(rng.integers(1, num_classes, n))
    noisy = torch.where(flip, (labels + offset) % num_classes, labels)
    return noisy, (noisy != labels).float().mean().item()


def normalize(images: torch.Tensor, mean: torch.Tensor) -> torch.Tensor:
    """Per-pixel mean subtraction, in units of 1/255: (x - mean) / 255."""
    return (images.float() - mean) / 255.0


def crop_flip(n: int, generator: torch.Generator, pad: int = PAD):
    """The random draws of ``augment`` for ``n`` images: row and column shifts in [-pad, pad] and flips."""
    dev = generator.device
    dy = torch.randint(-pad, pad + 1, (n, 1), device=dev, generator=generator)
    dx = torch.randint(-pad, pad + 1, (n, 1), device=dev, generator=generator)
    flip = torch.rand((n, 1), device=dev, generator=generator) < 0.5
    return dy, dx, flip


def augment(images: torch.Tensor, mean: torch.Tensor, generator: torch.Generator, pad: int = PAD) -> torch.Tensor:
    """Pad, random crop, random horizontal flip and mean subtraction of a uint8 batch, in one gather.

    Equivalent to: subtract the per-pixel mean, zero-pad by ``pad`` (zero = the mean colour), crop
    a random window of the original size, flip it horizontally with probability 1/2. Runs on the
    device of ``images``; the randomness comes from ``generator`` (on the same device).
    """
    n, c, h, w = images.shape
    dev = images.device
    dy, dx, flip = crop_flip(n, generator, pad)
    rows = dy + torch.arange(h, device=dev)  # (n, h) source row of each output row
    ar = torch.arange(w, device=dev)
    cols = dx + torch.where(flip, w - 1 - ar, ar)  # (n, w)
    valid = ((rows >= 0) & (rows < h))[:, None, :, None] & ((cols >= 0) & (cols < w))[:, None, None, :]
    rows, cols = rows.clamp(0, h - 1)[:, None, :, None], cols.clamp(0, w - 1)[:, None, None, :]
    chan = torch.arange(c, device=dev)[None, :, None, None]
    crop = images[torch.arange(n, device=dev)[:, None, None, None], chan, rows, cols]  # (n, c, h, w)
    return (crop.float() - mean[chan, rows, cols]) * (valid / 255.0)


class TensorBatches:
    """Mini-batches of an in-memory uint8 image tensor: seeded order, batched augmentation.

    An iterable with a length, which Lightning accepts as a dataloader. Each training pass asks
    ``position()`` for ``(epoch, batches of it already trained)`` and draws its permutation and
    augmentation from a generator seeded with ``(seed, epoch)``, so epochs repeat exactly for the
    same seed; the batches already trained are skipped with their random draws, so a run resumed
    from a mid-epoch checkpoint sees exactly the batches it would have seen.
    ``rank``/``world_size`` shard the indices for multi-device runs.
    """

    def __init__(
        self,
        images: torch.Tensor,
        labels: torch.Tensor,
        mean: torch.Tensor,
        batch_size: int,
        train: bool,
        seed: int = 0,
        position: Callable[[], tuple[int, int]] = lambda: (0, 0),
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        self.images, self.labels, self.mean = images, labels, mean
        self.batch_size, self.train, self.seed, self.position = batch_size, train, seed, position
        self.rank, self.world_size = rank, world_size

    def _indices(self, generator: torch.Generator) -> torch.Tensor:
        n = self.labels.numel()
        if self.train:
            idx = torch.randperm(n, device=self.images.device, generator=generator)
            idx = idx[: n - n % (self.batch_size * self.world_size)]  # drop_last: BN needs full batches
        else:
            idx = torch.arange(n, device=self.images.device)
        return idx[self.rank :: self.world_size]

    def __len__(self) -> int:
        n = self.labels.numel()
        if self.train:
            return n // (self.batch_size * self.world_size)
        return math.ceil(math.ceil(n / self.world_size) / self.batch_size)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        epoch, skip = self.position() if self.train else (0, 0)
        generator = torch.Generator(device=self.images.device)
        generator.manual_seed(self.seed * 1_000_003 + epoch)
        idx = self._indices(generator)
        for i, start in enumerate(range(0, idx.numel(), self.batch_size)):
            batch = idx[start : start + self.batch_size]
            if self.train and batch.numel() < self.batch_size:
                break
            if i < skip:  # trained before the checkpoint: draw its randomness, skip the work
                crop_flip(len(batch), generator)
                continue
            images = self.images[batch]
            x = augment(images, self.mean, generator) if self.train else normalize(images, self.mean)
            yield x, self.labels[batch]


class CIFARDataModule(L.LightningDataModule):
    """CIFAR-10 / CIFAR-100 / synthetic data as device tensors, or ImageNet-style folders.

    Validation: with ``val_size=0`` (the default, as the paper has no validation split) the
    validation loop runs on the test split, for learning curves and probes only; nothing is
    selected on it. ``val_size > 0`` holds out that many training images instead.

    Each argument's allowed values are declared in :data:`resattn.config.DATA_SETTINGS`.

    Args:
        dataset: ``cifar10``, ``cifar100``, ``synthetic`` or ``imagefolder`` (``data_dir/train``
            and ``data_dir/val`` in torchvision ImageFolder layout, ImageNet augmentation).
        data_dir: the folder holding (or to receive) ``cifar-10-batches-py`` / ``cifar-100-python``,
            or that folder itself.
        download: download the official archive when the data is missing (md5 checked).
        batch_size: training batch size (the paper: 64).
        eval_batch_size: batch size of validation and test.
        label_noise: noise level 1 - r of the paper's label-noise Q matrix (training labels only).
        noise_seed: seed of the label-noise draw.
        seed: seed of subsets, the validation hold-out and the epoch order / augmentation.
        train_size: use a seeded random subset of this many training images (None: all).
        test_size: use the first this many test images (None: all).
        val_size: training images held out for validation (0: validate on the test split).
        synthetic_size: (train, test) sizes of the synthetic data set.
        synthetic_classes: number of classes of the synthetic data set.
        num_workers: DataLoader workers, for ``imagefolder`` only (CIFAR needs none).
    """

    def __init__(
        self,
        dataset: Dataset = DEFAULT_DATASET,
        data_dir: str = "data",
        download: bool = False,
        batch_size: int = 64,
        eval_batch_size: int = 500,
        label_noise: float = 0.0,
        noise_seed: int = 0,
        seed: int = 0,
        train_size: int | None = None,
        test_size: int | None = None,
        val_size: int = 0,
        synthetic_size: tuple[int, int] = (5000, 1000),
        synthetic_classes: int = 10,
        num_workers: int = 4,
    ) -> None:
        super().__init__()
        check_values(DATA_SETTINGS, {k: v for k, v in locals().items() if k in DATA_SETTINGS})
        self.save_hyperparameters()
        self.noise_rate: float | None = None
        self.classes: list[str] = []  # the class names, known after setup
        self.provenance: dict = {}  # the realised image counts and a hash of their content, after setup
        self._splits: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}

    @property
    def num_classes(self) -> int:
        hp = self.hparams
        if hp.dataset == "synthetic":
            return hp.synthetic_classes
        if hp.dataset == "imagefolder":
            return len(torchvision.datasets.folder.find_classes(str(Path(hp.data_dir) / "train"))[0])
        return NUM_CLASSES[hp.dataset]

    def prepare_data(self) -> None:
        hp = self.hparams
        if hp.dataset in CIFAR and hp.download and cifar_folder(hp.data_dir, hp.dataset) is None:
            download_cifar(hp.data_dir, hp.dataset)

    def verify(self) -> int | None:
        """Fail now, with a clear error, if the data set is missing or corrupt (downloading it first
        with ``download``); returns the number of training images (None for image folders). The
        study runner calls it once per data set before any run starts."""
        hp = self.hparams
        if hp.dataset == "imagefolder":
            for split in ("train", "val"):
                torchvision.datasets.folder.find_classes(str(Path(hp.data_dir) / split))
            return None
        if hp.dataset == "synthetic":
            return hp.synthetic_size[0]
        load_cifar(hp.data_dir, hp.dataset, False, download=hp.download)
        return len(load_cifar(hp.data_dir, hp.dataset, True, download=hp.download)[1])

    def _load(self, train: bool):
        hp = self.hparams
        if hp.dataset == "synthetic":
            return make_synthetic(hp.synthetic_size[0 if train else 1], hp.synthetic_classes, seed=0 if train else 1)
        return load_cifar(hp.data_dir, hp.dataset, train, download=hp.download)

    def setup(self, stage: str | None = None) -> None:
        hp = self.hparams
        if self._splits:
            return
        if hp.dataset == "imagefolder":
            self.classes = torchvision.datasets.folder.find_classes(str(Path(hp.data_dir) / "train"))[0]
            return
        self.classes = (
            [f"pattern {i}" for i in range(hp.synthetic_classes)]
            if hp.dataset == "synthetic"
            else cifar_classes(hp.data_dir, hp.dataset)
        )
        device = self.trainer.strategy.root_device if self.trainer is not None else torch.device("cpu")
        images, labels = self._load(train=True)
        order = torch.randperm(labels.numel(), generator=torch.Generator().manual_seed(hp.seed))
        if hp.val_size:
            if not 0 < hp.val_size < labels.numel():
                raise ValueError(f"val_size={hp.val_size} must be below the {labels.numel()} training images.")
            val = order[: hp.val_size]
            self._splits["val"] = (images[val], labels[val])
            order = order[hp.val_size :]
        if hp.train_size is not None:
            order = order[: hp.train_size]
        images, labels = images[order], labels[order]
        if hp.label_noise > 0:
            labels, self.noise_rate = add_label_noise(labels, hp.label_noise, self.num_classes, hp.noise_seed)
        self._splits["train"] = (images, labels)
        test_images, test_labels = self._load(train=False)
        self._splits["test"] = (test_images[: hp.test_size], test_labels[: hp.test_size])
        self._splits.setdefault("val", self._splits["test"])
        self.provenance = self._provenance()
        self._splits = {k: (x.to(device), y.to(device)) for k, (x, y) in self._splits.items()}
        self.mean = self._splits["train"][0].float().mean(0)  # per-pixel RGB mean (3, 32, 32)

    def _provenance(self) -> dict:
        """What the run trains and is tested on: the realised image counts of each split and a hash
        of their pixels and labels (after subsets, the validation hold-out and label noise), so a
        result says which data it came from, wherever that data lay."""
        h = hashlib.sha1()
        for split in ("train", "val", "test"):
            images, labels = self._splits[split]
            h.update(images.contiguous().numpy().tobytes())
            h.update(labels.contiguous().numpy().tobytes())
        held_out = self._splits["val"] is not self._splits["test"]
        return {
            "train_images": len(self._splits["train"][1]),
            "val_images": len(self._splits["val"][1]) if held_out else 0,
            "test_images": len(self._splits["test"][1]),
            "content": h.hexdigest()[:16],
        }

    def state_dict(self) -> dict:
        """What a trained network needs to be used without its data (``resattn.trained.load_run``):
        the per-pixel training mean its inputs are centred with, and the class names. Saved in every
        checkpoint; the mean is recomputed from the data when a run resumes."""
        if not self.classes:
            return {}
        return {"mean": self.mean.cpu() if hasattr(self, "mean") else None, "classes": list(self.classes)}

    def load_state_dict(self, state: dict) -> None:
        """Nothing to restore: the mean and the classes come from the data itself (``setup``)."""

    def images(self, split: str, n: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """The first ``n`` raw uint8 images (N, 3, 32, 32) and labels of ``train``, ``val`` or ``test``."""
        images, labels = self._splits[split]
        return images[:n], labels[:n]

    def _batches(self, split: str) -> TensorBatches:
        images, labels = self._splits[split]
        train = split == "train"
        trainer = self.trainer
        return TensorBatches(
            images,
            labels,
            self.mean,
            self.hparams.batch_size if train else self.hparams.eval_batch_size,
            train=train,
            seed=self.hparams.seed,
            position=self._train_position,
            rank=trainer.global_rank if trainer is not None else 0,
            world_size=trainer.world_size if trainer is not None else 1,
        )

    def _train_position(self) -> tuple[int, int]:
        """(epoch, batches of it already trained), from the trainer's count of trained batches: right
        after a resume from any checkpoint, also one saved mid-epoch."""
        trainer = self.trainer
        per_epoch = trainer.num_training_batches if trainer is not None else math.inf
        if not 0 < per_epoch < math.inf:
            return (trainer.current_epoch if trainer is not None else 0), 0
        return divmod(trainer.fit_loop.epoch_loop.batch_progress.total.completed, int(per_epoch))

    def _folder_loader(self, split: str) -> torch.utils.data.DataLoader:
        from torchvision.transforms import v2

        train = split == "train"
        norm = [
            v2.ToImage(),
            v2.ToDtype(torch.float32, scale=True),
            v2.Normalize(mean=[0.485, 0.456, 0.406], std=[0.229, 0.224, 0.225]),
        ]
        crop = [v2.RandomResizedCrop(224), v2.RandomHorizontalFlip()] if train else [v2.Resize(256), v2.CenterCrop(224)]
        folder = Path(self.hparams.data_dir) / ("train" if train else "val")
        data = torchvision.datasets.ImageFolder(str(folder), transform=v2.Compose(crop + norm))
        return torch.utils.data.DataLoader(
            data,
            batch_size=self.hparams.batch_size if train else self.hparams.eval_batch_size,
            shuffle=train,
            drop_last=train,
            num_workers=self.hparams.num_workers,
            pin_memory=torch.cuda.is_available(),
            persistent_workers=self.hparams.num_workers > 0,
        )

    def _loader(self, split: str):
        if self.hparams.dataset == "imagefolder":
            return self._folder_loader("train" if split == "train" else "val")
        return self._batches(split)

    def train_dataloader(self):
        return self._loader("train")

    def val_dataloader(self):
        return self._loader("val")

    def test_dataloader(self):
        return self._loader("test")
