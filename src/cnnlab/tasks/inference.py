"""Using a trained checkpoint on single images: the shared part of predict and visualize."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from omegaconf import DictConfig
from torch import Tensor, nn

from cnnlab.checkpoint import build_model_from_checkpoint, checkpoint_config, read_checkpoint
from cnnlab.data.folder import decode_image_file
from cnnlab.errors import CheckpointError, CorruptImageError, InputNotFoundError
from cnnlab.training.callbacks import CHECKPOINT_KEY


@dataclass
class TrainedNetwork:
    """A checkpoint's network, ready for inference, with what it needs to know about its input."""

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
    checkpoint = read_checkpoint(ckpt_path)
    config = checkpoint_config(checkpoint)
    classifier = build_model_from_checkpoint(checkpoint)
    net = classifier.net.to(device).eval()
    image_size = config.get("data", {}).get("image_size") or config.model.get("input_size") or 32
    return TrainedNetwork(
        net=net,
        class_names=list(checkpoint[CHECKPOINT_KEY]["class_names"]),
        image_size=int(image_size),
        config=config,
        ckpt_path=Path(ckpt_path),
    )


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
def class_probabilities(net: nn.Module, images: Tensor) -> Tensor:
    """Softmax class probabilities (N, K) of a uint8 image batch, on the network's device."""
    device = next(net.parameters()).device
    return net(images.to(device)).float().softmax(dim=1).cpu()
