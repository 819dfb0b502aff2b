"""ImageClassifier on its own: a tiny network, batches made on the spot, a bare Lightning Trainer."""

from __future__ import annotations

import functools
import logging
import re
from typing import Any

import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import LambdaCallback
from lightning.pytorch.utilities.model_summary import ModelSummary
from torch.optim.lr_scheduler import CosineAnnealingLR, OneCycleLR
from torch.utils.data import DataLoader

from cnnlab.data.base import Batch
from cnnlab.errors import ConfigValueError
from cnnlab.tasks.train import build_run
from cnnlab.training.classifier import ImageClassifier
from cnnlab.training.factory import build_classifier
from cnnlab.utils.config import ensure_switch

CLASSES = ["cat", "dog", "fox"]


def batches(count: int, labels: list[int] | None = None, size: int = 8, seed: int = 0) -> DataLoader:
    """``count`` batches of random 3x2x2 float images; labels drawn from all classes unless given."""
    generator = torch.Generator().manual_seed(seed)
    made = []
    for _ in range(count):
        if labels is None:
            targets = torch.randint(0, len(CLASSES), (size,), generator=generator)
        else:
            targets = torch.tensor(labels)
        made.append(Batch(torch.rand(len(targets), 3, 2, 2, generator=generator), targets, torch.arange(len(targets))))
    return DataLoader(made, batch_size=None)  # as they are (Lightning would take a list for many loaders)


def classifier(optimizer: Any = None, scheduler: Any = None, interval: str = "step") -> ImageClassifier:
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(12, len(CLASSES)))
    return ImageClassifier(net, len(CLASSES), optimizer=optimizer or functools.partial(torch.optim.SGD, lr=0.1),
                           scheduler=scheduler, scheduler_interval=interval, class_names=CLASSES)


def trainer(**settings: Any) -> L.Trainer:
    return L.Trainer(accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False,
                     enable_model_summary=False, num_sanity_val_steps=0, **settings)


def test_a_schedule_that_cannot_be_built_for_the_runs_length_says_what_to_change():
    # OneCycleLR's warm-up of pct_start * total_steps = 1 step divides by zero in its constructor.
    onecycle = functools.partial(OneCycleLR, max_lr=0.1, pct_start=0.25)
    model = classifier(scheduler=onecycle)
    before = [p.detach().clone() for p in model.parameters()]
    with pytest.raises(ConfigValueError) as refused:
        trainer(max_epochs=1).fit(model, train_dataloaders=batches(4))
    message = str(refused.value)
    assert message.startswith("the learning-rate schedule OneCycleLR cannot be built for this run of 4 optimizer "
                              "steps (total_steps=4) with scheduler.scheduler.max_lr=0.1, "
                              "scheduler.scheduler.pct_start=0.25: ZeroDivisionError: float division by zero.")
    assert "Train for more optimizer steps (trainer.max_epochs, trainer.max_steps, trainer.limit_train_batches)" in message
    assert "scheduler=none" in message
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True)), "nothing trained"
    # One step more and the same schedule builds and runs.
    trainer(max_epochs=1).fit(classifier(scheduler=onecycle), train_dataloaders=batches(5))


def test_a_schedule_over_the_whole_run_needs_its_length():
    with pytest.raises(ConfigValueError, match=r"OneCycleLR spans the whole run, so it needs the run's length: set "
                                               r"trainer.max_epochs \(or trainer.max_steps\)"):
        trainer(max_epochs=-1).fit(classifier(scheduler=functools.partial(OneCycleLR, max_lr=0.1)),
                                   train_dataloaders=batches(5))
    # An endless run of epochs stopped by max_steps has a length in steps (not in epochs: below).
    stepped = trainer(max_epochs=-1, max_steps=6)
    stepped.fit(classifier(scheduler=functools.partial(CosineAnnealingLR)), train_dataloaders=batches(5))
    assert stepped.lr_scheduler_configs[0].scheduler.T_max == 6 and stepped.global_step == 6


def test_a_schedule_over_the_runs_epochs_needs_max_epochs_not_max_steps():
    with pytest.raises(ConfigValueError) as refused:
        trainer(max_epochs=-1, max_steps=10).fit(classifier(scheduler=functools.partial(CosineAnnealingLR),
                                                            interval="epoch"), train_dataloaders=batches(5))
    assert str(refused.value) == (
        "the learning-rate schedule CosineAnnealingLR with scheduler.interval=epoch spans the run's epochs, so it "
        "needs trainer.max_epochs (trainer.max_steps does not say how many epochs that is); set trainer.max_epochs, "
        "or scheduler.interval=step to schedule over trainer.max_steps")


@pytest.mark.parametrize("optimizer", [torch.optim.Adam, torch.optim.SGD])
def test_clipping_under_mixed_precision_trains_with_an_unfused_optimizer(optimizer, caplog):
    factory = functools.partial(optimizer, lr=0.01, fused=True)
    caplog.set_level(logging.INFO, logger="cnnlab.training.classifier")
    clipped = trainer(max_epochs=1, precision="bf16-mixed", gradient_clip_val=1.0)
    clipped.fit(classifier(optimizer=factory), train_dataloaders=batches(3))
    assert clipped.global_step == 3 and clipped.optimizers[0].defaults["fused"] is False
    assert factory.keywords["fused"] is True, "the configured factory is left as it was"
    (line,) = [r.getMessage() for r in caplog.records if "fused" in r.getMessage()]
    assert line.startswith("optimizer.fused=false for this run: trainer.gradient_clip_val=1.0 with "
                           "trainer.precision=bf16-mixed clips the gradients before the optimizer step")
    # Where Lightning can clip a fused optimizer's gradients (full precision), or nothing is clipped, it stays fused.
    for settings in ({"precision": "32-true", "gradient_clip_val": 1.0}, {"precision": "bf16-mixed"}):
        plain = trainer(max_epochs=1, **settings)
        plain.fit(classifier(optimizer=factory), train_dataloaders=batches(3))
        assert plain.optimizers[0].defaults["fused"] is True, settings


def test_per_class_test_accuracy_leaves_out_a_class_without_test_images():
    model = classifier()
    trainer(max_epochs=1).fit(model, train_dataloaders=batches(3))
    test = batches(2, labels=[0, 0, 0, 2, 2, 0, 2], seed=1)  # no "dog"
    (results,) = trainer().test(model, dataloaders=test, verbose=False)
    model.eval()
    with torch.no_grad():
        predicted = torch.cat([model(batch.images).argmax(dim=1) for batch in test])
    labels = torch.cat([batch.labels for batch in test])
    for label, name in ((0, "cat"), (2, "fox")):
        hits = [p == t for p, t in zip(predicted.tolist(), labels.tolist(), strict=True) if t == label]
        assert results[f"test/acc_class/{name}"] == pytest.approx(sum(hits) / len(hits)), name
    assert "test/acc_class/dog" not in results
    assert results["test/acc"] == pytest.approx((predicted == labels).float().mean().item())


def test_label_smoothing_shapes_the_training_loss_and_not_the_test_loss():
    torch.manual_seed(0)
    model = ImageClassifier(torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(12, len(CLASSES))), len(CLASSES),
                            label_smoothing=0.2, class_names=CLASSES)
    test = batches(1, seed=3)
    (results,) = trainer().test(model, dataloaders=test, verbose=False)
    (batch,) = list(test)
    with torch.no_grad():
        logits = model(batch.images)
    assert results["test/loss"] == pytest.approx(torch.nn.functional.cross_entropy(logits, batch.labels).item(), rel=1e-6)
    assert model.criterion(logits, batch.labels).item() != pytest.approx(results["test/loss"], rel=1e-3)
    # The training step's loss is the smoothed one.
    train_loss, train_logits, _ = model._loss_and_logits(batch, "train")
    smoothed = torch.nn.functional.cross_entropy(train_logits, batch.labels, label_smoothing=0.2)
    assert train_loss.item() == pytest.approx(smoothed.item(), rel=1e-6) != pytest.approx(results["test/loss"], rel=1e-3)


@pytest.mark.parametrize("smoothing", [-0.1, 1.0, 1.5])
def test_label_smoothing_outside_0_to_1_is_refused_naming_the_setting(smoothing):
    # -0.1 used to train silently with a negative smoothing; 1.5 failed only at the first training step.
    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(12, len(CLASSES)))
    with pytest.raises(ConfigValueError, match=rf"classifier.label_smoothing={smoothing} is outside \[0, 1\)"):
        ImageClassifier(net, len(CLASSES), label_smoothing=smoothing)
    with pytest.raises(ConfigValueError, match="scheduler.interval must be step or epoch, got 'batch'"):
        ImageClassifier(net, len(CLASSES), scheduler_interval="batch")
    assert ImageClassifier(net, len(CLASSES), label_smoothing=0.2).criterion.label_smoothing == 0.2


@pytest.mark.parametrize("option", ["flip_tta", "channels_last", "compile"])
@pytest.mark.parametrize("value", ["no", "off", "yes", "false", 0, None])
def test_a_switch_that_is_not_true_or_false_is_refused_naming_its_key(option, value):
    # A YAML 'no' is the string 'no', which is truthy: classifier.flip_tta=no used to turn flip TTA on.
    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(12, len(CLASSES)))
    with pytest.raises(ConfigValueError, match=rf"^classifier\.{option} must be true or false, got {re.escape(repr(value))}"):
        ImageClassifier(net, len(CLASSES), **{option: value})


def test_real_true_and_false_switches_are_taken_as_they_are():
    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(12, len(CLASSES)))
    off = ImageClassifier(net, len(CLASSES), flip_tta=False, channels_last=False, compile=False)
    assert (off.flip_tta, off.channels_last, off._run_net) == (False, False, net)
    on = ImageClassifier(net, len(CLASSES), flip_tta=True, channels_last=True)
    assert (on.flip_tta, on.channels_last) == (True, True)


@pytest.mark.parametrize(("override", "message"), [
    ("classifier.flip_tta=no", "classifier.flip_tta must be true or false, got 'no': pass classifier.flip_tta=false"),
    ("classifier.channels_last=off", "classifier.channels_last must be true or false, got 'off': pass "
                                     "classifier.channels_last=false"),
    # `'yes' and train` is True: the factory checks this one before the classifier could see it.
    ("classifier.compile=yes", "classifier.compile must be true or false, got 'yes': pass classifier.compile=true"),
    ("classifier.compile=no", "classifier.compile must be true or false, got 'no': pass classifier.compile=false"),
])
def test_a_switch_given_as_a_yaml_word_on_the_command_line_is_refused_when_the_classifier_is_built(make_config, override,
                                                                                                  message):
    cfg = make_config(overrides=["model=simple_cnn", override])
    with pytest.raises(ConfigValueError) as refused:
        build_classifier(cfg, [str(i) for i in range(10)])
    assert str(refused.value) == message
    if override.startswith("classifier.compile"):  # evaluation never compiles, nor reads the recorded value
        evaluated = build_classifier(cfg, [str(i) for i in range(10)], train=False)
        assert evaluated._run_net is evaluated.net


def test_ensure_switch_passes_a_bool_and_suggests_the_value_a_yaml_word_meant():
    assert ensure_switch(True, "a.b") is True and ensure_switch(False, "a.b") is False
    for word, meant in (("no", "false"), ("Off", "false"), ("YES", "true"), ("on", "true"), (1, "true")):
        with pytest.raises(ConfigValueError, match=rf"^a\.b must be true or false, got .*: pass a\.b={meant}$"):
            ensure_switch(word, "a.b")
    with pytest.raises(ConfigValueError, match=r"^a\.b must be true or false, got 'maybe'$"):
        ensure_switch("maybe", "a.b")



class ScriptedNet(torch.nn.Module):
    """Classifies the first ``right`` images of a batch correctly and the others wrongly.

    Each image holds its label in every pixel, so the network knows the answer.
    """

    def __init__(self) -> None:
        super().__init__()
        self.weight = torch.nn.Parameter(torch.zeros(()))  # something for the optimizer to step
        self.right = 0

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        labels = images[:, 0, 0, 0].long()
        predicted = torch.where(torch.arange(len(labels)) < self.right, labels, (labels + 1) % len(CLASSES))
        return torch.nn.functional.one_hot(predicted, len(CLASSES)).float() * 10 + self.weight


def test_val_acc_best_is_the_best_epochs_accuracy_not_the_last():
    net = ScriptedNet()
    model = ImageClassifier(net, len(CLASSES), optimizer=functools.partial(torch.optim.SGD, lr=0.1),
                            class_names=CLASSES)
    labels = torch.tensor([0, 1, 2, 0])
    val = DataLoader([Batch(labels.float().view(-1, 1, 1, 1).expand(-1, 3, 2, 2), labels, torch.arange(4))],
                     batch_size=None)
    right_per_epoch = [2, 4, 1]  # val/acc 0.5, 1.0, 0.25
    seen: list[dict[str, float]] = []
    script = LambdaCallback(
        on_validation_epoch_start=lambda trainer, _: setattr(net, "right", right_per_epoch[trainer.current_epoch]),
        on_validation_end=lambda trainer, _: seen.append(
            {name: trainer.callback_metrics[name].item() for name in ("val/acc", "val/acc_best")}))
    trainer(max_epochs=3, callbacks=[script]).fit(model, train_dataloaders=batches(1), val_dataloaders=val)
    assert [epoch["val/acc"] for epoch in seen] == [0.5, 1.0, 0.25]
    assert [epoch["val/acc_best"] for epoch in seen] == [0.5, 1.0, 1.0]  # the best so far, kept after a worse epoch


def test_train_accuracy_is_each_epochs_own_not_a_running_mean_over_epochs():
    net = ScriptedNet()
    model = ImageClassifier(net, len(CLASSES), optimizer=functools.partial(torch.optim.SGD, lr=0.1), class_names=CLASSES)
    labels = torch.tensor([0, 1, 2, 0])
    train = DataLoader([Batch(labels.float().view(-1, 1, 1, 1).expand(-1, 3, 2, 2), labels, torch.arange(4))],
                       batch_size=None)
    right_per_epoch = [4, 0, 4]  # train/acc 1.0, 0.0, 1.0
    seen: list[float] = []

    def start_epoch(trainer: L.Trainer, _: L.LightningModule) -> None:
        if trainer.current_epoch:  # the epoch before, logged at its end
            seen.append(trainer.callback_metrics["train/acc"].item())
        net.right = right_per_epoch[trainer.current_epoch]

    script = LambdaCallback(on_train_epoch_start=start_epoch,
                            on_train_end=lambda trainer, _: seen.append(trainer.callback_metrics["train/acc"].item()))
    trainer(max_epochs=3, limit_val_batches=0, callbacks=[script]).fit(model, train_dataloaders=train)
    assert seen == [1.0, 0.0, 1.0]


def test_flip_tta_averages_the_mirror_images_logits_in_evaluation_only():
    class FirstPixels(torch.nn.Module):
        """Logits that are an image's first pixels, so an image and its mirror image give different ones."""

        calls = 0

        def forward(self, images: torch.Tensor) -> torch.Tensor:
            self.calls += 1
            return images.flatten(1)[:, : len(CLASSES)]

    net = FirstPixels()
    model = ImageClassifier(net, len(CLASSES), flip_tta=True, channels_last=False)
    images = torch.rand(2, 3, 2, 2)
    model.train()
    assert torch.equal(model(images), net(images)) and net.calls == 2  # training: one pass, on the images as they are
    model.eval()
    assert torch.allclose(model(images), (net(images) + net(images.flip(3))) / 2) and net.calls == 6


def test_the_model_summary_shows_each_layers_output_size_and_flops_for_a_training_image(make_config):
    datamodule, model, trainer = build_run(make_config(overrides=["trainer.max_epochs=1", "trainer.limit_train_batches=1",
                                                                  "trainer.limit_val_batches=0", "test=false"]))
    trainer.fit(model, datamodule=datamodule)
    assert model.example_input_array.shape == (1, 3, 32, 32) and model.example_input_array.dtype == torch.uint8
    summary = ModelSummary(model, max_depth=2)
    # simple_cnn on 32x32: 3x3 convolutions 3->32 at 32x32, 32->64 at 16x16, 64->128 at 8x8, then 2048->512->10;
    # two FLOPs per multiply-add (torch's FlopCounterMode, as Lightning counts).
    convolutions = 2 * 9 * (3 * 32 * 32 * 32 + 32 * 64 * 16 * 16 + 64 * 128 * 8 * 8)
    assert summary.total_flops == convolutions + 2 * (2048 * 512 + 512 * 10) == 22_751_232
    assert dict(zip(summary.layer_names, summary.out_sizes, strict=True))["net.classifier"] == [1, 10]
