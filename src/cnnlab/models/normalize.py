"""Input normalisation, the first layer of every cnnlab network.

The data path hands the network uint8 batches (augmented on the device); the network turns
them into floats normalised by per-channel statistics itself, so a checkpoint carries the
normalisation its weights were trained with (conf/model/normalize/ picks the statistics).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn


class NormalizeBatch(nn.Module):
    """Turn a uint8 (or [0, 1] float) batch into floats normalised by per-channel mean and std.

    ``mean`` and ``std`` are in [0, 1] units, as torchvision's ``Normalize`` after ``ToTensor``;
    one value each applies to every channel (``NormalizeBatch([0], [1])`` only scales to [0, 1]).
    The output has the dtype of the module's constants, i.e. of the network it belongs to:
    float32 normally (and under autocast), bfloat16 when the network was converted to it
    (``trainer.precision=bf16-true``). It keeps the input's memory format.
    """

    # Buffers, registered in __init__ (declared so type checkers see Tensors, not Tensor | Module).
    scale: Tensor
    shift: Tensor
    uint8_scale: Tensor

    def __init__(self, mean: Sequence[float], std: Sequence[float]) -> None:
        super().__init__()
        if len(mean) != len(std):
            raise ValueError(f"normalisation mean {list(mean)} and std {list(std)} differ in length")
        if any(s <= 0 for s in std):
            raise ValueError(f"normalisation std must be positive, got {list(std)}")
        mean_t = torch.tensor([float(m) for m in mean]).view(1, -1, 1, 1)
        std_t = torch.tensor([float(s) for s in std]).view(1, -1, 1, 1)
        self.register_buffer("scale", 1.0 / std_t, persistent=False)
        self.register_buffer("shift", -mean_t / std_t, persistent=False)
        self.register_buffer("uint8_scale", 1.0 / (255.0 * std_t), persistent=False)  # for 0..255 input
        # (shift, scale) tiled along rows of W x C values, per (uint8 input?, width, dtype, device):
        # made on the first batch of a shape instead of on every step.
        self._tiled: dict[tuple, tuple[Tensor, Tensor]] = {}

    def forward(self, images: Tensor) -> Tensor:
        channels = images.shape[1]
        if self.scale.shape[1] not in (1, channels):
            raise ValueError(f"images have {channels} channels but the normalisation has {self.scale.shape[1]}")
        scale = self.uint8_scale if images.dtype == torch.uint8 else self.scale
        values = images.to(scale.dtype)
        if self.scale.shape[1] == 1 or not _is_channels_last(images):
            return torch.addcmul(self.shift, values, scale)
        # Per-channel constants broadcast over a channels-last batch leave an innermost run of
        # only C values, which vectorises poorly (about 7x slower on a CPU). As rows of W * C
        # values with the constants tiled along each row, the same arithmetic runs at full speed.
        n, _, h, w = images.shape
        rows = values.permute(0, 2, 3, 1).reshape(n * h, w * channels)
        key = (images.dtype == torch.uint8, w, scale.dtype, scale.device)
        if key not in self._tiled:
            self._tiled[key] = (self.shift.view(channels).repeat(w), scale.view(channels).repeat(w))
        tiled_shift, tiled_scale = self._tiled[key]
        out = torch.addcmul(tiled_shift, rows, tiled_scale)
        return out.view(n, h, w, channels).permute(0, 3, 1, 2)


def _is_channels_last(images: Tensor) -> bool:
    """Whether a 4-d batch is stored in channels-last order (and not also plainly contiguous)."""
    return images.is_contiguous(memory_format=torch.channels_last) and not images.is_contiguous()
