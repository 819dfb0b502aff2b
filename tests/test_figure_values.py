"""The numbers behind the figures: grey conversion, the conv-layer panel, captured activations,
confusion-matrix normalisation and titles, and the scaling of image, feature-map and filter grids."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_dir
from matplotlib import colormaps

import cnnlab.tasks.convolution as convolution_task
from cnnlab.models.simple_cnn import SimpleCNN
from cnnlab.visualize.convolution import SOBEL_X, conv2d, generated_image, max_pool2d, to_grayscale
from cnnlab.visualize.feature_maps import capture_activations, find_layer
from cnnlab.visualize.figures import confusion_matrix_figure, feature_map_grid, filter_grid_image, to_display
from cnnlab.visualize.gradcam import grad_cam
from conftest import CONF_DIR


def test_to_grayscale_weighs_red_green_and_blue_by_the_601_luma_weights():
    pixels = np.array([[[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]]])  # pure red, green, blue
    np.testing.assert_allclose(to_grayscale(pixels), [[0.299, 0.587, 0.114]])


def test_to_grayscale_scales_a_0_to_255_image_to_0_to_1_like_the_same_image_as_floats():
    rgb = np.array([[[255, 0, 0], [0, 0, 255]], [[255, 255, 255], [128, 64, 0]]], dtype=np.uint8)
    grey = to_grayscale(rgb)
    np.testing.assert_allclose(grey, to_grayscale(rgb / 255.0))
    np.testing.assert_allclose(grey[0], [0.299, 0.114])
    assert grey.min() >= 0.0 and grey.max() == pytest.approx(1.0)
    # A very dark image (only 0s and 1s) is scaled by its type, not taken for one already in [0, 1].
    dark = np.array([[[1, 1, 1], [0, 0, 0]]], dtype=np.uint8)
    np.testing.assert_allclose(to_grayscale(dark), [[1 / 255, 0.0]])


def test_the_conv_layer_panel_of_the_walkthrough_is_sobel_x_then_relu_then_max_pool(tmp_path: Path, monkeypatch):
    drawn: list[list[tuple[str, np.ndarray]]] = []
    real_panels_figure = convolution_task.panels_figure

    def recording_panels_figure(panels, *args, **kwargs):
        drawn.append(list(panels))
        return real_panels_figure(panels, *args, **kwargs)

    monkeypatch.setattr(convolution_task, "panels_figure", recording_panels_figure)
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose("convolution", overrides=[f"paths.root_dir={tmp_path}", f"paths.output_dir={tmp_path / 'run'}",
                                                "image_size=16"])
    convolution_task.convolution_walkthrough(cfg)
    panels = dict(drawn[0])
    layer_panel = panels["Sobel x, ReLU, 2x2 max-pool"]
    response = conv2d(generated_image(16), SOBEL_X)
    # Without the ReLU, 2x2 blocks where the brightness only falls would show negative values.
    assert max_pool2d(response).min() < 0
    np.testing.assert_allclose(layer_panel, max_pool2d(np.maximum(response, 0.0)))
    assert layer_panel.min() >= 0.0


def test_captured_activations_keep_negatives_that_a_following_in_place_relu_clears():
    torch.manual_seed(0)
    net = SimpleCNN(num_classes=3, input_size=8, channels=(4,), hidden=8)
    name, pool = find_layer(net, "features.1")
    # SimpleCNN pools before its ReLU, which runs in place on the pool's output tensor.
    assert isinstance(pool, torch.nn.MaxPool2d) and net.features[2].inplace
    images = torch.rand(2, 3, 8, 8) - 0.5
    captured, _ = capture_activations(net, images, pool)
    expected = torch.nn.functional.max_pool2d(net.features[0](net.normalize(images)), 2)
    assert (expected < 0).any()
    torch.testing.assert_close(captured, expected)


def test_grad_cam_refuses_a_class_index_equal_to_the_number_of_classes_with_a_clear_message():
    torch.manual_seed(0)
    net = SimpleCNN(num_classes=3, input_size=8, channels=(4,), hidden=8)
    images = torch.rand(1, 3, 8, 8)
    with pytest.raises(ValueError, match="class index 3 is out of range for a model with 3 classes"):
        grad_cam(net, images, net.cam_target_layer(), class_index=3)


# Unbalanced: 100 cats (90 right), 10 dogs (5 right). Per-class recall 90% and 50%; overall
# accuracy 95/110 = 86.4%, while the mean recall (70%) and per-column precision (95%, 33%) differ.
UNBALANCED = np.array([[90, 10], [5, 5]])


def test_confusion_matrix_colours_and_labels_are_per_true_class_recall():
    figure = confusion_matrix_figure(UNBALANCED, ["cat", "dog"])
    axes = figure.axes[0]
    np.testing.assert_allclose(np.asarray(axes.images[0].get_array()), [[0.9, 0.1], [0.5, 0.5]])
    assert [label.get_text() for label in axes.get_yticklabels()] == ["cat (90%)", "dog (50%)"]


def test_confusion_matrix_title_gives_overall_accuracy_not_mean_recall():
    figure = confusion_matrix_figure(torch.tensor(UNBALANCED), ["cat", "dog"], title="test")
    assert figure.axes[0].get_title() == "test  accuracy 86.4% of 110"


def test_to_display_puts_a_non_square_image_in_height_width_channel_order():
    image = torch.rand(3, 2, 5)  # C, H, W with H != W
    shown = to_display(image)
    assert shown.shape == (2, 5, 3)
    expected = (image.clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()
    np.testing.assert_array_equal(shown, expected)
    np.testing.assert_array_equal(to_display((image * 255).round().to(torch.uint8)), expected)


def test_feature_map_grid_scales_each_channel_on_its_own():
    pattern = torch.arange(16, dtype=torch.float32).reshape(4, 4) / 15
    maps = torch.stack([pattern, 1000 * pattern - 7])  # the same picture at a very different scale
    grid = feature_map_grid(maps, columns=2, min_side=4)
    # make_grid: 2 pixels of padding around and between the 4x4 tiles.
    first, second = grid[:, 2:6, 2:6], grid[:, 2:6, 8:12]
    torch.testing.assert_close(first, second)
    viridis = colormaps["viridis"]
    lowest = torch.tensor(viridis(0.0, bytes=True)[:3], dtype=torch.uint8)
    highest = torch.tensor(viridis(1.0, bytes=True)[:3], dtype=torch.uint8)
    for tile in (first, second):  # each spans the whole colour map
        torch.testing.assert_close(tile[:, 0, 0], lowest)
        torch.testing.assert_close(tile[:, -1, -1], highest)


def test_filter_grid_image_scales_each_filter_over_its_channels_together_keeping_its_colour():
    ramp = torch.linspace(0.0, 1.0, 9).reshape(3, 3)
    reddish = torch.stack([ramp, 0.5 * ramp, 0.2 * ramp])  # red strongest, blue weakest
    weight = torch.stack([reddish, -3.0 * reddish + 0.1])  # a second filter on another scale and sign
    image = filter_grid_image(weight, min_side=3)
    # make_grid: 2 pixels of padding around and between the 3x3 tiles.
    tiles = [image[:, 2:5, 2:5], image[:, 2:5, 7:10]]
    for filt, tile in zip(weight, tiles, strict=True):
        expected = (filt - filt.min()) / (filt.max() - filt.min()) * 255
        assert tile.min() == 0 and tile.max() == 255
        torch.testing.assert_close(tile.float(), expected, atol=1.0, rtol=0.0)
    # The channels keep their proportions instead of each being stretched to 0..255 (grey).
    assert tiles[0][0].max() == 255 and tiles[0][1].max() == 128 and tiles[0][2].max() == 51
