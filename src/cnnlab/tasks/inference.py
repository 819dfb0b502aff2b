"""Using a trained checkpoint on single images: the shared part of predict and visualize."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from omegaconf import DictConfig
from torch import Tensor, nn

from cnnlab.checkpoint import build_model_from_checkpoint, checkpoint_config, read_checkpoint
from cnnlab.data.folder import decode_image_file
from cnnlab.errors import CheckpointError, ConfigValueError, CorruptImageError, InputNotFoundError
from cnnlab.training.callbacks import CHECKPOINT_KEY
from cnnlab.training.classifier import ImageClassifier
from cnnlab.utils.config import is_count
from cnnlab.utils.cuda_check import GPU_KINDS, gpu_present


@dataclass
class TrainedNetwork:
    """A checkpoint's classifier, ready for inference, with what it needs to know about its input.

    ``model`` gives the predictions, exactly as eval scores them (flip test-time augmentation
    included when the run trained with it); ``net`` is its network, for looking at its layers.
    """

    model: ImageClassifier
    net: nn.Module
    class_names: list[str]
    image_size: int
    config: DictConfig
    ckpt_path: Path

    def class_index(self, name_or_index: str | int) -> int:
        """The index of a class given by name or by index; a clear error for one the model does not know."""
        if isinstance(name_or_index, str) and name_or_index in self.class_names:
            return self.class_names.index(name_or_index)
        if isinstance(name_or_index, int) or str(name_or_index).isdigit():
            index = int(name_or_index)
            if 0 <= index < len(self.class_names):
                return index
        raise CheckpointError(
            f"the model in {self.ckpt_path} has no class {name_or_index!r}; its classes are "
            f"{', '.join(self.class_names)} (or their indices 0..{len(self.class_names) - 1})"
        )


def load_trained_network(ckpt_path: str | Path | None, device: str = "cpu") -> TrainedNetwork:
    """Read a cnnlab checkpoint (``weights_only=True``) and rebuild its network in eval mode on ``device``.

    Images fed to the network are uint8 at the side length the model was trained on
    (``data.image_size`` of its run); the network normalises them itself.
    """
    if not ckpt_path:
        raise CheckpointError("ckpt_path=<a .ckpt file from a training run's checkpoints/ folder> is required")
    ensure_device_available(device)
    checkpoint = read_checkpoint(ckpt_path)
    config = checkpoint_config(checkpoint)
    classifier = build_model_from_checkpoint(checkpoint).to(device).eval()
    image_size = config.get("data", {}).get("image_size") or config.model.get("input_size") or 32
    return TrainedNetwork(
        model=classifier,
        net=classifier.net,
        class_names=list(checkpoint[CHECKPOINT_KEY]["class_names"]),
        image_size=int(image_size),
        config=config,
        ckpt_path=Path(ckpt_path),
    )


def ensure_device_available(device: str) -> None:
    """Fail before any work when ``device=`` names no device torch knows, or a GPU this machine does not have."""
    try:
        kind = torch.device(device).type
    except (RuntimeError, TypeError) as error:
        raise ConfigValueError(f"device={device} is not a device torch knows ({error}); use device=cpu or "
                               f"device=cuda (device=cuda:1 for the second GPU)") from error
    if kind in GPU_KINDS and not (found := gpu_present(kind))[0]:
        raise ConfigValueError(f"device={device}, but this machine has no {found[1]}; run on the CPU with device=cpu")


def positive_count(value: object, name: str) -> int:
    """``value`` as a whole number of at least 1; a :class:`ConfigValueError` naming ``name`` otherwise."""
    if not is_count(value, 1):
        raise ConfigValueError(f"{name}={value!r}, but it must be a whole number of at least 1 (e.g. {name}=4)")
    assert isinstance(value, int)  # is_count says so; for mypy
    return value


def read_image(path: str | Path, image_size: int) -> Tensor:
    """One image file as uint8 (3, S, S), resized and centre-cropped as the folder data module does."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise InputNotFoundError(f"image file {path} does not exist")
    try:
        return decode_image_file(path, image_size)
    except ValueError as error:
        raise CorruptImageError(f"{path} could not be decoded as an image: {error}") from error


@torch.inference_mode()
def class_probabilities(model: nn.Module, images: Tensor) -> Tensor:
    """Softmax class probabilities (N, K) of a uint8 image batch, computed on the model's device.

    Pass the :class:`TrainedNetwork`'s ``model`` (not its ``net``) for the predictions eval scores.
    """
    device = next(model.parameters()).device
    return model(images.to(device)).float().softmax(dim=1).cpu()
