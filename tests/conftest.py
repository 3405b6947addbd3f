import pickle
from pathlib import Path

import numpy as np
import pytest
import torch


def write_cifar(root: Path, dataset: str = "cifar10", n_train: int = 200, n_test: int = 100, seed: int = 0) -> Path:
    """Write a real CIFAR folder in the official pickle format; images carry a learnable class colour."""
    rng = np.random.default_rng(seed)
    classes = 10 if dataset == "cifar10" else 100
    folder = root / ("cifar-10-batches-py" if dataset == "cifar10" else "cifar-100-python")
    folder.mkdir(parents=True)
    key = "labels" if dataset == "cifar10" else "fine_labels"
    palette = rng.integers(0, 256, (classes, 3))

    def batch(n):
        labels = rng.integers(0, classes, n)
        images = rng.integers(0, 64, (n, 3, 32, 32)) + palette[labels][:, :, None, None] * 0.75
        return {"data": images.clip(0, 255).astype(np.uint8).reshape(n, -1), key: labels.tolist()}

    if dataset == "cifar10":
        per = n_train // 5
        for i in range(1, 6):
            pickle.dump(batch(per), open(folder / f"data_batch_{i}", "wb"))
        pickle.dump(batch(n_test), open(folder / "test_batch", "wb"))
    else:
        pickle.dump(batch(n_train), open(folder / "train", "wb"))
        pickle.dump(batch(n_test), open(folder / "test", "wb"))
    return folder


@pytest.fixture
def cifar10_dir(tmp_path):
    write_cifar(tmp_path, "cifar10")
    return tmp_path


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
