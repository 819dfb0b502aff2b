"""Callbacks the training task adds to every run."""

from __future__ import annotations

import time
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import Callback

CHECKPOINT_KEY = "cnnlab"
CHECKPOINT_FORMAT = 1


class RunRecordInCheckpoint(Callback):
    """Store the run's resolved config and class names in every checkpoint.

    With them a checkpoint is self-describing: ``scripts/eval.py`` rebuilds the exact
    network and data pipeline from the file alone. Everything stored is plain Python data,
    so the checkpoint still loads with ``torch.load(weights_only=True)``.
    """

    def __init__(self, config: dict[str, Any], class_names: list[str]) -> None:
        self.record = {"format": CHECKPOINT_FORMAT, "config": config, "class_names": list(class_names)}

    def on_save_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict[str, Any]) -> None:
        checkpoint[CHECKPOINT_KEY] = self.record


class EpochTimer(Callback):
    """Log the wall time of every epoch, training and validation together, as ``time/epoch``.

    The times also end up in ``metrics.json`` (``epoch_seconds``), e.g. to compare a
    linear probe's first epoch (features computed) with the later ones (features cached).
    """

    def __init__(self) -> None:
        self.epoch_seconds: list[float] = []
        self._started: float | None = None

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._started = time.perf_counter()

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # Lightning runs the epoch's validation before this hook, so the time includes it.
        if self._started is None:
            return
        seconds = time.perf_counter() - self._started
        self._started = None
        self.epoch_seconds.append(round(seconds, 3))
        pl_module.log("time/epoch", seconds)
