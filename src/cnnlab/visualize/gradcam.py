"""Grad-CAM heatmaps: where in the image the evidence for a class lies, as a chosen layer sees it.

The computation is torchcam's ``GradCAM`` (https://github.com/frgfm/torch-cam): the target
layer's activations, weighted per channel by the spatial mean of the class score's gradient
with respect to them, summed over channels, passed through ReLU and scaled to [0, 1]. This
module adds what cnnlab's networks need around it: a context with gradients enabled and
the network in eval mode (restored afterwards), and an input that requires gradients, so the
score is connected to the target layer even when every layer before it is frozen (the
frozen ResNet's layer4), and the mean over an image and its mirror image for a classifier that
predicts with flip test-time augmentation (``classifier.flip_tta``).
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
    flip_tta: bool = False


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
    flip_tta: bool = False,
) -> GradCamResult:
    """Grad-CAM of ``images`` (N, C, H, W; uint8, or floats in [0, 1]) at ``target_layer`` of ``net``.

    ``class_index`` picks the class explained: None for each image's predicted class, an int
    for one class for all images, or one index per image. The network runs in eval mode with
    gradients enabled, whatever the caller's context; its modes are restored afterwards and no
    parameter's ``.grad`` is touched. A ``target_layer`` that does not output feature maps
    (N, C, H, W) is a :class:`LayerNotFoundError`.

    ``flip_tta`` explains a classifier that predicts with the mean of the logits of an image and
    its mirror image (``classifier.flip_tta``): the predicted class and the returned logits are
    that mean's, and each heatmap is the mean of the image's map and its mirror image's map
    (for the same class) flipped back.
    """
    GradCAM = _torchcam_gradcam()
    if images.ndim != 4:
        raise ValueError(f"expected an image batch (N, C, H, W), got shape {tuple(images.shape)}")
    inputs = images.float().div(255.0) if images.dtype == torch.uint8 else images.float()
    n = inputs.shape[0]
    if flip_tta:
        # One pass over the images and their mirror images; eval mode keeps the images independent.
        inputs = torch.cat([inputs, inputs.flip(3)])
    # The input requires grad so that the class score depends on the target layer through
    # autograd even when all parameters up to it are frozen.
    inputs = inputs.detach().requires_grad_(True)
    with evaluation_mode(net), torch.enable_grad(), GradCAM(net, target_layer=target_layer) as extractor:
        logits = net(inputs)
        _ensure_feature_maps(net, target_layer, extractor.hook_a[0])
        predicted = (logits[:n] + logits[n:]) / 2 if flip_tta else logits
        classes = _explained_classes(predicted, class_index)
        cams = extractor(class_idx=classes * 2 if flip_tta else classes, scores=logits)[0]
    if flip_tta:
        # The TTA score is (s(x) + s(mirror x)) / 2, two passes each with its own activations at
        # the layer. Its gradient with respect to each pass's activations is half that pass's own,
        # so Grad-CAM of the TTA score at each pass is that pass's own map (ReLU and the scaling
        # ignore the factor 1/2). The mirror pass's map is flipped back so that its evidence lies
        # where it is in the image, and the two are averaged: what the TTA prediction looked at.
        # Not exactly one Grad-CAM of the summed evidence: torchcam applies ReLU and scales each
        # pass's map to [0, 1] on its own before they are averaged, so both passes weigh equally.
        cams = (cams[:n] + cams[n:].flip(-1)) / 2
    heatmaps = F.interpolate(cams.unsqueeze(1), size=images.shape[-2:], mode="bilinear", align_corners=False)
    return GradCamResult(heatmaps=heatmaps.squeeze(1).clamp_(0.0, 1.0), logits=predicted.detach(), classes=classes,
                         cam_size=(int(cams.shape[-2]), int(cams.shape[-1])), flip_tta=flip_tta)
