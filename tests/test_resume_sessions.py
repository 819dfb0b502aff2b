"""Resumed sessions at the edges: nothing left to train, no run folder to continue, Ctrl-C, a refused resume's advice."""

from __future__ import annotations

import json
import logging
import re
import shlex
import subprocess
import sys
import textwrap
from pathlib import Path
from types import SimpleNamespace

import lightning as L
import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import OmegaConf
from test_scripts import script_command, train_overrides

from cnnlab.checkpoint import ensure_training_left
from cnnlab.errors import CheckpointError
from cnnlab.tasks.train import continuing_sweep_command, train
from cnnlab.training.callbacks import EpochTimer
from cnnlab.utils.config import run_dir_of_checkpoint
from conftest import CONF_DIR, ROOT

LIGHT = ["~callbacks.feature_maps", "~callbacks.conv_filters"]


def trained_metrics(results: dict) -> dict:
    return {key: value for key, value in results.items() if key.startswith(("train/", "val/"))}


# Lightning saves the checkpoint after the epoch's training metrics are logged, or (validation not every epoch)
# after the validation, before they are.
@pytest.mark.parametrize("schedule", [["trainer.max_epochs=1"], ["trainer.max_epochs=2", "trainer.check_val_every_n_epoch=2"]])
def test_a_resume_with_nothing_left_to_train_tests_and_records_the_checkpoints_metrics(make_config, tmp_path: Path,
                                                                                       caplog, schedule):
    run_dir = tmp_path / "run"
    first = train(make_config(overrides=[*LIGHT, *schedule], run_dir=run_dir))
    assert "val/acc_best" in first and "train/loss" in first
    # A job requeued after its training ended, timed out in its test: no metrics.json yet.
    (run_dir / "metrics.json").unlink()
    caplog.set_level(logging.INFO, logger="cnnlab")
    again = train(make_config(overrides=[*LIGHT, *schedule, "ckpt_path=last"], run_dir=run_dir))
    # Lightning trained nothing: the run's train/ and val/ metrics (the sweeper's val/acc_best) are the checkpoint's.
    assert trained_metrics(again) == trained_metrics(first)
    assert again["test/acc"] == first["test/acc"] and again["global_step"] == first["global_step"]
    assert json.loads((run_dir / "metrics.json").read_text())["val/acc_best"] == first["val/acc_best"]
    # The run's time is the training session's, not that of the session that only tested.
    assert len(again["epoch_seconds"]) == len(first["epoch_seconds"]) == first["epochs"]
    assert again["epoch_seconds"][:-1] == first["epoch_seconds"][:-1]
    # A checkpoint saved at the validation's end holds its epoch's time up to then.
    assert 0 < again["epoch_seconds"][-1] <= first["epoch_seconds"][-1]
    # The fit time is the checkpoint's (saved during the last epoch, so below the first session's own) plus the
    # test-only session's fit, which trains nothing.
    last = (run_dir / "checkpoints" / "last.ckpt").resolve()
    saved = torch.load(last, map_location="cpu", weights_only=True)["callbacks"]["EpochTimer"]["fit_seconds"]
    assert sum(again["epoch_seconds"]) - 0.01 < saved <= again["fit_seconds"] < saved + 60
    epochs, steps = first["epochs"], first["global_step"]
    assert (f"training was already complete: {run_dir / 'checkpoints' / 'last.ckpt'} is from the end of the run "
            f"(epoch {epochs}, step {steps}), so only the test runs; the train/ and val/ metrics are the checkpoint's\n"
            ) in caplog.text
    if len(schedule) > 1:
        return

    # A checkpoint of an older cnnlab holds only the best validation accuracy of them.
    last = (run_dir / "checkpoints" / "last.ckpt").resolve()
    checkpoint = torch.load(last, map_location="cpu", weights_only=True)
    del checkpoint["epoch_metrics"]
    torch.save(checkpoint, last)
    caplog.clear()
    older = train(make_config(overrides=[*LIGHT, *schedule, "ckpt_path=last"], run_dir=run_dir))
    assert trained_metrics(older) == {"val/acc_best": first["val/acc_best"]}
    assert "the train/ and val/ metrics are the checkpoint's, which (from an older cnnlab) holds only val/acc_best" \
        in caplog.text


def test_a_finished_and_tested_run_resumed_again_keeps_its_results_and_is_not_tested_again(
        make_config, tmp_path: Path, caplog, monkeypatch: pytest.MonkeyPatch):
    # A continued sweep resumes its finished jobs too (ckpt_path=last); their test would give the same figures.
    run_dir = tmp_path / "run"
    schedule = [*LIGHT, "trainer.max_epochs=1"]
    first_config = make_config(overrides=schedule, run_dir=run_dir)
    (run_dir / ".hydra").mkdir(parents=True)
    OmegaConf.save(first_config, run_dir / ".hydra" / "config.yaml")  # Hydra's record, written as the session starts
    first = train(first_config)
    written = (run_dir / "metrics.json").read_bytes()
    caplog.set_level(logging.INFO, logger="cnnlab")
    continued = make_config(overrides=[*schedule, "ckpt_path=last"], run_dir=run_dir)
    logs = run_dir / "tensorboard" / continued.session
    with monkeypatch.context() as patched:
        patched.setattr(L.Trainer, "test", lambda *args, **kwargs: pytest.fail("tested again"))
        again = train(continued)
    assert again == first
    assert (run_dir / "metrics.json").read_bytes() == written and not list(run_dir.glob("metrics.before_*"))
    assert not logs.exists() and (run_dir / "tensorboard").is_dir()  # no TensorBoard run without data
    last, best = run_dir / "checkpoints" / "last.ckpt", first["best_checkpoint"]
    assert (f"the run was already complete and tested: {last} is from the end of the run (epoch 1, step "
            f"{first['global_step']}) and {run_dir / 'metrics.json'} holds the test of its best checkpoint with this "
            f"same config, so its results stand and nothing runs again (scripts/eval.py ckpt_path={best} tests it anew)"
            ) in caplog.text

    # Another setting (a trainer's, which a resume may change) tests again, the earlier results kept beside the new.
    def resumed_session(*overrides: str):
        config = make_config(overrides=[*schedule, "ckpt_path=last", *overrides], run_dir=run_dir)
        (run_dir / ".hydra" / config.session).mkdir(exist_ok=True)
        OmegaConf.save(config, run_dir / ".hydra" / config.session / "config.yaml")
        return config

    caplog.clear()
    changed = resumed_session("trainer.limit_test_batches=1")
    session = changed.session
    retested = train(changed)
    assert "training was already complete" in caplog.text and "already complete and tested" not in caplog.text
    assert list((run_dir / "tensorboard" / session).glob("events.out.tfevents.*"))  # the test's metrics
    assert retested["session"] == session and retested["best_checkpoint"] == best
    assert retested["test_data"] == first["test_data"] and re.fullmatch("[0-9a-f]{64}", first["test_data"])
    assert json.loads((run_dir / f"metrics.before_{session}.json").read_bytes()) == first
    # So do results of another test split (images added to the folder since, say) and results that do not name
    # their session's record (an older cnnlab's resumed session's).
    for spoiled in ({**retested, "test_data": "0" * 64}, {k: v for k, v in retested.items() if k != "session"}):
        (run_dir / "metrics.json").write_text(json.dumps(spoiled))
        caplog.clear()
        train(resumed_session("trainer.limit_test_batches=1"))
        assert "training was already complete" in caplog.text and "already complete and tested" not in caplog.text
    # Unspoiled, the same session's settings again: not tested.
    caplog.clear()
    train(resumed_session("trainer.limit_test_batches=1"))
    assert "already complete and tested" in caplog.text


def test_limits_before_the_checkpoint_are_refused_with_the_limit_that_completes_the_run(tmp_path: Path):
    last = tmp_path / "last.ckpt"
    checkpoint = {"epoch": 2, "global_step": 15}  # saved at the end of the third epoch
    with pytest.raises(CheckpointError) as refused:
        ensure_training_left(checkpoint, OmegaConf.create({"max_epochs": 2, "max_steps": -1}), last)
    assert str(refused.value) == (
        f"ckpt_path={last} was saved in epoch 3 (step 15), beyond trainer.max_epochs=2, where the run would have "
        f"ended; set trainer.max_epochs=3 to complete the run from it (from the end of an epoch: only its test runs) or above 3 to train "
        f"longer, or test the checkpoint with scripts/eval.py ckpt_path={last}")
    with pytest.raises(CheckpointError, match=r"beyond trainer.max_steps=10, .* set trainer.max_steps=15 to complete"):
        ensure_training_left(checkpoint, OmegaConf.create({"max_epochs": -1, "max_steps": 10}), last)
    ensure_training_left(checkpoint, OmegaConf.create({"max_epochs": 3, "max_steps": 15}), last)  # what it reached


def test_ckpt_path_last_without_a_run_folder_is_refused_before_anything_is_written(tmp_path: Path):
    tiny = ["data=synthetic", "trainer=cpu", "trainer.max_epochs=1", "trainer.limit_train_batches=1",
            "trainer.limit_val_batches=1", "trainer.limit_test_batches=1"]  # should it train after all
    refused = subprocess.run(script_command("train.py", tmp_path, *tiny, "ckpt_path=last"),
                             capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert refused.returncode == 1
    assert ("ConfigValueError: ckpt_path=last continues the last checkpoint of the run folder named by hydra.run.dir, "
            "but none was given") in refused.stderr
    assert "hydra.run.dir=logs/train/runs/<run> ckpt_path=last (or ckpt_path=<a .ckpt file>)" in refused.stderr
    assert not (tmp_path / "logs").exists()
    # A multirun's jobs (SLURM's requeued ones too) each continue their own folder, or start there.
    assert run_dir_of_checkpoint("last", "new", _root_=OmegaConf.create({"hydra": {"mode": RunMode.MULTIRUN}})) == "new"
    with pytest.raises(SystemExit):
        run_dir_of_checkpoint("last", "new", _root_=OmegaConf.create({"hydra": {"mode": RunMode.RUN}}))


# scripts/train.py, with a Ctrl-C as the second training epoch starts.
INTERRUPTED_TRAIN = textwrap.dedent("""
    import runpy, sys
    from cnnlab.training.classifier import ImageClassifier

    batch_start = ImageClassifier.on_train_batch_start

    def interrupted(self, batch, batch_idx):
        if self.current_epoch == 1:
            raise KeyboardInterrupt
        batch_start(self, batch, batch_idx)

    ImageClassifier.on_train_batch_start = interrupted
    sys.argv = sys.argv[1:]
    runpy.run_path(sys.argv[0], run_name="__main__")
""")


def test_an_interrupted_run_logs_how_to_continue_it(tmp_path: Path, cifar_root: Path):
    overrides = [*train_overrides(cifar_root), "trainer.max_epochs=2", *LIGHT]
    command = script_command("train.py", tmp_path, *overrides)
    stopped = subprocess.run([sys.executable, "-c", INTERRUPTED_TRAIN, *command[1:]], capture_output=True, text=True,
                             cwd=ROOT, timeout=300)
    assert stopped.returncode == 1
    (run_dir,) = (tmp_path / "logs" / "train" / "runs").iterdir()
    last = run_dir / "checkpoints" / "last.ckpt"
    told = (f"interrupted (Ctrl-C); its last checkpoint {last} is from epoch 1 (step 7). To "
            f"continue the run from it: python scripts/train.py ")
    assert told in stopped.stdout + stopped.stderr  # on the console
    logged = next(line for line in (run_dir / "train.log").read_text().splitlines() if told in line)
    continuing = shlex.split(logged.split(told, 1)[1])
    # The command as given, continuing in the run's folder (what `hydra.run.dir=<run> ckpt_path=last` does is tested
    # in test_resume.py).
    assert continuing == [*command[2:], f"hydra.run.dir={run_dir}", "ckpt_path=last"]


def test_an_interrupted_sweep_logs_the_command_that_continues_it_and_that_command_does(tmp_path: Path,
                                                                                        cifar_root: Path):
    overrides = [*train_overrides(cifar_root), "trainer.max_epochs=2", *LIGHT, "optimizer.lr=0.01,0.02"]
    command = script_command("train.py", tmp_path, *overrides, multirun=True)
    stopped = subprocess.run([sys.executable, "-c", INTERRUPTED_TRAIN, *command[1:]], capture_output=True, text=True,
                             cwd=ROOT, timeout=300)
    assert stopped.returncode == 1
    (sweep,) = (tmp_path / "logs" / "train" / "multiruns").iterdir()
    assert sorted(p.name for p in sweep.iterdir() if p.is_dir()) == ["0"]  # Ctrl-C ends the whole sweep
    told = ("To continue the whole sweep, each job from its own folder's last checkpoint or from scratch where it has "
            "none (a job that had finished and been tested keeps its results, and is not tested again): ")
    logged = next(line for line in (sweep / "0" / "train.log").read_text().splitlines() if told in line)
    continuing = shlex.split(logged.split(told, 1)[1])
    # The sweep's command (both values of the swept key), continued in its folder.
    assert continuing == ["python", "scripts/train.py", "-m", *command[3:], f"hydra.sweep.dir={sweep}", "ckpt_path=last"]
    continued = subprocess.run([sys.executable, str(ROOT / "scripts" / "train.py"), *continuing[2:]],
                               capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert continued.returncode == 0, continued.stderr[-3000:]
    first, second = (json.loads((sweep / job / "metrics.json").read_text()) for job in ("0", "1"))
    assert first["resumed_from"] == str(sweep / "0" / "checkpoints" / "last.ckpt") and first["epochs"] == 2
    assert "resumed_from" not in second and second["epochs"] == 2 and second["global_step"] == first["global_step"]
    # Continued once more, the finished jobs (tested with the same config) stay as they were: nothing runs again.
    written = {job: (sweep / job / "metrics.json").read_bytes() for job in ("0", "1")}
    again = subprocess.run([sys.executable, str(ROOT / "scripts" / "train.py"), *continuing[2:]],
                           capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert again.returncode == 0, again.stderr[-3000:]
    for job in ("0", "1"):
        assert (sweep / job / "metrics.json").read_bytes() == written[job]
        assert not list((sweep / job).glob("metrics.before_*"))
        assert "the run was already complete and tested" in (sweep / job / "train.log").read_text()


QUICK = ["test=false", "~callbacks.confusion_matrix", *LIGHT]


def test_a_refused_resume_quotes_the_overrides_of_the_session_that_saved_the_checkpoint(make_config, tmp_path: Path):
    run_dir = tmp_path / "run"
    train(make_config(overrides=[*QUICK, "trainer.max_epochs=1"], run_dir=run_dir))
    (run_dir / ".hydra").mkdir()
    (run_dir / ".hydra" / "overrides.yaml").write_text("- trainer.max_epochs=1\n")  # Hydra's record, as it writes it
    resumed = make_config(overrides=[*QUICK, "trainer.max_epochs=2", "ckpt_path=last"], run_dir=run_dir)
    session = resumed.session
    (run_dir / ".hydra" / session).mkdir()
    (run_dir / ".hydra" / session / "overrides.yaml").write_text("- trainer.max_epochs=2\n- ckpt_path=last\n")
    train(resumed)
    # A later session that was refused, and the refused session's own record: neither trained.
    for later in ("resumed_2099-01-01_00-00-00", "resumed_2099-01-01_00-00-01"):
        (run_dir / ".hydra" / later).mkdir()
        (run_dir / ".hydra" / later / "overrides.yaml").write_text("- optimizer.lr=0.5\n- ckpt_path=last\n")

    with pytest.raises(CheckpointError) as refused:
        train(make_config(overrides=[*QUICK, "trainer.max_epochs=2", "ckpt_path=last", "optimizer.lr=0.5"],
                          run_dir=run_dir))
    quoted = re.search(r"repeat the run's overrides \((.*?): (.*?)\),", str(refused.value))
    assert quoted and quoted.groups() == (str(run_dir / ".hydra" / session / "overrides.yaml"),
                                          "trainer.max_epochs=2 ckpt_path=last")


@pytest.mark.parametrize("mode", ["RUN", "optuna", "basic without its record"])
def test_no_sweep_command_for_a_single_run_a_search_or_a_sweep_without_its_record(tmp_path: Path, mode: str):
    overrides = ["hparams_search=simple_cnn_optuna"] if mode == "optuna" else []
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        hydra_cfg = compose("train", overrides=[*overrides, f"hydra.mode={'RUN' if mode == 'RUN' else 'MULTIRUN'}",
                                                f"hydra.sweep.dir={tmp_path}"], return_hydra_config=True)
    if mode != "basic without its record":  # the record Hydra writes as a sweep starts
        (tmp_path / "multirun.yaml").write_text(OmegaConf.to_yaml(hydra_cfg))
    HydraConfig.instance().set_config(hydra_cfg)
    try:
        assert continuing_sweep_command() is None
    finally:
        HydraConfig.instance().cfg = None


class _Module:
    def log(self, *args, **kwargs) -> None:
        pass


def _timed_epoch(timer: EpochTimer, epoch: int) -> None:
    trainer = SimpleNamespace(current_epoch=epoch, callback_metrics={})
    timer.on_train_epoch_start(trainer, _Module())
    timer.on_train_epoch_end(trainer, _Module())


def test_an_epoch_resumed_from_a_checkpoint_inside_it_counts_the_time_before_the_checkpoint():
    # A Ctrl-C, every_n_train_steps or train_time_interval checkpoint: 5 s into epoch 2.
    timer = EpochTimer()
    timer.load_state_dict({"epoch_seconds": [7.0, 8.0], "epoch_in_progress": [2, 5.0], "fit_seconds": 21.0})
    _timed_epoch(timer, 2)
    assert timer.epoch_seconds[:2] == [7.0, 8.0] and 5.0 <= timer.epoch_seconds[2] < 6.0


def test_the_fit_time_adds_up_over_every_session_of_a_run_resumed_twice():
    first = EpochTimer()
    first.load_state_dict({"epoch_seconds": [40.0], "epoch_in_progress": None, "fit_seconds": 100.0})
    first.on_fit_start(SimpleNamespace(), _Module())
    saved = first.state_dict()  # the second session's checkpoint
    assert 100.0 <= saved["fit_seconds"] < 101.0 and saved["epoch_seconds"] == [40.0]
    second = EpochTimer()
    second.load_state_dict(saved)
    second.on_fit_start(SimpleNamespace(), _Module())
    assert second.earlier_fit_seconds >= 100.0 and second.state_dict()["fit_seconds"] >= 100.0
