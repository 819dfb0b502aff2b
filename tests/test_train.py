"""End to end through the Hydra configs: train, test, record, evaluate, and refuse bad input."""

from __future__ import annotations

import json
import logging
from collections import Counter
from pathlib import Path
from typing import Any

import lightning as L
import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from lightning.pytorch.callbacks import Callback, LambdaCallback, ModelCheckpoint
from lightning.pytorch.demos.boring_classes import BoringModel
from lightning.pytorch.profilers import SimpleProfiler
from omegaconf import OmegaConf
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.plugins.hparams import plugin_data_pb2
from tensorboard.plugins.hparams.metadata import EXPERIMENT_TAG

from cnnlab.checkpoint import read_checkpoint
from cnnlab.errors import CheckpointError, ConfigValueError, CorruptImageError, RunDirectoryInUseError
from cnnlab.models.torchvision_ft import TorchvisionFineTuner
from cnnlab.tasks.evaluate import evaluate
from cnnlab.tasks.train import build_run, optimized_value, train
from cnnlab.training.callbacks import PER_BATCH_HOOKS, SkipUnusedBatchHooks
from cnnlab.training.classifier import ImageClassifier
from cnnlab.training.profiler import NoProfiler
from conftest import CONF_DIR, scalar_events, scalar_steps, write_image_folder


def tensorboard_scalars(run_dir: Path) -> dict[str, list[float]]:
    """Every scalar series in a run's TensorBoard event files (fit, test and hparams write separate files)."""
    series: dict[str, list[float]] = {}
    for events in sorted((run_dir / "tensorboard").glob("events.out.tfevents.*")):
        accumulator = EventAccumulator(str(events))
        accumulator.Reload()
        for tag in accumulator.Tags()["scalars"]:
            series.setdefault(tag, []).extend(event.value for event in accumulator.Scalars(tag))
    return series


def hparams_tab(run_dir: Path) -> tuple[set[str], set[str]]:
    """The settings' and the metrics' names of the run's HPARAMS experiment summary (TensorBoard's HPARAMS tab)."""
    settings: set[str] = set()
    metrics: set[str] = set()
    for events in (run_dir / "tensorboard").glob("events.out.tfevents.*"):
        accumulator = EventAccumulator(str(events))
        accumulator.Reload()
        try:
            content = accumulator.PluginTagToContent("hparams")[EXPERIMENT_TAG]
        except KeyError:  # the fit's and the test's event files hold no hparams
            continue
        experiment = plugin_data_pb2.HParamsPluginData.FromString(content).experiment
        settings |= {info.name for info in experiment.hparam_infos}
        metrics |= {info.name.tag for info in experiment.metric_infos}
    return settings, metrics


@pytest.mark.parametrize(("model", "precision"), [
    ("simple_cnn", "32-true"), ("simple_cnn_bn", "32-true"), ("resnet18_ft", "32-true"), ("simple_cnn", "bf16-mixed"),
    ("simple_cnn", "bf16-true"),
])
def test_every_model_trains_tests_and_evaluates(model, precision, make_config, resnet_weights, tmp_path):
    extra = [f"model.weights_path={resnet_weights}"] if model == "resnet18_ft" else []
    results = train(make_config(overrides=[f"model={model}", f"trainer.precision={precision}", *extra]))
    run = tmp_path / "run"

    recorded = json.loads((run / "metrics.json").read_text())
    for key in ("val/acc", "val/acc_best", "val/loss", "test/acc", "test/acc_top5", "test/loss",
                "test/acc_class/cat", "params_total", "params_trainable"):
        assert key in recorded, key
    assert recorded["epochs"] == 2 and 0 <= recorded["test/acc"] <= 1
    expected_trainable = {"simple_cnn": 1_147_466, "simple_cnn_bn": 1_147_690, "resnet18_ft": 5_130}[model]
    assert recorded["params_trainable"] == expected_trainable
    assert {p.name for p in (run / "checkpoints").iterdir()} >= {"last.ckpt", Path(recorded["best_checkpoint"]).name}
    assert {"train/loss_step", "val/acc", "val/acc_top5", "test/acc", "hparams/test/acc", "lr-Adam"} <= set(tensorboard_scalars(run))
    # The HPARAMS tab compares runs by the metrics of the experiment summary, validation top-5 among them.
    settings, metrics = hparams_tab(run)
    assert metrics == {f"hparams/{name}" for name in (
        "val/acc_best", "val/acc", "val/acc_top5", "val/loss", "test/acc", "test/acc_top5", "test/loss")}
    # The config flattened to one column per setting, the way a sweep's overrides name them.
    assert {"model/_target_", "optimizer/lr", "data/batch_size", "trainer/precision", "seed"} <= settings

    # eval runs in the precision the checkpoint was trained in (bf16 too, mixed or true), so the numbers are the same
    evaluated = evaluate(make_config("eval", [f"ckpt_path={recorded['best_checkpoint']}"], run_dir=tmp_path / "eval"))
    for key in ("test/acc", "test/acc_top5", "test/acc_class/cat"):
        assert evaluated[key] == results[key], key
    assert evaluated["test/loss"] == pytest.approx(results["test/loss"], rel=1e-6)
    assert (tmp_path / "eval" / "metrics.json").is_file()


def test_frozen_backbone_weights_and_batchnorm_statistics_do_not_move(make_config, resnet_weights, tmp_path):
    results = train(make_config(overrides=["model=resnet18_ft", f"model.weights_path={resnet_weights}",
                                           "optimizer.lr=0.05"]))
    start = torch.load(resnet_weights, weights_only=True)
    trained = read_checkpoint(tmp_path / "run" / "checkpoints" / "last.ckpt")["state_dict"]
    backbone = {name.removeprefix("net.backbone."): value for name, value in trained.items()
                if name.startswith("net.backbone.")}
    assert set(backbone) == set(start) - {"fc.weight", "fc.bias"}  # every backbone tensor, buffers included
    for name, value in backbone.items():
        assert torch.equal(value, start[name]), f"{name} changed during training"
    assert any(n.endswith("running_mean") for n in backbone)
    # The head did train: rebuild the network as the run did (seed 42) and compare.
    L.seed_everything(42)
    initial = TorchvisionFineTuner(num_classes=10, arch="resnet18", weights=None, weights_path=str(resnet_weights))
    assert results["global_step"] > 0
    assert not torch.allclose(trained["net.head.1.weight"], initial.head[1].weight, atol=1e-4)


def test_the_scratch_cnn_learns_a_folder_of_images(make_config, tmp_path):
    # Each class has its own mean colour (plus noise): learnable in a few steps, so a mix-up of
    # images and labels, or augmentation that wrecks the input, shows as chance accuracy (1/3).
    folder = write_image_folder(tmp_path / "images", per_class=40, splits=("train", "test"), seed=3)
    results = train(make_config(overrides=["data=folder", f"data.root={folder}", "data.image_size=16",
                                           "data.val_split=0.2", "trainer.max_epochs=4"]))
    assert results["params_total"] == 128 * 2 * 2 * 512 + 512 + 513 * 3 + 93_248
    assert results["test/acc"] >= 0.8 and results["val/acc_best"] >= 0.8  # 0.99 and 1.0 when written
    assert results["test/loss"] < 0.5 < 1.0986  # ln 3: a network that knows nothing
    losses = [value for _, value in scalar_events(tmp_path / "run" / "tensorboard", "train/loss")]
    assert len(losses) == 4 and losses[-1] < losses[0] / 2


def test_same_seed_repeats_a_cpu_run_with_or_without_skipping_unused_hooks(make_config, tmp_path):
    first = train(make_config(overrides=["seed=7"], run_dir=tmp_path / "a"))
    second = train(make_config(overrides=["seed=7", "~callbacks.skip_unused_hooks"], run_dir=tmp_path / "b"))
    for key in ("train/loss", "val/loss", "test/loss", "test/acc"):
        assert first[key] == second[key], key


def test_step_metrics_are_written_on_every_nth_step_with_that_steps_values(make_config, tmp_path):
    # The step loss (training_step), the gradient norm (GradientNormLogger) and the learning rate
    # (LearningRateMonitor) each decide at the start of a step whether its logs reach the loggers.
    losses: dict[int, float] = {}
    norms: dict[int, float] = {}

    def record_norm(trainer: L.Trainer, pl_module: L.LightningModule, optimizer: Any) -> None:
        grads = [p.grad for p in pl_module.parameters() if p.grad is not None]
        norms[trainer.global_step] = float(torch.nn.utils.get_total_norm(grads))

    def record_loss(trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int) -> None:
        losses[trainer.global_step - 1] = float(outputs["loss"])  # the step has been taken

    datamodule, model, trainer = build_run(make_config(overrides=["trainer.log_every_n_steps=3"]))
    trainer.callbacks.append(LambdaCallback(on_before_optimizer_step=record_norm, on_train_batch_end=record_loss))
    trainer.fit(model, datamodule=datamodule)

    log_dir = tmp_path / "run" / "tensorboard"
    logging_steps = [step for step in range(trainer.global_step) if (step + 1) % 3 == 0]
    assert len(logging_steps) >= 3
    for tag, taken in (("train/loss_step", losses), ("train/grad_norm", norms)):
        written = scalar_events(log_dir, tag)
        assert [step for step, _ in written] == logging_steps, tag
        assert [value for _, value in written] == pytest.approx([taken[step] for step in logging_steps], rel=1e-6), tag
    assert scalar_steps(log_dir, "lr-Adam") == logging_steps


def test_a_used_run_folder_is_never_overwritten(make_config, tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "metrics.json").write_text('{"test/acc": 0.9}')
    with pytest.raises(RunDirectoryInUseError, match="nothing was overwritten"):
        train(make_config())
    assert (run / "metrics.json").read_text() == '{"test/acc": 0.9}'
    assert not (run / "checkpoints").exists()


def test_eval_rejects_missing_foreign_and_mismatched_checkpoints(make_config, tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        evaluate(make_config("eval", [f"ckpt_path={tmp_path / 'nope.ckpt'}"]))
    foreign = tmp_path / "foreign.ckpt"
    torch.save({"state_dict": {"w": torch.zeros(1)}}, foreign)
    with pytest.raises(CheckpointError, match="not written by cnnlab"):
        evaluate(make_config("eval", [f"ckpt_path={foreign}"]))
    train(make_config(overrides=["trainer.max_epochs=1"]))
    last = tmp_path / "run" / "checkpoints" / "last.ckpt"
    with pytest.raises(CheckpointError, match="holds a SimpleCNN model, not resnet18"):
        evaluate(make_config("eval", [f"ckpt_path={last}", "model=resnet18_ft"], run_dir=tmp_path / "eval"))
    with pytest.raises(CheckpointError, match="holds a SimpleCNN model, not resnet18"):
        train(make_config(overrides=["model=resnet18_ft", f"ckpt_path={last}"], run_dir=tmp_path / "resumed"))


@pytest.mark.parametrize("schedule", ["onecycle", "cosine"])
def test_sgd_with_a_schedule_changes_the_learning_rate(schedule, make_config, tmp_path):
    train(make_config(overrides=["optimizer=sgd", f"scheduler={schedule}", "classifier.label_smoothing=0.1"]))
    rates = tensorboard_scalars(tmp_path / "run")["lr-SGD"]
    assert len(rates) >= 10 and len(set(rates)) == len(rates), "the rate must move every step"
    if schedule == "onecycle":
        assert max(rates) == pytest.approx(0.05, rel=0.02) and rates[0] < 0.01  # warm-up to optimizer.lr
    else:
        assert rates[0] == pytest.approx(0.05) and rates[-1] < rates[0]


def test_csv_logger(make_config, tmp_path):
    train(make_config(overrides=["logger=csv", "trainer.max_epochs=1"]))
    header = (tmp_path / "run" / "csv" / "metrics.csv").read_text().splitlines()[0].split(",")
    assert {"val/acc", "test/acc", "train/loss_step"} <= set(header)
    hparams = OmegaConf.load(tmp_path / "run" / "csv" / "hparams.yaml")  # the run's config, in its own shape
    assert hparams.model._target_ == "cnnlab.models.simple_cnn.SimpleCNN" and hparams.trainer.max_epochs == 1


def test_default_profiler_records_nothing_and_lightnings_profilers_plug_in(make_config):
    trainer = instantiate(make_config().trainer)
    assert isinstance(trainer.profiler, NoProfiler)
    with trainer.profiler.profile("training_step") as entered:
        assert entered is None
    assert trainer.profiler.profile("a") is trainer.profiler.profile("b")  # one shared no-op, nothing made per call
    assert trainer.profiler.summary() == ""
    assert isinstance(instantiate(make_config(overrides=["trainer.profiler=simple"]).trainer).profiler, SimpleProfiler)


class _CountingCallback(Callback):
    """Implements one training, one validation and one epoch hook, and counts their calls."""

    def __init__(self) -> None:
        self.calls: Counter[str] = Counter()

    def on_before_backward(self, trainer, pl_module, loss) -> None:
        self.calls["on_before_backward"] += 1

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        self.calls["on_validation_batch_end"] += 1

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        self.calls["on_train_epoch_end"] += 1


def test_unused_batch_hooks_are_skipped_during_the_run_and_implemented_hooks_still_run(tmp_path):
    counting, checkpoint = _CountingCallback(), ModelCheckpoint(dirpath=tmp_path / "checkpoints", save_last=True)
    lambda_ends: list[int] = []  # a hook set on the instance, not the class
    on_instance = LambdaCallback(on_train_batch_end=lambda trainer, module, outputs, batch, i: lambda_ends.append(i))
    empty_hooks = ("on_train_batch_start", "on_after_backward", "on_before_zero_grad", "on_train_batch_end")
    inside_fit: dict[str, object] = {}  # the hooks as Lightning's dispatcher sees them, read at the end of training
    look = LambdaCallback(on_train_end=lambda trainer, module: inside_fit.update(
        {hook: getattr(counting, hook) for hook in (*empty_hooks, "on_before_backward", "on_train_epoch_start")},
        checkpoint_start=checkpoint.on_train_batch_start, checkpoint_end=checkpoint.on_train_batch_end,
        lambda_start=on_instance.on_train_batch_start))
    trainer = L.Trainer(accelerator="cpu", callbacks=[counting, checkpoint, on_instance, look, SkipUnusedBatchHooks()],
                        max_epochs=2, limit_train_batches=3, limit_val_batches=2, num_sanity_val_steps=0, logger=False,
                        enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp_path)
    trainer.fit(BoringModel())
    assert counting.calls == {"on_before_backward": 6, "on_validation_batch_end": 4, "on_train_epoch_end": 2}
    # Inside the fit, a per-batch hook a callback leaves empty is None on that instance, which Lightning's dispatcher
    # passes by (calling None would have failed the fit); implemented hooks and per-epoch hooks keep their methods.
    for hook in empty_hooks:
        assert inside_fit[hook] is None, hook
    assert callable(inside_fit["on_before_backward"]) and callable(inside_fit["on_train_epoch_start"])
    assert inside_fit["checkpoint_start"] is None and callable(inside_fit["checkpoint_end"])
    assert inside_fit["lambda_start"] is None and lambda_ends == [0, 1, 2, 0, 1, 2]
    assert (tmp_path / "checkpoints" / "last.ckpt").is_file()
    # After it every callback is as it came: no shadow left on an instance, the class untouched.
    for callback in (counting, checkpoint, on_instance):
        assert not any(vars(callback).get(hook, "unset") is None for hook in PER_BATCH_HOOKS), callback
    assert on_instance.on_train_batch_end is not None and callable(counting.on_train_batch_start)
    assert type(counting).on_train_batch_start is Callback.on_train_batch_start


def test_hook_bookkeeping_bypasses_module_checks_and_submodules_still_register():
    model = ImageClassifier(torch.nn.Linear(4, 3), num_classes=3)
    model._current_fx_name = "training_step"  # what Lightning sets around every hook call
    assert model._current_fx_name == "training_step" and "_current_fx_name" not in model._modules
    model.probe = torch.nn.Linear(3, 3)
    model.scale = torch.nn.Parameter(torch.ones(1))
    model.register_buffer("counts", torch.zeros(3))
    model.counts = torch.ones(3)
    assert "probe" in model._modules and "scale" in model._parameters and torch.equal(model._buffers["counts"], torch.ones(3))
    with pytest.raises(TypeError):  # nn.Module's own checks still apply to every other name
        model.scale = torch.zeros(1)


def test_fast_dev_run_smoke_test(make_config, tmp_path, caplog):
    caplog.set_level(logging.WARNING, logger="cnnlab")
    results = train(make_config(overrides=["debug=fast_dev_run"]))
    assert results["best_checkpoint"] == ""  # fast_dev_run saves no checkpoint; the run still tests
    assert results["global_step"] == 1 and "test/acc" in results
    assert "no best checkpoint was saved" not in caplog.text  # by design, not worth a warning


@pytest.mark.parametrize(("overrides", "steps"), [
    # Two epochs (tests' default) of 6 batches, an optimizer step every 2 batches.
    (["trainer.limit_train_batches=6", "trainer.accumulate_grad_batches=2"], 6),
    (["trainer.limit_train_batches=6", "trainer.max_epochs=3", "trainer.max_steps=8"], 8),  # stops inside epoch 2
])
def test_trainer_knobs_in_conf_set_the_run_length(overrides, steps, make_config):
    # Set without Hydra's "+": the knobs live in conf/trainer/default.yaml.
    results = train(make_config(overrides=["trainer.limit_val_batches=1", "trainer.limit_test_batches=1", *overrides]))
    assert results["global_step"] == steps and "test/acc" in results


def test_clipping_and_validation_interval_reach_the_trainer(make_config):
    trainer = instantiate(make_config(overrides=["trainer.gradient_clip_val=0.5", "trainer.val_check_interval=0.25"]).trainer)
    assert (trainer.gradient_clip_val, trainer.val_check_interval) == (0.5, 0.25)
    assert instantiate(make_config().trainer).gradient_clip_val is None  # no clipping unless asked


def test_tutorial_experiment_composes_the_tutorial_recipe():
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose("train", overrides=["experiment=tutorial"])
    assert cfg.model._target_.endswith("SimpleCNN") and cfg.optimizer._target_ == "torch.optim.Adam"
    assert (cfg.optimizer.lr, cfg.data.batch_size, cfg.trainer.max_epochs) == (1e-3, 64, 5)


@pytest.mark.parametrize("recipe", ["resnet18_cifar", "fast"])
def test_from_scratch_recipes_train_a_few_steps(recipe, make_config, tmp_path):
    # The recipes as configured, shortened: a few steps at a small batch, full precision on the CPU.
    results = train(make_config(overrides=[f"experiment={recipe}", "trainer.max_epochs=1", "trainer.limit_train_batches=3",
                                           "trainer.precision=32-true", "data.batch_size=16", "data.eval_batch_size=32"]))
    assert results["global_step"] == 3 and "test/acc" in results
    if recipe == "fast":
        assert results["params_total"] == 6_573_120


def test_flip_tta_and_channels_last_evaluate_the_same_network(make_config, tmp_path):
    results = train(make_config(overrides=["classifier.flip_tta=true", "classifier.channels_last=true"]))
    evaluated = evaluate(make_config("eval", [f"ckpt_path={results['best_checkpoint']}"], run_dir=tmp_path / "eval"))
    assert evaluated["test/acc"] == results["test/acc"]


def test_a_value_the_config_leaves_open_is_named_with_how_to_set_it_before_any_work(make_config, tmp_path: Path):
    run_dir = tmp_path / "run"
    with pytest.raises(ConfigValueError, match=r"^no value for data\.root: set it on the command line "
                                               r"\(data\.root=DIR, a folder with DIR/train/<class>/<image files>\)$"):
        train(make_config(overrides=["data=folder"], run_dir=run_dir))
    assert not run_dir.exists()


def test_an_optimizer_value_torch_refuses_is_named_before_the_data_loads(make_config, tmp_path: Path):
    with pytest.raises(ConfigValueError, match=r"^torch\.optim\.Adam refuses the optimizer settings \(optimizer\.lr=-1 "
                                               r"optimizer\.weight_decay=0\.0 optimizer\.fused=True\): Invalid learning "
                                               r"rate: -1; give a valid value with an override"):
        build_run(make_config(overrides=["optimizer.lr=-1"]))
    with pytest.raises(ConfigValueError, match=r"^torch\.optim\.SGD refuses .*optimizer\.momentum=0 optimizer\.nesterov="
                                               r"True.*: Nesterov momentum requires a momentum"):
        build_run(make_config(overrides=["optimizer=sgd", "optimizer.momentum=0"]))
    with pytest.raises(ConfigValueError, match=r"optimizer\.betas=\[0\.9, 1\.5\].*Invalid beta parameter at index 1"):
        build_run(make_config(overrides=["+optimizer.betas=[0.9,1.5]"]))
    with pytest.raises(ConfigValueError, match=r"optimizer\.fused=True optimizer\.foreach=True\): .*cannot be `True` together"):
        build_run(make_config(overrides=["+optimizer.foreach=true"]))
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_a_run_without_validation_finishes_and_returns_no_value_to_a_sweeper(make_config, tmp_path, caplog):
    cfg = make_config(overrides=["trainer.max_epochs=1", "trainer.limit_val_batches=0"])
    results = train(cfg)
    assert "test/acc" in results and not any(key.startswith("val/") for key in results)
    assert json.loads((tmp_path / "run" / "metrics.json").read_text())["global_step"] == results["global_step"] > 0
    assert optimized_value(cfg, results) is None
    assert "optimized_metric=val/acc_best: this run logged no val/ metrics" in caplog.text
    cfg.optimized_metric = "test/acc_bset"  # a typo among metrics the run has is still an error
    with pytest.raises(ConfigValueError, match="optimized_metric=test/acc_bset is not among the run's final metrics"):
        optimized_value(cfg, results)


def test_a_run_without_a_logger_or_a_checkpoint_callback_trains_and_saves_no_checkpoint(make_config, tmp_path):
    # Lightning's LearningRateMonitor refuses a trainer without loggers; Lightning would add a
    # checkpoint callback of its own when ours is taken off.
    results = train(make_config(overrides=["trainer.max_epochs=1", "~logger"]))
    assert results["global_step"] > 0 and not (tmp_path / "run" / "tensorboard").exists()
    results = train(make_config(overrides=["trainer.max_epochs=1", "~callbacks.model_checkpoint"],
                                run_dir=tmp_path / "no_checkpoints"))
    assert results["best_checkpoint"] == "" and "test/acc" in results
    assert not list((tmp_path / "no_checkpoints").rglob("*.ckpt"))


def test_training_that_goes_on_after_the_last_checkpoint_says_so(make_config, caplog):
    train(make_config(overrides=["trainer.max_epochs=3", "trainer.check_val_every_n_epoch=2", "test=false"]))
    assert "the last checkpoint is from step 14, but training ran to step 21" in caplog.text


def test_a_failure_is_logged_with_the_cause_a_library_wrapped(make_config, caplog):
    # instantiate() wraps the network's own message in "Error in call to target ..."; the job
    # log (what scripts/summarize.py shows for a failed job) must say what to fix.
    with pytest.raises(Exception, match="SimpleCNN"):
        train(make_config(overrides=["data.image_size=30"]))
    assert "training failed: InputSizeError: input_size 30 must be divisible by 8" in caplog.text


def test_a_relative_data_root_is_recorded_absolute_so_eval_works_from_anywhere(make_config, image_folder, tmp_path,
                                                                               monkeypatch):
    monkeypatch.chdir(image_folder.parent)
    results = train(make_config(overrides=["data=folder", f"data.root={image_folder.name}", "data.image_size=16",
                                           "trainer.max_epochs=1"]))
    checkpoint = read_checkpoint(tmp_path / "run" / "checkpoints" / "last.ckpt")
    assert checkpoint["cnnlab"]["config"]["data"]["root"] == str(image_folder)
    monkeypatch.chdir(tmp_path)
    evaluated = evaluate(make_config("eval", [f"ckpt_path={results['best_checkpoint']}"], run_dir=tmp_path / "eval"))
    assert evaluated["test/acc"] == results["test/acc"]


def test_epoch_times_reach_metrics_json_from_a_spawned_worker(make_config, tmp_path):
    # Under ddp_spawn the epoch timer runs in the worker processes (one is enough here, ~6 s of it its
    # imports), while this process writes metrics.json. (ddp_fork would be quicker, but hangs after torch's
    # OpenMP threads have run in the parent.)
    overrides = ["trainer=ddp_cpu", "trainer.strategy=ddp_spawn", "trainer.devices=1", "test=false"]
    results = train(make_config(overrides=overrides))
    recorded = json.loads((tmp_path / "run" / "metrics.json").read_text())["epoch_seconds"]
    assert recorded == results["epoch_seconds"] and len(recorded) == 2 and all(seconds > 0 for seconds in recorded)


def test_a_data_error_leaves_no_empty_logger_run_and_keeps_what_was_there(make_config, tmp_path):
    # Lightning opens the event file before the data's setup, which is where undecodable images are found.
    for name in ("cat", "dog"):
        (tmp_path / "broken" / "train" / name).mkdir(parents=True)
        for i in range(3):
            (tmp_path / "broken" / "train" / name / f"{i}.jpg").write_bytes(b"not an image")
    overrides = ["data=folder", f"data.root={tmp_path / 'broken'}", "trainer.max_epochs=1", "logger=[tensorboard,csv]"]
    with pytest.raises(CorruptImageError, match=r"^6 image file\(s\) could not be decoded"):
        train(make_config(overrides=overrides))
    assert not list(tmp_path.rglob("events.out.tfevents.*")) and not (tmp_path / "run" / "tensorboard").exists()
    assert not (tmp_path / "run" / "csv").exists()  # the CSV logger's folder, empty too
    # An event file from before this run stays (only what the failed run created is removed).
    earlier = tmp_path / "again" / "tensorboard" / "events.out.tfevents.1.host.1.0"
    earlier.parent.mkdir(parents=True)
    earlier.write_bytes(b"")
    with pytest.raises(CorruptImageError):
        train(make_config(overrides=overrides, run_dir=tmp_path / "again"))
    assert list(earlier.parent.iterdir()) == [earlier]


@pytest.mark.parametrize("override", ["test=no", "tune_host_malloc=off"])
def test_a_top_level_switch_given_as_a_yes_no_word_is_refused_before_the_run(make_config, tmp_path, override):
    key = override.split("=")[0]
    with pytest.raises(ConfigValueError, match=f"{key} must be true or false, got '(no|off)': pass {key}=false"):
        train(make_config(overrides=[override], run_dir=tmp_path / "run"))
    assert not (tmp_path / "run").exists()  # refused before the run folder
