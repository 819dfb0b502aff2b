"""Recording a run's final metrics: metrics.json and TensorBoard's hyperparameter tab."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import lightning as L
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.utilities import rank_zero_only
from torch import Tensor

from cnnlab.utils.io import atomic_write_json

log = logging.getLogger(__name__)

# The metrics shown beside the hyperparameters in TensorBoard's HPARAMS tab.
HPARAM_METRICS = ("val/acc_best", "val/acc", "val/acc_top5", "val/loss", "test/acc", "test/acc_top5", "test/loss")


def metric_values(metrics: Mapping[str, Any], prefixes: tuple[str, ...]) -> dict[str, float]:
    """Plain floats of the logged metrics whose names start with one of ``prefixes``."""
    return {
        name: float(value.item() if isinstance(value, Tensor) else value)
        for name, value in sorted(metrics.items())
        if name.startswith(prefixes) and not name.endswith("_step")
    }


@rank_zero_only
def write_metrics(path: Path, results: Mapping[str, Any]) -> None:
    """Write the final metrics as JSON, atomically."""
    atomic_write_json(path, dict(results))


@rank_zero_only
def log_hparams_with_metrics(trainer: L.Trainer, hparams: dict[str, Any], results: Mapping[str, Any]) -> None:
    """Log the run's hyperparameters together with its final metrics (sortable in TensorBoard)."""
    metrics = {f"hparams/{name}": results[name] for name in HPARAM_METRICS if name in results}
    for logger in trainer.loggers:
        if isinstance(logger, TensorBoardLogger):
            logger.log_hyperparams(hparams, metrics)
        else:
            logger.log_hyperparams(hparams)
        logger.save()
