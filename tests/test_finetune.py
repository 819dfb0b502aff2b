"""The torchvision fine-tuner: what 'frozen' means, heads per family, weights offline, learning rates."""

from __future__ import annotations

import functools
import logging
import math
import urllib.error
import warnings
from pathlib import Path

import lightning as L
import pytest
import torch
from PIL import Image
from test_classifier import batches
from test_classifier import trainer as quiet_trainer
from torch import nn
from torch.utils.data import DataLoader
from torchvision.models import get_model

from cnnlab.data.base import Batch
from cnnlab.errors import ConfigValueError, WeightsUnavailableError, user_error
from cnnlab.models.resnet_cifar import CifarResNet
from cnnlab.models.simple_cnn import SimpleCNN
from cnnlab.models.torchvision_ft import TorchvisionFineTuner
from cnnlab.tasks.train import train
from cnnlab.training.callbacks import HideFrozenStagesEvalModeWarning
from cnnlab.training.classifier import ImageClassifier


def resnet18_ft(weights_file: Path, **kwargs) -> TorchvisionFineTuner:
    kwargs.setdefault("num_classes", 10)
    return TorchvisionFineTuner(arch="resnet18", weights=None, weights_path=str(weights_file), input_size=32, **kwargs)


def optimised_parameters(model: ImageClassifier) -> dict[int, float]:
    optimizer = model.configure_optimizers()
    optimizer = optimizer["optimizer"] if isinstance(optimizer, dict) else optimizer
    return {id(p): group["lr"] for group in optimizer.param_groups for p in group["params"]}


def test_frozen_backbone_gets_no_gradient_and_only_the_head_is_optimised(resnet_weights: Path):
    net = resnet18_ft(resnet_weights, num_classes=7)
    assert net.stage_names == ["conv1..bn1", "layer1", "layer2", "layer3", "layer4"]
    assert sum(p.numel() for p in net.parameters() if p.requires_grad) == 512 * 7 + 7
    assert sum(p.numel() for p in net.parameters()) == 11_176_512 + 512 * 7 + 7  # ResNet-18 minus fc, plus head
    model = ImageClassifier(net, num_classes=7, optimizer=functools.partial(torch.optim.Adam, lr=1e-3))
    assert set(optimised_parameters(model)) == {id(p) for p in net.head.parameters()}
    net.train()
    net(torch.randint(0, 256, (4, 3, 32, 32), dtype=torch.uint8)).sum().backward()
    assert all(p.grad is None for p in net.backbone.parameters())


def test_frozen_batchnorm_stays_in_eval_mode_and_its_statistics_do_not_move(resnet_weights: Path):
    net = resnet18_ft(resnet_weights, trainable_stages=1)
    net.train()
    bns = {name: m for name, m in net.backbone.named_modules() if isinstance(m, nn.BatchNorm2d)}
    assert all(m.training == name.startswith("layer4") for name, m in bns.items())
    frozen_before = {k: v.clone() for k, v in net.backbone.state_dict().items() if not k.startswith("layer4")}
    layer4_before = net.backbone.layer4[1].bn2.running_mean.clone()
    net(torch.randint(0, 256, (4, 3, 32, 32), dtype=torch.uint8)).sum().backward()
    after = net.backbone.state_dict()
    assert all(torch.equal(value, after[key]) for key, value in frozen_before.items())
    assert not torch.equal(layer4_before, net.backbone.layer4[1].bn2.running_mean)  # unfrozen stage learns


def test_input_is_resized_to_the_backbone_size_and_normalised_like_the_weights(resnet_weights: Path):
    net = TorchvisionFineTuner(10, arch="resnet18", weights="IMAGENET1K_V1", weights_path=str(resnet_weights)).eval()
    assert net.input_size == 224  # the crop size the ImageNet weights were trained at
    seen = []
    net.backbone.conv1.register_forward_hook(lambda module, args, out: seen.append(args[0]))
    images = torch.full((1, 3, 32, 32), 255, dtype=torch.uint8)
    net(images)
    assert seen[0].shape == (1, 3, 224, 224)
    expected = (1 - torch.tensor([0.485, 0.456, 0.406])) / torch.tensor([0.229, 0.224, 0.225])
    assert torch.allclose(seen[0][0, :, 100, 100], expected, atol=1e-5)


def test_local_weights_file_is_loaded(resnet_weights: Path):
    net = resnet18_ft(resnet_weights)
    stored = torch.load(resnet_weights, weights_only=True)
    assert torch.equal(net.backbone.conv1.weight, stored["conv1.weight"])
    assert torch.equal(net.backbone.layer3[0].bn1.running_var, stored["layer3.0.bn1.running_var"])


def test_a_file_that_is_no_weights_file_says_so_without_torchs_weights_only_advice(resnet_weights: Path, tmp_path: Path):
    # torch.load's own text advised re-running with weights_only=False and filing an issue, even for a JPEG.
    jpeg, text, truncated = tmp_path / "cat.jpg", tmp_path / "notes.txt", tmp_path / "resnet18.pth"
    Image.new("RGB", (8, 8)).save(jpeg)
    text.write_text("not weights\n")
    truncated.write_bytes(resnet_weights.read_bytes()[:5000])  # an unfinished copy
    # torch's error for the text (read as pickle opcodes) depends on its first byte, for the truncated archive on where it ends.
    for path, detail in ((jpeg, "UnpicklingError: Unsupported operand"), (text, ""), (truncated, "")):
        with pytest.raises(WeightsUnavailableError) as refused:
            TorchvisionFineTuner(10, arch="resnet18", weights="IMAGENET1K_V1", weights_path=str(path))
        message = str(refused.value)
        assert message.startswith(
            f"model.weights_path={path} is not a PyTorch weights file (or it is corrupt or truncated); pass the .pth "
            f"file of the network's weights, e.g. torchvision's resnet18-f37072fd.pth ({detail}"), message
        assert "weights_only" not in message and "issue" not in message and "\n" not in message and len(message) < 400


def test_a_weights_file_holding_code_is_refused_as_unsafe_to_read(tmp_path: Path):
    whole_model = tmp_path / "resnet18_model.pth"
    torch.save(get_model("resnet18"), whole_model)  # the module pickled whole, not its state_dict
    with pytest.raises(WeightsUnavailableError) as refused:
        TorchvisionFineTuner(10, arch="resnet18", weights=None, weights_path=str(whole_model))
    message = str(refused.value)
    assert message.startswith(f"model.weights_path={whole_model} cannot be read safely (torch.load with weights_only=True): "
                              f"it holds objects other than tensors (UnpicklingError: Unsupported global: "), message
    assert "torchvision.models.resnet.ResNet" in message
    assert message.endswith("pass a file holding only the state_dict of resnet18's weights, as "
                            "torch.save(model.state_dict(), path) writes it")


@pytest.mark.parametrize("value", ["no", "yes", 0])
def test_load_weights_must_be_true_or_false(value, tmp_path: Path):
    # 'no' is truthy: the weights file (here missing) would have been read.
    with pytest.raises(ConfigValueError, match=rf"^model\.load_weights must be true or false, got {value!r}"):
        TorchvisionFineTuner(10, arch="resnet18", weights_path=str(tmp_path / "missing.pth"), load_weights=value)
    TorchvisionFineTuner(10, arch="resnet18", weights_path=str(tmp_path / "missing.pth"), load_weights=False)


@pytest.mark.parametrize("arch", ["resnet18", "inception_v3"])
def test_offline_without_weights_names_the_file_and_both_fixes(arch, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))

    def offline(*args, **kwargs):
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(torch.hub, "download_url_to_file", offline)
    with pytest.raises(WeightsUnavailableError) as error:
        TorchvisionFineTuner(num_classes=10, arch=arch, weights="IMAGENET1K_V1")
    message = str(error.value)
    expected_file = {"resnet18": "resnet18-f37072fd.pth", "inception_v3": "inception_v3_google-0cc3c7bd.pth"}[arch]
    assert str(tmp_path / "torch" / "hub" / "checkpoints" / expected_file) in message
    assert "model.weights_path=" in message and "model.weights=null model.trainable_stages=-1" in message
    # The cache is what works in a sweep with the scratch CNNs, whose configs refuse model.* overrides.
    assert f"set TORCH_HOME=DIR and put the file at DIR/hub/checkpoints/{expected_file}" in message
    assert "not in a sweep that also has the scratch CNNs, such as experiment=compare_models" in message


def test_offline_linear_probe_suggests_training_from_scratch_with_overrides_the_probe_accepts(
        make_config, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture):
    # experiment=linear_probe sets model.cache_features=true, which refuses a backbone that trains.
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))

    def offline(*args, **kwargs):
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(torch.hub, "download_url_to_file", offline)
    probe = ["experiment=linear_probe", "trainer.max_epochs=1", "trainer.limit_train_batches=2", "test=false"]
    with pytest.raises(Exception) as raised:  # noqa: PT011 - Hydra's instantiate wraps it: user_error unwraps
        train(make_config(overrides=probe, run_dir=tmp_path / "offline"))
    error = user_error(raised.value)
    assert isinstance(error, WeightsUnavailableError)
    (advice,) = [line for line in str(error).splitlines() if "train from random initialisation: " in line]
    suggested = advice.partition("train from random initialisation: ")[2].split()
    assert suggested == ["model.weights=null", "model.trainable_stages=-1", "model.cache_features=false"]
    assert "(a backbone that trains needs model.cache_features=false; model.weights=null alone" in str(error)
    metrics = train(make_config(overrides=[*probe, *suggested], run_dir=tmp_path / "scratch"))  # the same command, taken
    assert math.isfinite(metrics["train/loss"])

    # model.weights=null alone: a probe of random features, whose warning names the overrides that train it all.
    with caplog.at_level(logging.WARNING, logger="cnnlab.models.torchvision_ft"):
        TorchvisionFineTuner(num_classes=10, arch="resnet18", weights=None, input_size=32, cache_features=True)
    assert "pass model.trainable_stages=-1 model.cache_features=false to train the whole network" in caplog.text


def test_random_weights_with_a_frozen_backbone_warn_that_only_the_head_trains(caplog: pytest.LogCaptureFixture):
    with caplog.at_level(logging.WARNING, logger="cnnlab.models.torchvision_ft"):
        TorchvisionFineTuner(num_classes=10, arch="resnet18", weights=None, input_size=32)
    assert "model.weights=null with a frozen backbone" in caplog.text
    assert "pass model.trainable_stages=-1 to train the whole network" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="cnnlab.models.torchvision_ft"):
        TorchvisionFineTuner(num_classes=10, arch="resnet18", weights=None, input_size=32, trainable_stages=-1)
        TorchvisionFineTuner(num_classes=10, arch="resnet18", weights=None, input_size=32, load_weights=False)
    assert "frozen backbone" not in caplog.text  # training all of it, or evaluation building the architecture


def test_bad_weights_arch_and_stage_count_are_clear_errors(tmp_path: Path):
    with pytest.raises(WeightsUnavailableError, match="does not exist"):
        TorchvisionFineTuner(num_classes=10, weights_path=str(tmp_path / "missing.pth"))
    wrong = tmp_path / "wrong.pth"
    torch.save(SimpleCNN().state_dict(), wrong)
    with pytest.raises(WeightsUnavailableError, match="do not fit resnet18"):
        TorchvisionFineTuner(num_classes=10, arch="resnet18", weights_path=str(wrong))
    with pytest.raises(WeightsUnavailableError, match="choose one of: DEFAULT, IMAGENET1K_V1, or null$"):
        TorchvisionFineTuner(num_classes=10, arch="resnet18", weights="IMAGENET_TYPO")  # each choice once
    with pytest.raises(ConfigValueError, match="unknown torchvision classification model 'resnet19'"):
        TorchvisionFineTuner(num_classes=10, arch="resnet19", weights=None)
    with pytest.raises(ConfigValueError, match=r"5 stages \(conv1..bn1, layer1, .*layer4\); model.trainable_stages=6 "
                                               r"is too many: pass 0 to 5, or -1 to train all of it"):
        TorchvisionFineTuner(num_classes=10, arch="resnet18", weights=None, trainable_stages=6)
    with pytest.raises(ConfigValueError, match="needs a fully frozen backbone: pass model.trainable_stages=0 "):
        TorchvisionFineTuner(num_classes=10, arch="resnet18", weights=None, trainable_stages=1, cache_features=True)


def test_a_folder_or_a_training_checkpoint_as_weights_path_says_what_it_is_and_what_to_pass(tmp_path: Path):
    (tmp_path / "run").mkdir()
    with pytest.raises(WeightsUnavailableError) as refused:
        TorchvisionFineTuner(num_classes=10, arch="resnet18", weights=None, weights_path=str(tmp_path / "run"))
    assert str(refused.value) == (f"model.weights_path={tmp_path / 'run'} is a folder, not a weights file: pass the path "
                                  f"of a .pth or .pt file holding a state_dict of resnet18's weights "
                                  f"(there is none in {tmp_path / 'run'})")
    torch.save(get_model("resnet18").state_dict(), tmp_path / "resnet18.pth")
    with pytest.raises(WeightsUnavailableError, match=r"a state_dict of resnet18's weights: .*resnet18\.pth$"):
        TorchvisionFineTuner(num_classes=10, arch="resnet18", weights=None, weights_path=str(tmp_path))

    # A checkpoint as scripts/train.py writes it: Lightning's dict, the classifier's weights named net.*.
    net = TorchvisionFineTuner(num_classes=10, arch="resnet18", weights=None, input_size=32, trainable_stages=-1)
    classifier = ImageClassifier(net, num_classes=10, optimizer=functools.partial(torch.optim.Adam, lr=1e-3))
    ckpt = tmp_path / "last.ckpt"
    torch.save({"epoch": 0, "global_step": 1, "state_dict": classifier.state_dict(), "cnnlab": {"format": 1}}, ckpt)
    with pytest.raises(WeightsUnavailableError) as refused:
        TorchvisionFineTuner(num_classes=10, arch="resnet18", weights=None, weights_path=str(ckpt))
    assert str(refused.value) == (
        f"model.weights_path={ckpt} is a cnnlab training checkpoint, not a weights file: pass it as ckpt_path={ckpt} "
        f"to scripts/train.py (to continue that run) or scripts/eval.py (to test it); model.weights_path takes a "
        f".pth or .pt file holding a state_dict of resnet18's weights"
    )
    # A state dict under "state_dict" of the network's own names still loads (a common wrapper).
    torch.save({"state_dict": get_model("resnet18").state_dict()}, tmp_path / "wrapped.pth")
    TorchvisionFineTuner(num_classes=10, arch="resnet18", weights=None, weights_path=str(tmp_path / "wrapped.pth"))


@pytest.mark.parametrize(("arch", "native"), [("vit_b_16", 224), ("inception_v3", 299)])
def test_an_input_size_the_backbone_cannot_take_is_refused_at_start_naming_the_fix(arch, native):
    # e.g. model=resnet18_ft model.arch=vit_b_16: the preset's input_size=32 would otherwise
    # fail inside the network at the first batch, with the library's own message.
    with pytest.raises(ConfigValueError) as error:
        TorchvisionFineTuner(num_classes=10, arch=arch, weights=None, input_size=32)
    message = str(error.value)
    assert message.startswith(f"{arch} cannot take 32x32 images (model.input_size=32; ")
    assert f"pass model.input_size={native}, the size its weights were trained at" in message


def test_an_input_size_the_backbone_takes_builds_in_train_mode():
    net = TorchvisionFineTuner(num_classes=10, arch="resnet18", weights=None, input_size=16, trainable_stages=-1)
    assert net.training and net.backbone.layer4.training  # the size check's eval mode is undone
    assert net(torch.zeros(2, 3, 32, 32, dtype=torch.uint8)).shape == (2, 10)


def test_discriminative_learning_rates(resnet_weights: Path):
    net = resnet18_ft(resnet_weights, trainable_stages=2, backbone_lr_scale=0.1)
    model = ImageClassifier(net, num_classes=10, optimizer=functools.partial(torch.optim.SGD, lr=0.1))
    rates = optimised_parameters(model)
    assert {rates[id(p)] for p in net.head.parameters()} == {0.1}
    assert all(rates[id(p)] == pytest.approx(0.01) for p in net.backbone.layer3.parameters())
    assert not any(id(p) in rates for p in net.backbone.layer2.parameters())


def test_discriminative_learning_rates_hold_under_the_one_cycle_schedule(resnet_weights: Path):
    # OneCycleLR sets every group's lr from its max_lr: one max_lr for all would train the backbone at the head's rate.
    net = resnet18_ft(resnet_weights, trainable_stages=2, backbone_lr_scale=0.1)
    model = ImageClassifier(net, num_classes=10, optimizer=functools.partial(torch.optim.SGD, lr=0.1),
                            scheduler=functools.partial(torch.optim.lr_scheduler.OneCycleLR, max_lr=0.1, total_steps=10))
    optimizer = model.configure_optimizers()["optimizer"]
    peaks = {id(p): group["max_lr"] for group in optimizer.param_groups for p in group["params"]}
    assert {peaks[id(p)] for p in net.head.parameters()} == {0.1}
    assert all(peaks[id(p)] == pytest.approx(0.01) for p in net.backbone.layer3.parameters())


@pytest.mark.parametrize("arch", ["resnet18", "vit_b_16"])
def test_trainable_stages_minus_one_trains_the_whole_backbone(arch: str):
    # The stem too, and tensors in no stage (ViT's class token and position embedding); no BatchNorm held in eval mode.
    size = 224 if arch == "vit_b_16" else 32
    net = TorchvisionFineTuner(num_classes=10, arch=arch, weights=None, input_size=size, trainable_stages=-1)
    assert all(p.requires_grad for p in net.backbone.parameters())
    assert not net.fully_frozen and list(net.kept_in_eval_mode) == []
    net.train()
    assert all(module.training for module in net.backbone.modules())


# name -> (input size its weights expect, kind of head torchvision gives it)
ZOO = {
    "resnet34": (224, "fc"),
    "resnet50": (224, "fc"),
    "densenet121": (224, "classifier"),
    "inception_v3": (299, "fc"),
    "efficientnet_b0": (224, "classifier"),
    "mobilenet_v3_large": (224, "classifier"),
    "convnext_tiny": (224, "classifier"),
    "vit_b_16": (224, "heads"),
}


@pytest.mark.parametrize("arch", list(ZOO))
def test_every_listed_architecture_builds_loads_a_weights_file_and_trains_only_its_head(arch, tmp_path: Path):
    torch.manual_seed(0)
    size, _ = ZOO[arch]
    extra = {"aux_logits": True, "init_weights": False} if arch == "inception_v3" else {}
    reference = get_model(arch, weights=None, **extra)
    weights_file = tmp_path / f"{arch}.pth"
    torch.save(reference.state_dict(), weights_file)

    net = TorchvisionFineTuner(num_classes=10, arch=arch, weights=None, weights_path=str(weights_file))
    assert net.input_size == size
    assert isinstance(net.head[-1], nn.Linear) and net.head[-1].out_features == 10
    first_name, first_param = next(iter(reference.state_dict().items()))
    assert torch.equal(net.backbone.state_dict()[first_name], first_param)  # the file's weights are in

    net.train()
    logits = net(torch.randint(0, 256, (2, 3, size, size), dtype=torch.uint8))
    assert logits.shape == (2, 10)
    logits.sum().backward()
    assert all(p.grad is None and not p.requires_grad for p in net.backbone.parameters())
    assert all(p.grad is not None for p in net.head.parameters())


def test_cifar_resnet18_has_the_cifar_stem_and_the_known_parameter_count():
    net = CifarResNet(num_classes=10)
    assert net.net.conv1.kernel_size == (3, 3) and net.net.conv1.stride == (1, 1)
    assert isinstance(net.net.maxpool, nn.Identity)
    assert sum(p.numel() for p in net.parameters()) == 11_173_962
    assert net(torch.zeros(2, 3, 32, 32, dtype=torch.uint8)).shape == (2, 10)


def test_linear_probe_trains_under_bf16_true(make_config, resnet_weights: Path, tmp_path: Path):
    # Lightning converts the model to bfloat16 and makes bfloat16 the default dtype while it runs;
    # the float32 feature store and the bfloat16 head must still meet.
    overrides = ["experiment=linear_probe", f"model.weights_path={resnet_weights}", "trainer.precision=bf16-true",
                 "trainer.max_epochs=1"]
    metrics = train(make_config(overrides=overrides))
    assert 0.0 <= metrics["val/acc"] <= 1.0 and math.isfinite(metrics["train/loss"])



def test_a_fully_frozen_backbone_gives_the_same_features_twice_in_train_mode_despite_its_dropout():
    # EfficientNet keeps the dropout before its ImageNet layer in the backbone (and has stochastic
    # depth in its blocks): a linear probe's features must not be noised by them while training.
    torch.manual_seed(0)
    net = TorchvisionFineTuner(num_classes=10, arch="efficientnet_b0", weights=None, input_size=32)
    assert net.fully_frozen and isinstance(net.backbone.classifier[0], nn.Dropout)
    net.train()
    images = torch.randint(0, 256, (4, 3, 32, 32), dtype=torch.uint8)
    features = net.features(images)
    assert torch.equal(features, net.features(images))
    logits = net(images)  # head_dropout is 0
    assert torch.equal(logits, net.head(features))
    # The feature store's path: each split's store computes the features afresh, the same both times.
    indices = torch.arange(len(images))
    for split in ("train", "val"):
        cached = net.forward_cached(images, indices, split, data_fingerprint="four random images", split_size=4)
        torch.testing.assert_close(cached, logits, rtol=0, atol=1e-6)
    assert net.training and not any(m.training for m in net.backbone.modules())


@pytest.mark.parametrize("trainable_stages", [0, 2])
def test_lightning_warns_of_modules_in_eval_mode_only_beyond_the_frozen_stages(resnet_weights: Path,
                                                                                trainable_stages: int):
    shown_counts = []
    for head_in_eval_mode in (False, True):
        net = resnet18_ft(resnet_weights, trainable_stages=trainable_stages)
        model = ImageClassifier(net, 10, optimizer=functools.partial(torch.optim.Adam, lr=1e-3))
        if head_in_eval_mode:  # a module in eval mode by mistake: Lightning's warning must still show
            net.head.eval()
        with warnings.catch_warnings(record=True) as shown:
            warnings.simplefilter("always")
            quiet_trainer(max_steps=1).fit(model, batches(1))
        shown_counts += [str(w.message).split(" module(s)")[0] for w in shown if "in eval mode" in str(w.message)]
    # ResNet-18 without its fc has 68 modules; frozen up to layer2: the stem's conv1 and bn1, layer1's 13, layer2's 16.
    frozen = 68 if trainable_stages == 0 else 2 + 13 + 16
    assert shown_counts == [f"Found {frozen + len(list(net.head.modules()))}"]


def test_the_eval_mode_warning_is_hidden_for_one_fit_only(resnet_weights: Path, monkeypatch: pytest.MonkeyPatch):
    # A sweep runs its jobs in one process: after a frozen fine-tuner's fit, a network with as many
    # modules in eval mode by mistake (here: the same 68, then declared as none) still gets the warning.
    first, second = (ImageClassifier(resnet18_ft(resnet_weights), 10, optimizer=functools.partial(torch.optim.Adam))
                     for _ in range(2))
    with warnings.catch_warnings(record=True) as shown:
        warnings.simplefilter("always")
        quiet_trainer(max_steps=1).fit(first, batches(1))
        assert not [w for w in shown if "in eval mode" in str(w.message)]
        monkeypatch.setattr(TorchvisionFineTuner, "kept_in_eval_mode", property(lambda self: []))
        quiet_trainer(max_steps=1).fit(second, batches(1))
    assert [str(w.message).split(" module(s)")[0] for w in shown if "in eval mode" in str(w.message)] == ["Found 68"]


def test_the_eval_mode_warning_filter_does_not_outlive_a_fit_that_fails_before_training(
        resnet_weights: Path, monkeypatch: pytest.MonkeyPatch):
    # The filter is opened as the fit starts and closed as training starts; a fit that fails in
    # between (here in its sanity check, on one-channel images) must close it too.
    first, second = (ImageClassifier(resnet18_ft(resnet_weights), 10, optimizer=functools.partial(torch.optim.Adam))
                     for _ in range(2))
    one_channel = DataLoader([Batch(torch.rand(2, 1, 2, 2), torch.zeros(2, dtype=torch.long), torch.arange(2))],
                             batch_size=None)
    with warnings.catch_warnings(record=True) as shown:
        warnings.simplefilter("always")
        failing = L.Trainer(accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False,
                            enable_model_summary=False, num_sanity_val_steps=1, max_steps=1)
        with pytest.raises(ValueError, match="1 channels"):
            failing.fit(first, batches(1), one_channel)
        monkeypatch.setattr(TorchvisionFineTuner, "kept_in_eval_mode", property(lambda self: []))
        quiet_trainer(max_steps=1).fit(second, batches(1))
    assert [str(w.message).split(" module(s)")[0] for w in shown if "in eval mode" in str(w.message)] == ["Found 68"]


def test_a_trainer_that_fits_then_tests_holds_one_eval_mode_filter_and_announces_no_override(
        resnet_weights: Path, monkeypatch: pytest.MonkeyPatch):
    # Lightning asks configure_callbacks at every run and announces each callback of a type the trainer
    # already holds as overriding it: with a new filter at the test, every training run printed that line.
    from lightning.pytorch.trainer.connectors import callback_connector

    announced: list[str] = []
    monkeypatch.setattr(callback_connector, "rank_zero_info", lambda message, *args, **kwargs: announced.append(message))
    model = ImageClassifier(resnet18_ft(resnet_weights), 10, optimizer=functools.partial(torch.optim.Adam))
    trainer = quiet_trainer(max_steps=1)
    trainer.fit(model, batches(1))
    trainer.test(model, batches(1))
    assert sum(isinstance(callback, HideFrozenStagesEvalModeWarning) for callback in trainer.callbacks) == 1
    assert not [message for message in announced if "will override" in message]
