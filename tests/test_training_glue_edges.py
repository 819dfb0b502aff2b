"""Edges of the glue between config and training: the classifier factory, local pretrained weights, and the
visual callbacks' bookkeeping, checked on tiny modules without a training run."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from omegaconf import open_dict
from torch import nn

from cnnlab.errors import WeightsUnavailableError
from cnnlab.models.pretrained import load_pretrained
from cnnlab.training import visual_callbacks
from cnnlab.training.factory import build_classifier
from cnnlab.training.visual_callbacks import ConfusionMatrixLogger, GradientNormLogger, MisclassifiedImagesLogger

CLASSES = [str(i) for i in range(10)]


def test_training_build_reads_the_weights_file_and_a_restoring_build_does_not(make_config, resnet_weights: Path,
                                                                                tmp_path: Path):
    cfg = make_config(overrides=["model=resnet18_ft", f"model.weights_path={resnet_weights}"])
    net = build_classifier(cfg, CLASSES).net
    stored = torch.load(resnet_weights, weights_only=True)
    assert torch.equal(net.backbone.conv1.weight, stored["conv1.weight"])
    # A resumed or evaluated run takes every weight from its checkpoint: the weights file may be gone by then.
    cfg.model.weights_path = str(tmp_path / "moved-away.pth")
    build_classifier(cfg, CLASSES, pretrained=False)


def test_the_classifier_trains_with_the_configured_label_smoothing(make_config):
    cfg = make_config(overrides=["model=simple_cnn", "classifier.label_smoothing=0.1"])
    assert build_classifier(cfg, CLASSES).criterion.label_smoothing == pytest.approx(0.1)


def test_a_scheduler_config_naming_no_interval_steps_once_per_epoch(make_config):
    cfg = make_config(overrides=["model=simple_cnn", "scheduler=cosine"])
    with open_dict(cfg):
        del cfg.scheduler["interval"]  # a user's own scheduler file that names no interval
    assert build_classifier(cfg, CLASSES).scheduler_interval == "epoch"


def small_state() -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    return nn.Linear(3, 2).state_dict()


def test_a_weights_file_wrapped_as_model_or_state_dict_is_unwrapped(tmp_path: Path):
    state = small_state()
    for key in ("model", "state_dict"):
        path = tmp_path / f"{key}.pth"
        torch.save({key: state, "epoch": 3}, path)
        model = nn.Linear(3, 2)
        load_pretrained(model, "resnet18", None, str(path))
        assert torch.equal(model.weight, state["weight"]) and torch.equal(model.bias, state["bias"])


def test_a_weights_file_missing_a_parameter_is_refused_rather_than_half_loaded(tmp_path: Path):
    path = tmp_path / "partial.pth"
    torch.save({"weight": small_state()["weight"]}, path)
    with pytest.raises(WeightsUnavailableError, match=rf"(?s)^weights from {path} do not fit resnet18: .*bias"):
        load_pretrained(nn.Linear(3, 2), "resnet18", None, str(path))


def test_a_weights_path_under_the_home_folder_may_be_written_with_a_tilde(tmp_path: Path,
                                                                        monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    state = small_state()
    torch.save(state, tmp_path / "w.pth")
    model = nn.Linear(3, 2)
    load_pretrained(model, "resnet18", None, "~/w.pth")
    assert torch.equal(model.weight, state["weight"])


def test_misclassified_images_stop_at_max_images_and_title_the_true_class_first():
    logger = MisclassifiedImagesLogger(max_images=3)
    trainer = SimpleNamespace(is_global_zero=True)
    module = SimpleNamespace(class_names=["cat", "dog", "fox"])
    logits = torch.tensor([[0.0, 9.0, 0.0], [9.0, 0.0, 0.0], [0.0, 9.0, 0.0], [0.0, 0.0, 9.0]])
    labels = torch.tensor([0, 0, 1, 1])  # the second is right, the others wrong
    for _ in range(2):  # the second batch finds the grid full
        logger.on_test_batch_end(trainer, module, {"logits": logits}, (torch.rand(4, 3, 2, 2), labels), 0)
    assert len(logger._images) == len(logger._titles) == 3
    assert [title.split(" ")[:3] for title in logger._titles] == [
        ["true", "cat\npred", "dog"], ["true", "dog\npred", "fox"], ["true", "cat\npred", "dog"]]


@pytest.mark.parametrize(("norm_type", "expected"), [(2.0, 5.0), (float("inf"), 4.0), (1.0, 7.0)])
def test_grad_norm_uses_the_configured_norm_type(norm_type: float, expected: float):
    parameter = nn.Parameter(torch.zeros(2))
    parameter.grad = torch.tensor([3.0, -4.0])
    logged: dict[str, float] = {}
    module = SimpleNamespace(parameters=lambda: [parameter],
                             log=lambda name, value, **kwargs: logged.__setitem__(name, float(value)))
    trainer = SimpleNamespace(_logger_connector=SimpleNamespace(should_update_logs=True))
    callback = GradientNormLogger(norm_type=norm_type)
    callback.on_train_batch_start(trainer, module, None, 0)
    callback.on_before_optimizer_step(trainer, module, None)
    assert logged == {"train/grad_norm": pytest.approx(expected)}


def test_confusion_matrix_with_on_test_false_draws_nothing_at_test():
    drawn: list[str] = []
    writer = SimpleNamespace(add_image=lambda tag, *args, **kwargs: drawn.append(tag))
    module = SimpleNamespace(num_classes=3, device=torch.device("cpu"), class_names=["cat", "dog", "fox"])
    trainer = SimpleNamespace(is_global_zero=True, loggers=[], ckpt_path=None, current_epoch=1,
                              fit_loop=SimpleNamespace(epoch_loop=SimpleNamespace(_batches_that_stepped=4)))
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(visual_callbacks, "tensorboard_writer", lambda trainer: writer)
        for on_test, expected in ((False, []), (True, ["test/confusion_matrix"])):
            callback = ConfusionMatrixLogger(on_test=on_test)
            callback.on_test_epoch_start(trainer, module)
            batch = (torch.rand(3, 3, 2, 2), torch.arange(3))
            callback.on_test_batch_end(trainer, module, {"logits": torch.eye(3)}, batch, 0)
            callback.on_test_epoch_end(trainer, module)
            assert drawn == expected
