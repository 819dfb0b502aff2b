"""Resuming a stopped run: in its own folder, from the exact epoch and step, with a TensorBoard run of its own."""

from __future__ import annotations

import json
import shutil
import subprocess
import warnings
from pathlib import Path

import lightning as L
import pytest
import torch
import yaml
from omegaconf import OmegaConf
from test_scripts import run, script_command, train_overrides

from cnnlab.checkpoint import ensure_training_left, read_checkpoint
from cnnlab.errors import CheckpointError, RunDirectoryInUseError
from cnnlab.tasks.summarize import FAILED_LOG_MARK, RESUME_REFUSED_LOG_MARK, summarize
from cnnlab.tasks.train import train
from cnnlab.training.callbacks import RunFolderCheckpoint
from cnnlab.training.classifier import ImageClassifier
from cnnlab.utils.config import resume_session
from cnnlab.utils.hydra_callbacks import RefuseUsedRunFolder
from conftest import ROOT, scalar_events, scalar_steps


def test_one_command_resumes_a_stopped_run_in_its_own_folder(tmp_path: Path, cifar_root: Path):
    run(script_command("train.py", tmp_path, *train_overrides(cifar_root)))  # stops after epoch 1
    (first,) = (tmp_path / "logs" / "train" / "runs").iterdir()
    stopped = json.loads((first / "metrics.json").read_text())
    steps_per_epoch = stopped["global_step"]
    assert stopped["epochs"] == 1 and steps_per_epoch == 7  # 100 training images, batches of 16
    first_overrides = (first / ".hydra" / "overrides.yaml").read_text()

    last = first / "checkpoints" / "last.ckpt"
    # A resume refused before it trains (here: another learning rate) leaves the run as it was: its
    # files but the log are untouched, and the log says the resume was refused, not that the run failed.
    files_before = {path: path.read_bytes() for path in first.rglob("*") if path.is_file() and path.suffix != ".log"}
    refused = subprocess.run(script_command("train.py", tmp_path, *train_overrides(cifar_root), "trainer.max_epochs=2",
                                            f"ckpt_path={last}", "optimizer.lr=0.5"),
                             capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert refused.returncode != 0 and "optimizer.lr: 0.001 in the run, 0.5 in this command" in refused.stderr
    assert {path: path.read_bytes() for path in first.rglob("*")
            if path.is_file() and path.suffix != ".log" and "resumed_" not in str(path)} == files_before
    assert f"{RESUME_REFUSED_LOG_MARK}CheckpointError: ckpt_path={last}" in (first / "train.log").read_text()
    (summarized,) = summarize(first.parent).jobs
    assert summarized.status == "ok"

    run(script_command("train.py", tmp_path, *train_overrides(cifar_root), "trainer.max_epochs=2", f"ckpt_path={last}"))

    assert list((tmp_path / "logs" / "train" / "runs").iterdir()) == [first], "no new run folder"
    resumed = json.loads((first / "metrics.json").read_text())
    assert resumed["epochs"] == 2 and resumed["global_step"] == 2 * steps_per_epoch
    assert resumed["resumed_from"] == str(last.absolute())
    assert resumed["val/acc_best"] >= stopped["val/acc_best"]  # the best so far carries over
    # The first session's record is kept: its config, its overrides and its results.
    assert (first / ".hydra" / "overrides.yaml").read_text() == first_overrides
    # Each session's record: the refused one's, then this one's.
    refused_session, session = sorted(p.name for p in (first / ".hydra").iterdir() if p.is_dir())
    assert session.startswith("resumed_") and "optimizer.lr=0.5" in (first / ".hydra" / refused_session / "overrides.yaml").read_text()
    assert f"ckpt_path={last}" in yaml.safe_load((first / ".hydra" / session / "overrides.yaml").read_text())
    assert json.loads((first / f"metrics.before_{session}.json").read_text()) == stopped
    assert resumed["session"] == session and "session" not in stopped  # whose record the results belong to
    # Its own TensorBoard run, under the same folder, continuing the step count.
    assert scalar_steps(first / "tensorboard", "train/loss_step") == list(range(steps_per_epoch))
    resumed_steps = scalar_steps(first / "tensorboard" / session, "train/loss_step")
    assert resumed_steps == list(range(steps_per_epoch, 2 * steps_per_epoch))


def test_ckpt_path_last_continues_this_folder_or_starts_afresh(make_config, tmp_path: Path):
    job = tmp_path / "job"
    fresh = train(make_config(overrides=["ckpt_path=last", "trainer.max_epochs=1"], run_dir=job))
    assert fresh["global_step"] == 7 and "resumed_from" not in fresh  # nothing to continue yet
    with warnings.catch_warnings(record=True) as shown:
        warnings.simplefilter("always")
        continued = train(make_config(overrides=["ckpt_path=last", "trainer.max_epochs=2"], run_dir=job))
    assert continued["global_step"] == 14 and continued["resumed_from"] == str(job / "checkpoints" / "last.ckpt")
    # The checkpoints in the folder are the run's own: Lightning's warning about them would only alarm.
    assert not [w for w in shown if "exists and is not empty" in str(w.message)]
    # The second session in this process is a resumed one too (its name is not the first's, cached):
    # the first session's results are kept beside the new ones.
    (kept,) = job.glob("metrics.before_resumed_*.json")
    assert json.loads(kept.read_text())["global_step"] == 7


@pytest.mark.parametrize("continuing", [True, False])
def test_a_folder_with_checkpoints_gets_lightnings_warning_unless_the_run_continues_there(tmp_path: Path,
                                                                                          continuing: bool):
    (tmp_path / "epoch_000.ckpt").write_bytes(b"another run's")  # a dirpath shared with another run, say
    callback = RunFolderCheckpoint(dirpath=str(tmp_path), monitor="val/acc", mode="max")
    callback.continuing_run = continuing
    with warnings.catch_warnings(record=True) as shown:
        warnings.simplefilter("always")
        callback.setup(L.Trainer(accelerator="cpu", logger=False, enable_progress_bar=False), L.LightningModule(), "fit")
    assert [str(w.message) for w in shown if "exists and is not empty" in str(w.message)] == (
        [] if continuing else [f"Checkpoint directory {tmp_path} exists and is not empty."])


def test_resuming_into_another_runs_folder_is_refused(make_config, tmp_path: Path):
    train(make_config(overrides=["trainer.max_epochs=1"], run_dir=tmp_path / "a"))
    other = tmp_path / "b"
    other.mkdir()
    (other / "metrics.json").write_text('{"test/acc": 0.9}')
    with pytest.raises(RunDirectoryInUseError, match="nothing was overwritten"):
        train(make_config(overrides=[f"ckpt_path={tmp_path / 'a' / 'checkpoints' / 'last.ckpt'}"], run_dir=other))
    assert [p.name for p in other.iterdir()] == ["metrics.json"] and (other / "metrics.json").read_text() == '{"test/acc": 0.9}'


def test_resuming_with_another_setup_is_refused_and_a_moved_dataset_is_not(make_config, tmp_path: Path,
                                                                           cifar_root: Path):
    run_dir = tmp_path / "a"
    train(make_config(overrides=["trainer.max_epochs=1"], run_dir=run_dir))
    last = run_dir / "checkpoints" / "last.ckpt"
    before = {p.relative_to(run_dir): p.stat().st_mtime_ns for p in run_dir.rglob("*")}

    # Lightning would restore Adam's learning rate from the checkpoint: the override would be a no-op.
    with pytest.raises(CheckpointError) as refused:
        train(make_config(overrides=[f"ckpt_path={last}", "trainer.max_epochs=2", "optimizer.lr=0.01",
                                     "data/augment=full", "data.batch_size=8"], run_dir=run_dir))
    message = str(refused.value)
    assert "optimizer.lr: 0.001 in the run, 0.01 in this command" in message
    assert "data.augment.rotation_degrees: 0 in the run, 15 in this command" in message
    listed = [line.split(":")[0].strip() for line in message.splitlines() if line.startswith("  ")]
    # Another batch size is another run (other steps per epoch, other gradients): refused too.
    assert listed == ["data.augment.brightness", "data.augment.contrast", "data.augment.rotation_degrees",
                      "data.batch_size", "optimizer.lr"]  # not trainer.max_epochs, nor the config's paths
    assert {p.relative_to(run_dir): p.stat().st_mtime_ns for p in run_dir.rglob("*")} == before, "nothing written"

    # Where the data lives and how it is loaded may change: the same images, copied elsewhere.
    moved = tmp_path / "moved"
    shutil.copytree(cifar_root, moved)
    resumed = train(make_config(overrides=[f"ckpt_path={last}", "trainer.max_epochs=2", f"data.root={moved}",
                                           "data.num_workers=1"], run_dir=run_dir))
    assert resumed["epochs"] == 2 and resumed["global_step"] == 14


def test_resuming_with_limits_the_checkpoint_has_passed_is_refused_and_reaching_them_is_not(make_config,
                                                                                            tmp_path: Path):
    run_dir = tmp_path / "a"
    train(make_config(overrides=["trainer.max_epochs=2"], run_dir=run_dir))
    last, results = run_dir / "checkpoints" / "last.ckpt", (run_dir / "metrics.json").read_text()
    # Lightning would train nothing, and a metrics.json without validation would replace the run's.
    with pytest.raises(CheckpointError) as refused:
        train(make_config(overrides=["trainer.max_epochs=1", f"ckpt_path={last}"], run_dir=run_dir))
    assert str(refused.value) == (
        f"ckpt_path={last} was saved in epoch 2 (step 14), beyond trainer.max_epochs=1, where the run would have "
        f"ended; set trainer.max_epochs=2 to complete the run from it (from the end of an epoch: only its test runs) or above 2 to train "
        f"longer, or test the checkpoint with scripts/eval.py ckpt_path={last}")
    assert (run_dir / "metrics.json").read_text() == results and not list(run_dir.glob("metrics.before_*"))

    checkpoint = torch.load(last, map_location="cpu", weights_only=True)
    with pytest.raises(CheckpointError, match=r"beyond trainer.max_steps=10, .* set trainer.max_steps=14 to complete"):
        ensure_training_left(checkpoint, OmegaConf.create({"max_epochs": -1, "max_steps": 10}), last)
    # The limits it reached (a job requeued after its training ended, before its test) complete the run.
    ensure_training_left(checkpoint, OmegaConf.create({"max_epochs": 2, "max_steps": 14}), last)
    ensure_training_left(checkpoint, OmegaConf.create({"max_epochs": -1, "max_steps": -1}), last)


def test_a_checkpoint_of_another_folder_starts_the_new_folders_first_session(make_config, tmp_path: Path):
    train(make_config(overrides=["trainer.max_epochs=1"], run_dir=tmp_path / "a"))
    new = tmp_path / "b"
    resume_session.cache_clear()
    config = make_config(overrides=[f"ckpt_path={tmp_path / 'a' / 'checkpoints' / 'last.ckpt'}", "trainer.max_epochs=2"],
                         run_dir=new)
    # Its record is the new folder's first: .hydra/config.yaml and tensorboard/, not a resumed_<...> sub-folder.
    assert config.session == ""
    resume_session.cache_clear()
    assert make_config(overrides=[f"ckpt_path={tmp_path / 'a' / 'checkpoints' / 'last.ckpt'}"],
                       run_dir=tmp_path / "a").session.startswith("resumed_")


def test_a_sweep_from_another_runs_checkpoint_into_a_used_sweep_folder_is_refused(tmp_path: Path):
    sweep = tmp_path / "sweep"
    (sweep / "0" / "checkpoints").mkdir(parents=True)
    (sweep / "0" / "metrics.json").write_text("{}")
    elsewhere = tmp_path / "a" / "checkpoints" / "last.ckpt"

    def start(ckpt_path: str) -> None:
        RefuseUsedRunFolder().on_multirun_start(OmegaConf.create({"hydra": {"sweep": {"dir": str(sweep)}},
                                                                  "ckpt_path": ckpt_path}))

    # Its jobs' first sessions: Hydra would write their .hydra/ over the earlier jobs' records.
    with pytest.raises(SystemExit, match="already holds the results of an earlier sweep"):
        start(str(elsewhere))
    start("last")  # each job continues its own folder
    start(str(sweep / "0" / "checkpoints" / "last.ckpt"))


ONECYCLE = ["optimizer=sgd", "scheduler=onecycle"]


def test_resuming_with_a_schedule_for_another_run_length_is_refused_before_training(make_config, tmp_path: Path):
    run_dir = tmp_path / "a"
    train(make_config(overrides=[*ONECYCLE, "trainer.max_epochs=1"], run_dir=run_dir))
    last = run_dir / "checkpoints" / "last.ckpt"
    before = {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in (run_dir / "checkpoints").iterdir()}
    results = (run_dir / "metrics.json").read_text()

    # Lightning would restore the 7-step schedule, and fail at step 8 (cosine would climb back up).
    with pytest.raises(CheckpointError) as refused:
        train(make_config(overrides=[*ONECYCLE, "trainer.max_epochs=2", f"ckpt_path={last}"], run_dir=run_dir))
    message = str(refused.value)
    assert message.startswith(f"ckpt_path={last} continues a run whose OneCycleLR schedule is 7 optimizer steps long "
                              f"(total_steps), but this command's run would be 14 optimizer steps long.")
    assert ("resume with its trainer.max_epochs, trainer.max_steps, trainer.limit_train_batches and "
            "trainer.accumulate_grad_batches; to train longer, start a new run (without ckpt_path)") in message
    assert {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in (run_dir / "checkpoints").iterdir()} == before
    assert (run_dir / "metrics.json").read_text() == results and not list(run_dir.glob("metrics.before_*"))


def test_resuming_with_the_runs_length_continues_its_schedule(make_config, tmp_path: Path):
    run_dir = tmp_path / "a"
    # Lightning's early stopping, stopping after the first validation: a run of 2 epochs stopped after 1.
    stops = ["+callbacks.stop._target_=lightning.pytorch.callbacks.EarlyStopping", "+callbacks.stop.monitor=val/acc",
             "+callbacks.stop.mode=max", "+callbacks.stop.stopping_threshold=-1"]
    overrides = [*ONECYCLE, "trainer.max_epochs=2", *stops]
    stopped = train(make_config(overrides=overrides, run_dir=run_dir))
    assert stopped["global_step"] == 7
    last = run_dir / "checkpoints" / "last.ckpt"
    resumed = train(make_config(overrides=[*overrides, f"ckpt_path={last}"], run_dir=run_dir))
    assert resumed["epochs"] == 2 and resumed["global_step"] == 14
    # The run's times cover both sessions: one per epoch, the first the stopped session's.
    assert len(resumed["epoch_seconds"]) == 2 and resumed["epoch_seconds"][0] == stopped["epoch_seconds"][0]
    assert resumed["fit_seconds"] > sum(resumed["epoch_seconds"])

    (session,) = (run_dir / "tensorboard").glob("resumed_*")
    rates = scalar_events(run_dir / "tensorboard", "lr-SGD") + scalar_events(session, "lr-SGD")
    assert [step for step, _ in rates] == list(range(14))
    optimizer = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.05)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=0.05, total_steps=14, pct_start=0.25)
    expected = []
    for _ in range(14):
        expected.append(schedule.get_last_lr()[0])
        optimizer.step()
        schedule.step()
    assert [rate for _, rate in rates] == pytest.approx(expected, rel=1e-5)  # one 14-step cycle across both sessions


def checkpoint_files(run_dir: Path) -> dict[str, str]:
    """The run's checkpoint files, a link named with its target."""
    folder = run_dir / "checkpoints"
    return {p.name: (f"-> {p.readlink()}" if p.is_symlink() else "file") for p in sorted(folder.iterdir())}


def saved_step(path: Path) -> int:
    return torch.load(path, map_location="cpu", weights_only=True)["global_step"]


QUICK = ["test=false", "~callbacks.confusion_matrix", "~callbacks.feature_maps", "~callbacks.conv_filters"]
EVERY_EPOCH_BEST = [*QUICK, "callbacks.model_checkpoint.monitor=epoch", "callbacks.model_checkpoint.mode=max"]


def test_a_copied_run_folder_resumes_with_its_own_checkpoints_and_leaves_the_original_alone(make_config,
                                                                                            tmp_path: Path):
    original, copy, other = tmp_path / "a", tmp_path / "copy", tmp_path / "other"
    train(make_config(overrides=[*EVERY_EPOCH_BEST, "trainer.max_epochs=1"], run_dir=original))
    shutil.copytree(original, copy, symlinks=True)
    before = {p.relative_to(original): p.stat().st_mtime_ns for p in original.rglob("*")}

    # Lightning would forget the stored checkpoint paths (their folder changed), link last-v1.ckpt and
    # leave last.ckpt at epoch 0, which the next ckpt_path=last would resume from again.
    train(make_config(overrides=[*EVERY_EPOCH_BEST, "trainer.max_epochs=2",
                                 f"ckpt_path={copy / 'checkpoints' / 'last.ckpt'}"], run_dir=copy))
    assert checkpoint_files(copy) == {"epoch_001.ckpt": "file", "last.ckpt": "-> epoch_001.ckpt"}  # epoch 0 pruned
    resumed = train(make_config(overrides=[*EVERY_EPOCH_BEST, "trainer.max_epochs=3", "ckpt_path=last"], run_dir=copy))
    assert resumed["global_step"] == 21 and saved_step(copy / "checkpoints" / "last.ckpt") == 21
    assert checkpoint_files(copy) == {"epoch_002.ckpt": "file", "last.ckpt": "-> epoch_002.ckpt"}

    # Another run's checkpoint starting a new run: its files are neither adopted nor deleted.
    train(make_config(overrides=[*EVERY_EPOCH_BEST, "trainer.max_epochs=4",
                                 f"ckpt_path={original / 'checkpoints' / 'last.ckpt'}"], run_dir=other))
    assert checkpoint_files(other) == {"epoch_003.ckpt": "file", "last.ckpt": "-> epoch_003.ckpt"}
    assert {p.relative_to(original): p.stat().st_mtime_ns for p in original.rglob("*")} == before
    assert checkpoint_files(original) == {"epoch_000.ckpt": "file", "last.ckpt": "-> epoch_000.ckpt"}


def test_last_ckpt_holds_the_last_epoch_when_it_is_not_the_best(make_config, tmp_path: Path):
    run_dir = tmp_path / "a"
    first_best = [*QUICK, "callbacks.model_checkpoint.monitor=epoch", "callbacks.model_checkpoint.mode=min"]
    train(make_config(overrides=[*first_best, "trainer.max_epochs=2"], run_dir=run_dir))
    # Lightning would link last.ckpt to epoch_000.ckpt, the newest top-k file, and a resume would redo epoch 1.
    assert checkpoint_files(run_dir) == {"epoch_000.ckpt": "file", "last.ckpt": "file"}
    assert saved_step(run_dir / "checkpoints" / "last.ckpt") == 14
    resumed = train(make_config(overrides=[*first_best, "trainer.max_epochs=3", "ckpt_path=last"], run_dir=run_dir))
    assert resumed["global_step"] == 21 and saved_step(run_dir / "checkpoints" / "last.ckpt") == 21
    assert saved_step(run_dir / "checkpoints" / "epoch_000.ckpt") == 7  # the best epoch's file is untouched


def test_last_ckpt_follows_a_run_resumed_from_its_first_best_epoch(make_config, tmp_path: Path):
    run_dir = tmp_path / "a"
    first_best = [*QUICK, "callbacks.model_checkpoint.monitor=epoch", "callbacks.model_checkpoint.mode=min"]
    train(make_config(overrides=[*first_best, "trainer.max_epochs=1"], run_dir=run_dir))
    assert checkpoint_files(run_dir) == {"epoch_000.ckpt": "file", "last.ckpt": "-> epoch_000.ckpt"}
    # epoch_000.ckpt was written before last.ckpt existed, so the state it holds names no last checkpoint:
    # Lightning then saved epoch 1 as last-v1.ckpt and left last.ckpt at epoch 0 for the next resume.
    train(make_config(overrides=[*first_best, "trainer.max_epochs=2", "ckpt_path=last"], run_dir=run_dir))
    assert checkpoint_files(run_dir) == {"epoch_000.ckpt": "file", "last.ckpt": "file"}
    assert saved_step(run_dir / "checkpoints" / "last.ckpt") == 14
    assert saved_step(run_dir / "checkpoints" / "epoch_000.ckpt") == 7  # the best epoch's file is untouched
    resumed = train(make_config(overrides=[*first_best, "trainer.max_epochs=3", "ckpt_path=last"], run_dir=run_dir))
    assert resumed["global_step"] == 21 and saved_step(run_dir / "checkpoints" / "last.ckpt") == 21


def test_last_ckpt_is_updated_at_every_epoch_of_a_session_resumed_from_the_first_best_epoch(tmp_path: Path):
    from lightning.pytorch.callbacks import LambdaCallback
    from lightning.pytorch.demos.boring_classes import BoringModel

    folder = tmp_path / "checkpoints"

    def fit(max_epochs: int, ckpt_path: str | None = None, callbacks: tuple = ()) -> None:
        checkpoint = RunFolderCheckpoint(dirpath=folder, filename="epoch_{epoch:03d}", monitor="epoch", mode="min",
                                         save_top_k=1, save_last="link", auto_insert_metric_name=False)
        trainer = L.Trainer(accelerator="cpu", callbacks=[checkpoint, *callbacks], max_epochs=max_epochs,
                            limit_train_batches=2, limit_val_batches=1, num_sanity_val_steps=0, logger=False,
                            enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp_path)
        trainer.fit(BoringModel(), ckpt_path=ckpt_path)

    fit(1)  # epoch 0 is and stays the best: last.ckpt links to it
    # Seen at each epoch's start, before the session's final save at the end of training: a run stopped
    # then (Ctrl-C, a requeue) resumes from last.ckpt.
    seen: list[int] = []
    probe = LambdaCallback(on_train_epoch_start=lambda trainer, module: seen.append(saved_step(folder / "last.ckpt")))
    fit(4, str(folder / "last.ckpt"), (probe,))
    assert seen == [2, 4, 6]  # epochs 0, 1 and 2 done; left at 2 (epoch 0) without the fix


def test_last_ckpt_link_follows_a_new_best_after_resuming_the_first_epoch(make_config, tmp_path: Path):
    run_dir = tmp_path / "a"
    every_best = [*QUICK, "callbacks.model_checkpoint.monitor=epoch", "callbacks.model_checkpoint.mode=max"]
    train(make_config(overrides=[*every_best, "trainer.max_epochs=1"], run_dir=run_dir))
    train(make_config(overrides=[*every_best, "trainer.max_epochs=2", "ckpt_path=last"], run_dir=run_dir))
    assert checkpoint_files(run_dir) == {"epoch_001.ckpt": "file", "last.ckpt": "-> epoch_001.ckpt"}


def test_fast_dev_run_leaves_no_checkpoint_for_a_later_resume(make_config, tmp_path: Path):
    run_dir = tmp_path / "smoke"
    results = train(make_config(overrides=["debug=fast_dev_run"], run_dir=run_dir))
    # Lightning 2.6 saved a one-step last.ckpt at the end of a fast_dev_run, which `ckpt_path=last` would resume.
    assert results["best_checkpoint"] == "" and not list((run_dir / "checkpoints").glob("*"))


@pytest.mark.parametrize(("every_n_train_steps", "saved"), [(None, {"epoch_000.ckpt", "epoch_001.ckpt", "last.ckpt"}),
                                                             (2, {"step_2.ckpt", "step_4.ckpt", "step_6.ckpt"})])
def test_run_folder_checkpoint_leaves_the_loop_only_when_it_saves_per_epoch(tmp_path: Path, every_n_train_steps,
                                                                             saved):
    from lightning.pytorch.callbacks import LambdaCallback
    from lightning.pytorch.demos.boring_classes import BoringModel

    by_steps = every_n_train_steps is not None
    checkpoint = RunFolderCheckpoint(dirpath=tmp_path / "checkpoints", save_top_k=-1, save_last=not by_steps,
                                     filename="step_{step}" if by_steps else "epoch_{epoch:03d}",
                                     auto_insert_metric_name=False, every_n_train_steps=every_n_train_steps)
    inside_fit: list[object] = []  # the hook as Lightning's dispatcher sees it
    look = LambdaCallback(on_train_end=lambda trainer, module: inside_fit.append(checkpoint.on_train_batch_end))
    trainer = L.Trainer(accelerator="cpu", callbacks=[checkpoint, look], max_epochs=2, limit_train_batches=3,
                        limit_val_batches=1, num_sanity_val_steps=0, logger=False, enable_progress_bar=False,
                        enable_model_summary=False, default_root_dir=tmp_path)
    trainer.fit(BoringModel())
    assert {p.name for p in (tmp_path / "checkpoints").iterdir()} == saved
    assert (inside_fit[0] is None) is not by_steps  # a per-step saver keeps its hook
    assert "on_train_batch_end" not in vars(checkpoint)  # after the fit the callback is as it came


def test_a_resumed_run_keeps_the_stopped_runs_best_accuracy(make_config, tmp_path: Path):
    run_dir = tmp_path / "a"
    train(make_config(overrides=[*QUICK, "trainer.max_epochs=1"], run_dir=run_dir))
    last = (run_dir / "checkpoints" / "last.ckpt").resolve()
    checkpoint = torch.load(last, map_location="cpu", weights_only=True)
    assert checkpoint["val_acc_best"] == json.loads((run_dir / "metrics.json").read_text())["val/acc_best"]
    checkpoint["val_acc_best"] = 1.5  # a best no epoch can reach, so only the checkpoint can give it
    torch.save(checkpoint, last)
    resumed = train(make_config(overrides=[*QUICK, "trainer.max_epochs=2", "ckpt_path=last"], run_dir=run_dir))
    assert resumed["epochs"] == 2 and resumed["val/acc"] <= 1.0
    assert resumed["val/acc_best"] == 1.5
    assert json.loads((run_dir / "metrics.json").read_text())["val/acc_best"] == 1.5


def test_a_fine_tuner_resumes_without_its_pretrained_weights_file(make_config, tmp_path: Path, resnet_weights: Path):
    # The checkpoint holds every weight: the file the run started from may be gone (or the
    # ImageNet download unreachable) when it is resumed.
    weights = tmp_path / "resnet18.pth"
    shutil.copy(resnet_weights, weights)
    overrides = ["model=resnet18_ft", f"model.weights_path={weights}"]
    run = tmp_path / "run"
    first = train(make_config(overrides=[*overrides, "trainer.max_epochs=1"], run_dir=run))
    stopped = read_checkpoint(run / "checkpoints" / "last.ckpt")["state_dict"]
    weights.unlink()
    resumed = train(make_config(overrides=[*overrides, "trainer.max_epochs=2", f"ckpt_path={run / 'checkpoints' / 'last.ckpt'}"],
                                run_dir=run))
    assert resumed["global_step"] == 2 * first["global_step"]
    after = read_checkpoint(run / "checkpoints" / "last.ckpt")["state_dict"]
    # The frozen backbone goes on as the checkpoint had it; only the head trained.
    assert torch.equal(after["net.backbone.conv1.weight"], stopped["net.backbone.conv1.weight"])
    assert not torch.equal(after["net.head.1.weight"], stopped["net.head.1.weight"])


def test_only_a_resumed_sessions_failure_before_training_leaves_the_run_standing(make_config, tmp_path: Path,
                                                                                caplog, monkeypatch):
    run_dir = tmp_path / "run"
    # A first session (ckpt_path=last with nothing to continue yet) failing before training: the run failed.
    with pytest.raises(ValueError):
        train(make_config(overrides=["ckpt_path=last", "optimizer.lr=-1"], run_dir=run_dir))
    assert f"{FAILED_LOG_MARK}ConfigValueError" in caplog.text
    train(make_config(overrides=["ckpt_path=last", "trainer.max_epochs=1"], run_dir=run_dir))
    # A resumed session failing before training: the run stands as it was.
    caplog.clear()
    with pytest.raises(ValueError):
        train(make_config(overrides=["ckpt_path=last", "trainer.max_epochs=2", "optimizer.lr=0.5"], run_dir=run_dir))
    assert RESUME_REFUSED_LOG_MARK in caplog.text and FAILED_LOG_MARK not in caplog.text
    # A resumed session failing while it trains: the run failed.
    caplog.clear()
    monkeypatch.setattr(ImageClassifier, "training_step", lambda self, batch, batch_idx: 1 / 0)
    with pytest.raises(ZeroDivisionError):
        train(make_config(overrides=["ckpt_path=last", "trainer.max_epochs=2"], run_dir=run_dir))
    assert f"{FAILED_LOG_MARK}ZeroDivisionError" in caplog.text and RESUME_REFUSED_LOG_MARK not in caplog.text
