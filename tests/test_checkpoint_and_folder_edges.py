"""Edges of reading checkpoints and of refusing used folders: a file that is no checkpoint, a resumed
schedule, a fine-tuner's checkpoint without its weights file, a crashed run's folder, an eval writing
into the run it tests, a study database's missing folders, and a refused write without hard links."""

from __future__ import annotations

import io
import os
import re
import shutil
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from PIL import Image

from cnnlab.checkpoint import build_model_from_checkpoint, ensure_same_setup, read_checkpoint
from cnnlab.errors import CheckpointError, RunDirectoryInUseError
from cnnlab.tasks.evaluate import evaluate
from cnnlab.tasks.train import train
from cnnlab.training.callbacks import CHECKPOINT_KEY
from cnnlab.utils.config import config_dict
from cnnlab.utils.hydra_callbacks import RefuseUsedRunFolder, make_storage_folder, refuse_used_run_dir, run_leftovers
from cnnlab.utils.io import atomic_write
from conftest import CONF_DIR, compose_run_config


def test_an_image_file_given_as_checkpoint_is_named_no_checkpoint_not_unsafe_to_read(tmp_path: Path):
    # torch reads a JPEG as pickle opcodes and fails with the same UnpicklingError as a checkpoint holding
    # code; only a zip archive (what torch.save writes) can be the latter, so the message must not say weights_only.
    photo = tmp_path / "photo.ckpt"
    jpeg = io.BytesIO()
    Image.new("RGB", (8, 8), (200, 10, 10)).save(jpeg, "JPEG")
    photo.write_bytes(jpeg.getvalue())
    with pytest.raises(CheckpointError) as refused:
        read_checkpoint(photo)
    message = str(refused.value)
    assert message.startswith(f"{photo} is not a PyTorch checkpoint file, or it is corrupt or truncated"), message
    assert "(UnpicklingError: " in message and "weights_only" not in message


def test_resuming_with_a_changed_schedule_setting_is_refused(make_config, tmp_path: Path):
    # The scheduler's state is restored on resume: a changed value would silently not take effect.
    run_cfg = make_config(overrides=["scheduler=cosine"])
    checkpoint = {CHECKPOINT_KEY: {"config": config_dict(run_cfg, resolve=True), "class_names": ["a", "b"]}}
    ckpt_path = tmp_path / "run" / "checkpoints" / "last.ckpt"
    ensure_same_setup(checkpoint, make_config(overrides=["scheduler=cosine", "trainer.max_epochs=3"]), ckpt_path)
    with pytest.raises(CheckpointError) as refused:
        ensure_same_setup(checkpoint, make_config(overrides=["scheduler=cosine", "scheduler.scheduler.eta_min=1e-05"]),
                          ckpt_path)
    listed = [line.strip() for line in str(refused.value).splitlines() if line.startswith("  ")]
    assert listed == ["scheduler.scheduler.eta_min: 0.0 in the run, 1e-05 in this command"]


def test_a_fine_tuners_checkpoint_evaluates_without_its_pretrained_weights_file(make_config, tmp_path: Path,
                                                                                resnet_weights: Path):
    # The checkpoint holds every weight: eval must not read the file the run started from again.
    weights = tmp_path / "resnet18.pth"
    shutil.copy(resnet_weights, weights)
    run_dir = tmp_path / "run"
    train(make_config(overrides=["model=resnet18_ft", f"model.weights_path={weights}", "trainer.max_epochs=1",
                                 "+trainer.limit_train_batches=1", "+trainer.limit_val_batches=1", "test=false"], run_dir=run_dir))
    weights.unlink()
    last = run_dir / "checkpoints" / "last.ckpt"
    checkpoint = read_checkpoint(last)
    rebuilt = build_model_from_checkpoint(checkpoint)
    assert torch.equal(rebuilt.state_dict()["net.head.1.weight"], checkpoint["state_dict"]["net.head.1.weight"])
    results = evaluate(compose_run_config("eval", tmp_path, tmp_path / "eval", [f"ckpt_path={last}",
                                                                                   "+trainer.limit_test_batches=1"]))
    assert 0.0 <= results["test/acc"] <= 1.0


def test_a_training_run_that_crashed_before_its_metrics_leaves_a_used_folder(tmp_path: Path):
    # Its checkpoints are what a resume continues from: a new run must not write among them.
    (tmp_path / "checkpoints").mkdir()
    (tmp_path / "checkpoints" / "last.ckpt").write_bytes(b"a checkpoint")
    assert run_leftovers(tmp_path) == [tmp_path / "checkpoints"]
    with pytest.raises(RunDirectoryInUseError, match=rf"\(checkpoints\); nothing was overwritten.*pass "
                                                     rf"ckpt_path={re.escape(str(tmp_path / 'checkpoints' / 'last.ckpt'))}"):
        refuse_used_run_dir(tmp_path)


def test_an_eval_of_a_runs_checkpoint_into_that_runs_folder_is_refused(tmp_path: Path):
    # A training run may continue in its own folder from its own checkpoint; an eval has no resume,
    # and Hydra would write its .hydra/ record over the training run's.
    run_dir = tmp_path / "run"
    (run_dir / ".hydra").mkdir(parents=True)
    (run_dir / ".hydra" / "config.yaml").write_text("the training run's record\n")
    (run_dir / "checkpoints").mkdir()
    (run_dir / "checkpoints" / "last.ckpt").write_bytes(b"a checkpoint")
    (run_dir / "metrics.json").write_text('{"test/acc": 0.9}')
    before = {p: p.read_bytes() for p in run_dir.rglob("*") if p.is_file()}
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        config = compose("eval", overrides=[f"ckpt_path={run_dir / 'checkpoints' / 'last.ckpt'}",
                                            f"hydra.run.dir={run_dir}"], return_hydra_config=True)
    # The callback as conf/hydra/default.yaml sets it up for every task but training (any_content=true).
    callback = instantiate(config.hydra.callbacks.refuse_used_run_folder)
    assert isinstance(callback, RefuseUsedRunFolder)
    with pytest.raises(SystemExit, match=rf"^RunDirectoryInUseError: {re.escape(str(run_dir))} already holds results"):
        callback.on_run_start(config)
    assert {p: p.read_bytes() for p in run_dir.rglob("*") if p.is_file()} == before


def test_a_study_database_in_missing_nested_folders_gets_them_made(tmp_path: Path):
    make_storage_folder(f"sqlite:///{tmp_path}/a/b/study.db")
    assert (tmp_path / "a" / "b").is_dir()
    assert not (tmp_path / "a" / "b" / "study.db").exists()  # SQLite makes the file itself


def test_without_hard_links_a_write_that_must_not_replace_leaves_a_dangling_link(tmp_path: Path, monkeypatch):
    # A symbolic link whose target is gone still takes the name: os.path.exists says no, the link is there.
    def no_links(source, target):
        raise PermissionError(1, "Operation not permitted")  # as a filesystem without hard links answers

    monkeypatch.setattr(os, "link", no_links)
    link = tmp_path / "pooled.md"
    link.symlink_to(tmp_path / "gone.md")
    with pytest.raises(FileExistsError):
        atomic_write(link, lambda f: f.write(b"ours\n"), replace=False)
    assert link.is_symlink() and os.readlink(link) == str(tmp_path / "gone.md")
    assert [p.name for p in tmp_path.iterdir()] == ["pooled.md"]  # no temporary file, no file at the link's target
