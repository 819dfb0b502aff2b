"""Edges of using a checkpoint on images: visualize's index, split, channels, class and flip TTA,
predict's counts, the image size a fine-tuner's images are read at, and eval keeping training's
class order and split seed."""

from __future__ import annotations

import inspect
import json
import pickle
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from omegaconf import DictConfig
from PIL import Image

from cnnlab.data.folder import decode_image_file
from cnnlab.errors import CheckpointError, InputNotFoundError
from cnnlab.tasks import visualize as visualize_task
from cnnlab.tasks.evaluate import evaluate
from cnnlab.tasks.inference import class_probabilities, load_trained_network
from cnnlab.tasks.predict import predict
from cnnlab.tasks.train import train
from cnnlab.tasks.visualize import visualize
from cnnlab.training.callbacks import CHECKPOINT_KEY
from cnnlab.visualize.gradcam import grad_cam
from conftest import CIFAR_CLASSES, CONF_DIR, compose_run_config, write_cifar_batches, write_image_folder

QUIET = ["~callbacks.confusion_matrix", "~callbacks.misclassified", "~callbacks.conv_filters",
         "~callbacks.feature_maps", "~callbacks.grad_norm"]
SPLIT_SEED = 7  # not the data group's default (0)


def compose_config(name: str, overrides: list[str]) -> DictConfig:
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose(name, overrides=overrides)


@pytest.fixture(scope="module")
def folder_run(tmp_path_factory: pytest.TempPathFactory, image_folder: Path) -> SimpleNamespace:
    """simple_cnn trained briefly on ``image_folder`` (cat, dog, fox) with 3 val and 6 test images held out
    by a non-default data.split_seed; ``ckpt`` is the checkpoint training tested (metrics.json)."""
    root = tmp_path_factory.mktemp("folder_run")
    results = train(compose_run_config("train", root, root / "run", [
        "trainer.max_epochs=2", "data=folder", f"data.root={image_folder}", "data.val_split=3", "data.test_split=6",
        f"data.split_seed={SPLIT_SEED}", *QUIET,
    ]))
    return SimpleNamespace(root=root, results=results, ckpt=str(results["best_checkpoint"]))


def visualize_with(run: SimpleNamespace, out: Path, *overrides: str) -> dict:
    return visualize(compose_config("visualize", [f"paths.root_dir={out.parent}", f"paths.output_dir={out}",
                                                  f"ckpt_path={run.ckpt}", *overrides]))


def trained_splits(ckpt: str):
    """The checkpoint's own data, set up as training split it."""
    trained = load_trained_network(ckpt)
    datamodule = instantiate(trained.config.data)
    datamodule.setup("test")
    return trained, datamodule


# ---------------------------------------------------------------------------------------------
# visualize


def test_visualize_refuses_the_index_one_past_the_last_image_by_name(folder_run, tmp_path):
    # The test split holds 6 images: image=6 is the first index outside it.
    with pytest.raises(InputNotFoundError, match=r"image=6 is out of range: the test split has 6 images \(0\.\.5\)"):
        visualize_with(folder_run, tmp_path / "out", "image=6")
    assert visualize_with(folder_run, tmp_path / "ok", "image=5")["image"].startswith("test image 5 ")


def test_visualize_counts_the_index_in_the_split_asked_for(folder_run, tmp_path):
    trained, datamodule = trained_splits(folder_run.ckpt)
    val, test = datamodule.val_split, datamodule.test_split
    assert (len(val), len(test)) == (3, 6)
    # An index where the val and the test image differ in class, so the record tells the splits apart.
    index = next(i for i in range(len(val)) if int(val.labels[i]) != int(test.labels[i]))
    record = visualize_with(folder_run, tmp_path / "val", "split=val", f"image={index}")
    assert record["image"] == f"val image {index} (true class: {trained.class_names[int(val.labels[index])]})"
    probabilities = class_probabilities(trained.model, val.images[index][None])[0]
    assert record["probability"] == pytest.approx(float(probabilities.max()), abs=1e-6)
    # image=3 is inside the test split but past the 3 val images.
    with pytest.raises(InputNotFoundError, match=r"the val split has 3 images \(0\.\.2\)"):
        visualize_with(folder_run, tmp_path / "past", "split=val", "image=3")


def test_visualize_draws_as_many_channels_as_asked(folder_run, tmp_path, monkeypatch):
    drawn: list[tuple[int, str]] = []
    real = visualize_task.feature_map_figure

    def recording(maps, *args, title: str, **kwargs):
        drawn.append((len(maps), title))
        return real(maps, *args, title=title, **kwargs)

    monkeypatch.setattr(visualize_task, "feature_map_figure", recording)
    visualize_with(folder_run, tmp_path / "out", "image=0", "channels=5", "columns=4")
    ((count, title),) = drawn
    assert count == 5 and title.startswith("features.0: channels 0-4 of 32, test image 0 ")


def predictions_of_test_images(run: SimpleNamespace) -> tuple[object, list[int], torch.Tensor]:
    trained, datamodule = trained_splits(run.ckpt)
    probabilities = class_probabilities(trained.model, datamodule.test_split.images)
    return trained, probabilities.argmax(dim=1).tolist(), probabilities


def test_visualize_reports_the_predicted_classs_probability_when_explaining_another_class(folder_run, tmp_path):
    trained, predicted, probabilities = predictions_of_test_images(folder_run)
    other = (predicted[0] + 1) % len(trained.class_names)
    record = visualize_with(folder_run, tmp_path / "out", "image=0", f"target_class={trained.class_names[other]}")
    assert record["explained_class"] == trained.class_names[other]
    assert record["predicted_class"] == trained.class_names[predicted[0]]
    assert record["probability"] == pytest.approx(float(probabilities[0, predicted[0]]), abs=1e-6)
    assert record["probability"] != pytest.approx(float(probabilities[0, other]), abs=1e-6)


def edited_checkpoint(ckpt: str, path: Path, edit) -> SimpleNamespace:
    """A copy of ``ckpt`` at ``path``, changed by ``edit`` (called with the loaded checkpoint dict)."""
    checkpoint = torch.load(ckpt, map_location="cpu", weights_only=True)
    edit(checkpoint)
    torch.save(checkpoint, path)
    return SimpleNamespace(ckpt=str(path))


def test_visualize_explains_class_index_0_when_asked_though_another_is_predicted(folder_run, tmp_path):
    # 0 is falsy: target_class=0 must not fall back to the predicted class. The copy's output layer
    # never predicts class 0, whatever the brief training learnt.
    def never_class_0(checkpoint: dict) -> None:
        (head,) = [k for k, v in checkpoint["state_dict"].items() if k.endswith("classifier.4.bias")]
        checkpoint["state_dict"][head][0] -= 1000

    run = edited_checkpoint(folder_run.ckpt, tmp_path / "no0.ckpt", never_class_0)
    record = visualize_with(run, tmp_path / "out", "image=0", "target_class=0")
    assert record["predicted_class"] != "cat"
    assert record["explained_class"] == "cat"


def test_visualize_explains_the_flip_tta_prediction_of_a_run_trained_with_it(folder_run, tmp_path, monkeypatch):
    def with_flip_tta(checkpoint: dict) -> None:  # same weights, as if trained with classifier.flip_tta=true
        checkpoint[CHECKPOINT_KEY]["config"]["classifier"]["flip_tta"] = True

    run = edited_checkpoint(folder_run.ckpt, tmp_path / "tta.ckpt", with_flip_tta)
    asked: list[bool] = []
    signature = inspect.signature(grad_cam)

    def recording(*args, **kwargs):
        bound = signature.bind(*args, **kwargs)
        bound.apply_defaults()
        asked.append(bound.arguments["flip_tta"])
        return grad_cam(*args, **kwargs)

    monkeypatch.setattr(visualize_task, "grad_cam", recording)
    record = visualize_with(run, tmp_path / "out", "image=0")
    assert asked == [True] and record["cam_flip_tta"] is True


# ---------------------------------------------------------------------------------------------
# predict and the checkpoint's classes


def test_predict_counts_only_the_files_it_could_classify(folder_run, tmp_path):
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    rng = np.random.default_rng(4)
    for name in ("a.png", "b.jpg"):
        Image.fromarray(rng.integers(0, 255, (20, 30, 3), dtype=np.uint8)).save(inputs / name)
    (inputs / "c_corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(40))
    results = predict(compose_config("predict", [f"paths.root_dir={tmp_path}", f"paths.output_dir={tmp_path / 'out'}",
                                                 f"ckpt_path={folder_run.ckpt}", f"inputs={inputs}"]))
    assert results["classified"] == 2
    assert [Path(f).name for f in results["failed"]] == ["c_corrupt.png"]


def test_a_class_index_past_the_last_class_is_refused(folder_run):
    trained = load_trained_network(folder_run.ckpt)
    assert trained.class_index(2) == 2 and trained.class_index("2") == 2 and trained.class_index("fox") == 2
    for past in (3, "3"):
        with pytest.raises(CheckpointError, match=r"has no class .*3.*; its classes are cat, dog, fox \(or their "
                                                  r"indices 0\.\.2\)"):
            trained.class_index(past)


# ---------------------------------------------------------------------------------------------
# a fine-tuner trained on CIFAR-format files whose class names are not in sorted order


UNSORTED = CIFAR_CLASSES[::-1]  # truck, ship, ..., airplane: a CIFAR-format file may list its classes in any order


@pytest.fixture(scope="module")
def finetuner_ckpt(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A torchvision ResNet-18 (random init) trained for one step on 32x32 CIFAR-format images, upsampled on the
    device to model.input_size=64."""
    root = tmp_path_factory.mktemp("finetuner")
    data = write_cifar_batches(root / "data", per_batch=8, n_test=10)
    with (data / "cifar-10-batches-py" / "batches.meta").open("wb") as f:
        pickle.dump({"label_names": UNSORTED, "num_vis": 3072}, f)
    train(compose_run_config("train", root, root / "run", [
        "trainer.max_epochs=1", "trainer.limit_train_batches=1", "trainer.limit_val_batches=1", "test=false",
        "data=cifar10", f"data.root={data}", "data.val_split=8", "data.download=false",
        "model=torchvision_ft", "model.arch=resnet18", "model.weights=null", "model.input_size=64",
        "model.trainable_stages=-1", *QUIET,
    ]))
    return str(root / "run" / "checkpoints" / "last.ckpt")


def test_a_finetuner_reads_images_at_the_data_size_it_was_trained_on_not_its_input_size(finetuner_ckpt, tmp_path):
    # The network upsamples 32x32 images itself; image files must be read at 32, as the training images were.
    trained = load_trained_network(finetuner_ckpt)
    assert trained.config.model.input_size == 64 and trained.config.data.image_size == 32
    assert trained.image_size == 32
    # predict reads a file as the training images were read: at 32, then the network upsamples it.
    photo = tmp_path / "photo.png"
    Image.fromarray(np.random.default_rng(7).integers(0, 255, (50, 40, 3), dtype=np.uint8)).save(photo)
    predict(compose_config("predict", [f"paths.root_dir={tmp_path}", f"paths.output_dir={tmp_path / 'out'}",
                                       f"ckpt_path={finetuner_ckpt}", f"inputs={photo}"]))
    (record,) = json.loads((tmp_path / "out" / "predictions.json").read_text())
    expected = class_probabilities(trained.model, decode_image_file(photo, 32)[None])[0]
    assert record["probability"] == pytest.approx(float(expected.max()), abs=1e-6)


def test_eval_refuses_a_folder_with_the_training_classes_in_another_order(finetuner_ckpt, tmp_path):
    # A folder's classes are its sorted folder names: airplane would be label 0, the model's truck.
    folder = write_image_folder(tmp_path / "folder", classes=tuple(UNSORTED), per_class=2)
    with pytest.raises(CheckpointError) as refused:
        evaluate(compose_run_config("eval", tmp_path, tmp_path / "eval", [
            f"ckpt_path={finetuner_ckpt}", "data=folder", f"data.root={folder}", "data.val_split=5",
            "data.test_split=5"]))
    assert f"the same classes in another order: {', '.join(sorted(UNSORTED))}" in str(refused.value)


# ---------------------------------------------------------------------------------------------
# eval on training's own images


def test_eval_of_the_training_images_keeps_the_training_split_seed(folder_run, image_folder, tmp_path):
    # With the data group's default seed the test images would be others, some of them trained on.
    results = evaluate(compose_run_config("eval", tmp_path, tmp_path / "eval", [
        f"ckpt_path={folder_run.ckpt}", "data=folder", f"data.root={image_folder}"]))
    trained = json.loads((folder_run.root / "run" / "metrics.json").read_text())
    assert results["test/acc"] == trained["test/acc"]
    assert results["test/loss"] == pytest.approx(trained["test/loss"], rel=1e-6)
    # The default seed would indeed have held out other test images (else the check above proves nothing).
    _, datamodule = trained_splits(folder_run.ckpt)
    default_seed = instantiate(load_trained_network(folder_run.ckpt).config.data, split_seed=0)
    default_seed.setup("test")
    assert not torch.equal(default_seed.test_split.images, datamodule.test_split.images)
