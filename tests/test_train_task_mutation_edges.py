"""Edges of the training task and its callbacks that a mutation round found untested."""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import lightning as L
import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.core.hydra_config import HydraConfig
from lightning.pytorch.callbacks import Callback, LambdaCallback, ModelCheckpoint
from lightning.pytorch.demos.boring_classes import BoringModel
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.strategies.launchers import _MultiProcessingLauncher
from omegaconf import DictConfig, OmegaConf

from cnnlab.tasks.train import (
    continuing_overrides,
    continuing_sweep_command,
    failure_reason,
    fit_progress,
    remove_empty_logs,
    train,
)
from cnnlab.training.callbacks import EpochTimer, RunFolderCheckpoint, SkipUnusedBatchHooks, _reroot
from conftest import CONF_DIR, scalar_events

QUICK = ["~callbacks.confusion_matrix", "~callbacks.feature_maps", "~callbacks.conv_filters"]


def spawned_trainer(dirpath: Path) -> Any:
    """A stand-in for the main process's trainer after a ddp_spawn fit: it never counted an epoch or a step."""
    launcher = object.__new__(_MultiProcessingLauncher)
    return SimpleNamespace(strategy=SimpleNamespace(launcher=launcher), checkpoint_callback=ModelCheckpoint(dirpath=dirpath),
                           current_epoch=0, global_step=0)


def test_a_run_whose_last_checkpoint_is_its_last_step_logs_no_lag_warning_and_times_each_epoch(
        make_config: Callable[..., DictConfig], tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    # The lag warning is for checkpoints behind the last step only; every normal run would otherwise alarm.
    results = train(make_config(overrides=[*QUICK, "trainer.max_epochs=1", "test=false"]))
    assert results["global_step"] == 7
    assert "the last checkpoint is from step" not in caplog.text
    # The epoch's wall time reaches TensorBoard as time/epoch, the same value metrics.json records.
    events = scalar_events(tmp_path / "run" / "tensorboard", "time/epoch")
    assert len(events) == 1 and events[0][1] == pytest.approx(results["epoch_seconds"][0], abs=1e-3) and events[0][1] > 0


def test_a_spawned_fits_progress_is_read_from_the_last_checkpoint_the_workers_wrote(tmp_path: Path) -> None:
    # Lightning counts epochs from 0 in the checkpoint: 3 epochs done is epoch 2 there.
    torch.save({"epoch": 2, "global_step": 21}, tmp_path / "last.ckpt")
    assert fit_progress(spawned_trainer(tmp_path)) == (3, 21)
    # No last checkpoint (none saved yet): the trainer's own counts.
    assert fit_progress(spawned_trainer(tmp_path / "empty")) == (0, 0)


def test_checkpoint_paths_are_not_rerooted_when_one_lies_outside_the_stored_folder(tmp_path: Path) -> None:
    # A top-k file outside the run's folder (another run's) must not become this run's, to be pruned by it.
    old, new, other = tmp_path / "old", tmp_path / "new", tmp_path / "other"
    for folder in (new, other):
        folder.mkdir()
    (new / "last.ckpt").write_bytes(b"")
    (other / "epoch_000.ckpt").write_bytes(b"")
    state = {"dirpath": str(old), "last_model_path": str(old / "last.ckpt"),
             "best_model_path": str(other / "epoch_000.ckpt"), "best_k_models": {str(other / "epoch_000.ckpt"): 0.5}}
    assert _reroot(state, old, new) is None
    # All of them under the stored folder and present in the new one: all moved, the top-k scores kept.
    (new / "epoch_000.ckpt").write_bytes(b"")
    inside = {**state, "best_model_path": str(old / "epoch_000.ckpt"), "best_k_models": {str(old / "epoch_000.ckpt"): 0.5}}
    assert _reroot(inside, old, new) == {"dirpath": new, "last_model_path": str(new / "last.ckpt"),
                                         "best_model_path": str(new / "epoch_000.ckpt"),
                                         "best_k_models": {str(new / "epoch_000.ckpt"): 0.5}}


def hydra_job(tmp_path: Path, overrides: list[str], mode: str) -> DictConfig:
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose("train", overrides=[*overrides, f"hydra.mode={mode}", f"hydra.sweep.dir={tmp_path}"],
                       return_hydra_config=True)


def test_the_command_that_continues_an_interrupted_run_or_sweep_resumes_from_last_only(tmp_path: Path) -> None:
    # The session's own ckpt_path (another run's checkpoint, say) would otherwise be given twice.
    given = ["trainer.max_epochs=3", f"ckpt_path={tmp_path / 'other.ckpt'}"]
    run_cfg = hydra_job(tmp_path, given, "RUN")
    run_cfg.hydra.overrides.task = given
    HydraConfig.instance().set_config(run_cfg)
    try:
        assert continuing_overrides(tmp_path / "run") == ["trainer.max_epochs=3", f"hydra.run.dir={tmp_path / 'run'}",
                                                          "ckpt_path=last"]
    finally:
        HydraConfig.instance().cfg = None
    sweep_cfg = hydra_job(tmp_path, given, "MULTIRUN")
    sweep_cfg.hydra.overrides.task = given
    (tmp_path / "multirun.yaml").write_text(OmegaConf.to_yaml(sweep_cfg))
    HydraConfig.instance().set_config(sweep_cfg)
    try:
        command = continuing_sweep_command()
    finally:
        HydraConfig.instance().cfg = None
    assert command is not None and command[0] == "-m" and "trainer.max_epochs=3" in command
    assert [o for o in command if o.startswith("ckpt_path=")] == ["ckpt_path=last"]
    assert command[-2:] == [f"hydra.sweep.dir={tmp_path.absolute()}", "ckpt_path=last"]


def test_a_checkpoint_saved_by_time_keeps_its_per_batch_hook_and_saves_within_the_epoch(tmp_path: Path) -> None:
    # train_time_interval saves from the per-batch hook only: taken out, no checkpoint would ever be written.
    checkpoint = RunFolderCheckpoint(dirpath=tmp_path / "checkpoints", save_top_k=-1, filename="step_{step}",
                                     auto_insert_metric_name=False, train_time_interval=timedelta(seconds=0))
    trainer = L.Trainer(accelerator="cpu", callbacks=[checkpoint], max_epochs=1, limit_train_batches=3,
                        limit_val_batches=0, num_sanity_val_steps=0, logger=False, enable_progress_bar=False,
                        enable_model_summary=False, default_root_dir=tmp_path)
    trainer.fit(BoringModel())
    assert {p.name for p in (tmp_path / "checkpoints").iterdir()} == {"step_1.ckpt", "step_2.ckpt", "step_3.ckpt"}


def test_the_run_folder_checkpoint_keeps_lightnings_state_key_so_either_class_resumes_the_other() -> None:
    ours = RunFolderCheckpoint(monitor="val/acc", mode="max", save_last=True)
    assert ours.state_key == ModelCheckpoint(monitor="val/acc", mode="max", save_last=True).state_key
    assert ours.state_key.startswith("ModelCheckpoint{")


def test_only_the_resumed_last_checkpoint_is_adopted_not_a_later_one_beside_another_resumed_file(tmp_path: Path) -> None:
    # Resumed from epoch_000.ckpt, a last.ckpt beside it holds a later state: it must not be overwritten.
    (tmp_path / "epoch_000.ckpt").write_bytes(b"epoch 0")
    (tmp_path / "last.ckpt").write_bytes(b"epoch 1")
    module = BoringModel()
    other = RunFolderCheckpoint(dirpath=tmp_path, save_last=True)
    other.on_train_start(SimpleNamespace(ckpt_path=str(tmp_path / "epoch_000.ckpt")), module)  # type: ignore[arg-type]
    assert other.last_model_path == ""
    same = RunFolderCheckpoint(dirpath=tmp_path, save_last=True)
    same.on_train_start(SimpleNamespace(ckpt_path=str(tmp_path / "last.ckpt")), module)  # type: ignore[arg-type]
    assert same.last_model_path == same._last_checkpoint_saved == str(tmp_path / "last.ckpt")


class _Module:
    def log(self, *args: Any, **kwargs: Any) -> None:
        pass


def timed_epoch(timer: EpochTimer, epoch: int) -> None:
    trainer = SimpleNamespace(current_epoch=epoch, callback_metrics={})
    timer.on_train_epoch_start(trainer, _Module())  # type: ignore[arg-type]
    timer.on_train_epoch_end(trainer, _Module())  # type: ignore[arg-type]


def test_a_resumed_epoch_is_counted_once_whether_its_checkpoint_was_inside_it_or_at_its_end() -> None:
    # Saved 5 s into epoch 2 (Ctrl-C, a per-step checkpoint): epoch 2 is one entry, 5 s and what ran after.
    inside = EpochTimer()
    inside.load_state_dict({"epoch_seconds": [7.0, 8.0], "epoch_in_progress": [2, 5.0], "fit_seconds": 21.0})
    timed_epoch(inside, 2)
    assert len(inside.epoch_seconds) == 3 and 5.0 <= inside.epoch_seconds[2] < 6.0
    # Saved at epoch 1's validation end, before its end hook: epoch 1 took 8 s, and epoch 2 is timed afresh.
    at_end = EpochTimer()
    at_end.load_state_dict({"epoch_seconds": [7.0], "epoch_in_progress": [1, 8.0], "fit_seconds": 16.0})
    timed_epoch(at_end, 2)
    assert len(at_end.epoch_seconds) == 3 and at_end.epoch_seconds[:2] == [7.0, 8.0] and at_end.epoch_seconds[2] < 1.0


def test_a_checkpoint_saved_again_before_the_resumed_epoch_restarts_keeps_that_epochs_time() -> None:
    # E.g. a session stopped again right after it restored: the epoch's 5 s so far are not lost.
    timer = EpochTimer()
    timer.load_state_dict({"epoch_seconds": [7.0, 8.0], "epoch_in_progress": [2, 5.0], "fit_seconds": 21.0})
    assert timer.state_dict()["epoch_in_progress"] == [2, 5.0]


def test_a_hook_set_on_a_callback_during_the_run_survives_the_shadows_removal() -> None:
    # Only the shadows set at setup are taken away at teardown, not a hook someone set on the instance since.
    callback = Callback()
    skipper = SkipUnusedBatchHooks()
    trainer = SimpleNamespace(callbacks=[callback])
    skipper.setup(trainer, BoringModel(), "fit")  # type: ignore[arg-type]
    assert callback.on_train_batch_start is None  # type: ignore[comparison-overlap]
    started: list[int] = []
    callback.on_train_batch_start = lambda *args: started.append(1)  # type: ignore[method-assign,assignment]
    skipper.teardown(trainer, BoringModel(), "fit")  # type: ignore[arg-type]
    callback.on_train_batch_start(None, None, None, 0)  # type: ignore[arg-type]
    assert started == [1] and "on_train_batch_end" not in vars(callback)


def test_after_a_failure_only_empty_new_event_files_and_logger_folders_holding_only_hparams_are_removed(
        tmp_path: Path) -> None:
    # An event file the failed session logged scalars to is the run's data: only the version record alone goes.
    logged, empty = TensorBoardLogger(tmp_path, name="logged", version=0), TensorBoardLogger(tmp_path, name="empty", version=0)
    logged.log_metrics({"train/loss": 1.5}, step=3)
    for logger in (logged, empty):
        logger.experiment.flush()
    remove_empty_logs(Path(logged.log_dir), set())
    remove_empty_logs(Path(empty.log_dir), set())
    assert len(list(Path(logged.log_dir).glob("events.out.tfevents.*"))) == 1
    assert not list(Path(empty.log_dir).glob("events.out.tfevents.*"))
    # A logger folder the session created holding nothing but Lightning's hparams.yaml goes; one with more stays.
    csv, kept = tmp_path / "csv", tmp_path / "kept"
    for folder in (csv, kept):
        folder.mkdir()
        (folder / "hparams.yaml").write_text("{}\n")
    (kept / "metrics.csv").write_text("step\n0\n")
    remove_empty_logs(csv, None)
    remove_empty_logs(kept, None)
    assert not csv.exists() and sorted(p.name for p in kept.iterdir()) == ["hparams.yaml", "metrics.csv"]


def test_a_failure_wrapped_twice_by_libraries_is_logged_as_its_innermost_cause() -> None:
    # instantiate() inside another library's wrapper: the job log must show the error that says what to fix.
    try:
        try:
            try:
                raise OSError("No space left on device: '/data/cache'")
            except OSError as disk:
                raise ValueError("Error in call to target 'cnnlab.data.Cifar10'") from disk
        except ValueError as wrapped:
            raise RuntimeError("Error instantiating the data module") from wrapped
    except RuntimeError as error:
        assert failure_reason(error) == "OSError: No space left on device: '/data/cache'"


def fit_boring(tmp_path: Path, max_epochs: int, ckpt_path: str | None = None) -> list[int]:
    """Fit Lightning's BoringModel with the run folder's checkpoint (best: epoch 0); the step last.ckpt holds as each
    epoch after the session's first starts."""
    checkpoint = RunFolderCheckpoint(dirpath=tmp_path / "checkpoints", monitor="epoch", mode="min", save_last="link",
                                     filename="epoch_{epoch:03d}", auto_insert_metric_name=False)
    last = tmp_path / "checkpoints" / "last.ckpt"
    seen: list[int] = []
    look = LambdaCallback(on_train_epoch_start=lambda trainer, module: seen.append(
        int(torch.load(last, map_location="cpu", weights_only=True)["global_step"])) if last.exists() else None)
    trainer = L.Trainer(accelerator="cpu", callbacks=[look, checkpoint], max_epochs=max_epochs, limit_train_batches=2,
                        limit_val_batches=1, num_sanity_val_steps=0, logger=False, enable_progress_bar=False,
                        enable_model_summary=False, default_root_dir=tmp_path)
    trainer.fit(BoringModel(), ckpt_path=ckpt_path)
    return seen


def test_a_session_resumed_from_a_last_ckpt_past_the_best_epoch_updates_it_at_every_epoch(tmp_path: Path) -> None:
    # A session stopped between epochs (preempted) must leave last.ckpt at its last epoch, not the resumed one.
    assert fit_boring(tmp_path, 2) == [2]
    assert fit_boring(tmp_path, 5, str(tmp_path / "checkpoints" / "last.ckpt")) == [4, 6, 8]
