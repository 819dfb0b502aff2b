"""Reading cnnlab checkpoints safely and rebuilding the model they hold."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

from cnnlab.errors import CheckpointError
from cnnlab.training.callbacks import CHECKPOINT_KEY
from cnnlab.training.classifier import ImageClassifier
from cnnlab.training.factory import build_classifier


def read_checkpoint(path: str | Path) -> dict[str, Any]:
    """Load a checkpoint file with ``weights_only=True`` (no code runs from the file).

    Raises :class:`CheckpointError` when the file is missing, is not a checkpoint, or was not
    written by cnnlab's training task.
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist; pass ckpt_path=<a .ckpt file from a run's checkpoints/ folder>")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # noqa: BLE001
        raise CheckpointError(f"cannot read checkpoint {path} safely (weights_only=True): {error}") from error
    if not isinstance(checkpoint, dict) or "state_dict" not in checkpoint:
        raise CheckpointError(f"{path} is not a Lightning checkpoint (no state_dict)")
    if CHECKPOINT_KEY not in checkpoint:
        raise CheckpointError(
            f"{path} was not written by cnnlab's training (it has no '{CHECKPOINT_KEY}' record of its config); "
            f"use a checkpoint from a run of scripts/train.py"
        )
    return checkpoint


def checkpoint_config(checkpoint: dict[str, Any]) -> DictConfig:
    """The resolved config of the run that wrote ``checkpoint``."""
    return OmegaConf.create(checkpoint[CHECKPOINT_KEY]["config"])


def model_name(model_cfg: DictConfig) -> str:
    """A short description of a model config, for error messages."""
    return str(model_cfg.get("arch") or model_cfg.get("_target_", "?")).rsplit(".", 1)[-1]


def ensure_same_model(checkpoint: dict[str, Any], model_cfg: DictConfig, ckpt_path: str | Path) -> None:
    """Fail clearly when ``model_cfg`` asks for another network than the checkpoint holds."""
    stored = checkpoint_config(checkpoint).model
    if model_name(model_cfg) != model_name(stored):
        raise CheckpointError(
            f"{ckpt_path} holds a {model_name(stored)} model, not {model_name(model_cfg)}; "
            f"choose the checkpoint's model (model=...) or a checkpoint of this one"
        )


def build_model_from_checkpoint(checkpoint: dict[str, Any]) -> ImageClassifier:
    """Rebuild the classifier a checkpoint holds, from its stored config, and load its weights.

    Pretrained weights are not fetched again: every weight comes from the checkpoint, so
    rebuilding works offline.
    """
    cfg = checkpoint_config(checkpoint)
    if "load_weights" in cfg.model:
        cfg.model.load_weights = False
    model = build_classifier(cfg, checkpoint[CHECKPOINT_KEY]["class_names"], train=False)
    model.load_state_dict(checkpoint["state_dict"])
    return model
