"""Batch-level image augmentation that runs on the batch's device.

Images travel from the data module to the device as uint8 tensors of shape (N, C, H, W).
Lightning's ``on_after_batch_transfer`` hook then calls :class:`RandomBatchAugment` on
training batches; the network normalises its own input (``cnnlab.models.normalize``). Each
sample of a batch draws its own random parameters, as a per-image torchvision pipeline
would, but the whole batch is handled by a few tensor operations instead of N PIL calls.

Why not torchvision.transforms.v2 or kornia: v2 transforms draw one set of parameters per
call, so a batch would share one crop; kornia draws per sample but costs several
milliseconds per op on a 2-core CPU, which is more than the scratch CNN's own step budget.
The crop and flip here are one integer gather, exact to the pixel.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from cnnlab.errors import ConfigValueError
from cnnlab.utils.config import ensure_switch

# ITU-R 601 luma weights, as torchvision's rgb_to_grayscale uses for contrast.
_LUMA_WEIGHTS = (0.299, 0.587, 0.114)


class RandomBatchAugment(nn.Module):
    """Random crop with zero padding, horizontal flip, rotation and colour jitter, per sample.

    Args:
        crop_padding: pad each side by this many zero pixels, then crop back to the input
            size at a random offset (torchvision's ``RandomCrop(size, padding=p)``). 0 disables.
        hflip: flip each image left-right with probability 0.5.
        rotation_degrees: rotate each image by an angle drawn uniformly from
            [-rotation_degrees, rotation_degrees] (bilinear, zero fill). 0 disables.
        brightness: multiply each image by a factor drawn from [1 - b, 1 + b]. 0 disables.
        contrast: blend each image with its mean grey level by a factor drawn from
            [1 - c, 1 + c]. 0 disables.

    Input: uint8 (N, C, H, W). Output: float32 (N, C, H, W) in [0, 1].
    """

    luma: Tensor  # a buffer, registered in __init__ (declared so type checkers see a Tensor)

    def __init__(
        self,
        crop_padding: int = 0,
        hflip: bool = False,
        rotation_degrees: float = 0.0,
        brightness: float = 0.0,
        contrast: float = 0.0,
    ) -> None:
        super().__init__()
        settings = {"crop_padding": crop_padding, "rotation_degrees": rotation_degrees, "brightness": brightness,
                    "contrast": contrast}
        negative = [f"data.augment.{name}={value}" for name, value in settings.items() if value < 0]
        if negative:
            raise ConfigValueError(f"{', '.join(negative)}: augmentation strengths must be 0 (off) or more")
        too_strong = [f"data.augment.{name}={value}" for name, value in settings.items()
                      if name in ("brightness", "contrast") and value >= 1]
        if too_strong:
            raise ConfigValueError(
                f"{', '.join(too_strong)}: brightness and contrast must be below 1 (each image's factor is drawn "
                f"from [1 - x, 1 + x]; 0.2 is usual)"
            )
        self.crop_padding = int(crop_padding)
        self.hflip = ensure_switch(hflip, "data.augment.hflip")
        self.rotation_degrees = float(rotation_degrees)
        self.brightness = float(brightness)
        self.contrast = float(contrast)
        self.register_buffer("luma", torch.tensor(_LUMA_WEIGHTS).view(1, 3, 1, 1), persistent=False)

    def extra_repr(self) -> str:
        return (
            f"crop_padding={self.crop_padding}, hflip={self.hflip}, "
            f"rotation_degrees={self.rotation_degrees}, brightness={self.brightness}, "
            f"contrast={self.contrast}"
        )

    def forward(self, images: Tensor) -> Tensor:
        if images.dtype != torch.uint8:
            raise TypeError(f"expected a uint8 image batch, got {images.dtype}")
        images = self._crop_and_flip(images)
        images = images.float().div_(255.0)
        if self.rotation_degrees > 0:
            images = self._rotate(images)
        if self.brightness > 0 or self.contrast > 0:
            images = self._jitter(images)
        return images

    def _crop_and_flip(self, images: Tensor) -> Tensor:
        """Each sample's random crop of its zero-padded image, mirrored for about half of them.

        The work happens on an (N, H, W, C) view, so the result is a channels-last batch (the fast
        layout for the convolutions that follow) and each gathered element is a whole pixel. All
        crop windows of a padded image form one strided view (``unfold``), and one gather picks
        each sample's window. A mirrored sample takes its window from the mirror image of its
        padded image: with the offset uniform over [0, 2 * padding], that is distributed exactly as
        torchvision's ``RandomCrop(padding=p)`` followed by ``RandomHorizontalFlip``.
        """
        n, _, h, w = images.shape
        pad = self.crop_padding
        if pad == 0 and not self.hflip:
            return images
        device = images.device
        pixels = images.permute(0, 2, 3, 1)
        if pad:
            pixels = F.pad(pixels, (0, 0, pad, pad, pad, pad))  # zeros around H and W
        source = torch.arange(n, device=device)
        if self.hflip:
            mirrored = torch.rand(n, device=device) < 0.5
            pixels = torch.cat([pixels, pixels.flip(2)])
            source = source + n * mirrored
        top = torch.randint(0, 2 * pad + 1, (n,), device=device)
        left = torch.randint(0, 2 * pad + 1, (n,), device=device)
        windows = pixels.unfold(1, h, 1).unfold(2, w, 1)  # (N', 2p+1, 2p+1, C, H, W), a view
        cropped = windows.permute(0, 1, 2, 4, 5, 3)[source, top, left]  # (N, H, W, C), contiguous
        return cropped.permute(0, 3, 1, 2)

    def _rotate(self, images: Tensor) -> Tensor:
        n, _, h, w = images.shape
        angle = (torch.rand(n, device=images.device) * 2 - 1) * math.radians(self.rotation_degrees)
        cos, sin = torch.cos(angle), torch.sin(angle)
        zero = torch.zeros_like(cos)
        # Rotation in pixel space, expressed in affine_grid's normalised coordinates.
        theta = torch.stack(
            [
                torch.stack([cos, -sin * h / w, zero], dim=1),
                torch.stack([sin * w / h, cos, zero], dim=1),
            ],
            dim=1,
        )
        grid = F.affine_grid(theta, list(images.shape), align_corners=False)
        return F.grid_sample(images, grid, mode="bilinear", padding_mode="zeros", align_corners=False)

    def _jitter(self, images: Tensor) -> Tensor:
        n = images.shape[0]
        shape = (n, 1, 1, 1)
        if self.brightness > 0:
            factor = 1 + (torch.rand(shape, device=images.device) * 2 - 1) * self.brightness
            images = (images * factor).clamp_(0, 1)
        if self.contrast > 0:
            factor = 1 + (torch.rand(shape, device=images.device) * 2 - 1) * self.contrast
            if images.shape[1] == 3:
                grey_mean = (images * self.luma).sum(dim=1, keepdim=True).mean(dim=(2, 3), keepdim=True)
            else:
                grey_mean = images.mean(dim=(1, 2, 3), keepdim=True)
            images = ((images - grey_mean) * factor + grey_mean).clamp_(0, 1)
        return images
