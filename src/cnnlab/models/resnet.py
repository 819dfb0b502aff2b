"""A torchvision ResNet with ImageNet weights as a frozen feature extractor and a new linear head.

This is where the backbone is frozen: :meth:`ResNetFineTuner.__init__` turns off gradients of
the frozen stages, :meth:`train` keeps their BatchNorm layers in eval mode, and
:meth:`forward` runs them without autograd.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.models import get_model

from cnnlab.models.pretrained import load_pretrained

RESNET_STAGES = 5  # stem (conv1, bn1, relu, maxpool), layer1, layer2, layer3, layer4


class ResNetFineTuner(nn.Module):
    """ResNet backbone (frozen except its last ``trainable_stages`` stages) plus a new linear head.

    Args:
        num_classes: classes of the new head.
        arch: torchvision ResNet name (resnet18, resnet34, resnet50, ...).
        weights: torchvision weights name (``IMAGENET1K_V1``, ``DEFAULT``) or None for random init.
        weights_path: a local weights file, used instead of torchvision's download/cache.
        input_size: side of the square image the backbone sees. Batches of another size are
            resized on the device (e.g. CIFAR's 32x32 upsampled to 224 as ImageNet models expect).
        trainable_stages: how many of the last stages (of stem, layer1..layer4) to train;
            0 freezes the whole backbone (a linear probe), 5 fine-tunes everything.
        head_dropout: dropout before the head.
        normalize: the input normalisation, applied first (ImageNet statistics for ImageNet weights).
    """

    def __init__(
        self,
        num_classes: int,
        arch: str = "resnet18",
        weights: str | None = "IMAGENET1K_V1",
        weights_path: str | None = None,
        input_size: int = 32,
        trainable_stages: int = 0,
        head_dropout: float = 0.0,
        normalize: nn.Module | None = None,
    ) -> None:
        super().__init__()
        if not 0 <= trainable_stages <= RESNET_STAGES:
            raise ValueError(f"trainable_stages must be in 0..{RESNET_STAGES}, got {trainable_stages}")
        backbone = get_model(arch, weights=None)
        load_pretrained(backbone, arch, weights, weights_path)
        self.input_size = input_size
        self.normalize = normalize or nn.Identity()
        stem = nn.Sequential(backbone.conv1, backbone.bn1, backbone.relu, backbone.maxpool)
        stages = [stem, backbone.layer1, backbone.layer2, backbone.layer3, backbone.layer4]
        n_frozen = RESNET_STAGES - trainable_stages
        self.frozen = nn.Sequential(*stages[:n_frozen])
        self.trainable = nn.Sequential(*stages[n_frozen:])
        self.frozen.requires_grad_(False)
        self.pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.head = nn.Sequential(nn.Dropout(head_dropout), nn.Linear(backbone.fc.in_features, num_classes))
        self.frozen.eval()

    def train(self, mode: bool = True) -> ResNetFineTuner:
        """Switch train/eval mode, but keep the frozen stages in eval mode.

        Frozen means frozen: in train mode BatchNorm would update its running statistics
        from our batches even without gradients, and the ImageNet features would drift.
        """
        super().train(mode)
        self.frozen.eval()
        return self

    def cam_target_layer(self) -> nn.Module:
        """The layer Grad-CAM looks at by default: the last residual stage (layer4)."""
        return (self.trainable if len(self.trainable) else self.frozen)[-1]

    def features(self, x: Tensor) -> Tensor:
        """Pooled backbone features (N, C) for a batch of images."""
        x = self.normalize(x)
        if x.shape[-2:] != (self.input_size, self.input_size):
            x = F.interpolate(x, size=(self.input_size, self.input_size), mode="bilinear", align_corners=False)
        if self.training:
            # Forward-only cost for the frozen part while training: no activations are kept
            # for backward. Outside training, gradients may flow (Grad-CAM needs them).
            with torch.no_grad():
                x = self.frozen(x)
        else:
            x = self.frozen(x)
        return self.pool(self.trainable(x))

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.features(x))
