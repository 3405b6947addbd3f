"""What a run trains on: the LightningDataModule (CIFAR-10/100, a synthetic stand-in, ImageNet-style
folders), the synthetic stand-in itself and the paper's label noise.

CIFAR and the synthetic data are held as uint8 tensors on the training device and batched by
:class:`resattn.loader.TensorBatches` (the paper's augmentation, fused); the CIFAR files are read by
:mod:`resattn.cifar`.
"""

from __future__ import annotations

import hashlib
import math
from pathlib import Path
from typing import Literal

import lightning as L
import numpy as np
import torch
import torchvision

from resattn.cifar import CIFAR, cifar_classes, cifar_folder, download_cifar, load_cifar
from resattn.config import DATA_SETTINGS, DATASETS, DEFAULT_DATASET, NUM_CLASSES
from resattn.loader import TensorBatches
from resattn.ranges import check_values

Dataset = Literal[DATASETS]


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
            return len(self._folder_classes("train"))
        return NUM_CLASSES[hp.dataset]

    def _folder_classes(self, split: str) -> list[str]:
        """The class names of an image folder's split (``data_dir/train`` or ``data_dir/val``)."""
        return torchvision.datasets.folder.find_classes(str(Path(self.hparams.data_dir) / split))[0]

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
                self._folder_classes(split)
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
            self.classes = self._folder_classes("train")
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
