"""The networks' input normalisation: torchvision's numbers, in the network's dtype and layout."""

from __future__ import annotations

import pytest
import torch
from torchvision.transforms.v2 import functional as TF

from cnnlab.models.normalize import NormalizeBatch


def random_batch(n: int = 32, size: int = 32) -> torch.Tensor:
    return torch.randint(0, 256, (n, 3, size, size), dtype=torch.uint8, generator=torch.Generator().manual_seed(1))


def test_normalize_computes_in_the_dtype_of_its_network():
    """Float32 normally; bfloat16 once the network is converted (trainer.precision=bf16-true), so
    the first convolution gets the dtype of its weights."""
    images = random_batch(4)
    normalize = NormalizeBatch([0.5, 0.4, 0.3], [0.2, 0.25, 0.3])
    expected = normalize(images)
    assert expected.dtype == torch.float32
    normalize.to(torch.bfloat16)
    for batch in (images, images.float() / 255, images.contiguous(memory_format=torch.channels_last)):
        out = normalize(batch)
        assert out.dtype == torch.bfloat16
        torch.testing.assert_close(out.float(), expected, atol=0.05, rtol=0.01)  # bfloat16 keeps 8 bits


def test_normalize_matches_torchvision():
    images = random_batch(4)
    mean, std = [0.4914, 0.4822, 0.4465], [0.2470, 0.2435, 0.2616]
    expected = TF.normalize(images.float() / 255, mean, std)
    normalize = NormalizeBatch(mean, std)
    assert torch.allclose(normalize(images), expected, atol=1e-5)
    assert torch.allclose(normalize(images.float() / 255), expected, atol=1e-5)
    for channels_last in (images.contiguous(memory_format=torch.channels_last),
                          (images.float() / 255).contiguous(memory_format=torch.channels_last)):
        out = normalize(channels_last)
        assert out.is_contiguous(memory_format=torch.channels_last)
        assert torch.allclose(out, expected, atol=1e-5)
    single = NormalizeBatch([0.5], [0.25])  # one value for every channel
    assert torch.allclose(single(images.contiguous(memory_format=torch.channels_last)), (images.float() / 255 - 0.5) / 0.25, atol=1e-5)


def test_bad_statistics_are_refused():
    with pytest.raises(ValueError, match=r"mean \[0.5, 0.5\] and std \[0.5, 0.5, 0.5\] differ in length"):
        NormalizeBatch([0.5, 0.5], [0.5, 0.5, 0.5])
    with pytest.raises(ValueError, match="std must be positive"):
        NormalizeBatch([0.5], [0.0])
    with pytest.raises(ValueError, match="images have 1 channels but the normalisation has 3"):
        NormalizeBatch([0.5] * 3, [0.5] * 3)(torch.zeros(2, 1, 4, 4, dtype=torch.uint8))
