"""Figures for TensorBoard and PNG files: confusion matrix, image grids, feature maps, filters, Grad-CAM.

Everything is drawn through matplotlib's object API on an Agg canvas. pyplot is never
imported, so no display is needed, no global figure list grows during a long training run,
and figures can be drawn from any thread.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from matplotlib import colormaps
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from torch import Tensor
from torchvision.utils import make_grid

from cnnlab.utils.io import atomic_write

DPI = 100
# Confusion matrices with more classes than this get no per-cell numbers (they would be unreadable).
MAX_ANNOTATED_CLASSES = 20


def new_figure(
    width: float, height: float, layout: Literal["constrained", "compressed", "tight"] = "constrained"
) -> Figure:
    """A figure of ``width`` x ``height`` inches on its own Agg canvas.

    ``layout="compressed"`` suits a single image-like axes with a fixed aspect ratio.
    """
    figure = Figure(figsize=(width, height), dpi=DPI, layout=layout)
    FigureCanvasAgg(figure)
    return figure


def figure_to_array(figure: Figure) -> np.ndarray:
    """Render a figure to an RGB uint8 array (H, W, 3), e.g. for ``SummaryWriter.add_image``."""
    canvas = figure.canvas
    assert isinstance(canvas, FigureCanvasAgg), "figures must be made with new_figure()"
    canvas.draw()
    return np.asarray(canvas.buffer_rgba())[..., :3].copy()


def save_png(figure: Figure, path: str | Path) -> Path:
    """Write a figure as a PNG file, atomically."""
    return atomic_write(path, lambda f: figure.savefig(f, format="png"))


def to_display(image: Tensor) -> np.ndarray:
    """An image tensor (C, H, W), uint8 or floats in [0, 1], as an array imshow takes: (H, W, 3) or (H, W)."""
    image = image.detach().cpu()
    if image.dtype != torch.uint8:
        image = (image.float().clamp(0, 1) * 255).round().to(torch.uint8)
    if image.shape[0] == 1:
        return image[0].numpy()
    return image.permute(1, 2, 0).numpy()


def _hide_axes(axes) -> None:
    axes.set_xticks([])
    axes.set_yticks([])


def confusion_matrix_figure(matrix: Tensor | np.ndarray, class_names: Sequence[str], title: str = "") -> Figure:
    """The confusion matrix: rows are the true classes, columns the predicted ones.

    Cell colours are the fraction of each true class predicted as each class (rows sum to 1),
    so classes of different sizes compare fairly; the numbers in the cells are counts. Each
    row label carries that class's accuracy (recall).
    """
    counts = np.asarray(matrix.cpu() if isinstance(matrix, Tensor) else matrix, dtype=np.int64)
    n = len(class_names)
    if counts.shape != (n, n):
        raise ValueError(f"a confusion matrix for {n} classes must be {n}x{n}, got {counts.shape}")
    totals = counts.sum(axis=1, keepdims=True)
    fractions = np.divide(counts, totals, out=np.zeros(counts.shape, dtype=float), where=totals > 0)
    side = max(4.0, 0.5 * n + 2.5)
    figure = new_figure(side + 1.5, side, layout="compressed")
    axes = figure.add_subplot()
    shown = axes.imshow(fractions, cmap="Blues", vmin=0.0, vmax=1.0)
    figure.colorbar(shown, ax=axes, fraction=0.046, pad=0.04, label="fraction of the true class")
    accuracy = np.diag(fractions)
    axes.set_xticks(range(n), labels=list(class_names), rotation=45, ha="right", rotation_mode="anchor")
    axes.set_yticks(range(n), labels=[f"{name} ({acc:.0%})" for name, acc in zip(class_names, accuracy, strict=True)])
    axes.set_xlabel("predicted class")
    axes.set_ylabel("true class (accuracy)")
    if n <= MAX_ANNOTATED_CLASSES:
        for row in range(n):
            for col in range(n):
                colour = "white" if fractions[row, col] > 0.5 else "black"
                # in_layout=False: text inside the cells cannot change the layout, and measuring it is slow
                axes.text(col, row, str(counts[row, col]), ha="center", va="center", color=colour, fontsize=8,
                          in_layout=False)
    total = counts.sum()
    overall = np.trace(counts) / total if total else 0.0
    axes.set_title(f"{title}  accuracy {overall:.1%} of {total}".strip())
    return figure


def image_grid_figure(images: Tensor, titles: Sequence[str], columns: int = 8, cell_inches: float = 1.6) -> Figure:
    """Images (N, C, H, W) in a grid, each with a title above it (e.g. true and predicted label).

    Drawn as one mosaic image with text on one set of axes rather than one subplot per
    image: several times faster, which matters when it is drawn during training.
    """
    if len(images) != len(titles):
        raise ValueError(f"{len(images)} images but {len(titles)} titles")
    if len(images) == 0:
        raise ValueError("no images to show")
    tiles = torch.stack([torch.from_numpy(np.atleast_3d(to_display(image)).copy()) for image in images])  # N,H,W,C
    if tiles.shape[-1] == 1:
        tiles = tiles.expand(-1, -1, -1, 3)
    count, height, width = tiles.shape[:3]
    columns = max(1, min(columns, count))
    rows = math.ceil(count / columns)
    gap = max(1, width // 16)
    scale = cell_inches * DPI / (width + gap)  # screen pixels per image pixel
    lines = max(title.count("\n") + 1 for title in titles)
    band = math.ceil((12 * lines + 6) / scale)  # room for the title above each image
    cell_h, cell_w = height + band, width + gap
    mosaic = np.full((rows * cell_h, columns * cell_w, 3), 255, dtype=np.uint8)
    for index, tile in enumerate(tiles):
        row, col = divmod(index, columns)
        top, left = row * cell_h + band, col * cell_w + gap // 2
        mosaic[top : top + height, left : left + width] = tile.numpy()
    figure = Figure(figsize=(mosaic.shape[1] * scale / DPI, mosaic.shape[0] * scale / DPI), dpi=DPI)
    FigureCanvasAgg(figure)
    axes = figure.add_axes((0, 0, 1, 1))
    axes.set_axis_off()
    axes.imshow(mosaic, interpolation="nearest", aspect="auto")
    for index, title in enumerate(titles):
        row, col = divmod(index, columns)
        axes.text(col * cell_w + cell_w / 2, row * cell_h + band - 1, title, ha="center", va="bottom", fontsize=7,
                  linespacing=1.1)
    return figure


def feature_map_figure(maps: Tensor, columns: int = 4, title: str = "", first_channel: int = 0) -> Figure:
    """Activation maps (C, H, W) of one image in a grid, each on its own colour scale.

    Each map gets its own scale because channels differ widely in magnitude; a shared scale
    would show most of them as flat. ``first_channel`` numbers the panels when ``maps`` is a
    slice of a layer's channels.
    """
    maps = maps.detach().float().cpu()
    count = maps.shape[0]
    columns = max(1, min(columns, count))
    rows = math.ceil(count / columns)
    figure = new_figure(1.7 * columns, 1.7 * rows + (0.4 if title else 0.0))
    if title:
        figure.suptitle(title)
    for index in range(count):
        axes = figure.add_subplot(rows, columns, index + 1)
        _hide_axes(axes)
        axes.imshow(maps[index].numpy(), cmap="viridis", interpolation="nearest")
        axes.set_title(f"channel {first_channel + index}", fontsize=7)
    return figure


def feature_map_grid(maps: Tensor, columns: int = 4, min_side: int = 96, colormap: str = "viridis") -> Tensor:
    """Activation maps (C, H, W) as one colour-mapped RGB uint8 mosaic (3, H', W'), row by row.

    Each map is scaled to [0, 1] on its own (channels differ widely in magnitude) and enlarged
    (nearest neighbour) to at least ``min_side`` pixels. Cheap enough to draw during training.
    """
    maps = maps.detach().float().cpu()
    low = maps.amin(dim=(1, 2), keepdim=True)
    high = maps.amax(dim=(1, 2), keepdim=True)
    scaled = ((maps - low) / (high - low).clamp_min(1e-12)).numpy()
    coloured = torch.from_numpy(colormaps[colormap](scaled, bytes=True)[..., :3]).permute(0, 3, 1, 2)  # C,3,H,W
    factor = max(1, math.ceil(min_side / max(maps.shape[-2:])))
    coloured = coloured.repeat_interleave(factor, dim=2).repeat_interleave(factor, dim=3)
    return make_grid(coloured, nrow=max(1, columns), padding=2, pad_value=255)


def filter_grid_image(weight: Tensor, min_side: int = 24) -> Tensor:
    """A conv layer's filters (O, I, kH, kW) as one RGB uint8 image (3, H, W) for TensorBoard.

    Each filter is scaled to [0, 1] on its own. Filters over 3 input channels are shown as
    colour images (what the first layer of an RGB network looks for); others as the grey mean
    over their input channels. Filters are enlarged (nearest neighbour) to at least
    ``min_side`` pixels, so a 3x3 kernel is visible.
    """
    filters = weight.detach().float().cpu()
    if filters.ndim != 4:
        raise ValueError(f"expected conv weights (out, in, kH, kW), got shape {tuple(filters.shape)}")
    if filters.shape[1] != 3:
        filters = filters.mean(dim=1, keepdim=True).expand(-1, 3, -1, -1)
    low = filters.amin(dim=(1, 2, 3), keepdim=True)
    high = filters.amax(dim=(1, 2, 3), keepdim=True)
    filters = (filters - low) / (high - low).clamp_min(1e-12)
    scale = max(1, math.ceil(min_side / max(filters.shape[-2:])))
    filters = filters.repeat_interleave(scale, dim=2).repeat_interleave(scale, dim=3)
    columns = math.ceil(math.sqrt(filters.shape[0]))
    grid = make_grid(filters, nrow=columns, padding=2, pad_value=1.0)
    return (grid * 255).round().to(torch.uint8)


def gradcam_figure(image: Tensor, heatmap: Tensor, title: str = "", alpha: float = 0.5) -> Figure:
    """The image, the Grad-CAM heatmap (H, W, in [0, 1]) and the heatmap laid over the image."""
    shown = to_display(image)
    heat = heatmap.detach().float().cpu().numpy()
    figure = new_figure(9.0, 3.4)
    if title:
        figure.suptitle(title)
    panels = figure.subplots(1, 3)
    for axes, name in zip(panels, ("image", "Grad-CAM", "overlay"), strict=True):
        _hide_axes(axes)
        axes.set_title(name, fontsize=9)
    panels[0].imshow(shown, cmap="gray", interpolation="nearest")
    heat_shown = panels[1].imshow(heat, cmap="jet", vmin=0.0, vmax=1.0, interpolation="bilinear")
    figure.colorbar(heat_shown, ax=panels[1], fraction=0.046, pad=0.04)
    panels[2].imshow(shown, cmap="gray", interpolation="nearest")
    panels[2].imshow(heat, cmap="jet", vmin=0.0, vmax=1.0, alpha=alpha, interpolation="bilinear")
    return figure


def panels_figure(panels: Sequence[tuple[str, np.ndarray]], columns: int = 3, title: str = "") -> Figure:
    """Grey 2-D arrays side by side, each titled and on its own colour scale (e.g. an image and filter responses)."""
    count = max(1, len(panels))
    columns = max(1, min(columns, count))
    rows = math.ceil(count / columns)
    figure = new_figure(3.0 * columns, 3.1 * rows + (0.4 if title else 0.0))
    if title:
        figure.suptitle(title)
    for index, (name, values) in enumerate(panels):
        axes = figure.add_subplot(rows, columns, index + 1)
        _hide_axes(axes)
        shown = axes.imshow(np.asarray(values), cmap="gray", interpolation="nearest")
        figure.colorbar(shown, ax=axes, fraction=0.046, pad=0.04)
        axes.set_title(f"{name}\n{values.shape[0]}x{values.shape[1]}", fontsize=9)
    return figure
