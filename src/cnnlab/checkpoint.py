"""Reading cnnlab checkpoints safely and rebuilding the model they hold."""

from __future__ import annotations

import pickle
import zipfile
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

from cnnlab.errors import CheckpointError
from cnnlab.training.callbacks import CHECKPOINT_KEY
from cnnlab.training.classifier import EPOCH_METRICS, ImageClassifier
from cnnlab.training.factory import build_classifier
from cnnlab.utils.config import config_dict, session_overrides
from cnnlab.utils.io import torch_load_error_detail
from cnnlab.utils.moved_classes import with_current_targets


def read_checkpoint(path: str | Path) -> dict[str, Any]:
    """Load a checkpoint file with ``weights_only=True`` (no code runs from the file).

    Raises :class:`CheckpointError` when the file is missing, is a folder, is not a checkpoint,
    or was not written by cnnlab's training task.
    """
    path = Path(path).expanduser()
    if path.is_dir():
        found = sorted(path.glob("*.ckpt")) or sorted(path.glob("checkpoints/*.ckpt"))
        listing = (f": {', '.join(str(f) for f in found)}" if found
                   else f"; it has none, nor has {path / 'checkpoints'}")
        raise CheckpointError(f"ckpt_path={path} is a folder, not a checkpoint file; pass one of the .ckpt files "
                              f"in a run's checkpoints/ folder{listing}")
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist; {_checkpoints_beside(path)}")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # noqa: BLE001 - torch.load fails on a bad file in many ways (KeyError, EOFError, ...)
        # torch.save writes a zip archive. Only a complete one can hold objects that weights_only
        # refuses; any other file (text reads as pickle opcodes) or a truncated one is no checkpoint.
        if isinstance(error, pickle.UnpicklingError) and zipfile.is_zipfile(path):
            raise CheckpointError(f"cannot read checkpoint {path} safely (weights_only=True): {error}") from error
        raise _not_a_checkpoint(path, error) from error
    if isinstance(checkpoint, dict) and checkpoint and all(isinstance(v, torch.Tensor) for v in checkpoint.values()):
        raise CheckpointError(
            f"{path} holds a network's weights alone ({len(checkpoint)} tensors, e.g. {next(iter(checkpoint))}), not a "
            f"training checkpoint: ckpt_path= takes a .ckpt file that a run of scripts/train.py saved in its "
            f"checkpoints/ folder (the fine-tuners take such weights for training as model.weights_path=)")
    if not isinstance(checkpoint, dict) or "state_dict" not in checkpoint:
        raise CheckpointError(f"{path} is not a Lightning checkpoint (no state_dict)")
    if CHECKPOINT_KEY not in checkpoint:
        raise CheckpointError(
            f"{path} was not written by cnnlab's training (it has no '{CHECKPOINT_KEY}' record of its config); "
            f"use a checkpoint from a run of scripts/train.py"
        )
    record = checkpoint[CHECKPOINT_KEY]
    if isinstance(record, dict) and "config" in record:
        record["config"] = with_current_targets(record["config"])
    return checkpoint


def _checkpoints_beside(path: Path) -> str:
    """What to pass instead of a missing checkpoint: the .ckpt files in its folder, closest name first, if any."""
    import difflib

    found = sorted(p.name for p in path.parent.glob("*.ckpt")) if path.parent.is_dir() else []
    if not found:
        return "pass ckpt_path=<a .ckpt file from a run's checkpoints/ folder>"
    close = difflib.get_close_matches(path.name, found, n=1)
    hint = f"did you mean {path.parent / close[0]}? " if close else ""
    return f"{hint}{path.parent} holds: {', '.join(found)}"


def _not_a_checkpoint(path: Path, error: Exception) -> CheckpointError:
    detail = torch_load_error_detail(error)
    return CheckpointError(
        f"{path} is not a PyTorch checkpoint file, or it is corrupt or truncated (an unfinished copy or "
        f"download); pass a .ckpt file that scripts/train.py wrote ({detail})"
    )


def checkpoint_config(checkpoint: dict[str, Any]) -> DictConfig:
    """The resolved config of the run that wrote ``checkpoint``."""
    return OmegaConf.create(checkpoint[CHECKPOINT_KEY]["config"])


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


# Model settings that do not change which network a checkpoint holds: the file its starting
# weights were read from (the checkpoint holds every weight), and how training treats it (dropout,
# which layers train). ``model=`` may differ from the checkpoint's run in these. ``model.weights``
# is compared: the weights' name sets the default input size and normalisation.
NOT_THE_NETWORK = frozenset(
    {key.removeprefix("model.") for key in RESUME_MAY_CHANGE if key.startswith("model.")}
    | {"dropout", "head_dropout", "trainable_stages", "backbone_lr_scale"}
)


def model_name(model_cfg: DictConfig) -> str:
    """A short description of a model config, for error messages."""
    return str(model_cfg.get("arch") or model_cfg.get("_target_", "?")).rsplit(".", 1)[-1]


def _network_differences(before: Any, now: Any, key: str, found: list[tuple[str, Any, Any]]) -> None:
    if isinstance(now, str) and "${" in now:
        return  # derived from another section (simple_cnn's input_size: ${data.image_size}), checked there
    if isinstance(before, dict) and isinstance(now, dict):
        # A key only one side has is an option of another cnnlab version: not compared.
        for name in sorted(before.keys() & now.keys()):
            if key or name not in NOT_THE_NETWORK:
                _network_differences(before[name], now[name], f"{key}.{name}" if key else name, found)
    elif before != now:
        found.append((key, before, now))


def model_differences(stored: DictConfig, model_cfg: DictConfig) -> list[tuple[str, Any, Any]]:
    """``(key, stored value, model_cfg's value)`` for each setting that makes ``model_cfg`` another network.

    ``_target_`` alone when the classes differ; otherwise the differing settings, except
    :data:`NOT_THE_NETWORK` and values ``model_cfg`` takes from other sections by interpolation.
    """
    before = config_dict(stored, resolve=True)
    now = config_dict(model_cfg, resolve=False)
    if before.get("_target_") != now.get("_target_"):
        return [("_target_", before.get("_target_"), now.get("_target_"))]
    found: list[tuple[str, Any, Any]] = []
    _network_differences(before, now, "", found)
    return found


def _model_option(ckpt_path: str | Path | None) -> str | None:
    """The ``model=`` option that composed the run (of ``ckpt_path``), or of this command when None."""
    if ckpt_path is None:
        from hydra.core.hydra_config import HydraConfig

        return HydraConfig.get().runtime.choices.get("model") if HydraConfig.initialized() else None
    run_record = Path(ckpt_path).expanduser().resolve().parent.parent / ".hydra" / "hydra.yaml"
    return OmegaConf.select(OmegaConf.load(run_record), "hydra.runtime.choices.model") if run_record.is_file() else None


def ensure_same_model(checkpoint: dict[str, Any], model_cfg: DictConfig, ckpt_path: str | Path, advice: str = "") -> None:
    """Fail clearly when ``model_cfg`` asks for another network than the checkpoint holds.

    The network's class and the settings that shape it must match; where its weights come
    from and training-only settings (:data:`NOT_THE_NETWORK`) may differ. ``advice`` ends the
    message (what else the task allows).
    """
    stored = checkpoint_config(checkpoint).model
    differences = model_differences(stored, model_cfg)
    if not differences:
        return
    names = [model_name(stored), model_name(model_cfg)]
    if differences[0][0] == "_target_":
        if names[0] == names[1]:  # e.g. a resnet18 from scratch and a fine-tuned one
            names = [f"{str(c.get('_target_')).rsplit('.', 1)[-1]} {model_name(c)}" for c in (stored, model_cfg)]
        shown = f"{names[0]} model, not {names[1]}"
    else:
        shown = (f"{names[0]} model with {', '.join(f'{key}={before}' for key, before, _ in differences)}, "
                 f"not one with {', '.join(f'{key}={now}' for key, _, now in differences)}")
    ran_with, asked = _model_option(ckpt_path), _model_option(None)
    origin = "; ".join(filter(None, [asked and f"model={asked} in this command", ran_with and f"its run used model={ran_with}"]))
    raise CheckpointError(
        f"{ckpt_path} holds a {shown}" + (f" ({origin})" if origin else "")
        + f"; choose {f'model={ran_with}' if ran_with else 'its model (model=...)'} or a checkpoint of this model"
        + (f" ({advice})" if advice else "")
    )


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


def saving_session_overrides(checkpoint: dict[str, Any], ckpt_path: str | Path) -> Path:
    """The ``overrides.yaml`` of the session of its run that saved ``checkpoint`` (which may not exist).

    A resumed session's record is ``<run>/.hydra/<session>/``, the first session's ``<run>/.hydra/``;
    the checkpoint's config names its session. That session's trainer settings (``trainer.max_epochs``)
    are the latest the run trained with, where the first session's may be shorter than the checkpoint.
    """
    session = checkpoint_config(checkpoint).get("session") or ""
    run_dir = Path(ckpt_path).expanduser().resolve().parent.parent
    if not session_overrides(run_dir, session).is_file():
        session = ""  # a session whose record is gone: the first session's is the next best
    return session_overrides(run_dir, session)


def ensure_same_setup(checkpoint: dict[str, Any], cfg: DictConfig, ckpt_path: str | Path) -> None:
    """Refuse to resume from ``ckpt_path`` when ``cfg`` composes another experiment than its run.

    The message lists each differing setting and, where the run folder has it, the command line
    overrides of the session that saved the checkpoint. Trainer settings (``trainer.max_epochs``
    to train longer) may change.
    """
    differences = setup_differences(checkpoint_config(checkpoint), cfg)
    if not differences:
        return
    lines = [f"  {key}: {_short(before)} in the run, {_short(now)} in this command" for key, before, now in differences[:12]]
    if len(differences) > 12:
        lines.append(f"  ... and {len(differences) - 12} more")
    run_overrides = saving_session_overrides(checkpoint, ckpt_path)
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


def ensure_training_left(checkpoint: dict[str, Any], trainer_cfg: DictConfig, ckpt_path: str | Path) -> None:
    """Refuse to resume from ``ckpt_path`` when the trainer's limits end before the checkpoint's epoch or step.

    Such a run would have ended before that checkpoint was saved: its trainer settings are not
    the run's. Limits the checkpoint just reached pass: the resumed session trains nothing and
    tests, its results taking the checkpoint's train and validation metrics (a job requeued after
    its training ended gets its test).
    """
    epoch, step = int(checkpoint.get("epoch", 0)), int(checkpoint.get("global_step", 0))
    max_epochs, max_steps = trainer_cfg.get("max_epochs"), trainer_cfg.get("max_steps")
    if max_epochs is not None and max_epochs >= 0 and epoch >= max_epochs:
        limit, setting, reached = f"trainer.max_epochs={max_epochs}", "trainer.max_epochs", epoch + 1
    elif max_steps is not None and max_steps >= 0 and step > max_steps:
        limit, setting, reached = f"trainer.max_steps={max_steps}", "trainer.max_steps", step
    else:
        return
    raise CheckpointError(
        f"ckpt_path={ckpt_path} was saved in epoch {epoch + 1} (step {step}), beyond {limit}, where the run would "
        f"have ended; set {setting}={reached} to complete the run from it (from the end of an epoch: only its test "
        f"runs) or above {reached} to train longer, or test the checkpoint with scripts/eval.py ckpt_path={ckpt_path}"
    )


def saved_epoch_metrics(checkpoint: dict[str, Any]) -> tuple[dict[str, float], bool]:
    """The train/ and val/ metrics of the epoch ``checkpoint`` was saved at, and whether it holds them all.

    A checkpoint of an older cnnlab holds only the best validation accuracy so far (``val/acc_best``).
    """
    stored = checkpoint.get(EPOCH_METRICS)
    if isinstance(stored, dict):
        return dict(stored), True
    best = checkpoint.get("val_acc_best")
    return ({"val/acc_best": float(best)} if best is not None else {}), False


def build_model_from_checkpoint(checkpoint: dict[str, Any]) -> ImageClassifier:
    """Rebuild the classifier a checkpoint holds, from its stored config, and load its weights.

    Pretrained weights are not fetched again: every weight comes from the checkpoint, so
    rebuilding works offline.
    """
    cfg = checkpoint_config(checkpoint)
    model = build_classifier(cfg, checkpoint[CHECKPOINT_KEY]["class_names"], train=False, pretrained=False)
    model.load_state_dict(checkpoint["state_dict"])
    return model
