"""The scratch CNNs: layer-for-layer shapes and parameter counts; networks normalise their own input."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
from hydra.utils import instantiate
from torch import nn

from cnnlab.errors import ConfigValueError, InputSizeError, user_error
from cnnlab.models.fast_resnet import FastResNet, Residual, conv_bn
from cnnlab.models.normalize import NormalizeBatch
from cnnlab.models.resnet_cifar import CifarResNet
from cnnlab.models.simple_cnn import SimpleCNN
from cnnlab.models.torchvision_ft import TorchvisionFineTuner
from cnnlab.tasks.train import train
from cnnlab.training.factory import build_classifier


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
    with pytest.raises(InputSizeError, match=r"divisible by 8 .*: set data.image_size .* to 24 or 32$") as error:
        SimpleCNN(input_size=30)
    assert error.value.fitting_sizes == (24, 32)
    # Below the smallest size there is only one size to offer (it used to read "from 8, 8, ...").
    with pytest.raises(InputSizeError, match=r"input_size 4 must be divisible by 8 .* to 8$"):
        SimpleCNN(input_size=4)
    with pytest.raises(InputSizeError, match=r"divisible by 16 \(4 2x2 pools\).* to 32 or 48$"):
        SimpleCNN(input_size=40, channels=(8, 8, 8, 8))


def test_a_model_input_size_the_network_cannot_take_names_that_override_not_data_image_size(make_config):
    # data.image_size is already 32, which fits: sending the user there would not help.
    with pytest.raises(ConfigValueError, match=r"^model.input_size=30: the network's input side must be divisible by 8 "
                                               r".*\(data.image_size=32\): drop the model.input_size override"):
        train(make_config(overrides=["model=simple_cnn", "model.input_size=30", "trainer.max_epochs=1"]))


def test_simple_cnn_built_for_another_size_than_the_data_names_data_image_size(make_config):
    # model.input_size=64 on 32x32 data used to fail in the first Linear layer with a bare shape error.
    with pytest.raises(ConfigValueError) as error:
        train(make_config(overrides=["model=simple_cnn", "model.input_size=64", "trainer.max_epochs=1"]))
    assert str(error.value).startswith("model.input_size=64 builds the network for 64x64 images, but "
                                       "data.image_size=32 makes them 32x32: set data.image_size=64 instead")


def test_the_scratch_cnns_widths_and_the_batch_dropping_are_set_from_conf(make_config):
    cfg = make_config(overrides=["model=simple_cnn", "model.channels=[16,32]", "model.hidden=64", "data.drop_last=true"])
    net = instantiate(cfg.model, num_classes=10)
    assert [c.out_channels for c in net.modules() if isinstance(c, nn.Conv2d)] == [16, 32]
    # conv 3*16*9+16 + 16*32*9+32; fc (32 * 8 * 8)*64+64 + 64*10+10
    assert count(net) == 448 + 4_640 + 131_136 + 650
    assert instantiate(cfg.data).drop_last is True
    assert make_config().data.drop_last is False


def test_widths_that_build_no_usable_network_are_refused():
    with pytest.raises(ConfigValueError, match=r"^model.hidden=0: the hidden layer needs a width of at least 1"):
        SimpleCNN(hidden=0)
    for channels in ([], [16, 0]):
        with pytest.raises(ConfigValueError, match="^" + re.escape(f"model.channels={channels}: give one width of at least 1")):
            SimpleCNN(channels=channels)


@pytest.mark.parametrize("value", ["no", "yes", "false", 1, None])
def test_simple_cnn_batch_norm_must_be_true_or_false(value):
    with pytest.raises(ConfigValueError, match=rf"^model\.batch_norm must be true or false, got {re.escape(repr(value))}"):
        SimpleCNN(batch_norm=value)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in SimpleCNN(batch_norm=False).modules())
    assert any(isinstance(m, nn.BatchNorm2d) for m in SimpleCNN(batch_norm=True).modules())


def test_model_batch_norm_no_on_the_command_line_is_refused_not_taken_for_true(make_config):
    # YAML 1.2 reads `no` as the string 'no', which is truthy: it used to build the BatchNorm network.
    cfg = make_config(overrides=["model=simple_cnn_bn", "model.batch_norm=no"])
    with pytest.raises(Exception) as refused:  # hydra's instantiate wraps the network's error
        build_classifier(cfg, [str(i) for i in range(10)])
    assert str(user_error(refused.value)) == "model.batch_norm must be true or false, got 'no': pass model.batch_norm=false"


def test_cam_target_layer_is_the_last_conv_block():
    cnn = SimpleCNN()
    assert cnn.cam_target_layer() is cnn.features[-3]  # the 64->128 conv, before its pool
    bn = SimpleCNN(batch_norm=True)
    assert isinstance(bn.cam_target_layer(), nn.BatchNorm2d) and bn.cam_target_layer() is bn.features[-3]


@pytest.mark.parametrize("batch_norm", [False, True])
def test_simple_cnn_pool_before_relu_equals_the_classic_order(batch_norm):
    """Pooling before the ReLU (the faster order) gives the classic conv-ReLU-pool network's
    output and gradients exactly."""
    torch.manual_seed(0)
    cnn = SimpleCNN(batch_norm=batch_norm, dropout=0.0)
    classic_layers = []
    for layer in cnn.features:
        if isinstance(layer, nn.ReLU):  # move each ReLU back in front of its pool
            classic_layers.insert(len(classic_layers) - 1, layer)
        else:
            classic_layers.append(layer)
    assert [type(m) for m in classic_layers[-3:]] == [nn.Conv2d if not batch_norm else nn.BatchNorm2d, nn.ReLU, nn.MaxPool2d]
    classic = nn.Sequential(cnn.normalize, *classic_layers, cnn.classifier)
    images = torch.randint(0, 256, (8, 3, 32, 32), dtype=torch.uint8)

    def output_and_grads(net):
        cnn.zero_grad()
        out = net(images)
        out.square().sum().backward()
        return out.detach(), [p.grad.clone() for p in cnn.parameters()]

    out_new, grads_new = output_and_grads(cnn)
    out_old, grads_old = output_and_grads(classic)
    assert torch.equal(out_new, out_old)
    for new, old in zip(grads_new, grads_old, strict=True):
        assert torch.equal(new, old)


@pytest.mark.parametrize("network", [SimpleCNN, FastResNet, CifarResNet])
def test_a_network_built_without_a_normalisation_takes_uint8_to_zero_to_one(network):
    # Built in Python with no normalize=, a network must still see pixels in [0, 1], not 0..255 or [-1, 1].
    normalize = network().normalize
    assert torch.equal(normalize(torch.full((2, 3, 4, 4), 255, dtype=torch.uint8)), torch.ones(2, 3, 4, 4))
    assert torch.equal(normalize(torch.zeros(2, 3, 4, 4, dtype=torch.uint8)), torch.zeros(2, 3, 4, 4))


def test_fast_resnet_conv_block_pools_before_batchnorm_and_gelu():
    assert [type(m) for m in conv_bn(3, 8, pool=True)] == [nn.Conv2d, nn.MaxPool2d, nn.BatchNorm2d, nn.GELU]
    assert [type(m) for m in conv_bn(3, 8)] == [nn.Conv2d, nn.BatchNorm2d, nn.GELU]
    assert conv_bn(3, 8)[0].bias is None  # BatchNorm's shift replaces the conv bias


def test_fast_resnet_residual_block_adds_its_input_back():
    torch.manual_seed(0)
    block = Residual(4).eval()
    x = torch.randn(2, 4, 8, 8)
    with torch.no_grad():
        assert torch.allclose(block(x), x + block.body(x))
        last_bn = block.body[-1][1]  # a body whose last BatchNorm outputs 0 outputs GELU(0) = 0
        last_bn.weight.zero_()
        last_bn.bias.zero_()
        assert torch.equal(block(x), x)


def test_fast_resnet_scales_its_logits_by_logit_scale_from_conf(make_config):
    torch.manual_seed(0)
    widths = (4, 8, 8, 8)
    scaled = FastResNet(widths=widths, logit_scale=0.125).eval()
    unscaled = FastResNet(widths=widths, logit_scale=1.0).eval()
    unscaled.load_state_dict(scaled.state_dict())
    images = torch.randint(0, 256, (2, 3, 32, 32), dtype=torch.uint8)
    with torch.no_grad():
        logits = unscaled(images)
        assert logits.abs().max() > 0
        assert torch.allclose(scaled(images), logits * 0.125, atol=1e-6)
    # The documented value, in the conf and as the Python default.
    cfg = make_config(overrides=["model=fast_resnet", "model.widths=[4,8,8,8]"])
    assert cfg.model.logit_scale == 0.125
    assert instantiate(cfg.model, num_classes=10).logit_scale == 0.125 == FastResNet().logit_scale


CIFAR10_MEAN = [0.4914, 0.4822, 0.4465]
CIFAR10_STD = [0.2470, 0.2435, 0.2616]  # the training set's pixel std (not the widely copied 0.2023, 0.1994, 0.2010)
IMAGENET_MEAN, IMAGENET_STD = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]


def same_normalisation(module: nn.Module, mean: list[float], std: list[float]) -> bool:
    expected = NormalizeBatch(mean, std)
    return (isinstance(module, NormalizeBatch) and torch.allclose(module.scale, expected.scale)
            and torch.allclose(module.shift, expected.shift))


@pytest.mark.parametrize("model", ["fast_resnet", "resnet18_cifar"])
def test_the_cifar_networks_normalise_by_cifar10s_published_statistics(make_config, model):
    cfg = make_config(overrides=[f"model={model}"])
    assert list(cfg.model.normalize.mean) == CIFAR10_MEAN
    assert list(cfg.model.normalize.std) == CIFAR10_STD
    assert same_normalisation(instantiate(cfg.model, num_classes=10).normalize, CIFAR10_MEAN, CIFAR10_STD)


def test_the_imagenet_and_tutorial_normalisations_hold_their_documented_statistics(make_config):
    imagenet = make_config(overrides=["model=resnet18_ft", "+model/normalize=imagenet"]).model.normalize
    assert (list(imagenet.mean), list(imagenet.std)) == (IMAGENET_MEAN, IMAGENET_STD)
    assert same_normalisation(instantiate(imagenet), IMAGENET_MEAN, IMAGENET_STD)
    tutorial = instantiate(make_config(overrides=["model=simple_cnn"]).model, num_classes=10).normalize
    assert same_normalisation(tutorial, [0.5] * 3, [0.5] * 3)
