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


# What a resumed run must compose as the run did: the network, the data and its augmentation,
# the optimizer and the schedule. Resuming restores the optimizer's and the scheduler's state
# (their learning rates included), so a changed value there would silently not take effect.
RESUMED_SECTIONS = ("model", "data", "optimizer", "scheduler", "classifier")
# Settings in those sections that say where things are or how fast they run, not what the run
# learns: a resumed run may change them (the data moved to another disk, a compiled network).
RESUME_MAY_CHANGE = frozenset({
    "data.root", "data.download", "data.cache_dir", "data.decode_workers", "data.num_workers",
    "data.eval_batch_size", "data.device_resident",
    "model.num_classes", "model.weights_path", "model.load_weights", "model.cache_features",
    "model.feature_cache_dir", "optimizer.fused", "optimizer.foreach",
    "classifier.channels_last", "classifier.compile",
})


def _differences(before: Any, now: Any, key: str, found: list[tuple[str, Any, Any]]) -> None:
    if key in RESUME_MAY_CHANGE:
        return
    if isinstance(before, dict) and isinstance(now, dict):
        # A key only one side has is an option of another cnnlab version: not compared, so a
        # run from an older cnnlab still resumes.
        for name in sorted(before.keys() & now.keys()):
            _differences(before[name], now[name], f"{key}.{name}", found)
    elif before != now:
        found.append((key, before, now))


def setup_differences(stored: DictConfig, cfg: DictConfig) -> list[tuple[str, Any, Any]]:
    """``(key, run's value, cfg's value)`` for each setting of :data:`RESUMED_SECTIONS` that differs."""
    found: list[tuple[str, Any, Any]] = []
    for section in RESUMED_SECTIONS:
        before, now = stored.get(section), cfg.get(section)
        _differences(OmegaConf.to_container(before, resolve=True) if isinstance(before, DictConfig) else before,
                     OmegaConf.to_container(now, resolve=True) if isinstance(now, DictConfig) else now,
                     section, found)
    return found


def _short(value: Any, limit: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def ensure_same_setup(checkpoint: dict[str, Any], cfg: DictConfig, ckpt_path: str | Path) -> None:
    """Refuse to resume from ``ckpt_path`` when ``cfg`` composes another experiment than its run.

    The message lists each differing setting and, where the run folder has it, the command
    line overrides that composed the run. Trainer settings (``trainer.max_epochs`` to train
    longer) may change.
    """
    differences = setup_differences(checkpoint_config(checkpoint), cfg)
    if not differences:
        return
    lines = [f"  {key}: {_short(before)} in the run, {_short(now)} in this command" for key, before, now in differences[:12]]
    if len(differences) > 12:
        lines.append(f"  ... and {len(differences) - 12} more")
    run_overrides = Path(ckpt_path).expanduser().resolve().parent.parent / ".hydra" / "overrides.yaml"
    repeat = (f"repeat the run's overrides ({run_overrides}: {' '.join(OmegaConf.load(run_overrides))})"
              if run_overrides.is_file() else "repeat the overrides the run was started with")
    raise CheckpointError(
        f"ckpt_path={ckpt_path} belongs to a run trained with another setup than this command composes:\n"
        + "\n".join(lines)
        + f"\nA resumed run continues that run: its optimizer and scheduler state are restored (a changed "
        f"learning rate, say, would not even take effect) and its metrics go on. To continue it, {repeat}, "
        f"changing only trainer settings such as trainer.max_epochs; for a changed setup, start a new run "
        f"(without ckpt_path)."
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
