"""The scratch CNNs: layer-for-layer shapes and parameter counts; networks normalise their own input."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from cnnlab.data.augment import NormalizeBatch
from cnnlab.models.simple_cnn import SimpleCNN
from cnnlab.models.torchvision_ft import TorchvisionFineTuner


def count(module: nn.Module, trainable_only: bool = False) -> int:
    return sum(p.numel() for p in module.parameters() if p.requires_grad or not trainable_only)


def test_simple_cnn_has_the_tutorial_architecture_and_parameter_count():
    net = SimpleCNN(num_classes=10)
    convs = [m for m in net.modules() if isinstance(m, nn.Conv2d)]
    linears = [m for m in net.modules() if isinstance(m, nn.Linear)]
    assert [(c.in_channels, c.out_channels, c.kernel_size, c.padding) for c in convs] == [
        (3, 32, (3, 3), (1, 1)), (32, 64, (3, 3), (1, 1)), (64, 128, (3, 3), (1, 1))]
    assert [(fc.in_features, fc.out_features) for fc in linears] == [(2048, 512), (512, 10)]
    assert [m.p for m in net.modules() if isinstance(m, nn.Dropout)] == [0.5]
    # conv 896 + 18,496 + 73,856; fc 1,049,088 + 5,130
    assert count(net) == 1_147_466
    assert net(torch.zeros(4, 3, 32, 32)).shape == (4, 10)


def test_networks_normalise_their_input_first(resnet_weights: Path):
    normalize = NormalizeBatch([0.5] * 3, [0.25] * 3)
    images = torch.randint(0, 256, (2, 3, 32, 32), dtype=torch.uint8)
    for net in (SimpleCNN(normalize=normalize), TorchvisionFineTuner(10, weights=None, normalize=normalize, input_size=32)):
        net.eval()
        seen: list[torch.Tensor] = []
        first = net.features[0] if isinstance(net, SimpleCNN) else net.backbone.conv1
        first.register_forward_hook(lambda module, args, out, seen=seen: seen.append(args[0]))
        net(images)
        assert torch.allclose(seen[0], (images.float() / 255 - 0.5) / 0.25, atol=1e-5)


def test_simple_cnn_bn_adds_batchnorm_after_each_conv():
    net = SimpleCNN(num_classes=10, batch_norm=True)
    assert len([m for m in net.modules() if isinstance(m, nn.BatchNorm2d)]) == 3
    # convs lose their 224 biases (BatchNorm's shift replaces them), BatchNorm adds 2 x 224.
    assert count(net) == 1_147_466 - 224 + 448
    assert net(torch.zeros(2, 3, 32, 32)).shape == (2, 10)


def test_simple_cnn_other_sizes_and_bad_size():
    assert SimpleCNN(num_classes=3, input_size=64)(torch.zeros(2, 3, 64, 64)).shape == (2, 3)
    with pytest.raises(ValueError, match="divisible by 8"):
        SimpleCNN(input_size=30)


def test_cam_target_layer_is_the_last_conv_block():
    cnn = SimpleCNN()
    assert cnn.cam_target_layer() is cnn.features[-2]  # ReLU after the 64->128 conv
