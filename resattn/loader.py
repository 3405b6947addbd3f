"""The in-memory loader of CIFAR-sized data: mini-batches of a uint8 tensor on the training device,
with the paper's augmentation (pad 4, random 32x32 crop, horizontal flip) and per-pixel mean
subtraction batched, fused into one gather (:func:`augment`): no per-image Python.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator

import torch

PAD = 4  # the paper's augmentation: pad 4, random 32x32 crop, horizontal flip


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
