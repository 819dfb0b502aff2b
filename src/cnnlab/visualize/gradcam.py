"""Grad-CAM heatmaps: where in the image the evidence for a class lies, as a chosen layer sees it.

The computation is torchcam's ``GradCAM`` (https://github.com/frgfm/torch-cam): the target
layer's activations, weighted per channel by the spatial mean of the class score's gradient
with respect to them, summed over channels, passed through ReLU and scaled to [0, 1]. This
module adds what cnnlab's networks need around it: a context with gradients enabled and
the network in eval mode (restored afterwards), and an input that requires gradients, so the
score is connected to the target layer even when every layer before it is frozen (the
frozen ResNet's layer4).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from cnnlab.errors import CnnlabError, LayerNotFoundError
from cnnlab.visualize.feature_maps import conv_layer_names, evaluation_mode, module_name


@dataclass
class GradCamResult:
    """Heatmaps (N, H, W) in [0, 1] at the images' own size, the logits (N, K), the explained classes,
    and the size of the target layer's maps that the heatmaps were upsampled from."""

    heatmaps: Tensor
    logits: Tensor
    classes: list[int]
    cam_size: tuple[int, int]


def _torchcam_gradcam():
    try:
        from torchcam.methods import GradCAM
    except ImportError as error:
        raise CnnlabError(
            f"Grad-CAM needs the torchcam package ({error}); it requires Python 3.11 or newer: "
            f"pip install 'torchcam>=0.5,<0.6'"
        ) from error
    return GradCAM


def _explained_classes(logits: Tensor, class_index: int | Sequence[int] | None) -> list[int]:
    n, num_classes = logits.shape
    if class_index is None:
        return logits.argmax(dim=1).tolist()
    classes = [int(class_index)] * n if isinstance(class_index, int) else [int(c) for c in class_index]
    if len(classes) != n:
        raise ValueError(f"{len(classes)} class indices for {n} images")
    bad = [c for c in classes if not 0 <= c < num_classes]
    if bad:
        raise ValueError(f"class index {bad[0]} is out of range for a model with {num_classes} classes")
    return classes


def _ensure_feature_maps(net: nn.Module, layer: nn.Module, output: Tensor | None) -> None:
    """Refuse a target layer whose output is not (N, C, H, W) maps, which torchcam fails on with an IndexError."""
    if output is not None and output.ndim == 4:
        return
    name = module_name(net, layer)
    what = "is not used in the forward pass" if output is None else f"outputs shape {tuple(output.shape)}"
    convs = conv_layer_names(net)
    shown = ", ".join(convs[-6:]) + (f" (the last 6 of {len(convs)})" if len(convs) > 6 else "")
    raise LayerNotFoundError(f"layer {name!r} {what}, not feature maps, so Grad-CAM cannot look at it; choose a "
                             f"convolutional layer or block, such as {shown or 'a block of ' + type(net).__name__}")


def grad_cam(
    net: nn.Module,
    images: Tensor,
    target_layer: nn.Module,
    class_index: int | Sequence[int] | None = None,
) -> GradCamResult:
    """Grad-CAM of ``images`` (N, C, H, W; uint8, or floats in [0, 1]) at ``target_layer`` of ``net``.

    ``class_index`` picks the class explained: None for each image's predicted class, an int
    for one class for all images, or one index per image. The network runs in eval mode with
    gradients enabled, whatever the caller's context; its modes are restored afterwards and no
    parameter's ``.grad`` is touched. A ``target_layer`` that does not output feature maps
    (N, C, H, W) is a :class:`LayerNotFoundError`.
    """
    GradCAM = _torchcam_gradcam()
    if images.ndim != 4:
        raise ValueError(f"expected an image batch (N, C, H, W), got shape {tuple(images.shape)}")
    inputs = images.float().div(255.0) if images.dtype == torch.uint8 else images.float()
    # The input requires grad so that the class score depends on the target layer through
    # autograd even when all parameters up to it are frozen.
    inputs = inputs.detach().requires_grad_(True)
    with evaluation_mode(net), torch.enable_grad(), GradCAM(net, target_layer=target_layer) as extractor:
        logits = net(inputs)
        _ensure_feature_maps(net, target_layer, extractor.hook_a[0])
        classes = _explained_classes(logits, class_index)
        cams = extractor(class_idx=classes, scores=logits)[0]
    heatmaps = F.interpolate(cams.unsqueeze(1), size=images.shape[-2:], mode="bilinear", align_corners=False)
    return GradCamResult(heatmaps=heatmaps.squeeze(1).clamp_(0.0, 1.0), logits=logits.detach(), classes=classes,
                         cam_size=(int(cams.shape[-2]), int(cams.shape[-1])))
