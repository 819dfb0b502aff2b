"""Recording a run's final metrics: metrics.json and TensorBoard's hyperparameter tab."""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import lightning as L
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.utilities import rank_zero_only
from omegaconf import OmegaConf
from torch import Tensor

from cnnlab.utils.config import RESULTS_FILE, session_overrides
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


TEST_DATA_KEY = "test_data"  # metrics.json: the digest of the test split the test/ metrics were measured on


def earlier_test_results(output_dir: Path, composed: dict[str, Any], global_step: int, best_checkpoint: str,
                         test_data: str | None) -> dict[str, Any] | None:
    """The run's ``metrics.json`` when it already holds this very test, else None.

    A continued sweep (``-m ... hydra.sweep.dir=<sweep> ckpt_path=last``) resumes every job, also
    those that had finished: they train nothing, and testing the same best checkpoint with the same
    settings again would cost a whole test pass for the same figures. "The same" is strict: the
    results are of this global step, this best checkpoint and this test split (``test_data``, its
    digest: images added to a folder since count), and the session that wrote them ran with exactly
    the config this session ``composed`` (its Hydra record in ``.hydra/``, unresolved, ``ckpt_path``
    aside). Anything else (no digest of the test data, results of an older cnnlab that do not name
    their session, a record that is missing or unreadable, one changed setting) tests the run again.
    """
    if test_data is None:
        return None
    try:
        results = json.loads((output_dir / RESULTS_FILE).read_text())
    except (OSError, ValueError):
        return None
    if (not isinstance(results, dict) or results.get("global_step") != global_step
            or results.get("best_checkpoint") != best_checkpoint or results.get(TEST_DATA_KEY) != test_data
            or not any(key.startswith("test/") for key in results)):
        return None
    session = results.get("session", None if "resumed_from" in results else "")
    if not isinstance(session, str):
        return None
    try:
        record = session_overrides(output_dir, session).with_name("config.yaml")  # beside that session's overrides
        recorded = OmegaConf.to_container(OmegaConf.load(record), resolve=False)
    except Exception:  # noqa: BLE001 - a missing or unreadable record: test again rather than guess
        return None
    if not isinstance(recorded, dict):
        return None
    ignored = {"ckpt_path"}
    same = {k: v for k, v in recorded.items() if k not in ignored} == {k: v for k, v in composed.items() if k not in ignored}
    return results if same else None


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
