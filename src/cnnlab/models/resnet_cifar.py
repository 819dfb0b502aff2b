"""torchvision's ResNet with the CIFAR stem, for training from scratch on 32x32 images."""

from __future__ import annotations

from torch import Tensor, nn
from torchvision.models import get_model

from cnnlab.models.normalize import NormalizeBatch


class CifarResNet(nn.Module):
    """A torchvision ResNet whose ImageNet stem (7x7 stride-2 conv + max-pool, which would
    shrink a 32x32 image to 8x8 before the first block) is replaced by a 3x3 stride-1 conv.

    Args:
        num_classes: output classes.
        arch: torchvision ResNet name (resnet18, resnet34, resnet50, ...).
        normalize: the input normalisation, applied first.
    """

    def __init__(self, num_classes: int = 10, arch: str = "resnet18", normalize: nn.Module | None = None) -> None:
        super().__init__()
        self.normalize = normalize or NormalizeBatch([0.0], [1.0])  # at least uint8 -> [0, 1]
        self.net = get_model(arch, weights=None, num_classes=num_classes)
        self.net.conv1 = nn.Conv2d(3, self.net.conv1.out_channels, kernel_size=3, stride=1, padding=1, bias=False)
        nn.init.kaiming_normal_(self.net.conv1.weight, mode="fan_out", nonlinearity="relu")
        self.net.maxpool = nn.Identity()

    def cam_target_layer(self) -> nn.Module:
        """The layer Grad-CAM looks at by default: the last residual stage."""
        return self.net.layer4

    def forward(self, x: Tensor) -> Tensor:
        return self.net(self.normalize(x))
