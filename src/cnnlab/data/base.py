"""The in-memory data module every dataset in cnnlab builds on.

A dataset is decoded once into uint8 tensors (N, C, H, W) that stay in host memory. A batch
is one indexing operation on those tensors; it travels to the device as uint8 (4x less
traffic than float32) and is augmented there, in ``on_after_batch_transfer``. The model then
normalises it on the same device as the first step of its forward pass.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, NamedTuple, cast

import lightning as L
import torch
from lightning.pytorch.accelerators import CUDAAccelerator
from lightning.pytorch.overrides.distributed import UnrepeatedDistributedSampler
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, Sampler

from cnnlab.data.augment import RandomBatchAugment
from cnnlab.errors import ConfigValueError
from cnnlab.utils.config import ensure_count, ensure_switch, is_count
from cnnlab.utils.fingerprint import tensor_fingerprint

log = logging.getLogger(__name__)


class Batch(NamedTuple):
    """A batch: uint8 images (N, C, H, W), integer labels (N), and each sample's index in its split (N)."""

    images: Tensor
    labels: Tensor
    indices: Tensor


@dataclass
class ImageSplit:
    """Images (uint8, N x C x H x W) and integer labels (N) of one split."""

    images: Tensor
    labels: Tensor

    def __post_init__(self) -> None:
        if self.images.dtype != torch.uint8 or self.images.ndim != 4:
            raise ValueError(f"images must be a uint8 (N, C, H, W) tensor, got {self.images.dtype} {tuple(self.images.shape)}")
        if self.labels.shape != (self.images.shape[0],):
            raise ValueError("there must be exactly one label per image")
        self.labels = self.labels.long()

    def __len__(self) -> int:
        return self.images.shape[0]

    def subset(self, indices: Tensor) -> ImageSplit:
        return ImageSplit(self.images[indices], self.labels[indices])


class TensorBatchDataset(Dataset[Batch]):
    """A map-style dataset over in-memory tensors that hands out whole batches at once.

    ``DataLoader`` calls ``__getitems__`` with a batch's indices when a dataset defines it, so a
    batch costs one gather instead of ``batch_size`` item lookups and a ``torch.stack``.
    Samplers (shuffling, Lightning's ``DistributedSampler``) work as with any dataset.
    """

    def __init__(self, split: ImageSplit) -> None:
        self.images = split.images
        self.labels = split.labels

    def __len__(self) -> int:
        return self.images.shape[0]

    def __getitem__(self, index: int) -> Batch:
        return Batch(self.images[index], self.labels[index], torch.tensor(index))

    def __getitems__(self, indices: list[int]) -> Batch:
        index = torch.as_tensor(indices, dtype=torch.long, device=self.images.device)
        # index_select copies whole rows; indexing with a tensor goes element by element (7x
        # slower for a batch of 64 CIFAR images on a CPU).
        return Batch(self.images.index_select(0, index), self.labels.index_select(0, index), index)


def keep_batch(batch: Batch) -> Batch:
    """Collate function for :class:`TensorBatchDataset`: its batches arrive already stacked."""
    return batch


def seeded_split(n: int, sizes: list[int], seed: int) -> list[Tensor]:
    """Split ``range(n)`` into disjoint random index sets of the given sizes (rest goes last).

    The permutation comes from its own generator, so the split depends on ``seed`` alone and
    not on the training seed: evaluation later rebuilds exactly the same held-out set.
    """
    if sum(sizes) > n:
        raise ValueError(f"cannot take {sizes} samples out of {n}")
    permutation = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    parts, start = [], 0
    for size in sizes:
        parts.append(permutation[start : start + size])
        start += size
    parts.append(permutation[start:])
    return parts


def split_size(spec: object, total: int, name: str) -> int:
    """Turn a split spec (a fraction in [0, 1) such as ``0.1``, or a count such as ``5000``) into a number of samples.

    Raises:
        ConfigValueError: naming ``name``, for anything else: a negative number, ``true``, ``nan``,
            a mistyped ``0.1x`` (which arrives as text), or a decimal of 1 or more (``2.5``; and
            ``1.0``, which could mean one image or all of them).
    """
    if is_count(spec):
        assert isinstance(spec, int)  # is_count says so; for mypy
        return spec
    if isinstance(spec, float) and 0 <= spec < 1:
        return int(round(spec * total))
    raise ConfigValueError(f"{name} must be a fraction in [0, 1) such as 0.1, or a whole count of images "
                           f"written without a decimal point such as 5000, got {spec!r}")


def held_out_sizes(specs: dict[str, object], total: int) -> list[int]:
    """The sizes of held-out splits taken out of ``total`` training images, in the order of ``specs``.

    ``specs`` maps each setting's name (``data.val_split``) to its value (a fraction or a
    count). The splits are checked together, not one by one: two that are each fine alone
    can still leave nothing to train on.

    Raises:
        ConfigValueError: a spec is invalid, or the splits together leave no training image.
    """
    sizes = [split_size(spec, total, name) for name, spec in specs.items()]
    if total - sum(sizes) < 1:
        taken = " and ".join(f"{name}={spec} ({size} images)" for (name, spec), size in zip(specs.items(), sizes, strict=True))
        raise ConfigValueError(
            f"{taken} hold out {sum(sizes)} of the {total} images available, leaving none to train on; "
            f"at least one training batch must remain. Lower {' and/or '.join(specs)} (a fraction below 1 "
            f"or a count) so that together they take fewer than {total} images."
        )
    return sizes


class InMemoryImageDataModule(L.LightningDataModule):
    """Base data module: uint8 splits in memory, augmentation on the device.

    Subclasses implement :meth:`load_splits` (returning train, val, test) and
    :attr:`class_names`.

    Args:
        batch_size: training batch size (per device).
        eval_batch_size: batch size for validation and test; defaults to ``batch_size``.
        augment: the training augmentation, or None for none.
        num_workers: DataLoader worker processes. Batches are single tensor gathers, so 0
            (gathering in the main process) is the fastest choice on one device.
        drop_last: drop the last incomplete training batch.
        device_resident: on a GPU, move the whole uint8 dataset to the device once (CIFAR-10's
            50,000 images are 150 MB) and gather batches there: no host-to-device copies at all.
    """

    def __init__(
        self,
        augment: RandomBatchAugment | None = None,
        batch_size: int = 64,
        eval_batch_size: int | None = None,
        num_workers: int = 0,
        drop_last: bool = False,
        device_resident: bool = False,
    ) -> None:
        super().__init__()
        ensure_count(batch_size, "data.batch_size")
        if eval_batch_size is not None:
            ensure_count(eval_batch_size, "data.eval_batch_size")
        self.augment = augment
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size or batch_size
        self.num_workers = num_workers
        self.drop_last = ensure_switch(drop_last, "data.drop_last")
        self.device_resident = ensure_switch(device_resident, "data.device_resident")
        self.train_split: ImageSplit | None = None
        self.val_split: ImageSplit | None = None
        self.test_split: ImageSplit | None = None
        self._fingerprints: dict[str, str] = {}

    # --- what a subclass provides -------------------------------------------------------
    @property
    def class_names(self) -> list[str]:
        raise NotImplementedError

    def load_splits(self) -> tuple[ImageSplit, ImageSplit, ImageSplit]:
        """Return the (train, val, test) splits as uint8 tensors."""
        raise NotImplementedError

    # --- Lightning hooks -------------------------------------------------------------------
    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def split_identity(self, name: str) -> tuple[str, int]:
        """(fingerprint of the split's images and labels, its length) for ``train``/``val``/``test``.

        Caches of per-sample results (the frozen-feature cache) are keyed by this, so they are
        never reused for other data.
        """
        split = {"train": self.train_split, "val": self.val_split, "test": self.test_split}[name]
        if split is None:
            raise RuntimeError("the data module is not set up; call setup() first")
        if name not in self._fingerprints:
            self._fingerprints[name] = tensor_fingerprint(split.images, split.labels)
        return self._fingerprints[name], len(split)

    def setup(self, stage: str | None = None) -> None:
        if self.train_split is None:
            self.train_split, self.val_split, self.test_split = self.load_splits()
            log.info(
                "data: %d train, %d val, %d test images of shape %s, %d classes",
                len(self.train_split),
                len(self.val_split),
                len(self.test_split),
                tuple(self.train_split.images.shape[1:]),
                self.num_classes,
            )
        if stage in (None, "fit"):
            self._ensure_a_training_batch()

    def _ensure_a_training_batch(self) -> None:
        """Refuse a ``drop_last`` batch size larger than the training set: it would train 0 steps in silence."""
        assert self.train_split is not None
        if not self.drop_last:
            return
        # Under DDP each process draws ceil(n / world_size) samples and drops its own last batch.
        world_size = self.trainer.world_size if self.trainer is not None else 1
        per_process = math.ceil(len(self.train_split) / world_size)
        if per_process < self.batch_size:
            share = f" ({per_process} per process over {world_size} processes)" if world_size > 1 else ""
            raise ConfigValueError(
                f"data.drop_last=true drops every incomplete training batch, and the training set has "
                f"{len(self.train_split)} images{share}, fewer than data.batch_size={self.batch_size}: no training "
                f"step would run. Set data.batch_size={per_process} or lower, or data.drop_last=false."
            )

    def _loader(self, split: ImageSplit | None, train: bool) -> DataLoader:
        if split is None:
            raise RuntimeError("the data module is not set up; call setup() first")
        trainer = self.trainer
        on_gpu = trainer is not None and isinstance(trainer.accelerator, CUDAAccelerator)
        if trainer is not None and on_gpu and self.device_resident:
            device = trainer.strategy.root_device
            if split.images.device != device:
                split.images, split.labels = split.images.to(device), split.labels.to(device)
            if self.num_workers:
                raise ValueError("data.device_resident=true gathers batches on the GPU; set data.num_workers=0")
        dataset = TensorBatchDataset(split)
        sampler = None if train else self._evaluation_sampler(dataset)
        return DataLoader(
            dataset,
            batch_size=self.batch_size if train else self.eval_batch_size,
            shuffle=train,
            sampler=sampler,
            drop_last=self.drop_last and train,
            num_workers=self.num_workers,
            # DataLoader hands collate_fn what __getitems__ returns (a Batch), not the list of
            # items its type hint expects.
            collate_fn=cast(Callable[[list[Any]], Any], keep_batch),
            pin_memory=on_gpu and not self.device_resident,
            persistent_workers=self.num_workers > 0,
        )

    def _evaluation_sampler(self, dataset: Dataset) -> Sampler | None:
        """Under DDP, each validation/test image goes to exactly one process.

        Lightning's default DistributedSampler pads a split with repeated images until every
        process has as many; the repeats would count twice in val/test accuracy. Training keeps
        Lightning's sampler: every process must take the same number of steps.
        """
        trainer = self.trainer
        if trainer is None or trainer.world_size <= 1:
            return None
        return UnrepeatedDistributedSampler(dataset, num_replicas=trainer.world_size, rank=trainer.global_rank, shuffle=False)

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.train_split, train=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.val_split, train=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader(self.test_split, train=False)

    def transfer_batch_to_device(self, batch: Any, device: torch.device, dataloader_idx: int) -> Any:
        """Move a :class:`Batch`'s three tensors to ``device``, or pass it through if it is there already."""
        # Lightning's default walks any collection looking for tensors, about 20 µs a step on a
        # 2-core CPU; a Batch's layout is known, and CPU batches and device-resident GPU data
        # need no move at all.
        if not isinstance(batch, Batch):
            return super().transfer_batch_to_device(batch, device, dataloader_idx)
        if batch.images.device == device:
            return batch
        non_blocking = device.type == "cuda"  # from pinned host memory, overlapping the copy with the step
        return Batch(*(tensor.to(device, non_blocking=non_blocking) for tensor in batch))

    def on_after_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        if not isinstance(batch, Batch):  # the model summary's example images (ImageClassifier.setup)
            return batch
        training = self.trainer is not None and self.trainer.training
        return batch._replace(images=self.transform(batch.images, train=training))

    def transform(self, images: Tensor, train: bool = False) -> Tensor:
        """Augment a uint8 batch (if ``train``) on whatever device it is on.

        Returns floats in [0, 1] when augmented, else the uint8 batch unchanged; the model
        normalises either.
        """
        if train and self.augment is not None:
            # The data module is no nn.Module, so Lightning does not move this one; after the
            # first batch this is a no-op.
            return self.augment.to(images.device)(images)
        return images
