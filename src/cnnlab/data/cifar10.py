"""CIFAR-10 from the official python-format archive, held in memory as uint8 tensors."""

from __future__ import annotations

import logging
import pickle
from pathlib import Path

import numpy as np
import torch
import torchvision
from torchvision.datasets.utils import extract_archive
from torchvision.transforms.v2 import functional as TF

from cnnlab.data.augment import RandomBatchAugment
from cnnlab.data.base import ImageSplit, InMemoryImageDataModule, held_out_sizes, seeded_split
from cnnlab.errors import DatasetNotFoundError

log = logging.getLogger(__name__)

ARCHIVE_NAME = "cifar-10-python.tar.gz"
ARCHIVE_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
BATCHES_DIR = "cifar-10-batches-py"
TRAIN_BATCHES = [f"data_batch_{i}" for i in range(1, 6)]
TEST_BATCH = "test_batch"
META_FILE = "batches.meta"
CLASS_NAMES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


def _read_batch(path: Path) -> tuple[np.ndarray, list[int]]:
    with path.open("rb") as f:
        entry = pickle.load(f, encoding="latin1")
    labels = entry.get("labels", entry.get("fine_labels"))
    return np.asarray(entry["data"], dtype=np.uint8).reshape(-1, 3, 32, 32), list(labels)


def read_cifar_batches(batch_dir: Path, names: list[str]) -> ImageSplit:
    """Read CIFAR python-format batch files into one uint8 split."""
    images, labels = zip(*(_read_batch(batch_dir / name) for name in names), strict=True)
    return ImageSplit(torch.from_numpy(np.concatenate(images)), torch.tensor(sum(labels, [])))


def resize_split(split: ImageSplit, size: int) -> ImageSplit:
    """Resize every image of a split once (antialiased bilinear), keeping uint8."""
    return ImageSplit(TF.resize(split.images, [size, size], antialias=True), split.labels)


class CIFAR10DataModule(InMemoryImageDataModule):
    """CIFAR-10: 50,000 training images split into train/val by seed, and the 10,000 test images.

    Args:
        root: folder holding ``cifar-10-batches-py/`` or ``cifar-10-python.tar.gz``.
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
        self.download = download
        self.image_size = image_size
        self.val_split = val_split
        self.split_seed = split_seed

    @property
    def batch_dir(self) -> Path:
        return self.root / BATCHES_DIR

    @property
    def class_names(self) -> list[str]:
        meta = self.batch_dir / META_FILE
        if meta.is_file():
            with meta.open("rb") as f:
                return list(pickle.load(f, encoding="latin1")["label_names"])
        return list(CLASS_NAMES)

    def _batches_present(self) -> bool:
        return all((self.batch_dir / name).is_file() for name in [*TRAIN_BATCHES, TEST_BATCH])

    def prepare_data(self) -> None:
        if self._batches_present():
            return
        archive = self.root / ARCHIVE_NAME
        if archive.is_file():
            log.info("extracting %s", archive)
            extract_archive(str(archive), str(self.root))
            if self._batches_present():
                return
        if self.download:
            try:
                torchvision.datasets.CIFAR10(str(self.root), train=True, download=True)
                return
            except Exception as error:  # noqa: BLE001 - any failure here means "not available"
                reason = f"the download failed ({type(error).__name__}: {error})"
        else:
            reason = "data.download is false"
        raise DatasetNotFoundError(
            f"CIFAR-10 is not in {self.root} and {reason}.\n"
            f"Fix it one of these ways:\n"
            f"  - put {ARCHIVE_NAME} (from {ARCHIVE_URL}) into {self.root}/\n"
            f"  - or put its extracted folder {BATCHES_DIR}/ (data_batch_1..5, test_batch, "
            f"batches.meta) into {self.root}/\n"
            f"  - or point data.root=... at a folder that has either of them\n"
            f"  - or train on your own images: data=folder data.root=DIR (DIR/train/<class>/*.jpg)"
        )

    def load_splits(self) -> tuple[ImageSplit, ImageSplit, ImageSplit]:
        self.prepare_data()
        full_train = read_cifar_batches(self.batch_dir, TRAIN_BATCHES)
        test = read_cifar_batches(self.batch_dir, [TEST_BATCH])
        if self.image_size != 32:
            full_train, test = (resize_split(s, self.image_size) for s in (full_train, test))
        n_val = held_out_sizes({"data.val_split": self.val_split}, len(full_train))
        val_index, train_index = seeded_split(len(full_train), n_val, self.split_seed)
        return full_train.subset(train_index), full_train.subset(val_index), test
