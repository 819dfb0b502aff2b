"""Building the LightningModule around the configured network."""

from __future__ import annotations

from collections.abc import Sequence

from hydra.utils import instantiate
from omegaconf import DictConfig

from cnnlab.training.classifier import ImageClassifier


def build_classifier(cfg: DictConfig, class_names: Sequence[str], train: bool = True) -> ImageClassifier:
    """The classifier for ``cfg.model`` (the network) with ``cfg.optimizer``, ``cfg.scheduler`` and ``cfg.classifier``.

    ``train=False`` builds it for evaluation only: no optimizer or schedule is needed.
    """
    net = instantiate(cfg.model, num_classes=len(class_names))
    schedule = cfg.get("scheduler") or {}
    options = cfg.get("classifier") or {}
    return ImageClassifier(
        net=net,
        num_classes=len(class_names),
        optimizer=instantiate(cfg.optimizer) if train else None,
        scheduler=instantiate(schedule.get("scheduler")) if train and schedule.get("scheduler") else None,
        scheduler_interval=schedule.get("interval", "epoch"),
        class_names=class_names,
        label_smoothing=options.get("label_smoothing", 0.0),
        flip_tta=options.get("flip_tta", False),
        channels_last=options.get("channels_last", False),
        compile=options.get("compile", False) and train,
    )
