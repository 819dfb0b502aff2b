"""The linear probe's feature cache: computed once, never stale, and the same result as the slow way."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import torch

from cnnlab.checkpoint import read_checkpoint
from cnnlab.errors import ConfigValueError, user_error
from cnnlab.models.feature_cache import module_fingerprint
from cnnlab.models.normalize import NormalizeBatch
from cnnlab.models.torchvision_ft import TorchvisionFineTuner
from cnnlab.tasks.train import train
from cnnlab.training.factory import build_classifier


def probe(weights: Path, **kwargs) -> TorchvisionFineTuner:
    return TorchvisionFineTuner(10, arch="resnet18", weights=None, weights_path=str(weights), input_size=32,
                                cache_features=True, **kwargs).train()


def test_features_are_computed_once_per_image_and_keyed_by_data(resnet_weights: Path):
    net = probe(resnet_weights)
    images = torch.randint(0, 256, (8, 3, 32, 32), dtype=torch.uint8)
    first = net.forward_cached(images[:4], torch.arange(4), "train", "data-a", 8)
    assert net._feature_cache.computed == 4
    again = net.forward_cached(images[2:6], torch.arange(2, 6), "train", "data-a", 8)
    assert net._feature_cache.computed == 6  # only samples 4 and 5 were new
    assert torch.allclose(first[2:], again[:2])
    with torch.no_grad():
        assert torch.allclose(again, net.head(net.backbone(net._prepare(images[2:6]))), atol=1e-5)
    net.forward_cached(images[:4], torch.arange(4), "train", "data-b", 8)  # other data: not served stale
    net.forward_cached(images[:4], torch.arange(4), "val", "data-a", 8)  # other split: its own store
    assert net._feature_cache.computed == 14


def test_complete_stores_persist_on_disk_for_the_same_weights_only(resnet_weights: Path, tmp_path: Path):
    images = torch.randint(0, 256, (6, 3, 32, 32), dtype=torch.uint8)
    net = probe(resnet_weights, feature_cache_dir=str(tmp_path))
    net.forward_cached(images, torch.arange(6), "train", "data-a", 6)
    assert len(list(tmp_path.glob("features-*.pt"))) == 1

    reloaded = probe(resnet_weights, feature_cache_dir=str(tmp_path))
    reloaded.forward_cached(images, torch.arange(6), "train", "data-a", 6)
    assert reloaded._feature_cache.computed == 0  # served from disk

    other_weights = probe(resnet_weights, feature_cache_dir=str(tmp_path))
    with torch.no_grad():
        other_weights.backbone.layer4[1].conv2.weight.mul_(2)
    other_weights.forward_cached(images, torch.arange(6), "train", "data-a", 6)
    assert other_weights._feature_cache.computed == 6  # other weights: computed afresh
    resized = TorchvisionFineTuner(10, arch="resnet18", weights=None, weights_path=str(resnet_weights), input_size=64,
                                   cache_features=True, feature_cache_dir=str(tmp_path)).train()
    resized.forward_cached(images, torch.arange(6), "train", "data-a", 6)
    assert resized._feature_cache.computed == 6  # other input size: computed afresh


def test_stored_features_are_not_served_to_a_net_that_normalises_its_input_otherwise(resnet_weights: Path,
                                                                                        tmp_path: Path):
    # Same backbone weights, other input normalisation: other features.
    images = torch.randint(0, 256, (6, 3, 32, 32), dtype=torch.uint8)
    probe(resnet_weights, feature_cache_dir=str(tmp_path)).forward_cached(images, torch.arange(6), "train", "data-a", 6)
    other = probe(resnet_weights, feature_cache_dir=str(tmp_path), normalize=NormalizeBatch([0.5] * 3, [0.5] * 3))
    logits = other.forward_cached(images, torch.arange(6), "train", "data-a", 6)
    assert other._feature_cache.computed == 6
    with torch.no_grad():
        assert torch.allclose(logits, other.head(other.backbone(other._prepare(images))), atol=1e-5)


def test_module_fingerprint_covers_buffers_non_persistent_ones_included():
    # BatchNorm statistics and NormalizeBatch's constants are buffers, not parameters, yet change the output.
    bn = torch.nn.BatchNorm2d(3)
    before = module_fingerprint(bn)
    bn.running_mean.add_(0.1)
    assert module_fingerprint(bn) != before
    half, other_mean, half_again = (NormalizeBatch([m] * 3, [0.5] * 3) for m in (0.5, 0.4, 0.5))
    assert not half.state_dict()  # its constants are non-persistent buffers
    assert module_fingerprint(half) != module_fingerprint(other_mean)
    assert module_fingerprint(half) == module_fingerprint(half_again)


def test_cached_head_training_matches_the_slow_way(make_config, resnet_weights, tmp_path):
    common = ["model=resnet18_ft", f"model.weights_path={resnet_weights}", "~data/augment", "trainer.max_epochs=3", "seed=3"]
    slow = train(make_config(overrides=common, run_dir=tmp_path / "slow"))
    cached = train(make_config(overrides=[*common, "model.cache_features=true"], run_dir=tmp_path / "cached"))
    for key in ("train/loss", "val/loss", "val/acc", "test/loss", "test/acc", "test/acc_top5"):
        assert cached[key] == pytest.approx(slow[key], abs=1e-5), key
    slow_head = read_checkpoint(tmp_path / "slow" / "checkpoints" / "last.ckpt")["state_dict"]["net.head.1.weight"]
    cached_head = read_checkpoint(tmp_path / "cached" / "checkpoints" / "last.ckpt")["state_dict"]["net.head.1.weight"]
    assert torch.allclose(slow_head, cached_head, atol=1e-5)
    assert len(cached["epoch_seconds"]) == 3


def test_cache_refuses_augmentation_and_a_trainable_backbone(make_config, resnet_weights):
    with pytest.raises(ValueError, match="~data/augment"):
        train(make_config(overrides=["model=resnet18_ft", f"model.weights_path={resnet_weights}", "model.cache_features=true"]))
    with pytest.raises(ValueError, match="fully frozen"):
        TorchvisionFineTuner(10, arch="resnet18", weights=None, trainable_stages=1, cache_features=True)


@pytest.mark.parametrize("value", ["no", "off", "yes", 0, None])
def test_cache_features_must_be_true_or_false(value, resnet_weights: Path):
    # model.cache_features=no arrived as the truthy string 'no' and switched the cache on.
    with pytest.raises(ConfigValueError, match=rf"^model\.cache_features must be true or false, got {value!r}"):
        TorchvisionFineTuner(10, arch="resnet18", weights=None, input_size=32, cache_features=value)
    assert TorchvisionFineTuner(10, arch="resnet18", weights=None, input_size=32, cache_features=False).cache_features is False


def test_cache_features_no_on_the_command_line_is_refused(make_config, resnet_weights: Path):
    cfg = make_config(overrides=["model=resnet18_ft", f"model.weights_path={resnet_weights}", "model.cache_features=no"])
    with pytest.raises(Exception) as refused:  # hydra's instantiate wraps the network's error
        build_classifier(cfg, [str(i) for i in range(10)])
    assert str(user_error(refused.value)) == ("model.cache_features must be true or false, got 'no': "
                                              "pass model.cache_features=false")


def test_cache_refuses_flip_tta_it_cannot_apply(make_config, resnet_weights):
    overrides = ["model=resnet18_ft", f"model.weights_path={resnet_weights}", "~data/augment",
                 "model.cache_features=true", "classifier.flip_tta=true"]
    with pytest.raises(ConfigValueError, match="classifier.flip_tta=true cannot apply with model.cache_features=true") as error:
        train(make_config(overrides=overrides))
    assert "classifier.flip_tta=false" in str(error.value) and "model.cache_features=false" in str(error.value)


def test_features_computed_under_autocast_are_not_served_to_a_float32_run(resnet_weights: Path, tmp_path: Path):
    images = torch.randint(0, 256, (6, 3, 32, 32), dtype=torch.uint8)

    def run(autocast: bool) -> tuple[TorchvisionFineTuner, torch.Tensor]:
        net = probe(resnet_weights, feature_cache_dir=str(tmp_path))
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            logits = net.forward_cached(images, torch.arange(6), "train", "data-a", 6)
        return net, logits.float()

    bf16, _ = run(autocast=True)
    assert bf16._feature_cache.computed == 6
    float32, logits = run(autocast=False)
    assert float32._feature_cache.computed == 6  # not the bf16 features from disk
    with torch.no_grad():
        assert torch.allclose(logits, float32.head(float32.backbone(float32._prepare(images))), atol=1e-5)
    assert len(list(tmp_path.glob("features-*.pt"))) == 2
    assert run(autocast=False)[0]._feature_cache.computed == 0  # the same precision reuses its store
    assert run(autocast=True)[0]._feature_cache.computed == 0


def test_an_unreadable_cache_file_is_recomputed_and_rewritten(resnet_weights: Path, tmp_path: Path, caplog):
    images = torch.randint(0, 256, (6, 3, 32, 32), dtype=torch.uint8)
    probe(resnet_weights, feature_cache_dir=str(tmp_path)).forward_cached(images, torch.arange(6), "train", "data-a", 6)
    [path] = tmp_path.glob("features-*.pt")
    features = torch.load(path, weights_only=True)
    with path.open("r+b") as f:
        f.truncate(1000)

    net = probe(resnet_weights, feature_cache_dir=str(tmp_path))
    with caplog.at_level(logging.WARNING, logger="cnnlab.models.feature_cache"):
        again = net.forward_cached(images, torch.arange(6), "train", "data-a", 6)
    assert net._feature_cache.computed == 6
    with torch.no_grad():
        assert torch.allclose(again, net.head(features), atol=1e-5)
    assert f"feature cache: cannot read {path}" in caplog.text and "computing the train features again" in caplog.text
    assert torch.equal(torch.load(path, weights_only=True), features)  # rewritten whole
    reread = probe(resnet_weights, feature_cache_dir=str(tmp_path))
    reread.forward_cached(images, torch.arange(6), "train", "data-a", 6)
    assert reread._feature_cache.computed == 0


def test_a_feature_cache_folder_that_cannot_be_a_folder_is_refused_before_any_feature(resnet_weights: Path,
                                                                                     tmp_path: Path):
    a_file = tmp_path / "benchmark.json"
    a_file.write_text("{}")
    # It used to fail only when the first complete store was saved, after the backbone had run over the split.
    with pytest.raises(ConfigValueError, match=r"model.feature_cache_dir=.*benchmark.json is a file, not a folder"):
        probe(resnet_weights, feature_cache_dir=str(a_file))
    with pytest.raises(ConfigValueError, match=r"lies under .*benchmark.json, which is a file"):
        probe(resnet_weights, feature_cache_dir=str(a_file / "features"))
    assert a_file.read_text() == "{}"
    probe(resnet_weights, feature_cache_dir=str(tmp_path / "new" / "features"))  # created when first needed
    assert not (tmp_path / "new").exists()
