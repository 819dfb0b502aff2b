"""A test-only callback, importable by the training script (PYTHONPATH=tests): records which
samples each process saw, so a DDP test can check how an epoch was shared out."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import Callback


class SampleIndexRecorder(Callback):
    """Write ``<out_dir>/seen_rank<rank>.json``: ``{"train/<epoch>": [...], "val/<epoch>": [...], "test": [...]}``."""

    def __init__(self, out_dir: str) -> None:
        self.out_dir = Path(out_dir)
        self.seen: dict[str, list[int]] = {}

    def _record(self, key: str, batch: Any) -> None:
        self.seen.setdefault(key, []).extend(batch.indices.tolist())

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, batch_idx: int) -> None:
        self._record(f"train/{trainer.current_epoch}", batch)

    def on_validation_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, batch_idx: int,
                                  dataloader_idx: int = 0) -> None:
        if not trainer.sanity_checking:
            self._record(f"val/{trainer.current_epoch}", batch)

    def on_test_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, batch_idx: int,
                            dataloader_idx: int = 0) -> None:
        self._record("test", batch)

    def on_test_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.out_dir.mkdir(parents=True, exist_ok=True)
        (self.out_dir / f"seen_rank{trainer.global_rank}.json").write_text(json.dumps(self.seen))
