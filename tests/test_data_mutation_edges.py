"""Edges of the data modules that a mutation round found untested: each test pins a behaviour users rely on
(which files are read and with which labels, split sizes, batch sizes, the CIFAR-10 file checks) that a
small change in the code (a dropped check, a swapped pair, a flipped comparison) altered without any other
test noticing. Tiny sizes and in-process only."""

from __future__ import annotations

import pickle
import struct
import tarfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

from cnnlab.data.base import ImageSplit, held_out_sizes
from cnnlab.data.cifar10 import ARCHIVE_NAME, ARCHIVE_URL, CIFAR10DataModule, read_cifar_batches
from cnnlab.data.folder import ImageFolderDataModule, cache_key, cache_lineage, decode_image_file, scan_split
from cnnlab.data.synthetic import SyntheticDataModule
from cnnlab.errors import ConfigValueError, CorruptImageError, DatasetNotFoundError
from conftest import CIFAR_CLASSES, write_cifar_batches, write_image_folder


def cifar(root: Path, **kwargs: Any) -> CIFAR10DataModule:
    kwargs.setdefault("download", False)
    return CIFAR10DataModule(root=str(root), **kwargs)


def loaded(split: ImageSplit | None) -> ImageSplit:
    """A split of a data module that has been set up."""
    assert split is not None
    return split


def loader_indices(loader: torch.utils.data.DataLoader) -> list[list[int]]:
    """The split indices of every batch a loader hands out, batch by batch."""
    return [batch.indices.tolist() for batch in loader]


class Python2Pickler(pickle._Pickler):
    """Writes bytes as Python 2 ``str`` (BINSTRING opcodes), as the official CIFAR-10 files were written."""

    dispatch = pickle._Pickler.dispatch.copy()  # type: ignore[attr-defined]

    def save_bytes(self, obj: bytes) -> None:
        if len(obj) < 256:
            self.write(pickle.SHORT_BINSTRING + bytes([len(obj)]) + obj)  # type: ignore[attr-defined]
        else:
            self.write(pickle.BINSTRING + struct.pack("<i", len(obj)) + obj)  # type: ignore[attr-defined]
        self.memoize(obj)  # type: ignore[attr-defined]

    dispatch[bytes] = save_bytes  # type: ignore[assignment]


def write_python2_cifar(batch_dir: Path, per_batch: int = 3) -> None:
    """A miniature CIFAR-10 whose files hold Python 2 byte strings: dict keys, class names and the raw pixel data."""
    rng = np.random.default_rng(0)
    batch_dir.mkdir(parents=True)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        entry = {b"data": rng.integers(128, 256, size=(per_batch, 3072), dtype=np.uint8),  # bytes above 127
                 b"labels": [1, 2, 9][:per_batch], b"batch_label": name.encode()}
        with (batch_dir / name).open("wb") as f:
            Python2Pickler(f, protocol=2).dump(entry)
    with (batch_dir / "batches.meta").open("wb") as f:
        Python2Pickler(f, protocol=2).dump({b"label_names": [c.encode() for c in CIFAR_CLASSES], b"num_vis": 3072})


def write_batch(path: Path, entry: dict[str, Any]) -> None:
    with path.open("wb") as f:
        pickle.dump(entry, f)


# --- splits and loaders (base.py, synthetic.py) --------------------------------------------------------------

def test_a_split_given_as_true_is_refused_and_zero_holds_out_no_image():
    # YAML's `true` is a bool, and a bool is an int: taken as a count it would hold out 1 image in silence.
    with pytest.raises(ConfigValueError, match="data.val_split must be a fraction in"):
        held_out_sizes({"data.val_split": True}, 100)
    # 0 is a valid count: no test images held out of the training set.
    assert held_out_sizes({"data.val_split": 0.25, "data.test_split": 0}, 100) == [25, 0]
    dm = SyntheticDataModule(num_images=20, image_size=4, val_split=5, test_split=0)
    dm.setup("fit")
    assert tuple(len(loaded(split)) for split in (dm.train_split, dm.val_split, dm.test_split)) == (15, 5, 0)


def test_synthetic_val_and_test_get_their_own_sizes_and_every_class_has_images():
    # Different val and test sizes tell the two held-out splits apart; labels must reach the last class too.
    dm = SyntheticDataModule(num_images=200, image_size=4, num_classes=4, val_split=10, test_split=30)
    dm.setup("fit")
    assert tuple(len(loaded(split)) for split in (dm.train_split, dm.val_split, dm.test_split)) == (160, 10, 30)
    labels = torch.cat([loaded(split).labels for split in (dm.train_split, dm.val_split, dm.test_split)])
    assert sorted(labels.unique().tolist()) == [0, 1, 2, 3]


def test_training_batches_are_shuffled_and_evaluation_batches_keep_every_image_at_eval_batch_size():
    # drop_last is for training only: a dropped val/test batch would leave images out of the accuracy.
    dm = SyntheticDataModule(num_images=40, image_size=4, val_split=10, test_split=6, batch_size=8,
                             eval_batch_size=4, drop_last=True)
    dm.setup("fit")
    torch.manual_seed(0)
    train = loader_indices(dm.train_dataloader())
    assert [len(b) for b in train] == [8, 8, 8]  # 24 training images: three full batches
    assert sorted(sum(train, [])) == list(range(24)) and sum(train, []) != list(range(24))
    assert loader_indices(dm.val_dataloader()) == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]
    assert loader_indices(dm.test_dataloader()) == [[0, 1, 2, 3], [4, 5]]


def test_each_split_has_its_own_identity_for_the_feature_cache():
    # The frozen-feature cache is keyed by this: val must never be served train's features.
    dm = SyntheticDataModule(num_images=30, image_size=4, val_split=6, test_split=6)
    dm.setup("fit")
    train, val, test = (dm.split_identity(name) for name in ("train", "val", "test"))
    assert (train[1], val[1], test[1]) == (18, 6, 6)
    assert len({train[0], val[0], test[0]}) == 3
    again = SyntheticDataModule(num_images=30, image_size=4, val_split=6, test_split=6)
    again.setup("fit")
    assert again.split_identity("val") == val  # same data, same key: the cache is reused


# --- image folders (folder.py) -------------------------------------------------------------------------------

def test_upper_case_extensions_from_cameras_are_read(tmp_path: Path):
    # Cameras and phones write IMG_0001.JPG: such files must be read, not skipped as "other types".
    root = write_image_folder(tmp_path / "d", classes=("cat", "dog"), per_class=2)
    Image.new("RGB", (8, 8), (10, 20, 30)).save(root / "train" / "cat" / "IMG_0001.JPG", format="JPEG")
    Image.new("RGB", (8, 8), (10, 20, 30)).save(root / "train" / "dog" / "SHOT.PNG", format="PNG")
    samples = scan_split(root / "train", ["cat", "dog"])
    assert [(path.name, label) for path, label in samples] == [
        ("000.jpg", 0), ("001.png", 0), ("IMG_0001.JPG", 0), ("000.jpg", 1), ("001.png", 1), ("SHOT.PNG", 1)]


def test_a_wide_image_is_resized_by_its_shorter_side_and_centre_cropped_not_squashed(tmp_path: Path):
    # 80x20 in bands of 20, 40 and 20 pixels (red, green, blue): resized to 40x10, the centre 10x10 is all green.
    pixels = np.zeros((20, 80, 3), dtype=np.uint8)
    pixels[:, :20, 0] = pixels[:, 20:60, 1] = pixels[:, 60:, 2] = 255
    Image.fromarray(pixels).save(tmp_path / "wide.png")
    image = decode_image_file(tmp_path / "wide.png", 10)
    assert image.shape == (3, 10, 10)
    assert image[1].min().item() >= 250 and image[0].max().item() <= 5 and image[2].max().item() <= 5


def test_32_bit_integer_values_outside_16_bits_are_clipped_not_wrapped(tmp_path: Path):
    # A 32-bit greyscale TIFF (Pillow mode I) is taken as 16-bit data: 70000 is white, -5 black.
    values = np.array([[70000, -5], [65535, 257 * 100]], dtype=np.int32)
    Image.fromarray(values).save(tmp_path / "deep.tif")
    assert Image.open(tmp_path / "deep.tif").mode == "I"
    image = decode_image_file(tmp_path / "deep.tif", 2)
    assert image[0].tolist() == [[255, 0], [255, 100]]


def test_a_train_folder_with_a_single_class_is_refused(tmp_path: Path):
    # One class is no classifier: it would train to 100% accuracy on nothing.
    root = write_image_folder(tmp_path / "d", classes=("cat",), per_class=2)
    with pytest.raises(DatasetNotFoundError) as error:
        ImageFolderDataModule(str(root)).setup("fit")
    assert f"{root / 'train'} has 1 class folder(s); a classifier needs at least two" in str(error.value)


def test_a_val_folder_with_class_folders_but_no_images_is_named(tmp_path: Path):
    # An empty val/ would otherwise validate on nothing, every epoch, in silence.
    root = write_image_folder(tmp_path / "d", classes=("cat", "dog"), per_class=2)
    (root / "val" / "cat").mkdir(parents=True)
    (root / "val" / "cat" / "notes.txt").write_text("no images here")
    with pytest.raises(DatasetNotFoundError) as error:
        ImageFolderDataModule(str(root)).setup("fit")
    assert str(error.value).startswith(f"{root / 'val'} has no image files (.bmp, ")


def test_a_cache_file_holding_another_number_of_images_is_decoded_afresh(tmp_path: Path):
    # The cache is trusted only if it holds one image per file: a truncated or foreign file is rebuilt.
    root = write_image_folder(tmp_path / "d", classes=("cat", "dog"), per_class=2, splits=("train", "val", "test"))
    cache = tmp_path / "cache"
    cache.mkdir()
    train_dir = root / "train"
    samples = scan_split(train_dir, ["cat", "dog"])
    key = cache_key(samples, root, 8)
    wrong = cache / f"folder-train-{cache_lineage(train_dir, 8)}-{key[:24]}.pt"
    torch.save({"images": torch.zeros(1, 3, 8, 8, dtype=torch.uint8), "labels": torch.zeros(1)}, wrong)
    dm = ImageFolderDataModule(str(root), image_size=8, cache_dir=str(cache))
    dm.setup("fit")
    train = loaded(dm.train_split)
    assert len(train) == 4 and train.labels.tolist() == [0, 0, 1, 1]
    assert train.images.float().mean() > 0  # decoded, not the cache's black image


# --- CIFAR-10 files (cifar10.py) ----------------------------------------------------------------------------

def test_the_official_python_2_pickled_files_are_read(tmp_path: Path):
    # The real files were written by Python 2: their byte strings (pixels above 127 included) need latin1.
    write_python2_cifar(tmp_path / "cifar-10-batches-py")
    dm = cifar(tmp_path, val_split=3)
    dm.setup("fit")
    assert dm.class_names == CIFAR_CLASSES
    assert tuple(len(loaded(split)) for split in (dm.train_split, dm.val_split, dm.test_split)) == (12, 3, 3)
    test = loaded(dm.test_split)
    assert test.labels.tolist() == [1, 2, 9] and test.images.min().item() >= 128


def test_a_batch_with_fine_labels_only_is_read_by_them(tmp_path: Path):
    # CIFAR-100's python-format batches name their labels fine_labels.
    batch_dir = tmp_path / "batches"
    batch_dir.mkdir()
    write_batch(batch_dir / "b", {"data": np.full((2, 3072), 7, dtype=np.uint8), "fine_labels": [3, 41]})
    split = read_cifar_batches(batch_dir, ["b"])
    assert split.labels.tolist() == [3, 41] and split.images.shape == (2, 3, 32, 32)


def test_a_batch_with_fewer_labels_than_images_is_named_with_how_to_replace_it(tmp_path: Path):
    # Otherwise a bare "one label per image" error, naming no file.
    root = write_cifar_batches(tmp_path / "cifar", per_batch=4, n_test=4)
    batch = root / "cifar-10-batches-py" / "data_batch_2"
    write_batch(batch, {"data": np.zeros((4, 3072), dtype=np.uint8), "labels": [0, 1, 2]})
    with pytest.raises(CorruptImageError) as error:
        cifar(root, val_split=2).setup("fit")
    message = str(error.value)
    assert message.startswith(f"{batch} is not a readable CIFAR-10 file ('data' has shape (4, 3072) and there are 3 labels")
    assert message.endswith(f"or replace it with the one in {ARCHIVE_NAME} ({ARCHIVE_URL}).")


def test_a_truncated_cifar_archive_is_named_with_where_to_get_it(tmp_path: Path):
    # A download cut short ends the gzip stream early (EOFError), not a tar error.
    source = write_cifar_batches(tmp_path / "src", per_batch=2, n_test=2)
    archive = tmp_path / "root" / ARCHIVE_NAME
    archive.parent.mkdir()
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(source / "cifar-10-batches-py", arcname="cifar-10-batches-py")
    archive.write_bytes(archive.read_bytes()[: archive.stat().st_size // 2])
    with pytest.raises(CorruptImageError) as error:
        cifar(archive.parent).prepare_data()
    message = str(error.value)
    assert message.startswith(f"{archive} is not a readable CIFAR-10 file (EOFError")
    assert message.endswith(f"or replace it with {ARCHIVE_URL}.")


def test_the_batch_folder_under_root_wins_over_stray_batch_files_beside_it(tmp_path: Path):
    # data.root's own batch files count only when it has no cifar-10-batches-py/ (it is that folder itself).
    root = write_cifar_batches(tmp_path / "cifar", per_batch=4, n_test=5)
    write_batch(root / "test_batch", {"data": np.zeros((1, 3072), dtype=np.uint8), "labels": [0]})
    dm = cifar(root, val_split=2)
    assert dm.batch_dir == root / "cifar-10-batches-py"
    dm.setup("fit")
    assert len(loaded(dm.test_split)) == 5


@pytest.mark.parametrize("spec", [2.5, 1.0, 5000.0, float("nan"), float("inf"), -1, -0.5, "0.1x", None])
def test_a_split_that_is_no_fraction_below_one_nor_a_whole_count_is_refused_by_name(spec: Any):
    # 2.5 was cut to 2 images in silence, 1.0 (all images, or one?) taken as one; nan, inf and a mistyped 0.1x
    # (text) raised errors naming no setting.
    with pytest.raises(ConfigValueError) as refused:
        held_out_sizes({"data.val_split": 0.1, "data.test_split": spec}, 100)
    assert str(refused.value) == ("data.test_split must be a fraction in [0, 1) such as 0.1, or a whole count of "
                                  f"images written without a decimal point such as 5000, got {spec!r}")


def test_a_split_is_a_fraction_below_one_or_a_whole_count():
    assert held_out_sizes({"data.val_split": 0.125, "data.test_split": 0.0}, 80) == [10, 0]
    assert held_out_sizes({"data.val_split": 5000, "data.test_split": 1}, 50000) == [5000, 1]
