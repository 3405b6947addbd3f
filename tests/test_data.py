import itertools

import pytest
import torch
import torch.nn.functional as F

from resattn.cifar import load_cifar
from resattn.data import CIFARDataModule, add_label_noise, make_synthetic
from resattn.loader import TensorBatches, augment
from tests.conftest import write_cifar


@pytest.mark.parametrize("dataset, classes", [("cifar10", 10), ("cifar100", 100)])
def test_loads_an_existing_cifar_folder_without_md5(tmp_path, dataset, classes):
    folder = write_cifar(tmp_path, dataset, n_train=150, n_test=40)
    for root in (tmp_path, folder):  # the parent, or the folder itself
        x, y = load_cifar(root, dataset, train=True)
        assert x.shape == (150, 3, 32, 32) and x.dtype == torch.uint8
        assert y.dtype == torch.int64 and 0 <= y.min() and y.max() < classes
    x, y = load_cifar(tmp_path, dataset, train=False)
    assert x.shape == (40, 3, 32, 32)


def test_missing_cifar_says_where_it_looked_and_what_to_do(tmp_path):
    with pytest.raises(FileNotFoundError) as err:
        load_cifar(tmp_path / "nowhere", "cifar10", train=True)
    msg = str(err.value)
    assert "cifar-10-batches-py" in msg and "nowhere" in msg
    assert "--data.download true" in msg and "https://www.cs.toronto.edu" in msg


def test_corrupt_batch_file_is_named(tmp_path):
    folder = write_cifar(tmp_path)
    (folder / "data_batch_3").write_bytes(b"not a pickle")
    with pytest.raises(ValueError, match="data_batch_3"):
        load_cifar(tmp_path, "cifar10", train=True)


def _brute_force_match(out, img, mean, pad=4):
    """Does ``out`` equal some pad-crop(-flip) of the mean-subtracted ``img``?"""
    padded = F.pad((img.float() - mean) / 255, (pad,) * 4)
    h, w = img.shape[-2:]
    for dy, dx, flip in itertools.product(range(2 * pad + 1), range(2 * pad + 1), (False, True)):
        crop = padded[:, dy : dy + h, dx : dx + w]
        if flip:
            crop = crop.flip(-1)
        if torch.allclose(crop, out, atol=1e-6):
            return True
    return False


def test_augmentation_is_a_valid_pad_crop_flip_with_mean_subtraction():
    images = torch.randint(0, 256, (16, 3, 32, 32), dtype=torch.uint8)
    mean = images.float().mean(0)
    out = augment(images, mean, torch.Generator().manual_seed(0))
    assert out.shape == (16, 3, 32, 32) and out.dtype == torch.float32
    assert all(_brute_force_match(out[i], images[i], mean) for i in range(16))
    # the same image drawn 200 times: many distinct crops, and both orientations
    many = augment(images[:1].repeat(200, 1, 1, 1), mean, torch.Generator().manual_seed(1))
    assert len({tuple(v.tolist()) for v in many.flatten(1)[:, ::7]}) > 60
    assert len({tuple(v.tolist()) for v in many.flatten(1)[:, ::7]}) < 163  # 81 offsets x 2 flips


def _batches(seed, epoch):
    x, y = make_synthetic(300, seed=3)
    return TensorBatches(x, y, x.float().mean(0), 64, train=True, seed=seed, position=lambda: (epoch, 0))


def test_seeded_epochs_repeat_and_differ():
    a = list(_batches(0, 0))
    b = list(_batches(0, 0))
    c = list(_batches(0, 1))
    assert len(a) == 4 == len(_batches(0, 0))  # drop_last: 300 // 64
    assert all(torch.equal(xa, xb) and torch.equal(ya, yb) for (xa, ya), (xb, yb) in zip(a, b))
    assert not torch.equal(a[0][1], c[0][1])


@pytest.mark.parametrize("skip", [1, 3])
def test_a_resumed_epoch_sees_exactly_the_batches_left(skip):
    x, y = make_synthetic(300, seed=3)
    full = list(TensorBatches(x, y, x.float().mean(0), 64, train=True, seed=5, position=lambda: (2, 0)))
    rest = list(TensorBatches(x, y, x.float().mean(0), 64, train=True, seed=5, position=lambda: (2, skip)))
    assert len(rest) == len(full) - skip
    assert all(torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) for a, b in zip(full[skip:], rest))


def test_eval_batches_cover_every_image_once_in_order():
    x, y = make_synthetic(130, seed=3)
    batches = TensorBatches(x, y, x.float().mean(0), 50, train=False)
    assert len(batches) == 3
    assert torch.equal(torch.cat([b[1] for b in batches]), y)


def test_sharding_splits_the_epoch_between_ranks():
    x, y = make_synthetic(256, seed=3)
    ranks = [
        TensorBatches(
            torch.arange(256).view(256, 1, 1, 1).expand(256, 3, 2, 2).to(torch.uint8),
            y,
            torch.zeros(3, 2, 2),
            32,
            train=False,
            rank=r,
            world_size=2,
        )
        for r in (0, 1)
    ]
    seen = [torch.cat([b[1] for b in rb]) for rb in ranks]
    assert len(seen[0]) == len(seen[1]) == 128


@pytest.mark.parametrize("world", [2, 3])
def test_training_shards_are_disjoint_and_cover_the_epoch(world):
    """Each rank's training batches are its share of the one-device epoch permutation, cut to full rounds."""
    n, batch = 101, 8
    images = torch.randint(0, 256, (n, 3, 8, 8), dtype=torch.uint8)

    def loader(rank, world_size):
        labels = torch.arange(n)  # a batch's labels are its image indices
        return TensorBatches(
            images,
            labels,
            torch.zeros(3, 8, 8),
            batch,
            train=True,
            seed=7,
            position=lambda: (3, 0),
            rank=rank,
            world_size=world_size,
        )

    permutation = torch.cat([y for _, y in loader(0, 1)])  # the epoch's order on one device
    kept = n - n % (batch * world)  # drop_last: every rank gets the same number of full batches
    shards = [[y for _, y in loader(rank, world)] for rank in range(world)]
    assert all(len(s) == len(loader(0, world)) == kept // (batch * world) for s in shards)
    assert all(len(y) == batch for s in shards for y in s)
    seen = torch.cat([torch.cat(s) for s in shards])
    assert len(seen) == kept and len(set(seen.tolist())) == kept  # disjoint
    assert set(seen.tolist()) == set(permutation[:kept].tolist())  # exactly the epoch's first full rounds


@pytest.mark.parametrize("n, batch, world", [(127, 2, 2), (200, 32, 2), (130, 32, 2), (64, 64, 1), (65, 8, 3)])
def test_length_is_the_number_of_batches_yielded(n, batch, world):
    x, y = make_synthetic(n, seed=3)
    for train in (True, False):
        for rank in range(world):
            loader = TensorBatches(x, y, x.float().mean(0), batch, train=train, rank=rank, world_size=world)
            assert len(list(loader)) <= len(loader) and (rank > 0 or len(list(loader)) == len(loader))


@pytest.mark.parametrize("noise", [0.1, 0.3, 0.5, 0.7])
def test_label_noise_follows_the_q_matrix(noise):
    labels = torch.arange(10).repeat(5000)
    noisy, rate = add_label_noise(labels, noise, 10, seed=0)
    assert rate == pytest.approx(noise, abs=0.01)
    changed = noisy[noisy != labels]
    counts = torch.bincount((changed - labels[noisy != labels]) % 10, minlength=10)
    assert counts[0] == 0  # a changed label is another class ...
    assert (counts[1:].float() / counts[1:].sum() - 1 / 9).abs().max() < 0.02  # ... uniformly
    again, _ = add_label_noise(labels, noise, 10, seed=0)
    assert torch.equal(noisy, again)


def test_label_noise_rejects_bad_levels():
    with pytest.raises(ValueError, match="1 - r"):
        add_label_noise(torch.zeros(3, dtype=torch.long), 1.0, 10, 0)


def test_synthetic_is_deterministic_and_has_one_pattern_per_class():
    x1, y1 = make_synthetic(200, seed=5)
    x2, y2 = make_synthetic(200, seed=5)
    assert torch.equal(x1, x2) and torch.equal(y1, y2)
    assert x1.dtype == torch.uint8 and set(y1.tolist()) == set(range(10))
    assert not torch.equal(make_synthetic(200, seed=6)[0], x1)


def test_datamodule_splits_subsets_noise_and_mean(cifar10_dir):
    dm = CIFARDataModule(data_dir=str(cifar10_dir), train_size=120, val_size=50, label_noise=0.3, batch_size=16)
    dm.setup("fit")
    x, y = dm.images("train")
    assert x.shape[0] == 120 and dm.images("val")[0].shape[0] == 50 and dm.images("test")[0].shape[0] == 100
    assert torch.allclose(dm.mean, x.float().mean(0))
    assert 0.1 < dm.noise_rate < 0.5
    assert dm.num_classes == 10 and len(dm.train_dataloader()) == 120 // 16
    xb, yb = next(iter(dm.val_dataloader()))
    assert xb.dtype == torch.float32 and xb.shape[1:] == (3, 32, 32)


def test_datamodule_validates_on_test_split_by_default(cifar10_dir):
    dm = CIFARDataModule(data_dir=str(cifar10_dir))
    dm.setup("fit")
    assert dm.images("val")[0].data_ptr() == dm.images("test")[0].data_ptr()


def test_datamodule_rejects_unknown_dataset():
    with pytest.raises(ValueError, match="'cifar10', 'cifar100', 'synthetic', 'imagefolder'"):
        CIFARDataModule(dataset="mnist")


def test_imagefolder_path_uses_torchvision(tmp_path):
    from PIL import Image

    for split in ("train", "val"):
        for cls in ("cat", "dog"):
            (tmp_path / split / cls).mkdir(parents=True)
            for i in range(2):
                Image.new("RGB", (64, 48), (i * 100, 50, 200)).save(tmp_path / split / cls / f"{i}.png")
    dm = CIFARDataModule(dataset="imagefolder", data_dir=str(tmp_path), batch_size=2, eval_batch_size=2, num_workers=0)
    dm.setup("fit")
    assert dm.num_classes == 2
    x, y = next(iter(dm.train_dataloader()))
    assert x.shape == (2, 3, 224, 224)


def test_a_data_dir_that_is_a_file_is_named_as_one(tmp_path):
    """Issue #20: the error suggested extracting CIFAR into the file."""
    from resattn.cifar import load_cifar

    path = tmp_path / "cifar.tar.gz"
    path.write_bytes(b"an archive, not a folder")
    for download in (False, True):
        with pytest.raises(FileNotFoundError, match="is a file, not a folder") as err:
            load_cifar(path, "cifar10", True, download=download)
        assert "extract it into" not in str(err.value)
