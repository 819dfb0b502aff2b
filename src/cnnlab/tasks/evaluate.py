"""The evaluation task: test a saved checkpoint on the data it was trained with, or on other data."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, cast

import lightning as L
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf, open_dict

from cnnlab.checkpoint import build_model_from_checkpoint, checkpoint_config, ensure_same_model, read_checkpoint
from cnnlab.data.base import InMemoryImageDataModule
from cnnlab.data.folder import ImageFolderDataModule, list_class_dirs
from cnnlab.errors import CheckpointError, ConfigValueError, DatasetNotFoundError
from cnnlab.tasks.results import metric_values, write_metrics
from cnnlab.tasks.summarize import FINISHED_LOG_MARK
from cnnlab.training.callbacks import CHECKPOINT_KEY
from cnnlab.training.classifier import ImageClassifier
from cnnlab.utils.config import RESULTS_FILE, ensure_switch, instantiate_all, print_config, run_folder
from cnnlab.utils.cuda_check import ensure_accelerator_available
from cnnlab.utils.host_memory import keep_freed_memory
from cnnlab.utils.job_logging import log_spawned_workers_to_job_log

log = logging.getLogger(__name__)

FOLDER_DATA_TARGET = f"{ImageFolderDataModule.__module__}.{ImageFolderDataModule.__qualname__}"


def evaluate(cfg: DictConfig) -> dict[str, Any]:
    """Test the checkpoint at ``cfg.ckpt_path``; return and record its test metrics.

    The network and, unless ``data=...`` is given, the data pipeline come from the config the
    checkpoint stores, so the test split and its preprocessing are exactly those of training.
    Other data (``data=...``) is preprocessed as in training unless the command line sets
    ``data.image_size``, and must have the training's class names. A folder with ``test/`` alone
    (no ``train/``) is tested whole, each image labelled by the checkpoint's class list; it may
    lack classes, but not have classes the checkpoint does not know.
    """
    if not cfg.get("ckpt_path"):
        raise CheckpointError("eval needs ckpt_path=<path to a .ckpt file from a training run>")
    output_dir = run_folder(cfg)
    ensure_accelerator_available(cfg.trainer.get("accelerator", "auto"))
    tune_host_malloc = ensure_switch(cfg.get("tune_host_malloc", False), "tune_host_malloc")  # 'no' would be truthy
    checkpoint = read_checkpoint(cfg.ckpt_path)
    if tune_host_malloc:
        keep_freed_memory()
    trained = checkpoint_config(checkpoint)
    if cfg.trainer.get("precision") is None:  # as trained, so that the test metrics reproduce
        with open_dict(cfg):
            cfg.trainer.precision = trained.get("trainer", {}).get("precision") or "32-true"

    choose_data_as_trained(cfg, trained)
    if cfg.get("model"):
        ensure_same_model(checkpoint, cfg.model, cfg.ckpt_path, advice="without model=, eval uses the checkpoint's own network")
    datamodule = data_labelled_as_trained(cfg.data, checkpoint[CHECKPOINT_KEY]["class_names"], cfg.ckpt_path)
    model = build_model_from_checkpoint(checkpoint)
    trained_size = trained.data.get("image_size")
    if trained_size is not None and cfg.data.get("image_size") not in (None, trained_size):
        _ensure_network_takes(model, int(cfg.data.image_size), int(trained_size), cfg.ckpt_path)
    print_config(cfg, ["ckpt_path", "data", "trainer"])

    trainer: L.Trainer = instantiate(cfg.trainer, logger=instantiate_all(cfg.get("logger")) or False, callbacks=instantiate_all(cfg.get("callbacks")))
    log_spawned_workers_to_job_log(trainer)  # a multirun eval with trainer=ddp runs the test in spawned workers
    trainer.test(model, datamodule=datamodule)
    results: dict[str, Any] = metric_values(trainer.callback_metrics, prefixes=("test/",))
    results.update(model.parameter_counts(), ckpt_path=str(Path(cfg.ckpt_path).resolve()))
    write_metrics(output_dir / RESULTS_FILE, results)
    if trainer.is_global_zero:  # which wrote metrics.json; under DDP every process runs this
        log.info("%s%s", FINISHED_LOG_MARK, output_dir)  # as training ends: where metrics.json is
    return results


# The data settings that shape the images the network sees. Normalisation is part of the model
# (stored with it) and augmentation applies to training only, so the image size is the one.
PREPROCESSING = ("image_size",)
# How a folder's images are split: for the training's own images (the same root), the split
# must be training's, or the test split would hold images the network was trained on.
SPLIT = ("val_split", "test_split", "split_seed")


def command_line_keys() -> set[str]:
    """The config keys this command sets on its command line (none outside a Hydra run)."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.core.override_parser.overrides_parser import OverridesParser

    if not HydraConfig.initialized():
        return set()
    return {override.key_or_group for override in OverridesParser.create().parse_overrides(list(HydraConfig.get().overrides.task))}


def preprocess_as_trained(cfg: DictConfig, trained: DictConfig) -> None:
    """Give other data (``data=...``) the preprocessing of training, except where the command line sets it.

    ``data=folder data.root=OTHER`` means other images seen as the network saw its training
    images; the data group's defaults (``image_size: 32``) are not a choice the user made.
    ``data.root`` naming the training's own images keeps the training's split of them too.
    """
    explicit = command_line_keys()
    same_images = (cfg.data.get("_target_") == trained.data.get("_target_") and cfg.data.get("root") is not None
                   and trained.data.get("root") is not None
                   and Path(str(cfg.data.root)).expanduser().resolve() == Path(str(trained.data.root)).resolve())
    for key in PREPROCESSING + (SPLIT if same_images else ()):
        if f"data.{key}" in explicit or trained.data.get(key) is None or key not in cfg.data:
            continue
        if cfg.data[key] != trained.data[key]:
            log.info("data.%s=%s as the checkpoint was trained (set data.%s on the command line to choose another)",
                     key, trained.data[key], key)
        with open_dict(cfg):
            cfg.data[key] = trained.data[key]


def choose_data_as_trained(cfg: DictConfig, trained: DictConfig) -> None:
    """Set ``cfg.data`` for testing the checkpoint ``cfg.ckpt_path``, whose stored run config is ``trained``.

    Without ``data=`` it is the run's own data (so its own test split); settings without a
    group (``+data.root=NEW``) change that data; other data (``data=...``) gets the training's
    preprocessing. Raises :class:`DatasetNotFoundError` when the run's own image folder is gone,
    naming the override for where it moved.
    """
    if cfg.get("data"):
        if "_target_" in cfg.data:
            preprocess_as_trained(cfg, trained)
        else:
            with open_dict(cfg):
                cfg.data = with_data_settings(trained.data, cfg.data)
        return
    # Only a folder of images: CIFAR-10's data module downloads into a missing root.
    root = trained.data.get("root")
    if trained.data.get("_target_") == FOLDER_DATA_TARGET and not Path(str(root)).exists():
        raise DatasetNotFoundError(
            f"the images {cfg.ckpt_path} was trained on are not at data.root={root} any more: if they moved, pass "
            f"+data.root=NEW_DIR (the same split, so the same test metrics), or test other images with "
            f"data=folder data.root=DIR"
        )
    with open_dict(cfg):
        cfg.data = trained.data


def with_data_settings(trained_data: DictConfig, settings: DictConfig) -> DictConfig:
    """The checkpoint's data config with ``settings`` (``+data.root=NEW`` without ``data=``) set on it.

    Without a data group the command changes the training's own data: the same images and
    split, e.g. moved to another folder or read with another batch size.
    """
    unknown = [key for key in settings if key not in trained_data]
    if unknown:
        raise ConfigValueError(
            f"data.{unknown[0]!s} is not a setting of the data this checkpoint was trained on "
            f"({trained_data.get('_target_')}); set one of {', '.join(sorted(str(k) for k in trained_data if k != '_target_'))}, "
            f"or choose the data with data=NAME (e.g. data=folder data.root=DIR)"
        )
    return cast(DictConfig, OmegaConf.merge(trained_data, settings))  # merged mappings make a mapping


def data_labelled_as_trained(data_cfg: DictConfig, trained_classes: list[str], ckpt_path: str | Path) -> InMemoryImageDataModule:
    """The data module of ``data_cfg``, its labels the indices of ``trained_classes`` (a checkpoint's).

    A folder with ``test/`` alone is labelled by the checkpoint's class list (it may lack
    classes); any other data must have exactly the training's classes, in order.
    """
    datamodule = instantiate(data_cfg)
    trained_classes = list(trained_classes)
    if isinstance(datamodule, ImageFolderDataModule) and datamodule.is_test_set:
        ensure_same_classes(list_class_dirs(datamodule.test_dir), trained_classes, ckpt_path, subset=True)
        datamodule.label_with(trained_classes)
    else:
        ensure_same_classes(datamodule.class_names, trained_classes, ckpt_path)
    return datamodule


def ensure_same_classes(data_classes: list[str], trained_classes: list[str], ckpt_path: str | Path,
                        subset: bool = False) -> None:
    """Refuse data whose classes are not, in order, those the checkpoint's model was trained on.

    Labels are class indices, so another class at index k would be scored as the model's class k.
    With ``subset`` (data labelled by the checkpoint's own class list, a test folder alone) the
    data may lack classes, in any order; a class the checkpoint does not know is still refused.
    """
    missing = [] if subset else [name for name in trained_classes if name not in data_classes]
    extra = [name for name in data_classes if name not in trained_classes]
    if list(data_classes) == list(trained_classes) or (subset and not extra):
        return
    lacking = "" if subset else f"the checkpoint's {', '.join(missing) or '(none)'} not in the data, "
    differing = (f"{lacking}the data's {', '.join(extra) or '(none)'} not in the checkpoint" if missing or extra
                 else f"the same classes in another order: {', '.join(data_classes)}")
    raise CheckpointError(
        f"the data's classes are not those {ckpt_path} was trained on ({differing}); the class folders must "
        f"have the training names, {', '.join(trained_classes)}, for each label to mean the class the model "
        f"predicts under that name"
    )


def _ensure_network_takes(model: ImageClassifier, image_size: int, trained_size: int, ckpt_path: str | Path) -> None:
    """Fail clearly when the network cannot take images of ``image_size`` (one image is tried)."""
    try:
        with torch.no_grad():
            model.eval()(torch.zeros(1, 3, image_size, image_size, dtype=torch.uint8))
    except (RuntimeError, ValueError) as error:  # what torch raises for a shape a layer cannot take
        raise wrong_size_error(ckpt_path, trained_size, image_size, error, "evaluate") from error
    log.warning("evaluating at data.image_size=%d; the network was trained at %d", image_size, trained_size)


def wrong_size_error(ckpt_path: str | Path, trained_size: int, image_size: int, error: Exception,
                     task: str) -> CheckpointError:
    """The error for a network trained at ``trained_size`` that cannot take ``image_size`` (``error`` is torch's)."""
    return CheckpointError(
        f"the network in {ckpt_path} was trained on {trained_size}x{trained_size} images and cannot take "
        f"data.image_size={image_size} ({(str(error).splitlines() or [''])[0]}); leave data.image_size out "
        f"to {task} at the trained size"
    )
