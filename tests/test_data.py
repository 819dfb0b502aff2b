"""Data modules: CIFAR-format files, image folders, splits, the decode cache and the offline errors."""

from __future__ import annotations

import logging
import os
import pickle
import shutil
import tarfile
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torchvision
from hydra.utils import instantiate
from PIL import Image

from cnnlab.benchmark.plain_loop import FolderAsDataModuleReads
from cnnlab.data import folder as folder_module
from cnnlab.data.augment import RandomBatchAugment
from cnnlab.data.cifar10 import CIFAR10DataModule
from cnnlab.data.folder import ImageFolderDataModule
from cnnlab.data.synthetic import SyntheticDataModule
from cnnlab.errors import ConfigValueError, CorruptImageError, DatasetNotFoundError
from cnnlab.training.visual_callbacks import ConfusionMatrixLogger
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


def test_a_batch_moves_as_its_three_tensors_and_one_already_there_passes_through(cifar_root: Path):
    dm = cifar(cifar_root, val_split=20, batch_size=16)
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    assert dm.transfer_batch_to_device(batch, torch.device("cpu"), 0) is batch
    moved = dm.transfer_batch_to_device(batch, torch.device("meta"), 0)  # another device, without needing a GPU
    assert type(moved) is type(batch) and all(t.device.type == "meta" for t in moved)
    assert [(t.dtype, t.shape) for t in moved] == [(t.dtype, t.shape) for t in batch]
    # Anything else a hook might hand over still goes through Lightning's generic transfer.
    other = dm.transfer_batch_to_device({"x": batch.images}, torch.device("meta"), 0)
    assert other["x"].device.type == "meta"


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
    before = set(cache.glob("*.pt"))
    load()
    # The new cache replaces the stale one, which no run would read again.
    after = set(cache.glob("*.pt"))
    assert len(after) == 1 and not after & before


def test_stale_folder_caches_go_but_other_folders_and_sizes_stay(tmp_path: Path):
    cache = tmp_path / "cache"
    first = write_image_folder(tmp_path / "first", per_class=3)
    second = write_image_folder(tmp_path / "second", per_class=3)

    def load(root: Path, size: int) -> None:
        ImageFolderDataModule(str(root), image_size=size, val_split=1, test_split=1, cache_dir=str(cache)).setup("fit")

    load(first, 8)
    load(first, 16)
    load(second, 8)
    kept = set(cache.glob("*.pt"))
    assert len(kept) == 3  # one per folder and size
    # An image added to the first folder: its size-8 cache is replaced, the other two stay.
    (first / "train" / "cat" / "extra.jpg").write_bytes((first / "train" / "dog" / "000.jpg").read_bytes())
    load(first, 8)
    now = set(cache.glob("*.pt"))
    assert len(now) == 3 and len(kept - now) == 1 and len(now - kept) == 1
    gone = (kept - now).pop()
    assert gone.name.startswith("folder-train-") and gone.name.rsplit("-", 1)[0] == (now - kept).pop().name.rsplit("-", 1)[0]


def test_corrupt_image_is_named(tmp_path: Path):
    root = write_image_folder(tmp_path / "imgs", per_class=3)
    bad = root / "train" / "dog" / "broken.jpg"
    bad.write_bytes(b"not an image at all")
    dm = ImageFolderDataModule(str(root), val_split=1, test_split=1)
    with pytest.raises(CorruptImageError, match="broken.jpg"):
        dm.setup("fit")


def test_folder_without_train_dir_is_a_clear_error(tmp_path: Path):
    with pytest.raises(DatasetNotFoundError) as error:
        _ = ImageFolderDataModule(str(tmp_path)).class_names
    assert str(error.value).endswith("(and optionally DIR/val/, DIR/test/); scripts/eval.py and visualize.py "
                                     "also take DIR/test/<class>/<image files> alone")


def test_a_root_that_is_itself_a_split_folder_is_said_with_the_root_to_pass(tmp_path: Path):
    def error_for(root: Path) -> str:
        with pytest.raises(DatasetNotFoundError) as error:
            _ = ImageFolderDataModule(str(root)).class_names
        return str(error.value)

    dataset = write_image_folder(tmp_path / "pets", splits=("train", "val"))
    for split in ("train", "val"):  # data.root=.../train, as a user pointing at the images might
        assert error_for(dataset / split).endswith(
            f"alone. {dataset / split} looks like a split folder itself (it is named {split}/): "
            f"pass data.root={dataset}, the folder that holds train/ (and val/, test/)")
    # Class folders directly in data.root, no train/ anywhere: where they must go.
    (dataset / "train").rename(tmp_path / "photos")
    assert error_for(tmp_path / "photos").endswith(
        f"alone. {tmp_path / 'photos'} looks like a split folder itself (it holds class folders of images): "
        f"data.root is the folder that holds train/<class>/: move the class folders into {tmp_path / 'photos' / 'train'}/")


def test_a_test_folder_alone_is_labelled_by_the_class_list_it_is_given(tmp_path: Path):
    root = write_image_folder(tmp_path / "imgs", classes=("dog", "fox"), per_class=3, splits=("test",))
    dm = ImageFolderDataModule(str(root), cache_dir=None)
    assert dm.is_test_set
    with pytest.raises(DatasetNotFoundError, match="no training images"):  # nothing to say the label order
        _ = dm.class_names
    dm.label_with(["cat", "dog", "fox"])
    dm.setup("test")
    assert (len(dm.train_split), len(dm.val_split), len(dm.test_split)) == (0, 0, 6)
    assert dm.test_split.labels.tolist() == [1, 1, 1, 2, 2, 2]

    write_image_folder(root, per_class=1)
    with pytest.raises(ValueError, match="has train/"):
        ImageFolderDataModule(str(root), cache_dir=None).label_with(["cat", "dog", "fox"])


def test_a_cached_test_folder_labelled_by_another_class_list_gets_the_new_labels(tmp_path: Path):
    # Same files in the same order, same decode cache, but a checkpoint with one more class first:
    # the labels must follow the class list, not the cached one.
    root = write_image_folder(tmp_path / "imgs", classes=("cat", "dog"), per_class=2, splits=("test",))

    def test_split(class_names: list[str]):
        dm = ImageFolderDataModule(str(root), image_size=8, cache_dir=str(tmp_path / "cache"))
        dm.label_with(class_names)
        dm.setup("test")
        return dm.test_split

    first = test_split(["cat", "dog"])
    assert first.labels.tolist() == [0, 0, 1, 1]
    again = test_split(["bird", "cat", "dog"])
    assert again.labels.tolist() == [1, 1, 2, 2]
    assert torch.equal(again.images, first.images)
    swapped = test_split(["dog", "cat"])  # the dog images come first, labelled 0
    assert swapped.labels.tolist() == [0, 0, 1, 1]
    assert torch.equal(swapped.images, first.images[[2, 3, 0, 1]])


def test_held_out_splits_that_leave_no_training_images_are_refused_before_decoding(
        tmp_path: Path, cifar_root: Path, monkeypatch: pytest.MonkeyPatch):
    root = write_image_folder(tmp_path / "imgs", per_class=4)  # 12 training images
    cache = tmp_path / "cache"

    def must_not_decode(*args, **kwargs):
        raise AssertionError("decoded although the splits leave nothing to train on")

    monkeypatch.setattr(folder_module, "decode_files", must_not_decode)
    for val_split, test_split, val_size, test_size in [(0.95, 0.1, 11, 1), (0.9, 0.1, 11, 1), (6, 6, 6, 6)]:
        dm = ImageFolderDataModule(str(root), val_split=val_split, test_split=test_split, cache_dir=str(cache))
        with pytest.raises(ConfigValueError) as error:
            dm.setup("fit")
        message = str(error.value)
        assert f"data.val_split={val_split} ({val_size} images) and data.test_split={test_split} ({test_size} images)" in message
        assert "of the 12 images available" in message and "at least one training batch must remain" in message
    assert not cache.exists()

    # With its own val/ folder only the test split is held out, and only it is named.
    write_image_folder(root, per_class=2, splits=("val",))
    with pytest.raises(ConfigValueError, match=r"^data.test_split=12 \(12 images\) hold out 12 of the 12 images"):
        ImageFolderDataModule(str(root), val_split=0.5, test_split=12, cache_dir=None).setup("fit")

    with pytest.raises(ConfigValueError, match=r"data.val_split=120 \(120 images\) hold out 120 of the 120 images"):
        cifar(cifar_root, val_split=120).setup("fit")
    with pytest.raises(ConfigValueError, match=r"data.val_split=0.5 \(50 images\) and data.test_split=50 \(50 images\)"):
        SyntheticDataModule(num_images=100, val_split=0.5, test_split=50).setup("fit")
    # One image left is enough.
    dm = SyntheticDataModule(num_images=100, val_split=0.5, test_split=49)
    dm.setup("fit")
    assert len(dm.train_split) == 1


def test_drop_last_with_a_batch_larger_than_the_training_set_is_refused():
    def setup(batch_size: int, drop_last: bool, world_size: int = 1) -> SyntheticDataModule:
        dm = SyntheticDataModule(num_images=100, val_split=10, test_split=10, batch_size=batch_size, drop_last=drop_last)
        if world_size > 1:
            dm.trainer = SimpleNamespace(world_size=world_size)
        dm.setup("fit")
        return dm

    with pytest.raises(ConfigValueError) as error:
        setup(128, drop_last=True)
    message = str(error.value)
    assert "data.drop_last=true" in message and "the training set has 80 images, fewer than data.batch_size=128" in message
    assert "Set data.batch_size=80 or lower, or data.drop_last=false" in message
    assert len(next(iter(setup(80, drop_last=True).train_dataloader())).labels) == 80
    assert len(next(iter(setup(128, drop_last=False).train_dataloader())).labels) == 80
    # Under DDP each process drops its own last batch.
    with pytest.raises(ConfigValueError, match=r"80 images \(40 per process over 2 processes\), fewer than data.batch_size=64"):
        setup(64, drop_last=True, world_size=2)


def test_empty_class_folder_in_train_is_named_and_held_out_folders_may_lack_a_class(tmp_path: Path):
    root = write_image_folder(tmp_path / "imgs", per_class=3, splits=("train", "val", "test"))
    (root / "train" / "empty_class").mkdir()
    (root / "train" / "notes_only").mkdir()
    (root / "train" / "notes_only" / "README.txt").write_text("not an image")
    with pytest.raises(DatasetNotFoundError) as error:
        _ = ImageFolderDataModule(str(root), cache_dir=None).class_names
    message = str(error.value)
    assert "class folder(s) with no image files: empty_class, notes_only" in message
    assert "remove these folders or add images to them" in message
    for name in ("empty_class", "notes_only"):
        (root / "train" / name / "README.txt").unlink(missing_ok=True)
        (root / "train" / name).rmdir()

    # val/ without a fox folder and test/ with an empty one: fox is just absent from those splits.
    for path in (root / "val" / "fox").iterdir():
        path.unlink()
    (root / "val" / "fox").rmdir()
    for path in (root / "test" / "fox").iterdir():
        path.unlink()
    dm = ImageFolderDataModule(str(root), cache_dir=None)
    dm.setup("fit")
    assert dm.class_names == ["cat", "dog", "fox"]
    assert (len(dm.train_split), len(dm.val_split), len(dm.test_split)) == (9, 6, 6)
    assert sorted(dm.val_split.labels.unique().tolist()) == [0, 1]

    # A held-out folder with a class train/ lacks stays an error.
    (root / "val" / "wolf").mkdir()
    with pytest.raises(DatasetNotFoundError, match=r"has class folders \['wolf'\] that train/ does not have"):
        ImageFolderDataModule(str(root), cache_dir=None).setup("fit")


def test_the_plain_loops_image_folder_reads_what_the_data_module_reads(tmp_path: Path):
    root = write_image_folder(tmp_path / "imgs", per_class=2)
    (root / "train" / ".ipynb_checkpoints").mkdir()  # torchvision's ImageFolder would take it as an empty class
    (root / "train" / "dog" / "000.jpg").rename(root / "train" / "dog" / "000.gif")  # and skip this file
    (root / "train" / "cat" / "@eaDir" / "001.jpg").mkdir(parents=True)  # and read the thumbnails inside
    Image.new("RGB", (8, 8)).save(root / "train" / "cat" / "@eaDir" / "001.jpg" / "SYNOPHOTO_THUMB_S.jpg")
    dm = ImageFolderDataModule(str(root), cache_dir=None)
    reference = FolderAsDataModuleReads(str(dm.train_dir), transform=None)
    assert reference.classes == dm.class_names
    assert [(Path(path), label) for path, label in reference.samples] == folder_module.scan_split(dm.train_dir, dm.class_names)


def test_thumbnail_and_resource_fork_folders_are_neither_images_nor_classes(tmp_path: Path):
    root = write_image_folder(tmp_path / "imgs", classes=("cat", "dog"), per_class=2)
    cat = root / "train" / "cat"
    # A Synology NAS's thumbnails, under the photo's own name; a Mac's resource forks on a file
    # share, named like the photos but not images (they would stop the run as corrupt).
    (cat / "@eaDir" / "000.jpg").mkdir(parents=True)
    Image.new("RGB", (8, 8)).save(cat / "@eaDir" / "000.jpg" / "SYNOPHOTO_THUMB_M.jpg")
    (cat / ".AppleDouble").mkdir()
    (cat / ".AppleDouble" / "000.jpg").write_bytes(b"\x00\x05\x16\x07 resource fork")
    (root / "train" / "__MACOSX" / "cat").mkdir(parents=True)  # what a zip made on a Mac unpacks beside the classes
    (root / "train" / "__MACOSX" / "cat" / "._000.jpg").write_bytes(b"\x00\x05\x16\x07")
    (cat / "sub").mkdir()  # an ordinary sub-folder still counts
    Image.new("RGB", (8, 8)).save(cat / "sub" / "extra.png")
    assert folder_module.list_class_dirs(root / "train") == ["cat", "dog"]
    assert [path.relative_to(cat).as_posix() for path in folder_module.image_files(cat)] == ["000.jpg", "001.png",
                                                                                            "sub/extra.png"]
    dm = ImageFolderDataModule(str(root), val_split=1, test_split=1, cache_dir=None)
    dm.setup("fit")
    assert dm.class_names == ["cat", "dog"] and len(dm.train_split) + 2 == 5


def test_16_bit_and_float_greyscale_images_decode_to_their_8_bit_values(tmp_path: Path):
    grey = np.arange(256, dtype=np.uint8).reshape(16, 16)
    # An 8-bit value v stored with 16 bits is v * 257 (0 -> 0, 255 -> 65535).
    Image.fromarray(grey.astype(np.uint16) * 257).save(tmp_path / "grey16.png")
    Image.fromarray(grey.astype(np.uint16) * 257).save(tmp_path / "grey16.pgm")
    Image.fromarray(grey.astype(np.float32) / 255).save(tmp_path / "unit_float.tif")
    Image.fromarray(grey.astype(np.float32)).save(tmp_path / "byte_float.tif")
    modes = {}
    for name in ("grey16.png", "grey16.pgm", "unit_float.tif", "byte_float.tif"):
        with Image.open(tmp_path / name) as image:
            modes[name] = image.mode
        decoded = folder_module.decode_image_file(tmp_path / name, 16)
        assert decoded.dtype == torch.uint8 and decoded.shape == (3, 16, 16)
        for channel in decoded:
            np.testing.assert_array_equal(channel.numpy(), grey, err_msg=name)
    # Pillow's own modes for these files: 16-bit, 32-bit integer, float.
    assert modes == {"grey16.png": "I;16", "grey16.pgm": "I", "unit_float.tif": "F", "byte_float.tif": "F"}


def test_an_image_over_pillows_pixel_limit_is_named_like_any_undecodable_file(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    root = write_image_folder(tmp_path / "imgs", per_class=3)  # 40x30 images: 1,200 pixels
    Image.new("RGB", (120, 120)).save(root / "train" / "cat" / "huge.png")  # 14,400 pixels
    # Pillow refuses images over twice this many pixels (and warns above it); kept small for speed.
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 5_000)
    dm = ImageFolderDataModule(str(root), val_split=1, test_split=1, cache_dir=None)
    with pytest.raises(CorruptImageError) as error:
        dm.setup("fit")
    message = str(error.value)
    assert message.startswith("1 image file(s) could not be decoded:")
    assert str(root / "train" / "cat" / "huge.png") in message
    assert "exceeds limit of 10000 pixels" in message
    assert "(Pillow's Image.MAX_IMAGE_PIXELS guards against decompression bombs): shrink this image or remove it" in message


def damage_truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[:1000])


def damage_not_a_pickle(path: Path) -> None:
    path.write_bytes(b"<html>404 Not Found</html>")  # what a failed download may leave


def damage_bytes_per_image(path: Path) -> None:
    with path.open("wb") as f:
        pickle.dump({"data": np.zeros((4, 3000), dtype=np.uint8), "labels": [0, 1, 2, 3]}, f)


@pytest.mark.parametrize(("name", "damage", "problem"), [
    ("data_batch_2", damage_truncate, "pickle data was truncated"),
    ("test_batch", damage_not_a_pickle, "UnpicklingError: invalid load key"),
    ("data_batch_4", damage_bytes_per_image, "'data' has shape (4, 3000)"),
    ("batches.meta", damage_not_a_pickle, "invalid load key"),
])
def test_a_damaged_cifar_file_is_named_with_how_to_replace_it(tmp_path: Path, name, damage, problem: str):
    root = write_cifar_batches(tmp_path / "cifar")
    damage(root / "cifar-10-batches-py" / name)
    with pytest.raises(CorruptImageError) as error:
        cifar(root, val_split=10).setup("fit")
    message = str(error.value)
    assert message.startswith(f"{root / 'cifar-10-batches-py' / name} is not a readable CIFAR-10 file (")
    assert problem in message and "Delete it and run again with data.download=true" in message


def test_a_cifar_archive_that_is_not_an_archive_is_named(tmp_path: Path):
    (tmp_path / "cifar-10-python.tar.gz").write_bytes(np.random.default_rng(0).bytes(4096))
    with pytest.raises(CorruptImageError) as error:
        cifar(tmp_path, download=True).prepare_data()
    message = str(error.value)
    assert message.startswith(f"{tmp_path / 'cifar-10-python.tar.gz'} is not a readable CIFAR-10 file (ReadError")
    assert "Delete it and run again with data.download=true" in message


def test_missing_cifar_batches_are_named_and_the_batch_folder_itself_is_accepted_as_root(tmp_path: Path):
    root = write_cifar_batches(tmp_path / "cifar")
    batch_dir = root / "cifar-10-batches-py"
    # data.root pointing at the batch folder itself reads it as it is.
    dm = cifar(batch_dir, val_split=10)
    dm.setup("fit")
    assert len(dm.test_split) == 30 and dm.class_names == CIFAR_CLASSES

    (batch_dir / "data_batch_3").unlink()
    with pytest.raises(DatasetNotFoundError) as error:
        cifar(root).prepare_data()
    assert str(error.value).startswith(f"{batch_dir} lacks data_batch_3 and data.download is false.")
    with pytest.raises(DatasetNotFoundError) as error:
        cifar(batch_dir, download=True).prepare_data()
    assert str(error.value).startswith(f"{batch_dir} holds CIFAR-10 batch files but lacks data_batch_3.")
    assert f"data.root={root} data.download=true" in str(error.value)


def test_a_photo_is_turned_as_its_exif_orientation_says(tmp_path: Path):
    # Stored 60 wide x 20 high, top half red, bottom half blue; orientation 6 tells viewers to turn it
    # a quarter clockwise, so they show it 20 wide x 60 high, blue on the left and red on the right.
    pixels = np.zeros((20, 60, 3), np.uint8)
    pixels[:10] = (255, 0, 0)
    pixels[10:] = (0, 0, 255)
    exif = Image.Exif()
    exif[0x0112] = 6  # Orientation
    Image.fromarray(pixels).save(tmp_path / "tagged.jpg", exif=exif, quality=95)
    Image.fromarray(pixels).save(tmp_path / "untagged.jpg", quality=95)
    tagged = folder_module.decode_image_file(tmp_path / "tagged.jpg", 8)
    untagged = folder_module.decode_image_file(tmp_path / "untagged.jpg", 8)
    red, blue = torch.tensor([255, 0, 0]), torch.tensor([0, 0, 255])
    assert (tagged[:, :, 0].T.int() - blue).abs().max() < 16 and (tagged[:, :, -1].T.int() - red).abs().max() < 16
    assert (untagged[:, 0].T.int() - red).abs().max() < 16 and (untagged[:, -1].T.int() - blue).abs().max() < 16


def test_a_held_out_class_that_train_lacks_is_refused_before_decoding(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    root = write_image_folder(tmp_path / "imgs", per_class=2, splits=("train", "test"))
    write_image_folder(root, classes=("wolf",), per_class=1, splits=("test",))

    def must_not_decode(*args, **kwargs):
        raise AssertionError("decoded train/ although test/ is refused")

    monkeypatch.setattr(folder_module, "decode_files", must_not_decode)
    with pytest.raises(DatasetNotFoundError, match=r"test has class folders \['wolf'\] that train/ does not have"):
        ImageFolderDataModule(str(root), cache_dir=str(tmp_path / "cache")).setup("fit")


def test_linked_folders_are_read_like_real_ones_and_a_dangling_link_is_named(tmp_path: Path):
    store = write_image_folder(tmp_path / "store", per_class=2)
    root = write_image_folder(tmp_path / "imgs", classes=("cat", "dog"), per_class=2)
    (root / "train" / "fox").symlink_to(store / "train" / "fox", target_is_directory=True)
    (root / "train" / "cat" / "more").symlink_to(store / "train" / "cat", target_is_directory=True)
    dm = ImageFolderDataModule(str(root), cache_dir=None)
    samples = folder_module.scan_split(dm.train_dir, dm.class_names)
    assert [(str(path.relative_to(dm.train_dir)), label) for path, label in samples] == [
        ("cat/000.jpg", 0), ("cat/001.png", 0), ("cat/more/000.jpg", 0), ("cat/more/001.png", 0),
        ("dog/000.jpg", 1), ("dog/001.png", 1), ("fox/000.jpg", 2), ("fox/001.png", 2),
    ]
    # The same files as torchvision's ImageFolder, which follows linked folders too.
    reference = FolderAsDataModuleReads(str(dm.train_dir), transform=None)
    assert [(Path(path), label) for path, label in reference.samples] == samples

    (root / "train" / "dog" / "gone.jpg").symlink_to(tmp_path / "deleted.jpg")
    with pytest.raises(DatasetNotFoundError) as error:
        folder_module.scan_split(dm.train_dir, dm.class_names)
    assert str(error.value) == (f"1 link(s) under {root / 'train' / 'dog'} point to files that do not exist: "
                                f"{root / 'train' / 'dog' / 'gone.jpg'}. Restore their targets or remove the links.")


def test_a_linked_class_folder_whose_target_is_gone_is_named_not_dropped(tmp_path: Path):
    root = write_image_folder(tmp_path / "imgs", classes=("cat", "dog"), per_class=2)
    (root / "train" / "fox").symlink_to(tmp_path / "store" / "fxo", target_is_directory=True)  # a mistyped target
    (root / "train" / ".old").symlink_to(tmp_path / "gone")  # hidden: skipped, as hidden folders are
    with pytest.raises(DatasetNotFoundError) as error:
        _ = ImageFolderDataModule(str(root), cache_dir=None).class_names
    assert str(error.value) == (f"{root / 'train'} has 1 link(s) whose target does not exist: "
                                f"fox -> {tmp_path / 'store' / 'fxo'}. Point them at existing folders "
                                f"(ln -sfn TARGET LINK) or remove them.")


def test_images_outside_every_class_folder_are_said_not_used(tmp_path: Path, caplog: pytest.LogCaptureFixture):
    root = write_image_folder(tmp_path / "imgs", classes=("cat", "dog"), per_class=2)
    shutil.copy(root / "train" / "cat" / "000.jpg", root / "train" / "stray.jpg")
    (root / "train" / "notes.txt").write_text("not an image, and not a class: no word about it")
    dm = ImageFolderDataModule(str(root), cache_dir=None)
    with caplog.at_level(logging.WARNING, logger="cnnlab.data.folder"):
        samples = folder_module.scan_split(dm.train_dir, dm.class_names)
    assert len(samples) == 4
    assert [record.getMessage() for record in caplog.records] == [
        f"{root / 'train'}: 1 image file(s) directly in it, in no class folder, are not used (e.g. stray.jpg); "
        f"move them into their class's folder"]


def test_a_data_root_that_is_missing_or_a_file_is_named_as_such(tmp_path: Path):
    write_image_folder(tmp_path / "small", classes=("cat", "dog"), per_class=1)
    with pytest.raises(DatasetNotFoundError) as missing:
        _ = ImageFolderDataModule(str(tmp_path / "smal"), cache_dir=None).class_names
    assert str(missing.value).endswith(f". data.root={tmp_path / 'smal'} does not exist (did you mean {tmp_path / 'small'}?)")
    (tmp_path / "weights.pth").write_bytes(b"")
    with pytest.raises(DatasetNotFoundError) as a_file:
        _ = ImageFolderDataModule(str(tmp_path / "weights.pth"), cache_dir=None).class_names
    assert str(a_file.value).endswith(f". data.root={tmp_path / 'weights.pth'} is a file, not a folder")
    with pytest.raises(DatasetNotFoundError) as far_off:
        _ = ImageFolderDataModule(str(tmp_path / "elsewhere"), cache_dir=None).class_names
    assert str(far_off.value).endswith(f". data.root={tmp_path / 'elsewhere'} does not exist")


def test_images_in_sub_folders_of_a_class_folder_are_read_and_said(tmp_path: Path, caplog: pytest.LogCaptureFixture):
    root = write_image_folder(tmp_path / "imgs", classes=("cat", "dog"), per_class=2)
    (root / "train" / "cat" / "2023" / "june").mkdir(parents=True)
    (root / "train" / "cat" / "000.jpg").rename(root / "train" / "cat" / "2023" / "june" / "000.jpg")
    with caplog.at_level("INFO", logger="cnnlab.data.folder"):
        samples = folder_module.scan_split(root / "train", ["cat", "dog"])
    assert len(samples) == 4 and samples[0] == (root / "train" / "cat" / "001.png", 0)
    assert (f"{root / 'train'}: 1 of the 4 images are in sub-folders of their class folder "
            f"(e.g. cat/2023/june/000.jpg) and are read with that class folder's label") in caplog.text


def test_files_swapped_with_their_times_kept_are_decoded_afresh(tmp_path: Path):
    # Same-sized BMPs with one modification time, as extracted from an archive: a swap by mv keeps
    # every path, size and modification time, so only the inodes and change times tell.
    root = tmp_path / "imgs"
    for split in ("train", "val", "test"):
        for name, value in (("cat", 0), ("dog", 255)):
            (root / split / name).mkdir(parents=True)
            for i in range(2):
                Image.new("RGB", (8, 8), (value,) * 3).save(root / split / name / f"{i}.bmp")
    for path in root.rglob("*.bmp"):
        os.utime(path, ns=(1_700_000_000 * 10**9, 1_700_000_000 * 10**9))

    def train_means() -> list[float]:
        dm = ImageFolderDataModule(str(root), image_size=8, cache_dir=str(tmp_path / "cache"))
        dm.setup("fit")
        return dm.train_split.images.float().mean(dim=(1, 2, 3)).tolist()

    assert train_means() == [0, 0, 255, 255]
    cat, dog = root / "train" / "cat" / "0.bmp", root / "train" / "dog" / "0.bmp"
    cat.rename(tmp_path / "swap.bmp")
    dog.rename(cat)
    (tmp_path / "swap.bmp").rename(dog)
    assert train_means() == [255, 0, 0, 255]


def fingerprints(images: torch.Tensor) -> list[bytes]:
    """Each image's bytes: the fixtures' images are noisy, so distinct images differ."""
    return [image.numpy().tobytes() for image in images]


def assert_a_partition(whole: list[bytes], splits: dict[str, torch.Tensor]) -> None:
    """The splits share no image, none is repeated, and together they are exactly ``whole``."""
    assert len(set(whole)) == len(whole)  # the fingerprints tell every image apart
    parts = {name: fingerprints(images) for name, images in splits.items()}
    assert sum(len(part) for part in parts.values()) == len(whole)
    names = list(parts)
    for i, first in enumerate(names):
        assert len(set(parts[first])) == len(parts[first]), f"{first} repeats an image"
        assert len(set(parts[first]) - set(whole)) == 0, f"{first} has images from elsewhere"
        for second in names[i + 1:]:
            shared = len(set(parts[first]) & set(parts[second]))
            assert shared == 0, f"{first} and {second} share {shared} images"


def test_cifar_val_is_held_out_of_train_and_test_is_its_own(cifar_root: Path):
    batch_dir = cifar_root / "cifar-10-batches-py"

    def file_images(*names: str) -> list[bytes]:
        images = []
        for name in names:
            with (batch_dir / name).open("rb") as f:
                images += [row.tobytes() for row in pickle.load(f)["data"]]  # CHW order, as the module keeps it
        return images

    dm = cifar(cifar_root, val_split=20, split_seed=5)
    dm.setup("fit")
    assert_a_partition(file_images(*(f"data_batch_{i}" for i in range(1, 6))),
                       {"train": dm.train_split.images, "val": dm.val_split.images})
    assert fingerprints(dm.test_split.images) == file_images("test_batch")


def test_a_train_only_folder_holds_val_and_test_out_of_train(tmp_path: Path):
    root = write_image_folder(tmp_path / "imgs", per_class=8)
    dm = ImageFolderDataModule(str(root), image_size=16, val_split=5, test_split=0.25, cache_dir=None)
    dm.setup("fit")
    assert (len(dm.train_split), len(dm.val_split), len(dm.test_split)) == (13, 5, 6)
    whole = [folder_module.decode_image_file(path, 16) for path, _ in folder_module.scan_split(dm.train_dir, dm.class_names)]
    assert_a_partition(fingerprints(torch.stack(whole)),
                       {"train": dm.train_split.images, "val": dm.val_split.images, "test": dm.test_split.images})


def test_a_train_only_folders_held_out_images_follow_the_split_seed(tmp_path: Path):
    root = write_image_folder(tmp_path / "imgs", per_class=8)

    def val_images(seed: int) -> list[bytes]:
        dm = ImageFolderDataModule(str(root), image_size=16, val_split=5, test_split=5, split_seed=seed, cache_dir=None)
        dm.setup("fit")
        return fingerprints(dm.val_split.images)

    assert val_images(3) == val_images(3)
    shared = len(set(val_images(3)) & set(val_images(4)))
    assert shared < 5  # another seed, other images


def test_files_of_other_types_are_named_and_jfif_photos_read(tmp_path: Path, caplog: pytest.LogCaptureFixture):
    root = write_image_folder(tmp_path / "d", classes=("cat", "dog"), per_class=2)
    cat = root / "train" / "cat"
    (cat / "000.jpg").rename(cat / "000.jfif")  # how some browsers save a JPEG
    (cat / "IMG_1.heic").write_bytes(b"a phone photo")
    (cat / "notes.txt").write_text("where these came from")
    for name in ("Thumbs.db", "desktop.ini", ".DS_Store", "._001.png"):  # left by systems: skipped quietly
        (cat / name).write_bytes(b"")
    with caplog.at_level("WARNING", logger="cnnlab.data.folder"):
        samples = folder_module.scan_split(root / "train", ["cat", "dog"])
    assert sorted(path.name for path, label in samples if label == 0) == ["000.jfif", "001.png"]
    assert (f"{root / 'train'}: 2 file(s) skipped, not of the image types read here (.heic: 1, .txt: 1; "
            f"e.g. cat/IMG_1.heic); images among them are used once converted to JPEG or PNG") in caplog.text
    assert tuple(folder_module.decode_image_file(cat / "000.jfif", 32).shape) == (3, 32, 32)


def test_a_data_module_not_set_up_says_so():
    # data.val_split and data.test_split once shared their attribute names with the loaded
    # splits, and these calls failed with "'int' object has no attribute 'images'".
    datamodule = SyntheticDataModule(num_images=20, val_split=4, test_split=4)
    for call in (datamodule.val_dataloader, datamodule.test_dataloader, lambda: datamodule.split_identity("val")):
        with pytest.raises(RuntimeError, match=r"not set up; call setup\(\) first"):
            call()


def test_a_decode_cache_folder_that_is_a_file_is_refused_before_decoding(tmp_path: Path):
    root = write_image_folder(tmp_path / "imgs", per_class=3)
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(ConfigValueError, match=r"data.cache_dir=.*notes.txt is a file, not a folder.*data.cache_dir=null"):
        ImageFolderDataModule(str(root), cache_dir=str(tmp_path / "notes.txt"))
    assert (tmp_path / "notes.txt").read_text() == "mine"


def test_a_cache_folder_that_cannot_be_written_only_costs_the_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                    caplog: pytest.LogCaptureFixture):
    root = write_image_folder(tmp_path / "imgs", per_class=3)

    def read_only(path, obj):
        raise PermissionError(13, "Permission denied", str(path))

    monkeypatch.setattr(folder_module, "atomic_torch_save", read_only)
    dm = ImageFolderDataModule(str(root), val_split=1, test_split=1, cache_dir=str(tmp_path / "shared"))
    with caplog.at_level(logging.WARNING, logger=folder_module.__name__):
        dm.setup("fit")  # a shared, read-only cache folder is not a reason to stop
    assert len(dm.train_split) == 7 and "could not cache the decoded images" in caplog.text


@pytest.mark.parametrize(("build", "key"), [
    (lambda: SyntheticDataModule(num_images=40, drop_last="no"), "data.drop_last"),
    (lambda: SyntheticDataModule(num_images=40, device_resident="off"), "data.device_resident"),
    (lambda: CIFAR10DataModule(root="x", download="no"), "data.download"),
    (lambda: RandomBatchAugment(hflip="no"), "data.augment.hflip"),
    (lambda: ConfusionMatrixLogger(on_test="no"), "callbacks.confusion_matrix.on_test"),
])
def test_a_switch_given_as_a_yes_no_word_is_refused_not_taken_as_true(build, key):
    # OmegaConf reads data.drop_last=no as the string 'no', which is truthy.
    with pytest.raises(ConfigValueError, match=f"{key} must be true or false, got '(no|off)': pass {key}=false"):
        build()


@pytest.mark.parametrize("value", [0, -1, 2.5, True])
def test_a_bad_eval_batch_size_is_named_not_taken_as_the_training_batch(value):
    # 0 would have fallen back to data.batch_size in silence; -1 and 2.5 failed later inside the DataLoader.
    with pytest.raises(ConfigValueError, match=rf"^data\.eval_batch_size must be a whole number of at least 1, got {value!r}$"):
        SyntheticDataModule(num_images=40, eval_batch_size=value)
    assert SyntheticDataModule(num_images=40, batch_size=8, eval_batch_size=None).eval_batch_size == 8


@pytest.mark.parametrize("data", ["cifar10", "folder", "synthetic"])
def test_every_data_config_trains_with_crop_padding_4_and_a_horizontal_flip(make_config, tmp_path: Path, data: str):
    # The standard CIFAR augmentation; data/augment=full adds to it, ~data/augment removes it.
    overrides = [f"data={data}"] + ([f"data.root={tmp_path}"] if data == "folder" else [])
    augment = instantiate(make_config(overrides=overrides).data).augment
    assert isinstance(augment, RandomBatchAugment)
    assert (augment.crop_padding, augment.hflip) == (4, True)
    assert (augment.rotation_degrees, augment.brightness, augment.contrast) == (0, 0, 0)
