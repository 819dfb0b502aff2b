"""scripts/summary.py's task at another input size: networks sized for their images are built for it."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig, OmegaConf

from cnnlab.errors import ConfigValueError
from cnnlab.tasks.summary import summary
from cnnlab.training.callbacks import CHECKPOINT_FORMAT, CHECKPOINT_KEY
from cnnlab.training.factory import build_classifier
from conftest import CONF_DIR, compose_run_config


def summary_config(overrides: list[str]) -> DictConfig:
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose("summary", overrides=overrides)


def layer(printed: str, name: str) -> list[str]:
    return next(line.split() for line in printed.splitlines() if line.startswith(f"{name} "))


def test_input_size_builds_simple_cnn_for_that_size(capsys):
    # The classifier takes 128 x 8 x 8 features at 64 px (128 x 4 x 4 at 32 px): 4x the first fc layer.
    counts = summary(summary_config(["model=simple_cnn", "input_size=64"]))
    assert counts == {"params_total": 4_293_194, "params_trainable": 4_293_194}
    printed = capsys.readouterr().out
    assert "for one 3x64x64 image" in printed
    assert layer(printed, "features.7")[1:3] == ["MaxPool2d", "128x8x8"]
    assert layer(printed, "classifier.1")[1:4] == ["Linear", "512", "4,194,816"]
    # The same network as data.image_size=64 builds, which training at 64 px would use.
    assert summary(summary_config(["model=simple_cnn", "data.image_size=64"])) == counts


def test_a_checkpoint_is_not_resized_and_another_input_size_is_a_clear_error(tmp_path: Path, cifar_root: Path, capsys):
    cfg = compose_run_config("train", tmp_path, tmp_path / "run", ["model=simple_cnn"], cifar_root)
    model = build_classifier(cfg, ["a", "b", "c"], train=False)
    ckpt = tmp_path / "simple_cnn.ckpt"
    record = {"format": CHECKPOINT_FORMAT, "config": OmegaConf.to_container(cfg, resolve=True), "class_names": ["a", "b", "c"]}
    torch.save({"state_dict": model.state_dict(), CHECKPOINT_KEY: record}, ckpt)

    assert summary(summary_config([f"ckpt_path={ckpt}"]))["params_total"] == 1_147_466 - 7 * 513  # 3 classes, not 10
    assert "for one 3x32x32 image" in capsys.readouterr().out
    with pytest.raises(ConfigValueError, match=rf"the network in {ckpt} is built for 32x32 images and cannot take 64x64 ones "
                                               r"\(.*\); leave input_size unset, or pass model=<its model> input_size=64 "
                                               r"without ckpt_path"):
        summary(summary_config([f"ckpt_path={ckpt}", "input_size=64"]))


def test_a_checkpoint_of_another_model_than_summarys_default_shows_its_own_network(tmp_path: Path, cifar_root: Path,
                                                                                   capsys):
    # summary.yaml composes model=simple_cnn: only a model= the user typed is compared with the checkpoint's.
    cfg = compose_run_config("train", tmp_path, tmp_path / "run", ["model=simple_cnn_bn"], cifar_root)
    model = build_classifier(cfg, ["a", "b", "c"], train=False)
    ckpt = tmp_path / "simple_cnn_bn.ckpt"
    record = {"format": CHECKPOINT_FORMAT, "config": OmegaConf.to_container(cfg, resolve=True), "class_names": ["a", "b", "c"]}
    torch.save({"state_dict": model.state_dict(), CHECKPOINT_KEY: record}, ckpt)
    assert summary(summary_config([f"ckpt_path={ckpt}"]))["params_total"] == 1_147_690 - 7 * 513
    assert layer(capsys.readouterr().out, "features.1")[1] == "BatchNorm2d"


def test_an_override_fixing_the_size_against_input_size_is_a_clear_error():
    with pytest.raises(ConfigValueError, match=r"fixed by an override \(e\.g\. model\.input_size\) and cannot take 64x64 images"):
        summary(summary_config(["model=simple_cnn", "model.input_size=32", "input_size=64"]))


def test_an_input_size_simple_cnn_cannot_take_names_input_size_and_the_sizes_that_fit():
    # The network's own message names training's knob (data.image_size), which input_size replaces here.
    with pytest.raises(ConfigValueError, match=r"^input_size=30: SimpleCNN's input side must be divisible by 8 "
                                               r"\(3 2x2 pools\); pass input_size=24 or input_size=32$"):
        summary(summary_config(["model=simple_cnn", "input_size=30"]))
    with pytest.raises(ConfigValueError, match=r"^data.image_size=30: .* pass data.image_size=24 or data.image_size=32$"):
        summary(summary_config(["model=simple_cnn", "data.image_size=30"]))
    # The size that failed is model.input_size's, not the one asked for: naming input_size=32 would contradict itself.
    with pytest.raises(ConfigValueError, match=r"^model.input_size=30: SimpleCNN's input side must be divisible by 8 .*; "
                                               r"drop the model.input_size override and choose the size with input_size=$"):
        summary(summary_config(["model=simple_cnn", "model.input_size=30", "input_size=32"]))


def test_the_summary_of_a_fine_tuner_builds_it_as_trained_without_warning_about_training(caplog):
    # Nothing trains: the warning that a random frozen backbone leaves only the head to train is for training.
    with caplog.at_level(logging.WARNING):
        counts = summary(summary_config(["model=resnet18_ft", "model.input_size=64"]))
    assert "frozen backbone" not in caplog.text
    assert counts == {"params_total": 11_181_642, "params_trainable": 5_130}
