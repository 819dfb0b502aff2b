"""Evaluating a checkpoint on other data, with a model check, and refusing what would mislead."""

from __future__ import annotations

import json
import logging
import shutil
import subprocess
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig, OmegaConf
from test_scripts import run, script_command

from cnnlab.checkpoint import ensure_same_model, read_checkpoint
from cnnlab.errors import CheckpointError, ConfigValueError, DatasetNotFoundError
from cnnlab.tasks.evaluate import evaluate
from cnnlab.tasks.train import train
from cnnlab.tasks.visualize import visualize
from cnnlab.training.callbacks import CHECKPOINT_KEY
from conftest import CONF_DIR, FAST, ROOT, compose_run_config, write_image_folder

CLASSES = ("cat", "dog", "fox")


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory: pytest.TempPathFactory, image_folder: Path) -> Path:
    """A run folder of scripts/train.py: simple_cnn on 40x40 images of ``image_folder`` (cat, dog, fox)."""
    root = tmp_path_factory.mktemp("trained")
    run(script_command("train.py", root, *FAST, "trainer.max_epochs=1", "data=folder", f"data.root={image_folder}",
                       "data.image_size=40"))
    (run_dir,) = (root / "logs" / "train" / "runs").iterdir()
    return run_dir


def evaluate_with(tmp_path: Path, *overrides: str) -> dict:
    return evaluate(compose_run_config("eval", tmp_path, tmp_path / "eval", list(overrides)))


def test_a_yes_no_word_for_tune_host_malloc_is_refused_before_the_checkpoint_is_read(tmp_path: Path):
    # 'no' is a string to OmegaConf, and truthy: the allocator would have been tuned against the user's word.
    with pytest.raises(ConfigValueError, match="^tune_host_malloc must be true or false, got 'no': pass tune_host_malloc=false$"):
        evaluate_with(tmp_path, f"ckpt_path={tmp_path / 'missing.ckpt'}", "tune_host_malloc=no")


def test_other_data_is_preprocessed_as_in_training(trained_run: Path, image_folder: Path, tmp_path: Path,
                                                    caplog: pytest.LogCaptureFixture):
    # data=folder's own default is image_size: 32, which the 40x40 network cannot take.
    last = trained_run / "checkpoints" / "last.ckpt"
    caplog.set_level(logging.INFO, logger="cnnlab.tasks.evaluate")
    same = evaluate_with(tmp_path, f"ckpt_path={last}", "data=folder", f"data.root={image_folder}")
    assert caplog.records[-1].getMessage() == f"results in {tmp_path / 'eval'}"  # the last line: where metrics.json is
    trained = json.loads((trained_run / "metrics.json").read_text())
    assert same["test/acc"] == trained["test/acc"] and same["test/loss"] == pytest.approx(trained["test/loss"], rel=1e-6)

    other = write_image_folder(tmp_path / "other", classes=CLASSES, per_class=6, seed=1)
    results = evaluate_with(tmp_path / "b", f"ckpt_path={last}", "data=folder", f"data.root={other}",
                            "data.val_split=3", "data.test_split=6")
    assert set(results) >= {"test/acc", "test/acc_class/fox"}


def test_data_settings_without_a_data_group_change_the_checkpoints_own_data(trained_run: Path, image_folder: Path,
                                                                          tmp_path: Path):
    # The training images moved: the same split of them, at another batch size, gives training's test metrics.
    moved = shutil.copytree(image_folder, tmp_path / "moved")
    last = trained_run / "checkpoints" / "last.ckpt"
    results = evaluate_with(tmp_path, f"ckpt_path={last}", f"+data.root={moved}", "+data.eval_batch_size=5")
    trained = json.loads((trained_run / "metrics.json").read_text())
    assert results["test/acc"] == trained["test/acc"] and results["test/loss"] == pytest.approx(trained["test/loss"], rel=1e-6)
    with pytest.raises(ConfigValueError) as refused:
        evaluate_with(tmp_path / "b", f"ckpt_path={last}", "+data.rooot=/x")
    assert str(refused.value).startswith("data.rooot is not a setting of the data this checkpoint was trained on "
                                         "(cnnlab.data.folder.ImageFolderDataModule); set one of augment, batch_size,")


def visualize_config(run_dir: Path, *overrides: str) -> DictConfig:
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose("visualize", overrides=[f"paths.root_dir={run_dir.parent}", f"paths.output_dir={run_dir}",
                                               *overrides])


def test_eval_and_visualize_name_the_override_for_training_images_that_moved(image_folder: Path, tmp_path: Path):
    images = shutil.copytree(image_folder, tmp_path / "imgs")
    train(compose_run_config("train", tmp_path, tmp_path / "run", ["trainer.max_epochs=1", "data=folder",
                                                                  f"data.root={images}", "data.image_size=40"]))
    trained = json.loads((tmp_path / "run" / "metrics.json").read_text())
    last = tmp_path / "run" / "checkpoints" / "last.ckpt"
    moved = images.rename(tmp_path / "moved")
    expected = (f"the images {last} was trained on are not at data.root={images} any more: if they moved, pass "
                f"+data.root=NEW_DIR (the same split, so the same test metrics), or test other images with "
                f"data=folder data.root=DIR")
    with pytest.raises(DatasetNotFoundError) as eval_error:
        evaluate_with(tmp_path, f"ckpt_path={last}")
    assert str(eval_error.value) == expected
    with pytest.raises(DatasetNotFoundError) as visualize_error:
        visualize(visualize_config(tmp_path / "vis", f"ckpt_path={last}", "image=0"))
    assert str(visualize_error.value) == expected
    # The override the message names works for both.
    results = evaluate_with(tmp_path / "b", f"ckpt_path={last}", f"+data.root={moved}")
    assert results["test/acc"] == trained["test/acc"]
    shown = visualize(visualize_config(tmp_path / "vis2", f"ckpt_path={last}", "image=0", f"+data.root={moved}"))
    assert (tmp_path / "vis2" / "feature_maps.png").is_file() and shown


def test_the_training_images_named_with_a_data_group_keep_the_training_split(image_folder: Path, tmp_path: Path):
    # With the group's default split (test_split 0.1) the test images would include training images.
    train(compose_run_config("train", tmp_path, tmp_path / "run", ["trainer.max_epochs=1", "data=folder",
                                                                  f"data.root={image_folder}", "data.image_size=40",
                                                                  "data.val_split=3", "data.test_split=9"]))
    trained = json.loads((tmp_path / "run" / "metrics.json").read_text())
    results = evaluate_with(tmp_path, f"ckpt_path={tmp_path / 'run' / 'checkpoints' / 'last.ckpt'}", "data=folder",
                            f"data.root={image_folder}")
    assert results["test/acc"] == trained["test/acc"] and results["test/loss"] == pytest.approx(trained["test/loss"], rel=1e-6)


def test_a_checkpoint_naming_a_class_where_it_used_to_be_still_evaluates(trained_run: Path, tmp_path: Path):
    # Checkpoints written before NormalizeBatch moved to cnnlab.models.normalize name its old module.
    checkpoint = torch.load(trained_run / "checkpoints" / "last.ckpt", weights_only=True)
    model = checkpoint[CHECKPOINT_KEY]["config"]["model"]
    assert model["normalize"]["_target_"] == "cnnlab.models.normalize.NormalizeBatch"
    model["normalize"]["_target_"] = "cnnlab.data.augment.NormalizeBatch"
    older = tmp_path / "older.ckpt"
    torch.save(checkpoint, older)
    assert read_checkpoint(older)[CHECKPOINT_KEY]["config"]["model"]["normalize"]["_target_"] == (
        "cnnlab.models.normalize.NormalizeBatch")
    results = evaluate_with(tmp_path, f"ckpt_path={older}")
    trained = json.loads((trained_run / "metrics.json").read_text())
    assert results["test/acc"] == trained["test/acc"] and results["test/loss"] == pytest.approx(trained["test/loss"], rel=1e-6)


def test_a_test_folder_alone_is_tested_whole_with_the_checkpoints_labels(trained_run: Path, image_folder: Path,
                                                                       tmp_path: Path, caplog: pytest.LogCaptureFixture):
    # No cat images: labelled by test/'s own folders, dog and fox would be scored as the model's cat and dog.
    alone = write_image_folder(tmp_path / "alone", classes=("dog", "fox"), per_class=5, splits=("test",), seed=2)
    last = trained_run / "checkpoints" / "last.ckpt"
    caplog.set_level(logging.INFO, logger="cnnlab.data.folder")
    results = evaluate_with(tmp_path / "a", f"ckpt_path={last}", "data=folder", f"data.root={alone}")
    assert f"testing on the 10 images of {alone / 'test'} ({alone} has no train/)" in caplog.text
    assert {"test/acc_class/dog", "test/acc_class/fox"} <= set(results) and "test/acc_class/cat" not in results
    # The same images as the test/ of a folder with the training's train/: the same metrics.
    beside = tmp_path / "beside"
    shutil.copytree(image_folder / "train", beside / "train")
    shutil.copytree(alone / "test", beside / "test")
    assert results == evaluate_with(tmp_path / "b", f"ckpt_path={last}", "data=folder", f"data.root={beside}")

    (alone / "test" / "emu").mkdir()
    with pytest.raises(CheckpointError) as refused:
        evaluate_with(tmp_path / "c", f"ckpt_path={last}", "data=folder", f"data.root={alone}")
    assert f"classes are not those {last} was trained on (the data's emu not in the checkpoint); the class" in str(refused.value)


def test_a_train_folder_alone_is_tested_on_its_held_out_share(trained_run: Path, image_folder: Path, tmp_path: Path,
                                                             caplog: pytest.LogCaptureFixture):
    caplog.set_level(logging.INFO, logger="cnnlab.data.folder")
    results = evaluate_with(tmp_path, f"ckpt_path={trained_run / 'checkpoints' / 'last.ckpt'}", "data=folder",
                            f"data.root={image_folder}")
    assert "test/acc" in results
    assert (f"{image_folder} has no test/: testing on the 4 images (11.1%) held out of the 36 in {image_folder / 'train'} "
            f"(data.test_split=0.1, seed 0), not on a separate test set") in caplog.text


def test_an_image_size_the_network_cannot_take_is_refused(trained_run: Path, image_folder: Path, tmp_path: Path):
    command = script_command("eval.py", tmp_path, f"ckpt_path={trained_run / 'checkpoints' / 'last.ckpt'}", "trainer=cpu",
                             "data=folder", f"data.root={image_folder}", "data.image_size=32")
    result = subprocess.run(command, capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert result.returncode != 0
    assert "was trained on 40x40 images and cannot take data.image_size=32" in result.stderr
    assert "leave data.image_size out to evaluate at the trained size" in result.stderr
    # The run's log says why it ended too, once; the console shows the error only as the script ends.
    (run_dir,) = (tmp_path / "logs" / "eval" / "runs").iterdir()
    (failure,) = [line for line in (run_dir / "eval.log").read_text().splitlines() if "failed: " in line]
    assert failure.split(" - ", 1)[1].startswith("failed: CheckpointError: ") and "cannot take data.image_size=32" in failure
    assert "failed: " not in result.stdout


def test_data_whose_class_names_differ_is_refused(trained_run: Path, tmp_path: Path):
    # Same number of classes, one renamed: sorted order would score emu images as fox.
    renamed = write_image_folder(tmp_path / "renamed", classes=("cat", "dog", "emu"), per_class=6)
    with pytest.raises(CheckpointError) as refused:
        evaluate_with(tmp_path, f"ckpt_path={trained_run / 'checkpoints' / 'last.ckpt'}", "data=folder",
                      f"data.root={renamed}", "data.val_split=3", "data.test_split=6")
    message = str(refused.value)
    assert "the checkpoint's fox not in the data, the data's emu not in the checkpoint" in message
    assert "the class folders must have the training names, cat, dog, fox" in message


def test_model_must_name_the_checkpoints_network(trained_run: Path, tmp_path: Path):
    last = trained_run / "checkpoints" / "last.ckpt"
    with pytest.raises(CheckpointError) as refused:
        evaluate_with(tmp_path, f"ckpt_path={last}", "model=simple_cnn_bn")
    assert (f"{last} holds a SimpleCNN model with batch_norm=False, not one with batch_norm=True "
            f"(its run used model=simple_cnn); choose model=simple_cnn") in str(refused.value)
    # The right model, with a training-only setting changed, and no model= at all both evaluate.
    assert "test/acc" in evaluate_with(tmp_path / "a", f"ckpt_path={last}", "model=simple_cnn", "model.dropout=0.2")
    assert "test/acc" in evaluate_with(tmp_path / "b", f"ckpt_path={last}")


def model_config(tmp_path: Path, *overrides: str):
    return compose_run_config("train", tmp_path, tmp_path / "run", ["data=synthetic", *overrides]).model


def test_models_of_one_architecture_name_are_told_apart_by_class(tmp_path: Path):
    stored = {CHECKPOINT_KEY: {"config": {"model": OmegaConf.to_container(model_config(tmp_path, "model=resnet18_ft"))}}}
    with pytest.raises(CheckpointError, match="holds a TorchvisionFineTuner resnet18 model, not CifarResNet resnet18"):
        ensure_same_model(stored, model_config(tmp_path, "model=resnet18_cifar"), "ft.ckpt")
    # The same network composed another way, its starting weights read from another file: the same model.
    ensure_same_model(stored, model_config(tmp_path, "model=torchvision_ft", "model.arch=resnet18", "model.input_size=32",
                                           "model.weights=IMAGENET1K_V1", "model.weights_path=/x.pth"), "ft.ckpt")
    # Other weights by name are another model: the name sets the default normalisation.
    with pytest.raises(CheckpointError, match=r"holds a resnet18 model with weights=IMAGENET1K_V1, not one with weights=None"):
        ensure_same_model(stored, model_config(tmp_path, "model=resnet18_ft", "model.weights=null"), "ft.ckpt")
    # Another input normalisation is another model: the network would see other numbers.
    with pytest.raises(CheckpointError, match=r"with normalize=None, not one with normalize=\{'_target_': 'cnnlab.models.normalize.NormalizeBatch'"):
        ensure_same_model(stored, model_config(tmp_path, "model=resnet18_ft", "+model/normalize=cifar10"), "ft.ckpt")


def test_a_folder_or_a_file_that_is_no_checkpoint_is_named_as_such(trained_run: Path, tmp_path: Path):
    with pytest.raises(CheckpointError) as refused:
        read_checkpoint(trained_run)
    assert (f"ckpt_path={trained_run} is a folder, not a checkpoint file; pass one of the .ckpt files in a run's "
            f"checkpoints/ folder: ") in str(refused.value)
    assert str(trained_run / "checkpoints" / "last.ckpt") in str(refused.value)
    with pytest.raises(CheckpointError, match="it has none, nor has"):
        read_checkpoint(tmp_path)

    text = tmp_path / "notes.txt"
    text.write_text("hello\n")
    with pytest.raises(CheckpointError) as refused:
        read_checkpoint(text)
    assert str(refused.value) == (f"{text} is not a PyTorch checkpoint file, or it is corrupt or truncated (an "
                                  f"unfinished copy or download); pass a .ckpt file that scripts/train.py wrote (KeyError: 101)")
    truncated = tmp_path / "half.ckpt"
    whole = (trained_run / "checkpoints" / "last.ckpt").read_bytes()
    truncated.write_bytes(whole[: len(whole) // 2])
    with pytest.raises(CheckpointError, match="half.ckpt is not a PyTorch checkpoint file, or it is corrupt or truncated"):
        read_checkpoint(truncated)

    # A mistyped name: the folder's checkpoints, the closest first.
    checkpoints = trained_run / "checkpoints"
    saved = sorted(p.name for p in checkpoints.glob("*.ckpt"))
    with pytest.raises(CheckpointError) as refused:
        read_checkpoint(checkpoints / "lats.ckpt")
    assert str(refused.value) == (f"checkpoint {checkpoints / 'lats.ckpt'} does not exist; did you mean "
                                  f"{checkpoints / 'last.ckpt'}? {checkpoints} holds: {', '.join(saved)}")

    # A network's weights alone (torch.save(net.state_dict())): no training checkpoint.
    weights = tmp_path / "weights.pth"
    torch.save(torch.load(checkpoints / "last.ckpt", map_location="cpu", weights_only=True)["state_dict"], weights)
    with pytest.raises(CheckpointError) as refused:
        read_checkpoint(weights)
    assert str(refused.value).startswith(f"{weights} holds a network's weights alone (")
    assert "not a training checkpoint: ckpt_path= takes a .ckpt file that a run of scripts/train.py saved" in str(refused.value)


class Touches:
    """Unpickling it opens ``path`` for writing, which creates the file: code run from a checkpoint."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self):
        return open, (str(self.path), "w")


def test_a_checkpoint_holding_code_is_refused_without_running_it(tmp_path: Path):
    marker = tmp_path / "ran"
    crafted = tmp_path / "crafted.ckpt"
    torch.save({"state_dict": {"w": torch.zeros(1)}, CHECKPOINT_KEY: {"config": {}, "class_names": ["a"]},
                "epoch": 0, "global_step": 0, "payload": Touches(marker)}, crafted)
    with pytest.raises(CheckpointError) as refused:
        read_checkpoint(crafted)
    assert str(refused.value).startswith(f"cannot read checkpoint {crafted} safely (weights_only=True): ")
    assert "Unsupported global: GLOBAL io.open" in str(refused.value)  # torch names what it would not run
    assert not marker.exists(), "the object's code ran"
