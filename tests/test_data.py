"""Data modules: CIFAR-format files, image folders, splits, the decode cache and the offline errors."""

from __future__ import annotations

import os
import tarfile
from pathlib import Path

import pytest
import torch
import torchvision

from cnnlab.data import folder as folder_module
from cnnlab.data.augment import RandomBatchAugment
from cnnlab.data.cifar10 import CIFAR10DataModule
from cnnlab.data.folder import ImageFolderDataModule
from cnnlab.errors import CorruptImageError, DatasetNotFoundError
from conftest import CIFAR_CLASSES, write_cifar_batches, write_image_folder


def cifar(root: Path, **kwargs) -> CIFAR10DataModule:
    kwargs.setdefault("download", False)
    return CIFAR10DataModule(root=str(root), **kwargs)


def test_cifar_reads_the_python_format_and_splits_by_seed(cifar_root: Path):
    dm = cifar(cifar_root, val_split=20, split_seed=3)
    dm.setup("fit")
    assert dm.class_names == CIFAR_CLASSES and dm.num_classes == 10
    assert (len(dm.train_split), len(dm.val_split), len(dm.test_split)) == (100, 20, 30)
    assert dm.train_split.images.dtype == torch.uint8 and dm.train_split.images.shape[1:] == (3, 32, 32)
    again = cifar(cifar_root, val_split=20, split_seed=3)
    again.setup("fit")
    assert torch.equal(dm.val_split.images, again.val_split.images)
    other = cifar(cifar_root, val_split=20, split_seed=4)
    other.setup("fit")
    assert not torch.equal(dm.val_split.images, other.val_split.images)


def test_cifar_fraction_split_and_resize(cifar_root: Path):
    dm = cifar(cifar_root, val_split=0.25, image_size=16)
    dm.setup("fit")
    assert (len(dm.train_split), len(dm.val_split)) == (90, 30)
    assert dm.test_split.images.shape[1:] == (3, 16, 16)


def test_cifar_archive_is_extracted(tmp_path: Path):
    source = write_cifar_batches(tmp_path / "src")
    root = tmp_path / "data"
    root.mkdir()
    with tarfile.open(root / "cifar-10-python.tar.gz", "w:gz") as tar:
        tar.add(source / "cifar-10-batches-py", arcname="cifar-10-batches-py")
    dm = cifar(root, val_split=10)
    dm.setup("fit")
    assert len(dm.test_split) == 30


def test_missing_cifar_offline_says_where_to_put_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    def offline(*args, **kwargs):
        raise RuntimeError("Error downloading cifar-10-python.tar.gz: no network")

    monkeypatch.setattr(torchvision.datasets, "CIFAR10", offline)
    for download in (True, False):
        with pytest.raises(DatasetNotFoundError) as error:
            cifar(tmp_path / "nothing", download=download).prepare_data()
        message = str(error.value)
        assert str(tmp_path / "nothing") in message
        assert "cifar-10-python.tar.gz" in message and "cifar-10-batches-py" in message
        assert ("download failed" in message) == download


def test_batches_are_uint8_until_the_device_hook(cifar_root: Path):
    dm = cifar(cifar_root, val_split=20, batch_size=16, augment=RandomBatchAugment(crop_padding=4, hflip=True))
    dm.setup("fit")
    images, labels, indices = next(iter(dm.train_dataloader()))
    assert images.dtype == torch.uint8 and images.shape == (16, 3, 32, 32) and labels.shape == (16,)
    assert torch.equal(images, dm.train_split.images[indices]) and torch.equal(labels, dm.train_split.labels[indices])
    assert dm.transform(images, train=False) is images  # evaluation batches stay uint8 for the model
    augmented = dm.transform(images, train=True)
    assert augmented.dtype == torch.float32 and not torch.equal(augmented, images.float() / 255)
    seen = torch.cat([batch.indices for batch in dm.train_dataloader()])
    assert sorted(seen.tolist()) == list(range(len(dm.train_split)))  # every training sample once per epoch


def test_folder_resizes_and_holds_out_val_and_test(image_folder: Path, tmp_path: Path):
    dm = ImageFolderDataModule(str(image_folder), image_size=16, val_split=6, test_split=0.25,
                               cache_dir=str(tmp_path / "cache"))
    assert dm.class_names == ["cat", "dog", "fox"]
    dm.setup("fit")
    assert (len(dm.train_split), len(dm.val_split), len(dm.test_split)) == (21, 6, 9)
    assert dm.train_split.images.shape[1:] == (3, 16, 16)
    assert sorted(dm.train_split.labels.unique().tolist()) == [0, 1, 2]


def test_folder_uses_its_own_val_and_test_folders(tmp_path: Path):
    root = write_image_folder(tmp_path / "imgs", per_class=4, splits=("train", "val", "test"))
    dm = ImageFolderDataModule(str(root), cache_dir=None)
    dm.setup("fit")
    assert (len(dm.train_split), len(dm.val_split), len(dm.test_split)) == (12, 12, 12)


def test_folder_cache_is_reused_and_never_stale(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    root = write_image_folder(tmp_path / "imgs", per_class=4)
    cache = tmp_path / "cache"

    def load() -> ImageFolderDataModule:
        dm = ImageFolderDataModule(str(root), val_split=2, test_split=2, cache_dir=str(cache))
        dm.setup("fit")
        return dm

    first = load()
    assert len(list(cache.glob("*.pt"))) == 1
    real_decode = folder_module.decode_files

    def must_not_decode(*args, **kwargs):
        raise AssertionError("decoded although the cache was valid")

    monkeypatch.setattr(folder_module, "decode_files", must_not_decode)
    assert torch.equal(load().train_split.images, first.train_split.images)

    # A changed file changes the key: the cache is not served stale.
    changed = root / "train" / "cat" / "000.jpg"
    changed.write_bytes((root / "train" / "dog" / "000.jpg").read_bytes())
    os.utime(changed, ns=(changed.stat().st_atime_ns, changed.stat().st_mtime_ns + 10**9))
    with pytest.raises(AssertionError, match="decoded although"):
        load()
    monkeypatch.setattr(folder_module, "decode_files", real_decode)
    load()
    assert len(list(cache.glob("*.pt"))) == 2


def test_corrupt_image_is_named(tmp_path: Path):
    root = write_image_folder(tmp_path / "imgs", per_class=3)
    bad = root / "train" / "dog" / "broken.jpg"
    bad.write_bytes(b"not an image at all")
    dm = ImageFolderDataModule(str(root), val_split=1, test_split=1)
    with pytest.raises(CorruptImageError, match="broken.jpg"):
        dm.setup("fit")


def test_folder_without_train_dir_is_a_clear_error(tmp_path: Path):
    with pytest.raises(DatasetNotFoundError, match="train/<class>"):
        _ = ImageFolderDataModule(str(tmp_path)).class_names
