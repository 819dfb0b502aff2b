"""Random images of CIFAR-10's shape, generated in memory: benchmarks and smoke tests without files."""

from __future__ import annotations

import torch

from cnnlab.data.augment import RandomBatchAugment
from cnnlab.data.base import ImageSplit, InMemoryImageDataModule, held_out_sizes, seeded_split


class SyntheticDataModule(InMemoryImageDataModule):
    """``num_images`` random uint8 images with random labels, split into train/val/test by seed.

    Args:
        num_images: images in all (CIFAR-10's training set has 50,000).
        image_size: side of the square images.
        num_classes: number of classes.
        val_split, test_split: held-out images (count or fraction).
        seed: seed of the images, labels and split.
        **kwargs: batch sizes and augmentation (see InMemoryImageDataModule).
    """

    def __init__(
        self,
        augment: RandomBatchAugment | None = None,
        num_images: int = 50_000,
        image_size: int = 32,
        num_classes: int = 10,
        val_split: float | int = 5000,
        test_split: float | int = 5000,
        seed: int = 0,
        **kwargs,
    ) -> None:
        super().__init__(augment=augment, **kwargs)
        self.num_images = num_images
        self.image_size = image_size
        self._num_classes = num_classes
        self.val_held_out = val_split  # self.val_split is the loaded split (InMemoryImageDataModule)
        self.test_held_out = test_split
        self.seed = seed

    @property
    def class_names(self) -> list[str]:
        return [f"class_{i}" for i in range(self._num_classes)]

    def load_splits(self) -> tuple[ImageSplit, ImageSplit, ImageSplit]:
        sizes = held_out_sizes({"data.val_split": self.val_held_out, "data.test_split": self.test_held_out}, self.num_images)
        generator = torch.Generator().manual_seed(self.seed)
        shape = (self.num_images, 3, self.image_size, self.image_size)
        images = torch.randint(0, 256, shape, dtype=torch.uint8, generator=generator)
        labels = torch.randint(0, self._num_classes, (self.num_images,), generator=generator)
        full = ImageSplit(images, labels)
        val, test, train = seeded_split(self.num_images, sizes, self.seed)
        return full.subset(train), full.subset(val), full.subset(test)
