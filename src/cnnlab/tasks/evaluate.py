"""The evaluation task: test a saved checkpoint on the data it was trained with, or on other data."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import lightning as L
from hydra.utils import instantiate
from omegaconf import DictConfig, open_dict

from cnnlab.checkpoint import build_model_from_checkpoint, checkpoint_config, ensure_same_model, read_checkpoint
from cnnlab.errors import CheckpointError
from cnnlab.tasks.results import metric_values, write_metrics
from cnnlab.utils.config import instantiate_all, print_config, run_folder
from cnnlab.utils.cuda_check import ensure_accelerator_available
from cnnlab.utils.host_memory import keep_freed_memory

log = logging.getLogger(__name__)


def evaluate(cfg: DictConfig) -> dict[str, Any]:
    """Test the checkpoint at ``cfg.ckpt_path``; return and record its test metrics.

    The network and, unless ``data=...`` is given, the data pipeline come from the config the
    checkpoint stores, so the test split and its preprocessing are exactly those of training.
    """
    if not cfg.get("ckpt_path"):
        raise CheckpointError("eval needs ckpt_path=<path to a .ckpt file from a training run>")
    output_dir = run_folder(cfg)
    ensure_accelerator_available(cfg.trainer.get("accelerator", "auto"))
    checkpoint = read_checkpoint(cfg.ckpt_path)
    if cfg.get("tune_host_malloc"):
        keep_freed_memory()
    trained = checkpoint_config(checkpoint)
    if cfg.trainer.get("precision") is None:  # as trained, so that the test metrics reproduce
        with open_dict(cfg):
            cfg.trainer.precision = trained.get("trainer", {}).get("precision") or "32-true"

    if cfg.get("model"):
        ensure_same_model(checkpoint, cfg.model, cfg.ckpt_path)
    if not cfg.get("data"):
        with open_dict(cfg):
            cfg.data = trained.data
    datamodule = instantiate(cfg.data)
    if datamodule.num_classes != trained.model.num_classes:
        raise CheckpointError(
            f"the data has {datamodule.num_classes} classes but the checkpoint's model was trained on "
            f"{trained.model.num_classes}; evaluate it on data with the same classes"
        )
    model = build_model_from_checkpoint(checkpoint)
    print_config(cfg, ["ckpt_path", "data", "trainer"])

    trainer: L.Trainer = instantiate(cfg.trainer, logger=instantiate_all(cfg.get("logger")) or False, callbacks=instantiate_all(cfg.get("callbacks")))
    trainer.test(model, datamodule=datamodule)
    results: dict[str, Any] = metric_values(trainer.callback_metrics, prefixes=("test/",))
    results.update(model.parameter_counts(), ckpt_path=str(Path(cfg.ckpt_path).resolve()))
    write_metrics(output_dir / "metrics.json", results)
    return results
