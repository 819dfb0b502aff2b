"""Building the LightningModule around the configured network."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from hydra.utils import instantiate
from omegaconf import DictConfig

from cnnlab.errors import ConfigValueError, InputSizeError, user_error
from cnnlab.models.simple_cnn import SimpleCNN
from cnnlab.training.classifier import ImageClassifier, OptimizerFactory
from cnnlab.utils.config import ensure_switch


def checked_optimizer(optimizer_cfg: DictConfig) -> OptimizerFactory:
    """The optimizer factory ``optimizer_cfg`` describes, its values checked now.

    torch checks an optimizer's values (a negative learning rate, a beta above 1) only when the
    optimizer is built, after the data is loaded, and names no config key; building it once
    here for a stand-in parameter turns a bad value into an error naming the settings. (The
    stand-in lives on the CPU: whether an option suits the run's device is not checked here.)
    """
    factory = instantiate(optimizer_cfg)
    try:
        factory([torch.nn.Parameter(torch.zeros(1))])
    except (ValueError, TypeError, RuntimeError) as error:  # RuntimeError: e.g. fused and foreach together
        settings = " ".join(f"optimizer.{key!s}={value}" for key, value in optimizer_cfg.items()
                            if not str(key).startswith("_"))
        raise ConfigValueError(
            f"{optimizer_cfg.get('_target_', 'the optimizer')} refuses the optimizer settings ({settings}): {error}; "
            f"give a valid value with an override such as optimizer.lr=0.001"
        ) from error
    return factory


def build_classifier(cfg: DictConfig, class_names: Sequence[str], train: bool = True,
                     pretrained: bool = True) -> ImageClassifier:
    """The classifier for ``cfg.model`` (the network) with ``cfg.optimizer``, ``cfg.scheduler`` and ``cfg.classifier``.

    ``train=False`` builds it for evaluation only: no optimizer or schedule is needed.
    ``pretrained=False`` leaves a fine-tuner's pretrained weights unread (``model.load_weights``),
    for a network whose every weight then comes from a checkpoint: it needs neither the
    download nor the weights file it was first built from.
    """
    unread = {"load_weights": False} if not pretrained and "load_weights" in cfg.model else {}
    image_size = (cfg.get("data") or {}).get("image_size")
    try:
        net = instantiate(cfg.model, num_classes=len(class_names), **unread)
    except Exception as error:
        too_small = user_error(error)
        if isinstance(too_small, InputSizeError) and image_size is not None and too_small.size != image_size:
            # The network's message would send the user to data.image_size, which an override of model.input_size ignores.
            raise ConfigValueError(
                f"model.input_size={too_small.size}: the network's input side {too_small.requirement}, and it must be "
                f"built for the data's size anyway (data.image_size={image_size}): drop the model.input_size override "
                f"(it follows data.image_size)"
            ) from error
        raise
    # SimpleCNN's first fully connected layer is sized for model.input_size; other images would
    # fail there, at the first batch, with only a matrix-shape message.
    if isinstance(net, SimpleCNN) and image_size is not None and net.input_size != image_size:
        raise ConfigValueError(
            f"model.input_size={net.input_size} builds the network for {net.input_size}x{net.input_size} images, but "
            f"data.image_size={image_size} makes them {image_size}x{image_size}: set data.image_size={net.input_size} "
            f"instead (model.input_size follows it)"
        )
    schedule = cfg.get("scheduler") or {}
    options = cfg.get("classifier") or {}
    return ImageClassifier(
        net=net,
        num_classes=len(class_names),
        optimizer=checked_optimizer(cfg.optimizer) if train else None,
        scheduler=instantiate(schedule.get("scheduler")) if train and schedule.get("scheduler") else None,
        scheduler_interval=schedule.get("interval", "epoch"),
        class_names=class_names,
        label_smoothing=options.get("label_smoothing", 0.0),
        flip_tta=options.get("flip_tta", False),
        channels_last=options.get("channels_last", False),
        # Checked here: `'yes' and True` is True, so ImageClassifier would never see the string. Evaluation
        # never compiles (nor checks the value its checkpoint recorded).
        compile=ensure_switch(options.get("compile", False), "classifier.compile") if train else False,
    )
