"""The reference: the tutorial's plain PyTorch training loop, written out as it is usually taught.

A torchvision dataset yields one PIL image at a time, per-image transforms (on folder data a
resize to the data module's image size first; random crop with padding 4, horizontal flip,
ToTensor, Normalize) run in ``num_workers`` DataLoader processes,
and the loop moves each float batch to the device. Only the timing around it is ours.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

import torch
import torchvision
import torchvision.transforms as T
from PIL import Image
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset

from cnnlab.data.base import InMemoryImageDataModule
from cnnlab.data.cifar10 import CIFAR10DataModule
from cnnlab.data.folder import ImageFolderDataModule, image_files, list_class_dirs

log = logging.getLogger(__name__)


class ResizeUnlessSized:
    """Shorter side resized to ``size``, then a centre crop, as the folder data module decodes
    each file (:func:`cnnlab.data.folder.decode_image_file`), so the plain loop crops and flips
    the same view of every image.

    An image already ``size`` x ``size`` passes untouched, as there: torchvision's ``Resize``
    returns it as it is, but ``CenterCrop`` copies it, work the tutorial's loop on such files
    (CIFAR-10's JPEGs) does not do and the README's figures were measured without.
    """

    def __init__(self, size: int) -> None:
        self.size = size
        self.resize = T.Compose([T.Resize(size), T.CenterCrop(size)])

    def __call__(self, image: Image.Image) -> Image.Image:
        return image if image.size == (self.size, self.size) else self.resize(image)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(size={self.size})"


def tutorial_transform(image_size: int, resize: bool = False) -> T.Compose:
    """The tutorial's training transforms; with ``resize``, first to ``image_size`` (for files of any size)."""
    return T.Compose(
        [
            *([ResizeUnlessSized(image_size)] if resize else []),
            T.RandomCrop(image_size, padding=4),
            T.RandomHorizontalFlip(),
            T.ToTensor(),
            T.Normalize((0.5, 0.5, 0.5), (0.5, 0.5, 0.5)),
        ]
    )


class InMemoryPILDataset(Dataset):
    """uint8 image tensors served one PIL image at a time, as torchvision's CIFAR10 dataset does."""

    def __init__(self, images: Tensor, labels: Tensor, transform: T.Compose) -> None:
        self.images = images.permute(0, 2, 3, 1).contiguous().numpy()  # N, H, W, C like CIFAR10.data
        self.labels = labels.tolist()
        self.transform = transform

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> tuple[Tensor, int]:
        return self.transform(Image.fromarray(self.images[index])), self.labels[index]


class FolderAsDataModuleReads(torchvision.datasets.ImageFolder):
    """torchvision's ImageFolder over the classes and files the folder data module reads.

    ImageFolder's own rules differ: it takes hidden folders (``.ipynb_checkpoints``) as
    classes, reads thumbnail folders inside a class (``@eaDir``) and skips ``.gif``, so on some
    folders it would fail, or time other images with other labels, where the data module is fine.
    """

    def __init__(self, root: str, transform: T.Compose) -> None:
        super().__init__(root, transform=transform)  # the files come from make_dataset below, not ImageFolder's filters

    def find_classes(self, directory: str) -> tuple[list[str], dict[str, int]]:
        names = list_class_dirs(Path(directory))
        return names, {name: label for label, name in enumerate(names)}

    @staticmethod
    def make_dataset(directory: str | Path, class_to_idx: dict[str, int], extensions: tuple[str, ...] | None = None,
                     is_valid_file: Callable[[str], bool] | None = None, allow_empty: bool = False) -> list[tuple[str, int]]:
        # The data module's own file listing, which leaves out thumbnail and resource-fork folders.
        return [(str(path), label) for name, label in class_to_idx.items() for path in image_files(Path(directory) / name)]


def reference_datasets(datamodule: InMemoryImageDataModule, image_size: int) -> dict[str, Dataset]:
    """The tutorial's datasets for the same data: from the files where there are files, and from memory."""
    transform = tutorial_transform(image_size)
    datasets: dict[str, Dataset] = {}
    if isinstance(datamodule, ImageFolderDataModule):
        datasets["plain loop (ImageFolder, JPEG decode per image)"] = FolderAsDataModuleReads(
            str(datamodule.train_dir), tutorial_transform(image_size, resize=True))
    if isinstance(datamodule, CIFAR10DataModule):
        # torchvision wants the folder holding cifar-10-batches-py; data.root may be that folder itself.
        holder = datamodule.batch_dir.parent
        try:
            datasets["plain loop (torchvision CIFAR10)"] = torchvision.datasets.CIFAR10(
                str(holder), train=True, transform=transform, download=False
            )
            return datasets
        except RuntimeError as error:
            # It checks each file's MD5 against the official archive's, so it refuses copies that
            # the data module reads fine (re-pickled or test data); the same images from memory
            # still time the tutorial's per-image PIL path.
            log.warning("torchvision's CIFAR10 refuses %s (%s); the plain loop reads the same images "
                        "from memory instead", holder, error)
    split = datamodule.train_split
    assert split is not None
    datasets["plain loop (in-memory PIL, like CIFAR10)"] = InMemoryPILDataset(split.images, split.labels, transform)
    return datasets


class PlainLoop:
    """The tutorial's training loop, one step per :meth:`step` call, so the benchmark can time
    windows of it between the other paths' windows.

    Its iterator runs on across calls; at the end of an epoch it starts a new one, with new
    worker processes, as the tutorial's ``for images, labels in loader`` does.
    """

    def __init__(self, net: nn.Module, dataset: Dataset, device: torch.device, batch_size: int = 64,
                 num_workers: int = 2, lr: float = 1e-3) -> None:
        self.loader = DataLoader(dataset, batch_size=batch_size, shuffle=True, num_workers=num_workers, drop_last=True)
        self.device = device
        self.net = net.to(device).train()
        self.criterion = nn.CrossEntropyLoss()
        self.optimizer = torch.optim.Adam(self.net.parameters(), lr=lr)
        self._batches = iter(self.loader)

    def step(self) -> int:
        """One training step on the next batch; returns its size."""
        try:
            images, labels = next(self._batches)
        except StopIteration:
            self._batches = iter(self.loader)
            images, labels = next(self._batches)
        images, labels = images.to(self.device), labels.to(self.device)
        self.optimizer.zero_grad()
        loss = self.criterion(self.net(images), labels)
        loss.backward()
        self.optimizer.step()
        return len(labels)
