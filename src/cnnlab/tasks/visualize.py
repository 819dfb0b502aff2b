"""The visualize task: one image through a trained network, as feature maps and a Grad-CAM heatmap."""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any, cast

from omegaconf import DictConfig
from torch import Tensor, nn

from cnnlab.errors import InputNotFoundError, LayerNotFoundError
from cnnlab.tasks.evaluate import choose_data_as_trained, data_labelled_as_trained, wrong_size_error
from cnnlab.tasks.inference import TrainedNetwork, class_probabilities, load_trained_network, positive_count, read_image
from cnnlab.utils.config import ensure_values_set, run_folder
from cnnlab.utils.io import atomic_write_json
from cnnlab.visualize.feature_maps import capture_activations, find_layer, module_name
from cnnlab.visualize.figures import feature_map_figure, gradcam_figure, save_png
from cnnlab.visualize.gradcam import grad_cam

log = logging.getLogger(__name__)

SPLITS = ("train", "val", "test")


def _is_index(spec: Any) -> bool:
    if isinstance(spec, bool):
        return False
    if isinstance(spec, int):
        return True
    return isinstance(spec, str) and spec.isdigit() and not Path(spec).exists()


def dataset_image(cfg: DictConfig, trained: TrainedNetwork, index: int) -> tuple[Tensor, str]:
    """Image ``index`` of split ``cfg.split`` of the data (the checkpoint's own unless ``data=`` is given).

    Other data is treated as eval treats it: preprocessed as in training unless the command line
    sets ``data.image_size``, and refused unless its class names are the training's.
    """
    split_name = cfg.get("split", "test")
    if split_name not in SPLITS:
        raise InputNotFoundError(f"split={split_name} is not one of {', '.join(SPLITS)}")
    choose_data_as_trained(cfg, trained.config)
    datamodule = data_labelled_as_trained(cfg.data, trained.class_names, trained.ckpt_path)
    datamodule.setup("test")
    split = getattr(datamodule, f"{split_name}_split")
    if not 0 <= index < len(split):
        raise InputNotFoundError(f"image={index} is out of range: the {split_name} split has {len(split)} images "
                                 f"(0..{len(split) - 1})")
    label = trained.class_names[int(split.labels[index])]
    return split.images[index], f"{split_name} image {index} (true class: {label})"


def _default_cam_layer(net: nn.Module) -> nn.Module:
    """The layer the network names for Grad-CAM (every cnnlab network has ``cam_target_layer()``)."""
    # nn.Module types an attribute it does not know as Tensor | Module; this one is a method.
    return cast(Callable[[], nn.Module], net.cam_target_layer)()


def _predict_one(trained: TrainedNetwork, batch: Tensor) -> Tensor:
    """The class probabilities (K,) of a one-image batch, from the classifier as eval scores it.

    An image of another size than training's (``data.image_size`` set on the command line) that
    the network cannot take is a :class:`CheckpointError` saying so.
    """
    size = batch.shape[-1]
    try:
        probabilities = class_probabilities(trained.model, batch)[0]
    except (RuntimeError, ValueError) as error:  # what torch raises for a shape a layer cannot take
        if size == trained.image_size:
            raise
        raise wrong_size_error(trained.ckpt_path, trained.image_size, size, error, "visualize") from error
    if size != trained.image_size:
        log.warning("visualizing at data.image_size=%d; the network was trained at %d", size, trained.image_size)
    return probabilities


def visualize(cfg: DictConfig) -> dict[str, Any]:
    """Write the feature maps of ``cfg.layer`` and a Grad-CAM heatmap at ``cfg.cam_layer`` for ``cfg.image``.

    ``cfg.image`` is an image file (any size or format Pillow reads; resized as the training
    data was) or an index into the checkpoint's data split ``cfg.split``. Writes
    ``feature_maps.png``, ``gradcam.png`` and ``visualization.json`` into the run folder. For a
    run trained with ``classifier.flip_tta`` the prediction and the Grad-CAM heatmap are the mean
    over the image and its mirror image, as the classifier predicts (``cam_flip_tta`` in the json).
    """
    ensure_values_set(cfg)
    positive_count(cfg.channels, "channels")
    positive_count(cfg.columns, "columns")
    output_dir = run_folder(cfg)
    trained = load_trained_network(cfg.ckpt_path, device=cfg.get("device", "cpu"))
    net = trained.net
    if cfg.get("image") is None:
        raise InputNotFoundError("visualize needs image=PATH (an image file) or image=INDEX (of the test split)")
    if _is_index(cfg.image):
        image, source = dataset_image(cfg, trained, int(cfg.image))
    else:
        image, source = read_image(cfg.image, trained.image_size), str(cfg.image)
    device = next(net.parameters()).device
    batch = image.unsqueeze(0).to(device)

    probabilities = _predict_one(trained, batch)
    predicted = int(probabilities.argmax())
    layer_name, layer = find_layer(net, cfg.get("layer"))
    maps, _ = capture_activations(net, batch, layer)
    if maps.ndim != 4:
        raise LayerNotFoundError(f"layer {layer_name!r} outputs shape {tuple(maps.shape)}, not feature maps; "
                                 f"choose a conv, ReLU or pooling layer (layer=...)")

    # Every setting is checked (target_class, cam_layer) before the first figure is written, so a
    # refused one leaves no half-written visualization behind.
    if cfg.get("cam_layer"):
        cam_name, cam_layer = find_layer(net, cfg.cam_layer)
    else:
        cam_layer = _default_cam_layer(net)
        cam_name = module_name(net, cam_layer)
    explained = trained.class_index(cfg.target_class) if cfg.get("target_class") is not None else predicted
    # The heat map explains the prediction as the classifier makes it, flip TTA included.
    flip_tta = bool(trained.model.flip_tta)
    try:
        cam = grad_cam(net, batch, cam_layer, explained, flip_tta=flip_tta)
    except LayerNotFoundError as error:
        default = module_name(net, _default_cam_layer(net))
        raise LayerNotFoundError(f"cam_layer={cam_name}: {error}; or leave cam_layer out for the network's "
                                 f"default, {default}") from error
    if cam.cam_size == (1, 1):
        log.warning("%s gives a 1x1 map for %dx%d images, so Grad-CAM there cannot localise anything; choose an "
                    "earlier layer (cam_layer=...) or train the model with a larger model.input_size",
                    cam_name, image.shape[-2], image.shape[-1])
    names = trained.class_names
    lines = [f"Grad-CAM at {cam_name} ({cam.cam_size[0]}x{cam.cam_size[1]}) for '{names[explained]}' "
             f"(p={probabilities[explained]:.2f}); predicted '{names[predicted]}'", source]
    if flip_tta:
        lines.insert(1, "mean of the image's and its mirror image's maps (flip TTA)")
    title = "\n".join(lines)
    shown = maps[0, : cfg.channels]
    feature_png = save_png(
        feature_map_figure(shown, columns=cfg.columns,
                           title=f"{layer_name}: channels 0-{len(shown) - 1} of {maps.shape[1]}, {source}"),
        output_dir / "feature_maps.png",
    )
    gradcam_png = save_png(gradcam_figure(image, cam.heatmaps[0], title=title, alpha=cfg.cam_alpha),
                           output_dir / "gradcam.png")

    result: dict[str, Any] = {
        "image": source,
        "predicted_class": names[predicted],
        "probability": float(probabilities[predicted]),
        "explained_class": names[explained],
        "feature_layer": layer_name,
        "feature_map_shape": list(maps.shape[1:]),
        "cam_layer": cam_name,
        "cam_size": list(cam.cam_size),
        "cam_flip_tta": flip_tta,  # the map is the mean of the image's and its mirror image's (flipped back)
        "feature_maps_png": str(feature_png),
        "gradcam_png": str(gradcam_png),
    }
    atomic_write_json(output_dir / "visualization.json", result)
    log.info("predicted %s (%.1f%%); wrote %s and %s", names[predicted], 100 * result["probability"], feature_png,
             gradcam_png)
    return result
