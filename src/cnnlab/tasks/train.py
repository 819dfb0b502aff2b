"""The training task: compose data, model and trainer from config, fit, test, record the results."""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import lightning as L
from hydra.utils import instantiate
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.utilities import rank_zero_only
from omegaconf import DictConfig, OmegaConf

from cnnlab.checkpoint import ensure_same_model, read_checkpoint
from cnnlab.errors import RunDirectoryInUseError
from cnnlab.tasks.results import log_hparams_with_metrics, metric_values, write_metrics
from cnnlab.training.callbacks import EpochTimer, RunRecordInCheckpoint
from cnnlab.training.classifier import ImageClassifier
from cnnlab.training.factory import build_classifier
from cnnlab.utils.config import flatten, instantiate_all, print_config

log = logging.getLogger(__name__)

RESULTS_FILE = "metrics.json"


@rank_zero_only
def ensure_fresh_run_dir(output_dir: Path) -> None:
    """Refuse to train into a folder that already holds another run's checkpoints or results."""
    leftovers = [p for p in (output_dir / RESULTS_FILE, output_dir / "checkpoints") if p.exists()]
    if leftovers:
        raise RunDirectoryInUseError(
            f"{output_dir} already holds results of another run ({', '.join(p.name for p in leftovers)}); "
            f"nothing was overwritten. Leave hydra.run.dir at its default (a new folder per run) or pick a new one."
        )


def build_run(cfg: DictConfig) -> tuple[L.LightningDataModule, ImageClassifier, L.Trainer]:
    """Instantiate the data module, the model (sized to the data's classes) and the trainer."""
    datamodule = instantiate(cfg.data)
    # Recorded in the config (and so in checkpoints): the network's size follows the data.
    OmegaConf.update(cfg, "model.num_classes", datamodule.num_classes, merge=False)
    model = build_classifier(cfg, datamodule.class_names)
    record = RunRecordInCheckpoint(OmegaConf.to_container(cfg, resolve=True, throw_on_missing=True), datamodule.class_names)
    callbacks = [*instantiate_all(cfg.get("callbacks")), record]
    trainer: L.Trainer = instantiate(cfg.trainer, callbacks=callbacks, logger=instantiate_all(cfg.get("logger")) or False)
    return datamodule, model, trainer


def train(cfg: DictConfig) -> dict[str, Any]:
    """Train and test one model as ``cfg`` describes; return the run's final metrics.

    The run folder ends up with the TensorBoard events, the checkpoints (best and last), the
    resolved config (Hydra's ``.hydra/``) and ``metrics.json``.
    """
    output_dir = Path(cfg.paths.output_dir)
    if cfg.get("ckpt_path"):
        ensure_same_model(read_checkpoint(cfg.ckpt_path), cfg.model, cfg.ckpt_path)
    else:
        ensure_fresh_run_dir(output_dir)
    if cfg.get("seed") is not None:
        L.seed_everything(cfg.seed, workers=True)

    datamodule, model, trainer = build_run(cfg)
    print_config(cfg)
    counts = model.parameter_counts()
    log.info("model: %s parameters, %s trainable", f"{counts['params_total']:,}", f"{counts['params_trainable']:,}")

    started = time.perf_counter()
    trainer.fit(model, datamodule=datamodule, ckpt_path=cfg.get("ckpt_path"))
    fit_seconds = time.perf_counter() - started
    results = metric_values(trainer.callback_metrics, prefixes=("val/", "train/"))

    if cfg.get("test", True):
        checkpoint = trainer.checkpoint_callback
        best = checkpoint.best_model_path if isinstance(checkpoint, ModelCheckpoint) else ""
        if not best:
            log.warning("no best checkpoint was saved; testing the weights as they are after training")
        trainer.test(model, datamodule=datamodule, ckpt_path=best or None, weights_only=True)
        results.update(metric_values(trainer.callback_metrics, prefixes=("test/",)))
        results["best_checkpoint"] = best

    results.update(counts)
    timers = [c for c in trainer.callbacks if isinstance(c, EpochTimer)]
    if timers:
        results["epoch_seconds"] = timers[0].epoch_seconds
    results.update(epochs=trainer.current_epoch, global_step=trainer.global_step, fit_seconds=round(fit_seconds, 2))
    write_metrics(output_dir / RESULTS_FILE, results)
    log_hparams_with_metrics(trainer, flatten(OmegaConf.to_container(cfg, resolve=True)), results)
    log.info("results in %s", output_dir)
    return results
