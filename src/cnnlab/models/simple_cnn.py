"""The classic scratch CNN for 32x32 images: three conv/pool stages and a two-layer classifier."""

from __future__ import annotations

from torch import Tensor, nn

from cnnlab.errors import ConfigValueError, InputSizeError
from cnnlab.models.normalize import NormalizeBatch
from cnnlab.utils.config import ensure_switch


class SimpleCNN(nn.Module):
    """By default conv 3->32->64->128 (3x3, padding 1), each + [BatchNorm] + 2x2 max-pool + ReLU,
    then fc (128 * (S/8)^2)->512, ReLU, dropout, fc 512->num_classes.

    Each block pools before its ReLU. ReLU is monotone, so ReLU then max-pool and max-pool
    then ReLU give the same output and the same gradients; this order runs the ReLU on a
    quarter of the values: on the 2-core dev CPU in bf16, the first block's ReLU and pool
    (forward and backward) take 1.75 ms instead of 2.82 ms of a ~20 ms training step.

    Args:
        num_classes: size of the output layer.
        input_size: side of the square input images (32 for CIFAR); must be divisible by
            2 ** len(channels) (8 for the default three stages).
        batch_norm: add BatchNorm after every convolution (``simple_cnn_bn``). The conv then
            has no bias of its own, since BatchNorm's shift makes it redundant.
        channels: output channels of the conv stages, one 2x2 pool each (three by default).
        hidden: width of the hidden fully connected layer.
        dropout: dropout probability before the last layer.
        normalize: the input normalisation, applied first (see ``cnnlab.models.normalize.NormalizeBatch``).
    """

    def __init__(
        self,
        num_classes: int = 10,
        input_size: int = 32,
        batch_norm: bool = False,
        channels: tuple[int, ...] = (32, 64, 128),
        hidden: int = 512,
        dropout: float = 0.5,
        normalize: nn.Module | None = None,
    ) -> None:
        super().__init__()
        batch_norm = ensure_switch(batch_norm, "model.batch_norm")
        # Zero widths build without complaint in torch: a zero-width layer (or no convolution at
        # all) would train a network that cannot learn the images, or fail later with a shape error.
        if not channels or any(int(width) < 1 for width in channels):
            raise ConfigValueError(f"model.channels={list(channels)}: give one width of at least 1 per conv stage, "
                                   f"e.g. model.channels=[32,64,128]")
        if hidden < 1:
            raise ConfigValueError(f"model.hidden={hidden}: the hidden layer needs a width of at least 1, e.g. model.hidden=512")
        self.normalize = normalize or NormalizeBatch([0.0], [1.0])  # at least uint8 -> [0, 1]
        downsample = 2 ** len(channels)
        if input_size % downsample:
            below = downsample * (input_size // downsample)
            fitting = (below, below + downsample) if below else (downsample,)
            raise InputSizeError(input_size, f"must be divisible by {downsample} ({len(channels)} 2x2 pools)", fitting)
        self.input_size = input_size
        layers: list[nn.Module] = []
        previous = 3  # RGB: every data module hands over three channels
        for width in channels:
            layers.append(nn.Conv2d(previous, width, kernel_size=3, padding=1, bias=not batch_norm))
            if batch_norm:
                layers.append(nn.BatchNorm2d(width))
            layers += [nn.MaxPool2d(2), nn.ReLU(inplace=True)]
            previous = width
        self.features = nn.Sequential(*layers)
        flat = previous * (input_size // downsample) ** 2
        self.classifier = nn.Sequential(
            nn.Flatten(),
            nn.Linear(flat, hidden),
            nn.ReLU(inplace=True),
            nn.Dropout(dropout),
            nn.Linear(hidden, num_classes),
        )

    def cam_target_layer(self) -> nn.Module:
        """The layer Grad-CAM looks at by default: the last conv block before pooling (its
        conv, or its BatchNorm), the finest map of the last block (8x8 for 32x32 input)."""
        return self.features[-3]

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(self.features(self.normalize(x)))
