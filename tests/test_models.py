"""The networks: layer-for-layer shapes and counts, and what 'frozen' means for the ResNet."""

from __future__ import annotations

import functools
import urllib.error
from pathlib import Path

import pytest
import torch
from torch import nn

from cnnlab.data.augment import NormalizeBatch
from cnnlab.errors import WeightsUnavailableError
from cnnlab.models.resnet import ResNetFineTuner
from cnnlab.models.simple_cnn import SimpleCNN
from cnnlab.training.classifier import ImageClassifier


def count(module: nn.Module, trainable_only: bool = False) -> int:
    return sum(p.numel() for p in module.parameters() if p.requires_grad or not trainable_only)


def test_simple_cnn_has_the_tutorial_architecture_and_parameter_count():
    net = SimpleCNN(num_classes=10)
    convs = [m for m in net.modules() if isinstance(m, nn.Conv2d)]
    linears = [m for m in net.modules() if isinstance(m, nn.Linear)]
    assert [(c.in_channels, c.out_channels, c.kernel_size, c.padding) for c in convs] == [
        (3, 32, (3, 3), (1, 1)), (32, 64, (3, 3), (1, 1)), (64, 128, (3, 3), (1, 1))]
    assert [(l.in_features, l.out_features) for l in linears] == [(2048, 512), (512, 10)]
    assert [m.p for m in net.modules() if isinstance(m, nn.Dropout)] == [0.5]
    # conv 896 + 18,496 + 73,856; fc 1,049,088 + 5,130
    assert count(net) == 1_147_466
    assert net(torch.zeros(4, 3, 32, 32)).shape == (4, 10)


def test_networks_normalise_their_input_first(resnet_weights: Path):
    normalize = NormalizeBatch([0.5] * 3, [0.25] * 3)
    images = torch.randint(0, 256, (2, 3, 32, 32), dtype=torch.uint8)
    for net in (SimpleCNN(normalize=normalize), ResNetFineTuner(10, weights=None, normalize=normalize)):
        net.eval()
        seen = []
        first = net.features[0] if isinstance(net, SimpleCNN) else net.frozen[0][0]
        first.register_forward_hook(lambda module, args, out: seen.append(args[0]))
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


def test_resnet_backbone_is_frozen_and_only_the_head_is_optimised(resnet_weights: Path):
    net = ResNetFineTuner(num_classes=7, weights=None, weights_path=str(resnet_weights))
    assert count(net, trainable_only=True) == 512 * 7 + 7
    assert count(net) == 11_176_512 + 512 * 7 + 7  # ResNet-18 without its fc, plus the new head
    model = ImageClassifier(net, num_classes=7, optimizer=functools.partial(torch.optim.Adam, lr=1e-3))
    optimizer = model.configure_optimizers()
    optimised = {id(p) for group in optimizer.param_groups for p in group["params"]}
    assert optimised == {id(p) for p in net.head.parameters()}


def test_frozen_batchnorm_stays_in_eval_mode(resnet_weights: Path):
    net = ResNetFineTuner(num_classes=3, weights=None, weights_path=str(resnet_weights), trainable_stages=1)
    net.train()
    frozen_bn = [m for m in net.frozen.modules() if isinstance(m, nn.BatchNorm2d)]
    trainable_bn = [m for m in net.trainable.modules() if isinstance(m, nn.BatchNorm2d)]
    assert frozen_bn and all(not m.training for m in frozen_bn)
    assert trainable_bn and all(m.training for m in trainable_bn)  # layer4 is unfrozen
    before = {k: v.clone() for k, v in net.frozen.state_dict().items()}
    net(torch.randn(4, 3, 32, 32)).sum().backward()
    assert all(p.grad is None for p in net.frozen.parameters())
    assert all(torch.equal(before[k], v) for k, v in net.frozen.state_dict().items())


def test_resnet_upsamples_to_its_input_size(resnet_weights: Path):
    net = ResNetFineTuner(num_classes=10, weights=None, weights_path=str(resnet_weights), input_size=64).eval()
    seen = []
    net.frozen[0].register_forward_hook(lambda module, args, out: seen.append(args[0].shape))
    assert net(torch.randn(2, 3, 32, 32)).shape == (2, 10)
    assert seen == [torch.Size([2, 3, 64, 64])]


def test_local_weights_file_is_loaded(resnet_weights: Path):
    net = ResNetFineTuner(num_classes=10, weights=None, weights_path=str(resnet_weights))
    stored = torch.load(resnet_weights, weights_only=True)
    assert torch.equal(net.frozen[0][0].weight, stored["conv1.weight"])
    assert torch.equal(net.frozen[0][1].running_var, stored["bn1.running_var"])


def test_offline_without_weights_names_the_file_and_both_fixes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))

    def offline(*args, **kwargs):
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(torch.hub, "download_url_to_file", offline)
    with pytest.raises(WeightsUnavailableError) as error:
        ResNetFineTuner(num_classes=10, weights="IMAGENET1K_V1")
    message = str(error.value)
    assert str(tmp_path / "torch" / "hub" / "checkpoints" / "resnet18-f37072fd.pth") in message
    assert "model.weights_path=" in message and "model.weights=null" in message


def test_bad_weights_file_and_name_are_clear_errors(tmp_path: Path):
    with pytest.raises(WeightsUnavailableError, match="does not exist"):
        ResNetFineTuner(num_classes=10, weights_path=str(tmp_path / "missing.pth"))
    wrong = tmp_path / "wrong.pth"
    torch.save(SimpleCNN().state_dict(), wrong)
    with pytest.raises(WeightsUnavailableError, match="do not fit resnet18"):
        ResNetFineTuner(num_classes=10, weights_path=str(wrong))
    with pytest.raises(WeightsUnavailableError, match="IMAGENET1K_V1"):
        ResNetFineTuner(num_classes=10, weights="IMAGENET_TYPO")


def test_cam_target_layers_are_the_last_conv_blocks(resnet_weights: Path):
    cnn = SimpleCNN()
    assert cnn.cam_target_layer() is cnn.features[-2]  # ReLU after the 64->128 conv
    resnet = ResNetFineTuner(10, weights=None, weights_path=str(resnet_weights))
    assert resnet.cam_target_layer() is resnet.frozen[-1]  # layer4
    assert ResNetFineTuner(10, weights=None, trainable_stages=1).cam_target_layer() is not None
