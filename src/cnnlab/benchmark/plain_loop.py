"""The reference: the tutorial's plain PyTorch training loop, written out as it is usually taught.

A torchvision dataset yields one PIL image at a time, per-image transforms (random crop with
padding 4, horizontal flip, ToTensor, Normalize) run in ``num_workers`` DataLoader processes,
and the loop moves each float batch to the device. Only the timing around it is ours.
"""

from __future__ import annotations

import torch
import torchvision
import torchvision.transforms as T
from PIL import Image
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset

from cnnlab.benchmark.measure import StepTimer
from cnnlab.data.base import InMemoryImageDataModule
from cnnlab.data.cifar10 import CIFAR10DataModule
from cnnlab.data.folder import ImageFolderDataModule


def tutorial_transform(image_size: int) -> T.Compose:
    """The tutorial's training transforms."""
    return T.Compose(
        [
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


def reference_datasets(datamodule: InMemoryImageDataModule, image_size: int) -> dict[str, Dataset]:
    """The tutorial's datasets for the same data: from the files where there are files, and from memory."""
    transform = tutorial_transform(image_size)
    datasets: dict[str, Dataset] = {}
    if isinstance(datamodule, ImageFolderDataModule):
        datasets["plain loop (ImageFolder, JPEG decode per image)"] = torchvision.datasets.ImageFolder(
            str(datamodule.train_dir), transform=transform
        )
    if isinstance(datamodule, CIFAR10DataModule):
        datasets["plain loop (torchvision CIFAR10)"] = torchvision.datasets.CIFAR10(
            str(datamodule.root), train=True, transform=transform, download=False
        )
    else:
        split = datamodule.train_split
        assert split is not None
        datasets["plain loop (in-memory PIL, like CIFAR10)"] = InMemoryPILDataset(split.images, split.labels, transform)
    return datasets


def run_plain_loop(
    net: nn.Module,
    dataset: Dataset,
    device: torch.device,
    timer: StepTimer,
    num_workers: int = 2,
    lr: float = 1e-3,
) -> None:
    """Train ``net`` on ``dataset`` the tutorial's way until ``timer``'s window is measured."""
    loader = DataLoader(dataset, batch_size=timer.batch_size, shuffle=True, num_workers=num_workers, drop_last=True)
    criterion = nn.CrossEntropyLoss()
    optimizer = torch.optim.Adam(net.parameters(), lr=lr)
    net.to(device).train()
    while not timer.done:
        for images, labels in loader:
            timer.tick()
            if timer.done:
                break
            images, labels = images.to(device), labels.to(device)
            optimizer.zero_grad()
            loss = criterion(net(images), labels)
            loss.backward()
            optimizer.step()


