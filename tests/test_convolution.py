"""The NumPy convolution walk-through: the textbook numbers, and agreement with PyTorch."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig

from cnnlab.errors import ConfigValueError, InputNotFoundError
from cnnlab.tasks.convolution import convolution_walkthrough
from cnnlab.visualize.convolution import (
    SOBEL_X,
    classic_example,
    conv2d,
    max_pool2d,
    true_convolution2d,
    walkthrough_text,
)
from conftest import CONF_DIR


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


def convolution_config(tmp_path: Path, *overrides: str) -> DictConfig:
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose("convolution", overrides=[f"paths.root_dir={tmp_path}", f"paths.output_dir={tmp_path / 'run'}",
                                                 *overrides])


@pytest.mark.parametrize("size", [0, 3])
def test_an_image_size_too_small_for_the_kernels_is_refused_before_anything_is_printed(tmp_path: Path, capsys,
                                                                                      size: int):
    with pytest.raises(ConfigValueError, match=f"image_size={size} is too small.*image_size=4 or more"):
        convolution_walkthrough(convolution_config(tmp_path, f"image_size={size}"))
    assert capsys.readouterr().out == ""


def test_a_folder_or_missing_file_as_image_is_named_before_the_walkthrough_prints(tmp_path: Path, capsys):
    folder = tmp_path / "photos"
    folder.mkdir()
    with pytest.raises(ConfigValueError, match=f"image={folder} is a folder; give one image file in it"):
        convolution_walkthrough(convolution_config(tmp_path, f"image={folder}"))
    with pytest.raises(InputNotFoundError, match="does not exist"):
        convolution_walkthrough(convolution_config(tmp_path, f"image={folder / 'nope.jpg'}"))
    assert capsys.readouterr().out == ""
