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


# The callback hooks Lightning calls at every batch: six per training step, two per evaluation batch.
PER_BATCH_HOOKS = (
    "on_train_batch_start",
    "on_before_backward",
    "on_after_backward",
    "on_before_optimizer_step",
    "on_before_zero_grad",
    "on_train_batch_end",
    "on_validation_batch_start",
    "on_validation_batch_end",
    "on_test_batch_start",
    "on_test_batch_end",
    "on_predict_batch_start",
    "on_predict_batch_end",
)


class SkipUnusedBatchHooks(Callback):
    """Take every callback out of the per-batch hooks it does not implement.

    Lightning calls each per-batch hook on every callback, the base class's empty method
    included: with cnnlab's default callbacks that is over 70 calls per training step, of which
    four do work, and each call costs Lightning's bookkeeping (the callback's state key, the
    profiler's context), about 1 µs on a 2-core CPU and more inside the loop, where the network's
    kernels have evicted that Python from the caches. Lightning's dispatcher skips a hook that is
    not callable, so at ``setup`` each hook a callback inherits unchanged from ``Callback`` is
    shadowed on that instance by ``None``, until ``teardown`` takes the shadows away again (so a
    callback leaves the run as it came, e.g. for a Trainer without this one). Hooks a callback
    implements, in its class or on the instance (as Lightning's ``LambdaCallback`` sets them),
    and all other hooks are untouched: what runs is exactly what ran before.
    """

    def __init__(self) -> None:
        self._shadowed: list[tuple[Callback, str]] = []

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        for callback in trainer.callbacks:
            for hook in PER_BATCH_HOOKS:
                # Lightning's is_overridden would also do, but it fails on a hook that is a
                # callable object (no __code__); identity with the base method cannot misjudge.
                inherited = hook not in vars(callback) and getattr(type(callback), hook) is getattr(Callback, hook)
                if inherited:
                    setattr(callback, hook, None)
                    self._shadowed.append((callback, hook))

    def teardown(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        for callback, hook in self._shadowed:
            if vars(callback).get(hook, False) is None:  # still the shadow set at setup, not a hook set since
                delattr(callback, hook)  # the class's empty method shows through again
        self._shadowed.clear()
