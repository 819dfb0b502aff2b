"""The convolution walk-through task: the textbook example in the terminal, and a real image through classic kernels."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
from omegaconf import DictConfig

from cnnlab.errors import ConfigValueError
from cnnlab.tasks.inference import read_image
from cnnlab.utils.config import run_folder
from cnnlab.visualize.convolution import (
    CLASSIC_KERNELS,
    SOBEL_X,
    conv2d,
    generated_image,
    max_pool2d,
    to_grayscale,
    walkthrough_text,
)
from cnnlab.visualize.figures import panels_figure, save_png

log = logging.getLogger(__name__)


# A 3x3 kernel (no padding) and then a 2x2 max-pool need at least a 4x4 image.
MIN_IMAGE_SIZE = 4


def grey_image(path: str | None, size: int) -> tuple[np.ndarray, str]:
    """The image file at ``path`` as grey values in [0, 1], resized and centre-cropped to ``size``; a generated one without a path.

    Raises :class:`ConfigValueError` for a size below 4 or a folder as ``path``, and what
    :func:`read_image` raises for a missing or unreadable file.
    """
    if size < MIN_IMAGE_SIZE:
        raise ConfigValueError(f"image_size={size} is too small: the 3x3 kernels and the 2x2 max-pool need "
                               f"image_size={MIN_IMAGE_SIZE} or more (64 by default)")
    if not path:
        return generated_image(size), f"generated {size}x{size} test image"
    if Path(path).expanduser().is_dir():
        raise ConfigValueError(f"image={path} is a folder; give one image file in it, "
                               f"e.g. image={str(path).rstrip('/')}/<file>.jpg")
    rgb = read_image(path, size).permute(1, 2, 0).numpy()
    return to_grayscale(rgb), f"{Path(path).name} ({size}x{size}, grey)"


def convolution_walkthrough(cfg: DictConfig) -> dict[str, Any]:
    """Print the worked example; write ``convolution.png``: the image, its responses to the classic
    kernels, and a conv layer's three steps (Sobel x, ReLU, 2x2 max-pool)."""
    output = run_folder(cfg) / "convolution.png"
    # Read the input before printing, so a bad image= or image_size= is the first thing the user sees.
    image, source = grey_image(cfg.get("image"), int(cfg.image_size))
    print(walkthrough_text(), flush=True)
    panels: list[tuple[str, np.ndarray]] = [("input", image)]
    panels += [(name, conv2d(image, kernel)) for name, kernel in CLASSIC_KERNELS.items()]
    # What one channel of a conv layer does: filter, ReLU, pool.
    panels.append(("Sobel x, ReLU, 2x2 max-pool", max_pool2d(np.maximum(conv2d(image, SOBEL_X), 0.0))))
    save_png(panels_figure(panels, columns=3, title=f"classic 3x3 kernels (no padding, stride 1) on the {source}"),
             output)
    log.info("wrote %s", output)
    return {"png": str(output), "panels": [name for name, _ in panels], "shapes": [list(a.shape) for _, a in panels]}
