"""The NumPy convolution walk-through: the textbook numbers, and agreement with PyTorch."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from cnnlab.visualize.convolution import (
    SOBEL_X,
    classic_example,
    conv2d,
    max_pool2d,
    true_convolution2d,
    walkthrough_text,
)


def test_sobel_on_the_5x5_ramp_gives_8_as_cross_correlation_and_minus_8_as_true_convolution():
    image, kernel, correlation, convolution = classic_example()
    assert image[0].tolist() == [1, 2, 3, 4, 5] and image[4, 4] == 25
    assert np.array_equal(kernel, [[-1, 0, 1], [-2, 0, 2], [-1, 0, 1]])
    assert correlation.shape == (3, 3) and np.all(correlation == 8)
    assert convolution.shape == (3, 3) and np.all(convolution == -8)
    text = walkthrough_text()
    assert "= 8" in text and "[[-8 -8 -8]" in text


@pytest.mark.parametrize(("image_shape", "kernel_shape"), [((7, 9), (3, 3)), ((12, 10), (5, 2)), ((4, 4), (4, 4))])
def test_conv2d_agrees_with_torch_conv2d(image_shape, kernel_shape):
    rng = np.random.default_rng(0)
    image = rng.normal(size=image_shape)
    kernel = rng.normal(size=kernel_shape)
    expected = F.conv2d(torch.from_numpy(image)[None, None], torch.from_numpy(kernel)[None, None])[0, 0].numpy()
    assert conv2d(image, kernel).shape == expected.shape
    np.testing.assert_allclose(conv2d(image, kernel), expected, rtol=1e-12, atol=1e-12)
    # The true convolution is torch's conv2d with the kernel flipped, and differs from it for this kernel.
    flipped = F.conv2d(torch.from_numpy(image)[None, None], torch.from_numpy(kernel).flip(0, 1)[None, None])[0, 0]
    np.testing.assert_allclose(true_convolution2d(image, kernel), flipped.numpy(), rtol=1e-12, atol=1e-12)
    assert not np.allclose(true_convolution2d(image, kernel), expected)


def test_max_pool_agrees_with_torch_and_drops_an_odd_last_row():
    values = np.random.default_rng(1).normal(size=(7, 6))
    expected = F.max_pool2d(torch.from_numpy(values)[None, None], 2)[0, 0].numpy()
    pooled = max_pool2d(values)
    assert pooled.shape == (3, 3)
    np.testing.assert_array_equal(pooled, expected)


def test_bad_shapes_are_refused():
    with pytest.raises(ValueError, match="does not fit"):
        conv2d(np.zeros((2, 2)), SOBEL_X)
    with pytest.raises(ValueError, match="2-D"):
        conv2d(np.zeros((3, 3, 3)), SOBEL_X)
