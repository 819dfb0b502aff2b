"""On-device batch augmentation: per-sample parameters, exact crops."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from cnnlab.data.augment import RandomBatchAugment
from cnnlab.errors import ConfigValueError


def random_batch(n: int = 32, size: int = 32) -> torch.Tensor:
    return torch.randint(0, 256, (n, 3, size, size), dtype=torch.uint8, generator=torch.Generator().manual_seed(1))


def matching_crops(source: torch.Tensor, out: torch.Tensor, pad: int) -> list[tuple[int, int, bool]]:
    """Every (top, left, flipped) such that ``out`` is that crop of the zero-padded ``source``."""
    padded = F.pad(source, (pad, pad, pad, pad))
    h, w = source.shape[-2:]
    found = []
    for top in range(2 * pad + 1):
        for left in range(2 * pad + 1):
            crop = padded[:, top : top + h, left : left + w]
            for flipped in (False, True):
                if torch.equal(crop.flip(-1) if flipped else crop, out):
                    found.append((top, left, flipped))
    return found


def test_each_sample_gets_its_own_exact_crop_and_flip():
    torch.manual_seed(0)
    images = random_batch()
    out = RandomBatchAugment(crop_padding=4, hflip=True)(images)
    assert out.shape == images.shape and out.dtype == torch.float32
    params = []
    for source, result in zip(images, out, strict=True):
        matches = matching_crops(source, (result * 255).round().to(torch.uint8), pad=4)
        assert len(matches) == 1, "each output must be exactly one padded crop of its own input"
        params.append(matches[0])
    assert len({p[:2] for p in params}) > 1, "samples of one batch must be able to get different crops"
    assert {p[2] for p in params} == {False, True}, "some samples flipped, some not"
    assert out.is_contiguous(memory_format=torch.channels_last), "the fast layout for the convolutions that follow"


def test_crop_offsets_and_flips_are_uniform_like_torchvision():
    # RandomCrop(padding=1) then RandomHorizontalFlip: 9 offsets x 2 flips, each with chance 1/18.
    torch.manual_seed(0)
    images = torch.randint(0, 256, (1800, 3, 6, 6), dtype=torch.uint8, generator=torch.Generator().manual_seed(2))
    out = (RandomBatchAugment(crop_padding=1, hflip=True)(images) * 255).round().to(torch.uint8)
    counts: dict[tuple[int, int, bool], int] = {}
    for source, result in zip(images, out, strict=True):
        matches = matching_crops(source, result, pad=1)
        assert len(matches) == 1
        counts[matches[0]] = counts.get(matches[0], 0) + 1
    assert len(counts) == 18
    assert all(55 <= count <= 145 for count in counts.values()), counts  # 100 expected each, sd ~10


def test_identical_images_in_one_batch_come_out_different():
    torch.manual_seed(0)
    images = random_batch(1).repeat(16, 1, 1, 1)
    out = RandomBatchAugment(crop_padding=4, hflip=True, rotation_degrees=15, brightness=0.2, contrast=0.2)(images)
    distinct = {tuple(o.flatten().tolist()) for o in out}
    assert len(distinct) == 16


def test_rotation_and_jitter_keep_shape_and_range():
    torch.manual_seed(0)
    out = RandomBatchAugment(rotation_degrees=15, brightness=0.2, contrast=0.2)(random_batch(8, 24))
    assert out.shape == (8, 3, 24, 24)
    assert out.min() >= 0 and out.max() <= 1


def test_zero_rotation_is_identity_and_brightness_scales_per_sample():
    images = random_batch(4)
    assert torch.allclose(RandomBatchAugment(rotation_degrees=1e-9)(images), images.float() / 255, atol=1e-5)
    torch.manual_seed(0)
    dim = torch.full((6, 3, 8, 8), 100, dtype=torch.uint8)
    out = RandomBatchAugment(brightness=0.2)(dim)
    factors = out[:, 0, 0, 0] / (100 / 255)
    assert torch.all((factors >= 0.8 - 1e-6) & (factors <= 1.2 + 1e-6))
    assert len(set(factors.tolist())) == 6


def test_bad_settings_are_rejected():
    with pytest.raises(ConfigValueError, match=r"^data.augment.brightness=1.5: brightness and contrast must be below 1"):
        RandomBatchAugment(brightness=1.5)
    with pytest.raises(ConfigValueError, match=r"^data.augment.crop_padding=-4, data.augment.rotation_degrees=-15: "
                                               r"augmentation strengths must be 0 \(off\) or more"):
        RandomBatchAugment(crop_padding=-4, rotation_degrees=-15)
    with pytest.raises(TypeError):
        RandomBatchAugment(hflip=True)(torch.zeros(2, 3, 8, 8))
