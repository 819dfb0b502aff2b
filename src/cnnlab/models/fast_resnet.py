"""A small ResNet built for time-to-accuracy on CIFAR-10 (the "ResNet-9" of the speed records).

prep conv -> [conv, pool, residual] -> [conv, pool] -> [conv, pool, residual] -> global max-pool
-> linear, every conv followed by BatchNorm and an activation, the logits scaled down. The
layout follows the well-known DAWNBench CIFAR-10 ResNet; widths are configurable.
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor, nn

from cnnlab.models.normalize import NormalizeBatch


def conv_bn(in_channels: int, out_channels: int, pool: bool = False) -> nn.Sequential:
    layers: list[nn.Module] = [nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False)]
    if pool:
        layers.append(nn.MaxPool2d(2))
    layers += [nn.BatchNorm2d(out_channels), nn.GELU()]
    return nn.Sequential(*layers)


class Residual(nn.Module):
    """x + f(x) with f two conv-BN-activation layers of the same width."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.body = nn.Sequential(conv_bn(channels, channels), conv_bn(channels, channels))

    def forward(self, x: Tensor) -> Tensor:
        return x + self.body(x)


class FastResNet(nn.Module):
    """Args:
    num_classes: output classes.
    widths: channels of the prep layer and the three stages.
    logit_scale: the logits are multiplied by this (a small value keeps early training stable
        at the high learning rates of fast schedules).
    normalize: the input normalisation, applied first.
    """

    def __init__(
        self,
        num_classes: int = 10,
        widths: Sequence[int] = (64, 128, 256, 512),
        logit_scale: float = 0.125,
        normalize: nn.Module | None = None,
    ) -> None:
        super().__init__()
        prep, w1, w2, w3 = widths
        self.normalize = normalize or NormalizeBatch([0.0], [1.0])  # at least uint8 -> [0, 1]
        self.features = nn.Sequential(
            conv_bn(3, prep),
            conv_bn(prep, w1, pool=True),
            Residual(w1),
            conv_bn(w1, w2, pool=True),
            conv_bn(w2, w3, pool=True),
            Residual(w3),
        )
        self.pool = nn.Sequential(nn.AdaptiveMaxPool2d(1), nn.Flatten())
        self.head = nn.Linear(w3, num_classes, bias=False)
        self.logit_scale = logit_scale

    def cam_target_layer(self) -> nn.Module:
        """The layer Grad-CAM looks at by default: the last residual block."""
        return self.features[-1]

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.pool(self.features(self.normalize(x)))) * self.logit_scale
