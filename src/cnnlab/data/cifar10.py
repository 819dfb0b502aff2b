"""CIFAR-10 from the official python-format archive, held in memory as uint8 tensors."""

from __future__ import annotations

import logging
import pickle
import tarfile
import zlib
from pathlib import Path

import numpy as np
import torch
import torchvision
from torchvision.datasets.utils import extract_archive
from torchvision.transforms.v2 import functional as TF

from cnnlab.data.augment import RandomBatchAugment
from cnnlab.data.base import ImageSplit, InMemoryImageDataModule, held_out_sizes, seeded_split
from cnnlab.errors import CorruptImageError, DatasetNotFoundError
from cnnlab.utils.config import ensure_switch

log = logging.getLogger(__name__)

ARCHIVE_NAME = "cifar-10-python.tar.gz"
ARCHIVE_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
BATCHES_DIR = "cifar-10-batches-py"
TRAIN_BATCHES = [f"data_batch_{i}" for i in range(1, 6)]
TEST_BATCH = "test_batch"
META_FILE = "batches.meta"
CLASS_NAMES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
IMAGE_BYTES = 3 * 32 * 32


def corrupt_file_error(path: Path, problem: str) -> CorruptImageError:
    """The error for a CIFAR-10 file that is there but unreadable: it names the file and how to get a good copy."""
    source = ARCHIVE_URL if path.name == ARCHIVE_NAME else f"the one in {ARCHIVE_NAME} ({ARCHIVE_URL})"
    return CorruptImageError(
        f"{path} is not a readable CIFAR-10 file ({problem}).\n"
        f"Delete it and run again with data.download=true to fetch a fresh copy, or replace it with {source}."
    )


def _unpickle(path: Path) -> dict:
    # The official python-format files are pickles of a dict, written by Python 2: latin1
    # reads their byte strings. They are trusted as the data the user chose to train on.
    try:
        with path.open("rb") as f:
            entry = pickle.load(f, encoding="latin1")
    except Exception as error:  # noqa: BLE001 - unpickling damaged bytes can raise almost any error
        raise corrupt_file_error(path, f"{type(error).__name__}: {error}") from error
    if not isinstance(entry, dict):
        raise corrupt_file_error(path, f"it holds a {type(entry).__name__}, not a dict")
    return entry


def _read_batch(path: Path) -> tuple[np.ndarray, list[int]]:
    entry = _unpickle(path)
    data, labels = entry.get("data"), entry.get("labels", entry.get("fine_labels"))
    if data is None or labels is None:
        raise corrupt_file_error(path, f"no 'data' or 'labels' in it, only {sorted(map(str, entry))}")
    data = np.asarray(data)
    if data.ndim != 2 or data.shape[1] != IMAGE_BYTES or len(labels) != len(data):
        raise corrupt_file_error(
            path, f"'data' has shape {data.shape} and there are {len(labels)} labels; a batch holds N images "
                  f"of {IMAGE_BYTES} bytes (3x32x32) as an (N, {IMAGE_BYTES}) array and N labels"
        )
    return data.astype(np.uint8, copy=False).reshape(-1, 3, 32, 32), list(labels)


def read_cifar_batches(batch_dir: Path, names: list[str]) -> ImageSplit:
    """Read CIFAR python-format batch files into one uint8 split.

    Raises :class:`CorruptImageError` naming a file that is not a readable batch.
    """
    images, labels = zip(*(_read_batch(batch_dir / name) for name in names), strict=True)
    return ImageSplit(torch.from_numpy(np.concatenate(images)), torch.tensor(sum(labels, [])))


def resize_split(split: ImageSplit, size: int) -> ImageSplit:
    """Resize every image of a split once (antialiased bilinear), keeping uint8."""
    return ImageSplit(TF.resize(split.images, [size, size], antialias=True), split.labels)


class CIFAR10DataModule(InMemoryImageDataModule):
    """CIFAR-10: 50,000 training images split into train/val by seed, and the 10,000 test images.

    Args:
        root: folder holding ``cifar-10-batches-py/`` or ``cifar-10-python.tar.gz``, or that
            ``cifar-10-batches-py/`` folder itself.
        download: fetch the archive with torchvision when neither is there.
        image_size: side the images are resized to once at load (CIFAR's own is 32).
        val_split: images held out of the training set for validation (count or fraction).
        split_seed: seed of the train/val split, independent of the training seed.
        **kwargs: batch sizes and augmentation (see InMemoryImageDataModule).
    """

    def __init__(
        self,
        root: str,
        augment: RandomBatchAugment | None = None,
        download: bool = True,
        image_size: int = 32,
        val_split: float | int = 5000,
        split_seed: int = 0,
        **kwargs,
    ) -> None:
        super().__init__(augment=augment, **kwargs)
        self.root = Path(root).expanduser()
        self.download = ensure_switch(download, "data.download")
        self.image_size = image_size
        self.val_held_out = val_split  # self.val_split is the loaded split (InMemoryImageDataModule)
        self.split_seed = split_seed

    @property
    def batch_dir(self) -> Path:
        """``root/cifar-10-batches-py``, or ``root`` itself when data.root points at that folder (it holds batch files)."""
        nested = self.root / BATCHES_DIR
        if not nested.is_dir() and any((self.root / name).is_file() for name in [*TRAIN_BATCHES, TEST_BATCH]):
            return self.root
        return nested

    @property
    def class_names(self) -> list[str]:
        meta = self.batch_dir / META_FILE
        if meta.is_file():
            entry = _unpickle(meta)
            if "label_names" not in entry:
                raise corrupt_file_error(meta, f"no 'label_names' in it, only {sorted(map(str, entry))}")
            return list(entry["label_names"])
        return list(CLASS_NAMES)

    def _missing_batches(self) -> list[str]:
        return [name for name in [*TRAIN_BATCHES, TEST_BATCH] if not (self.batch_dir / name).is_file()]

    def prepare_data(self) -> None:
        missing = self._missing_batches()
        if not missing:
            return
        if self.batch_dir == self.root:
            # data.root is the batch folder itself: extracting or downloading into it would nest a second copy.
            raise DatasetNotFoundError(
                f"{self.root} holds CIFAR-10 batch files but lacks {', '.join(missing)}.\n"
                f"Put the missing file(s) there (from {ARCHIVE_NAME}, {ARCHIVE_URL}), or set "
                f"data.root={self.root.parent} data.download=true to fetch a complete copy into "
                f"{self.root.parent / BATCHES_DIR}/"
            )
        archive = self.root / ARCHIVE_NAME
        if archive.is_file():
            log.info("extracting %s", archive)
            try:
                extract_archive(str(archive), str(self.root))
            except (tarfile.TarError, OSError, EOFError, zlib.error) as error:
                raise corrupt_file_error(archive, f"{type(error).__name__}: {error}") from error
            missing = self._missing_batches()
            if not missing:
                return
        if self.download:
            try:
                torchvision.datasets.CIFAR10(str(self.root), train=True, download=True)
                return
            except Exception as error:  # noqa: BLE001 - any failure here means "not available"
                reason = f"the download failed ({type(error).__name__}: {error})"
        else:
            reason = "data.download is false"
        where = (f"{self.batch_dir} lacks {', '.join(missing)}" if self.batch_dir.is_dir()
                 else f"CIFAR-10 is not in {self.root}")
        raise DatasetNotFoundError(
            f"{where} and {reason}.\n"
            f"Fix it one of these ways:\n"
            f"  - put {ARCHIVE_NAME} (from {ARCHIVE_URL}) into {self.root}/\n"
            f"  - or put its extracted folder {BATCHES_DIR}/ (data_batch_1..5, test_batch, "
            f"batches.meta) into {self.root}/\n"
            f"  - or point data.root=... at a folder that has either of them, or at {BATCHES_DIR}/ itself\n"
            f"  - or train on your own images: data=folder data.root=DIR (DIR/train/<class>/*.jpg)"
        )

    def load_splits(self) -> tuple[ImageSplit, ImageSplit, ImageSplit]:
        self.prepare_data()
        full_train = read_cifar_batches(self.batch_dir, TRAIN_BATCHES)
        test = read_cifar_batches(self.batch_dir, [TEST_BATCH])
        if self.image_size != 32:
            full_train, test = (resize_split(s, self.image_size) for s in (full_train, test))
        n_val = held_out_sizes({"data.val_split": self.val_held_out}, len(full_train))
        val_index, train_index = seeded_split(len(full_train), n_val, self.split_seed)
        return full_train.subset(train_index), full_train.subset(val_index), test
