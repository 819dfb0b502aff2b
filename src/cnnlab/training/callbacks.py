"""Callbacks the training task adds to every run."""

from __future__ import annotations

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
