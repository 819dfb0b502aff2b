"""Frozen-backbone features computed once per image, for training a head on them (linear probe).

With the backbone frozen and no training augmentation, an image's features never change, so
every epoch after the first can skip the backbone entirely. Features are stored per split
(train/val/test) by the sample's index in that split. Each split's store is keyed by the
backbone's weights, its input size, the autocast precision the features are computed under
and a fingerprint of the split's images, so a store is never served for other weights, another
precision or other data; complete stores can be kept on disk. A stored file that cannot be read
is only a lost cache: its features are computed again and the file is rewritten.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable
from pathlib import Path

import torch
from torch import Tensor, nn

from cnnlab.utils.fingerprint import tensor_fingerprint
from cnnlab.utils.io import atomic_torch_save

log = logging.getLogger(__name__)


def module_fingerprint(module: nn.Module) -> str:
    """A digest of a module's parameters and buffers, non-persistent buffers included."""
    named = sorted([*module.named_parameters(), *module.named_buffers()], key=lambda item: item[0])
    digest = hashlib.sha256()
    for name, tensor in named:
        digest.update(name.encode())
        digest.update(tensor_fingerprint(tensor).encode())
    return digest.hexdigest()


def autocast_precision(device_type: str) -> str:
    """The precision autocast computes in now on ``device_type`` (``bfloat16``, ...), or ``off``."""
    if torch.is_autocast_enabled(device_type):
        return str(torch.get_autocast_dtype(device_type)).removeprefix("torch.")
    return "off"


class _SplitStore:
    def __init__(self, size: int, dim: int, device: torch.device) -> None:
        # float32 whatever the default dtype: under trainer.precision=bf16-true Lightning makes
        # bfloat16 the default while the model runs, and features are stored as float32.
        self.features = torch.empty(size, dim, device=device, dtype=torch.float32)
        self.filled = torch.zeros(size, dtype=torch.bool, device=device)

    @property
    def complete(self) -> bool:
        return bool(self.filled.all())


class FeatureCache:
    """Per-split feature stores, looked up by sample index.

    Args:
        compute: maps a batch of images to features (N, dim), without gradients.
        dim: feature width.
        model_key: identifies the feature extractor (weights and input size).
        cache_dir: where complete stores are saved and looked for; None keeps them in memory.
    """

    def __init__(self, compute: Callable[[Tensor], Tensor], dim: int, model_key: str, cache_dir: str | None = None) -> None:
        self.compute = compute
        self.dim = dim
        self.model_key = model_key
        self.cache_dir = Path(cache_dir).expanduser() if cache_dir else None
        self._stores: dict[str, _SplitStore] = {}
        self.computed = 0  # images that went through the backbone (for reporting)

    def _key(self, split: str, data_fingerprint: str, precision: str) -> str:
        return hashlib.sha256(f"{self.model_key}|{precision}|{split}|{data_fingerprint}".encode()).hexdigest()[:32]

    def _file(self, key: str) -> Path | None:
        return self.cache_dir / f"features-{key}.pt" if self.cache_dir else None

    def _load(self, path: Path, split: str, store: _SplitStore) -> None:
        """Fill ``store`` from ``path``; a file that cannot be used is left to be recomputed and rewritten."""
        expected = tuple(store.features.shape)
        try:
            saved = torch.load(path, map_location=store.features.device, weights_only=True)
        except Exception as error:  # noqa: BLE001 - truncated, corrupt, not a tensor file: all mean recompute
            log.warning("feature cache: cannot read %s (%s: %s); computing the %s features again and "
                        "rewriting it", path, type(error).__name__, error, split)
            return
        if not isinstance(saved, Tensor) or tuple(saved.shape) != expected:
            found = tuple(saved.shape) if isinstance(saved, Tensor) else type(saved).__name__
            log.warning("feature cache: %s holds %s, not %s features of shape %s; computing them again and "
                        "rewriting it", path, found, split, expected)
            return
        store.features.copy_(saved)
        store.filled.fill_(True)
        log.info("feature cache: loaded %d %s features from %s", expected[0], split, path)

    def _store(self, key: str, split: str, size: int, device: torch.device) -> _SplitStore:
        store = self._stores.get(key)
        if store is None:
            store = _SplitStore(size, self.dim, device)
            path = self._file(key)
            if path is not None and path.is_file():
                self._load(path, split, store)
            self._stores[key] = store
        return store

    def lookup(self, images: Tensor, indices: Tensor, split: str, data_fingerprint: str, split_size: int) -> Tensor:
        """Features for a batch: from the store where known, else computed now and stored.

        Features computed under autocast (``trainer.precision=bf16-mixed``) differ from float32
        ones, so the autocast precision in force now is part of the store's key.
        """
        key = self._key(split, data_fingerprint, autocast_precision(images.device.type))
        store = self._store(key, split, split_size, images.device)
        indices = indices.to(images.device)
        missing = ~store.filled[indices]
        if missing.any():
            was_complete = store.complete
            store.features[indices[missing]] = self.compute(images[missing]).float()
            store.filled[indices[missing]] = True
            self.computed += int(missing.sum())
            path = self._file(key)
            if path is not None and store.complete and not was_complete:
                try:
                    atomic_torch_save(path, store.features.cpu())
                    log.info("feature cache: saved %d %s features to %s", split_size, split, path)
                except OSError as error:  # a read-only shared cache, a full disk: kept in memory for this run
                    log.warning("feature cache: could not save the %s features to %s (%s); this run keeps them "
                                "in memory", split, path, error)
        return store.features[indices]
