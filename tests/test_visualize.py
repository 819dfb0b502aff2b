"""Seeing inside the network: TensorBoard figures during training, and the visualize, predict,
summary and convolution scripts on checkpoints trained for a few steps on generated data."""

from __future__ import annotations

import csv
import json
import logging
import re
import subprocess
import sys
import warnings
from collections import OrderedDict
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger
from omegaconf import DictConfig
from PIL import Image
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from torch import nn

from cnnlab.data.folder import decode_image_file
from cnnlab.errors import CheckpointError, CnnlabError, ConfigValueError, InputNotFoundError, LayerNotFoundError
from cnnlab.models.normalize import NormalizeBatch
from cnnlab.models.simple_cnn import SimpleCNN
from cnnlab.models.torchvision_ft import TorchvisionFineTuner
from cnnlab.tasks.evaluate import evaluate
from cnnlab.tasks.inference import load_trained_network
from cnnlab.tasks.predict import list_input_files, predict
from cnnlab.tasks.summary import summary
from cnnlab.tasks.train import train
from cnnlab.tasks.visualize import visualize
from cnnlab.training import visual_callbacks
from cnnlab.training.callbacks import CHECKPOINT_KEY
from cnnlab.training.visual_callbacks import ConfusionMatrixLogger, epoch_is_due, figure_title
from cnnlab.visualize.feature_maps import capture_activations, find_layer
from cnnlab.visualize.figures import confusion_matrix_figure
from cnnlab.visualize.gradcam import grad_cam
from conftest import CIFAR_CLASSES, CONF_DIR, FAST, ROOT, write_image_folder

# ---------------------------------------------------------------------------------------------
# helpers


def compose_config(name: str, overrides: list[str]) -> DictConfig:
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose(name, overrides=overrides)


def tensorboard_events(run_dir: Path) -> tuple[dict[str, list], dict[str, list[float]]]:
    """Every image (tag -> events with .width, .height, .step) and scalar series in a run's TensorBoard files."""
    images: dict[str, list] = {}
    scalars: dict[str, list[float]] = {}
    for events in sorted((run_dir / "tensorboard").glob("events.out.tfevents.*")):
        accumulator = EventAccumulator(str(events), size_guidance={"images": 0, "scalars": 0})
        accumulator.Reload()
        for tag in accumulator.Tags()["images"]:
            images.setdefault(tag, []).extend(accumulator.Images(tag))
        for tag in accumulator.Tags()["scalars"]:
            scalars.setdefault(tag, []).extend(event.value for event in accumulator.Scalars(tag))
    return images, scalars


def png_size(path: Path) -> tuple[int, int]:
    """The (width, height) of a file that must be a valid PNG."""
    with Image.open(path) as image:
        assert image.format == "PNG", path
        image.verify()
        return image.size


def run_script(script: str, tmp_path: Path, *overrides: str, expect: int = 0) -> subprocess.CompletedProcess:
    """Run a script from ``tmp_path`` as a user would; scripts that write files write them under ``tmp_path/logs``."""
    paths = [] if script == "summary.py" else [f"paths.root_dir={tmp_path}"]
    command = [sys.executable, str(ROOT / "scripts" / script), *paths, *overrides]
    result = subprocess.run(command, check=False, capture_output=True, text=True, cwd=tmp_path, timeout=300)
    assert result.returncode == expect, result.stdout[-2000:] + result.stderr[-3000:]
    return result


def only_run_dir(tmp_path: Path, task: str) -> Path:
    runs = list((tmp_path / "logs" / task / "runs").iterdir())
    assert len(runs) == 1, runs
    return runs[0]


# ---------------------------------------------------------------------------------------------
# checkpoints trained for a few steps on generated data (once per module)

EPOCHS = 3


@pytest.fixture(scope="module")
def cnn_run(tmp_path_factory: pytest.TempPathFactory, cifar_root: Path) -> SimpleNamespace:
    """simple_cnn trained 3 epochs with every visual callback on; feature maps and filters every 2nd epoch."""
    root = tmp_path_factory.mktemp("cnn_run")
    cfg = compose_config("train", [
        f"paths.root_dir={root}", f"paths.output_dir={root / 'run'}", f"paths.cache_dir={root / 'cache'}",
        *FAST, f"trainer.max_epochs={EPOCHS}", f"data.root={cifar_root}", "data.val_split=20", "data.download=false",
        "callbacks.feature_maps.every_n_epochs=2", "callbacks.conv_filters.every_n_epochs=2",
        "callbacks.misclassified.max_images=5",
    ])
    titles: list[str] = []

    def recording_figure(*args, title: str, **kwargs):
        titles.append(title)
        return confusion_matrix_figure(*args, title=title, **kwargs)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(visual_callbacks, "confusion_matrix_figure", recording_figure)
        results = train(cfg)
    return SimpleNamespace(dir=root / "run", results=results, ckpt=results["best_checkpoint"], cfg=cfg,
                           confusion_titles=titles)


@pytest.fixture(scope="module")
def resnet_ckpt(tmp_path_factory: pytest.TempPathFactory, cifar_root: Path, resnet_weights: Path) -> str:
    """The frozen ResNet-18 fine-tuner (random 'pretrained' weights) trained for two steps at 64x64,
    where layer4's maps are 2x2. Visual callbacks are off: this checkpoint is for the scripts."""
    root = tmp_path_factory.mktemp("resnet_run")
    cfg = compose_config("train", [
        f"paths.root_dir={root}", f"paths.output_dir={root / 'run'}", f"paths.cache_dir={root / 'cache'}",
        *FAST, "trainer.max_epochs=1", "trainer.limit_train_batches=2", "trainer.limit_val_batches=1",
        f"data.root={cifar_root}", "data.val_split=20", "data.download=false",
        "model=resnet18_ft", f"model.weights_path={resnet_weights}", "model.input_size=64", "test=false",
        "~callbacks.confusion_matrix", "~callbacks.misclassified", "~callbacks.conv_filters",
        "~callbacks.feature_maps", "~callbacks.grad_norm",
    ])
    train(cfg)
    return str(root / "run" / "checkpoints" / "last.ckpt")


@pytest.fixture
def image_inputs(tmp_path: Path) -> Path:
    """Good images of several sizes and formats, one in a sub-folder, two corrupt ones and a text file."""
    folder = tmp_path / "inputs"
    (folder / "more").mkdir(parents=True)
    rng = np.random.default_rng(3)
    Image.fromarray(rng.integers(0, 255, (30, 40, 3), dtype=np.uint8)).save(folder / "a_wide.png")
    Image.fromarray(rng.integers(0, 255, (120, 90, 3), dtype=np.uint8)).save(folder / "b_tall.jpg")
    Image.fromarray(rng.integers(0, 255, (32, 32), dtype=np.uint8)).save(folder / "more" / "c_grey.bmp")
    Image.fromarray(rng.integers(0, 255, (17, 23, 4), dtype=np.uint8)).save(folder / "d_rgba.webp")
    (folder / "corrupt.jpg").write_bytes(b"\xff\xd8\xff\xe0" + bytes(rng.integers(0, 255, 200, dtype=np.uint8)))
    (folder / "z_cut.png").write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(rng.integers(0, 255, 50, dtype=np.uint8)))
    (folder / "notes.txt").write_text("not an image\n")  # skipped with a warning, as training skips it
    return folder


# ---------------------------------------------------------------------------------------------
# TensorBoard during training and test


def test_training_logs_confusion_matrices_misclassified_filters_feature_maps_and_grad_norm(cnn_run):
    images, scalars = tensorboard_events(cnn_run.dir)
    # A confusion matrix at every validation epoch and at test.
    assert len(images["val/confusion_matrix"]) == EPOCHS
    assert len(images["test/confusion_matrix"]) == 1
    assert len(images["test/misclassified"]) == 1
    # Filters and feature maps every 2nd epoch: epochs 0 and 2 (the last), not epoch 1.
    assert len(images["filters/features.0"]) == 2
    for index in range(4):
        maps = images[f"feature_maps/features.0/image_{index}"]
        assert len(maps) == 2
        assert (maps[0].width, maps[0].height) == (4 * 98 + 2, 4 * 98 + 2)  # 16 channels of 32x32, 3x enlarged, 4x4
    assert len(images["feature_maps/inputs"]) == 1
    # 32 first-layer filters of 3x3, enlarged 8x to 24x24, in a 6x6 grid with 2-pixel padding.
    assert (images["filters/features.0"][0].width, images["filters/features.0"][0].height) == (6 * 26 + 2, 6 * 26 + 2)

    steps = cnn_run.results["global_step"]
    assert len(scalars["train/grad_norm"]) == steps and all(v > 0 and np.isfinite(v) for v in scalars["train/grad_norm"])
    assert len(scalars["lr-Adam"]) == steps
    assert {"hparams/val/acc_best", "hparams/test/acc"} <= set(scalars)


def image_and_scalar_steps(log_dir: Path) -> tuple[dict[str, list[int]], dict[str, list[int]]]:
    """The steps of every image tag and every scalar tag in the TensorBoard files of ``log_dir``."""
    images: dict[str, list[int]] = {}
    scalars: dict[str, list[int]] = {}
    for events in sorted(log_dir.glob("events.out.tfevents.*")):
        accumulator = EventAccumulator(str(events), size_guidance={"images": 0, "scalars": 0})
        accumulator.Reload()
        for tag in accumulator.Tags()["images"]:
            images.setdefault(tag, []).extend(event.step for event in accumulator.Images(tag))
        for tag in accumulator.Tags()["scalars"]:
            scalars.setdefault(tag, []).extend(event.step for event in accumulator.Scalars(tag))
    return images, scalars


def test_images_sit_at_the_step_of_the_same_epochs_scalars(cnn_run, tmp_path):
    images, scalars = image_and_scalar_steps(cnn_run.dir / "tensorboard")
    val, train, test = scalars["val/acc"], scalars["train/acc"], scalars["test/acc"]
    assert len(val) == len(train) == EPOCHS and len(test) == 1
    # An epoch's scalars sit at the step of its last batch, one before global_step at its end,
    # where the images used to be.
    assert val == train == [(epoch + 1) * cnn_run.results["global_step"] // EPOCHS - 1 for epoch in range(EPOCHS)]
    assert images["val/confusion_matrix"] == val
    due = [val[0], val[2]]  # feature maps and filters every 2nd epoch: epochs 0 and 2 (the last)
    assert images["feature_maps/inputs"] == due[:1]
    for index in range(4):
        assert images[f"feature_maps/features.0/image_{index}"] == due
    assert images["filters/features.0"] == [train[0], train[2]]
    assert images["test/confusion_matrix"] == images["test/misclassified"] == test

    # Test alone, as scripts/eval.py runs it: a fresh trainer, so test/acc and the images at step 0.
    evaluate(compose_config("eval", [
        f"paths.root_dir={tmp_path}", f"paths.output_dir={tmp_path / 'eval'}", f"ckpt_path={cnn_run.ckpt}",
        "trainer=cpu", "+trainer.enable_progress_bar=false", "logger=tensorboard", "callbacks=default",
        "~callbacks.progress_bar", "callbacks.misclassified.max_images=5",
    ]))
    images, scalars = image_and_scalar_steps(tmp_path / "eval" / "tensorboard")
    assert scalars["test/acc"] == images["test/confusion_matrix"] == images["test/misclassified"] == [0]


def test_confusion_matrix_titles_count_epochs_from_0_as_checkpoint_names_do(cnn_run):
    # Validation draws epochs 0..2 (the progress bar's "Epoch 2" is the last); the test ran on the
    # best checkpoint, epoch_<n>.ckpt, whose epoch the test figure names (not one past the last epoch).
    best_epoch = int(re.fullmatch(r"epoch_(\d+)\.ckpt", Path(cnn_run.ckpt).name).group(1))
    assert cnn_run.confusion_titles == [*(f"val epoch {e}" for e in range(EPOCHS)), f"test epoch {best_epoch}"]
    # Without a checkpoint: the weights fit left (its last epoch), or, for a trainer that never fit
    # (eval's, testing a checkpoint's weights it loaded itself), no epoch.
    after_fit = SimpleNamespace(ckpt_path=None, current_epoch=EPOCHS)
    assert figure_title(after_fit, "test") == f"test epoch {EPOCHS - 1}"
    assert figure_title(SimpleNamespace(ckpt_path=None, current_epoch=0), "test") == "test"


def test_per_class_validation_accuracy_matches_overall_accuracy(cnn_run):
    datamodule = instantiate(cnn_run.cfg.data)
    datamodule.setup("fit")
    counts = torch.bincount(datamodule.val_split.labels, minlength=10)
    recorded = json.loads((cnn_run.dir / "metrics.json").read_text())
    # Classes absent from the validation split have no accuracy to record.
    assert {key for key in recorded if key.startswith("val/acc_class/")} == {
        f"val/acc_class/{name}" for name, count in zip(CIFAR_CLASSES, counts, strict=True) if count > 0}
    per_class = torch.tensor([recorded.get(f"val/acc_class/{name}", 0.0) for name in CIFAR_CLASSES])
    weighted = float((per_class * counts).sum() / counts.sum())
    assert weighted == pytest.approx(recorded["val/acc"], abs=1e-6)


def test_a_class_without_validation_images_gets_no_accuracy_but_its_row_in_the_figure(tmp_path):
    logged: dict[str, float] = {}
    module = SimpleNamespace(num_classes=3, device=torch.device("cpu"), class_names=["cat", "dog", "empty"],
                             log_dict=lambda values, **kwargs: logged.update({k: float(v) for k, v in values.items()}))
    logger = TensorBoardLogger(tmp_path, name="", version="")
    trainer = SimpleNamespace(is_global_zero=True, loggers=[logger], current_epoch=0, sanity_checking=False,
                              max_epochs=1, fit_loop=SimpleNamespace(epoch_loop=SimpleNamespace(_batches_that_stepped=7)))
    callback = ConfusionMatrixLogger()
    callback.on_validation_epoch_start(trainer, module)
    logits = torch.tensor([[5.0, 0, 0], [0, 5.0, 0], [5.0, 0, 0], [0, 0, 5.0]])  # no true "empty"; one dog called empty
    callback.on_validation_batch_end(trainer, module, {"logits": logits}, SimpleNamespace(labels=torch.tensor([0, 1, 1, 1])), 0)
    callback.on_validation_epoch_end(trainer, module)
    assert logged == {"val/acc_class/cat": 1.0, "val/acc_class/dog": pytest.approx(1 / 3)}
    logger.experiment.flush()
    accumulator = EventAccumulator(str(tmp_path), size_guidance={"images": 0})
    accumulator.Reload()
    assert [event.step for event in accumulator.Images("val/confusion_matrix")] == [7]


def test_epoch_schedule_of_the_callbacks():
    def due(epoch: int, every: int, max_epochs: int = 10, sanity: bool = False) -> bool:
        trainer = SimpleNamespace(current_epoch=epoch, max_epochs=max_epochs, sanity_checking=sanity)
        return epoch_is_due(trainer, every)

    assert [e for e in range(10) if due(e, 5)] == [0, 5, 9]
    assert not any(due(e, 0) for e in range(10))
    assert not due(0, 1, sanity=True)


def test_the_drawing_callbacks_warn_without_tensorboard_but_not_under_fast_dev_run_or_without_loggers(tmp_path):
    def setup(fast_dev_run: int | bool, loggers: list) -> None:
        trainer = SimpleNamespace(is_global_zero=True, fast_dev_run=fast_dev_run, loggers=loggers)
        ConfusionMatrixLogger().setup(trainer, None, "fit")

    with pytest.warns(UserWarning, match=r"ConfusionMatrixLogger: no TensorBoard logger is configured \(logger=tensorboard\)"):
        setup(False, [CSVLogger(tmp_path)])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        setup(True, [])  # fast_dev_run swaps the configured loggers for a dummy
        setup(False, [TensorBoardLogger(tmp_path)])
        setup(False, [])  # ~logger: no logs were asked for


# ---------------------------------------------------------------------------------------------
# Grad-CAM and activations


def manual_grad_cam(net: torch.nn.Module, images: torch.Tensor, layer: torch.nn.Module, classes: list[int]) -> torch.Tensor:
    """Grad-CAM from its definition, for comparison: ReLU(sum_k mean(dY/dA_k) A_k), scaled to [0, 1], upsampled."""
    inputs = (images.float() / 255).requires_grad_(True)
    stored: dict[str, torch.Tensor] = {}
    handle = layer.register_forward_hook(lambda module, args, output: stored.update(output=output))
    logits = net(inputs)
    handle.remove()
    score = logits.gather(1, torch.tensor(classes)[:, None]).sum()
    gradients = torch.autograd.grad(score, stored["output"])[0]
    cam = torch.relu((gradients.mean(dim=(2, 3), keepdim=True) * stored["output"].detach()).sum(dim=1))
    low = cam.flatten(1).min(dim=1).values[:, None, None]
    high = cam.flatten(1).max(dim=1).values[:, None, None]
    cam = (cam - low) / (high - low + 1e-8)
    return torch.nn.functional.interpolate(cam[:, None], size=images.shape[-2:], mode="bilinear", align_corners=False)[:, 0]


@pytest.mark.parametrize("network", ["simple_cnn", "frozen_resnet"])
def test_grad_cam_matches_its_definition_restores_modes_and_leaves_no_gradients(network):
    torch.manual_seed(0)
    normalize = NormalizeBatch([0.5] * 3, [0.25] * 3)
    if network == "simple_cnn":
        net, size = SimpleCNN(10, normalize=normalize), 32
    else:
        net, size = TorchvisionFineTuner(10, arch="resnet18", weights=None, input_size=64, normalize=normalize), 64
    images = torch.randint(0, 256, (3, 3, size, size), dtype=torch.uint8)
    net.train()
    modes = {name: m.training for name, m in net.named_modules()}
    with torch.no_grad():  # the caller's context: grad_cam must enable gradients itself
        result = grad_cam(net, images, net.cam_target_layer(), class_index=[1, 4, 7])
    assert {name: m.training for name, m in net.named_modules()} == modes
    assert all(p.grad is None for p in net.parameters())
    assert result.classes == [1, 4, 7] and result.heatmaps.shape == (3, size, size)
    assert result.cam_size == ((8, 8) if network == "simple_cnn" else (2, 2))

    net.eval()
    expected = manual_grad_cam(net, images, net.cam_target_layer(), [1, 4, 7])
    assert expected.amax() > 0.5  # a non-trivial map, so the comparison means something
    torch.testing.assert_close(result.heatmaps, expected.clamp(0, 1), atol=1e-5, rtol=1e-4)


def test_grad_cam_with_flip_tta_averages_the_maps_of_the_image_and_its_mirror_image():
    torch.manual_seed(0)
    net = SimpleCNN(10, normalize=NormalizeBatch([0.5] * 3, [0.25] * 3)).eval()
    layer = net.cam_target_layer()
    images = torch.randint(0, 256, (3, 3, 32, 32), dtype=torch.uint8)  # random, so not mirror-symmetric
    with torch.no_grad():
        tta_logits = (net(images.float() / 255) + net(images.flip(3).float() / 255)) / 2
    result = grad_cam(net, images, layer, flip_tta=True)
    # The explained class is the TTA prediction; the logits are the TTA mean, as ImageClassifier's.
    assert result.flip_tta and result.classes == tta_logits.argmax(dim=1).tolist()
    torch.testing.assert_close(result.logits, tta_logits, atol=1e-5, rtol=1e-4)
    plain = manual_grad_cam(net, images, layer, result.classes)
    mirrored_back = manual_grad_cam(net, images.flip(3), layer, result.classes).flip(-1)
    torch.testing.assert_close(result.heatmaps, ((plain + mirrored_back) / 2).clamp(0, 1), atol=1e-5, rtol=1e-4)
    assert (result.heatmaps - plain).abs().amax() > 0.05  # not the unflipped pass's map
    # A chosen class is explained in both passes.
    chosen = grad_cam(net, images, layer, class_index=4, flip_tta=True)
    expected = (manual_grad_cam(net, images, layer, [4] * 3) + manual_grad_cam(net, images.flip(3), layer, [4] * 3).flip(-1)) / 2
    torch.testing.assert_close(chosen.heatmaps, expected.clamp(0, 1), atol=1e-5, rtol=1e-4)
    # Without flip TTA the map is the image's own, as before.
    torch.testing.assert_close(grad_cam(net, images, layer, result.classes).heatmaps, plain.clamp(0, 1),
                               atol=1e-5, rtol=1e-4)


def test_activations_are_copied_before_an_in_place_relu_and_layers_are_found_by_name():
    torch.manual_seed(0)
    net = SimpleCNN(10, normalize=NormalizeBatch([0.5] * 3, [0.5] * 3))
    images = torch.randint(0, 256, (2, 3, 32, 32), dtype=torch.uint8)
    name, conv = find_layer(net, None)
    assert name == "features.0" and conv is net.features[0]
    maps, _ = capture_activations(net, images, conv)
    with torch.no_grad():
        expected = net.features[0](net.normalize(images))
    torch.testing.assert_close(maps, expected)  # negative values survive: copied before ReLU(inplace=True)
    assert maps.min() < 0
    assert not conv._forward_hooks  # the hook is gone
    with pytest.raises(LayerNotFoundError, match="did you mean features.0"):
        find_layer(net, "featurs.0")
    # A layer inside a wrapper, named without it (the fine-tuner's backbone.layer3 as layer3).
    wrapped = nn.Sequential(OrderedDict(backbone=nn.Sequential(OrderedDict(layer3=nn.Conv2d(3, 3, 1)))))
    with pytest.raises(LayerNotFoundError, match=r"has no layer named 'layer3'; did you mean backbone.layer3\?"):
        find_layer(wrapped, "layer3")


# ---------------------------------------------------------------------------------------------
# scripts


def test_visualize_script_writes_feature_maps_and_grad_cam_for_an_image_file(cnn_run, tmp_path):
    photo = tmp_path / "photo.jpg"
    Image.fromarray(np.random.default_rng(5).integers(0, 255, (75, 100, 3), dtype=np.uint8)).save(photo)
    run_script("visualize.py", tmp_path, f"ckpt_path={cnn_run.ckpt}", f"image={photo}")
    out = only_run_dir(tmp_path, "visualize")
    record = json.loads((out / "visualization.json").read_text())
    assert record["feature_layer"] == "features.0" and record["feature_map_shape"] == [32, 32, 32]
    assert record["cam_layer"] == "features.6" and record["cam_size"] == [8, 8]
    assert record["cam_flip_tta"] is False
    assert record["explained_class"] == record["predicted_class"] in CIFAR_CLASSES
    assert png_size(out / "feature_maps.png") == (680, 720)  # 16 channels, 4x4
    assert png_size(out / "gradcam.png") == (900, 340)
    # The prediction is the network's own on the decoded, resized file.
    trained = load_trained_network(cnn_run.ckpt)
    with torch.no_grad():
        probabilities = trained.model(decode_image_file(photo, 32)[None]).softmax(dim=1)[0]
    assert record["probability"] == pytest.approx(float(probabilities.max()), abs=1e-6)


def test_visualize_script_names_a_corrupt_image_in_one_line(cnn_run, image_inputs, tmp_path):
    # Not three chained tracebacks (Pillow's OSError, the decoder's ValueError, cnnlab's CorruptImageError).
    corrupt = image_inputs / "corrupt.jpg"
    result = run_script("visualize.py", tmp_path, f"ckpt_path={cnn_run.ckpt}", f"image={corrupt}", expect=1)
    assert f"CorruptImageError: {corrupt} could not be decoded as an image" in result.stderr
    assert "Traceback" not in result.stderr and "HYDRA_FULL_ERROR" not in result.stderr, result.stderr


def test_visualize_a_test_image_by_index_with_a_chosen_layer_and_class(cnn_run, tmp_path):
    cfg = compose_config("visualize", [f"paths.root_dir={tmp_path}", f"paths.output_dir={tmp_path / 'out'}",
                                       f"ckpt_path={cnn_run.ckpt}", "image=3", "layer=features.3", "channels=8",
                                       "target_class=ship"])
    record = visualize(cfg)
    assert record["feature_layer"] == "features.3" and record["feature_map_shape"] == [64, 16, 16]
    assert record["explained_class"] == "ship"
    assert record["image"].startswith("test image 3 (true class: ")
    assert png_size(tmp_path / "out" / "feature_maps.png") == (680, 380)  # 8 channels, 4 columns: 2 rows

    for bad, error in (["image=999"], InputNotFoundError), (["image=nothing.png"], InputNotFoundError), \
                      (["image=3", "layer=features.77"], LayerNotFoundError):
        with pytest.raises(error):
            visualize(compose_config("visualize", [f"paths.root_dir={tmp_path}", f"paths.output_dir={tmp_path / 'x'}",
                                                   f"ckpt_path={cnn_run.ckpt}", *bad]))


def test_visualize_the_frozen_resnet_at_its_last_conv_block(resnet_ckpt, tmp_path):
    photo = tmp_path / "photo.png"
    Image.fromarray(np.random.default_rng(6).integers(0, 255, (40, 50, 3), dtype=np.uint8)).save(photo)
    cfg = compose_config("visualize", [f"paths.root_dir={tmp_path}", f"paths.output_dir={tmp_path / 'out'}",
                                       f"ckpt_path={resnet_ckpt}", f"image={photo}", "target_class=2"])
    record = visualize(cfg)
    assert record["cam_layer"] == "backbone.layer4" and record["cam_size"] == [2, 2]  # layer4 at 64x64 input
    assert record["feature_layer"] == "backbone.conv1" and record["feature_map_shape"] == [64, 32, 32]
    assert record["explained_class"] == CIFAR_CLASSES[2]
    assert png_size(tmp_path / "out" / "gradcam.png") == (900, 340)
    assert png_size(tmp_path / "out" / "feature_maps.png") == (680, 720)


def test_predict_script_classifies_good_files_and_reports_bad_ones_by_name(cnn_run, image_inputs, tmp_path):
    result = run_script("predict.py", tmp_path, f"ckpt_path={cnn_run.ckpt}", f"inputs={image_inputs}", "top_k=3",
                        expect=2)
    shown = result.stderr + result.stdout
    assert "corrupt.jpg" in shown and "z_cut.png" in shown
    assert "1 file(s) skipped, not of the image types read here (.txt: 1; e.g. notes.txt)" in shown
    out = only_run_dir(tmp_path, "predict")
    with (out / "predictions.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert [Path(r["file"]).name for r in rows] == ["a_wide.png", "b_tall.jpg", "corrupt.jpg", "d_rgba.webp",
                                                    "c_grey.bmp", "z_cut.png"]
    failed = {Path(r["file"]).name for r in rows if r["error"]}
    assert failed == {"corrupt.jpg", "z_cut.png"}
    records = {Path(r["file"]).name: r for r in json.loads((out / "predictions.json").read_text())}
    trained = load_trained_network(cnn_run.ckpt)
    for row in rows:
        name = Path(row["file"]).name
        if name in failed:
            assert row["predicted_class"] == "" and "error" in records[name]
            continue
        top = records[name]["top_k"]
        assert len(top) == 3 and top[0]["class"] == row["predicted_class"]
        assert [t["probability"] for t in top] == sorted((t["probability"] for t in top), reverse=True)
        with torch.no_grad():
            probabilities = trained.model(decode_image_file(Path(row["file"]), 32)[None]).softmax(dim=1)[0]
        assert float(row["probability"]) == pytest.approx(float(probabilities.max()), abs=1e-5)
        assert row["predicted_class"] == CIFAR_CLASSES[int(probabilities.argmax())]


def test_predict_one_file_and_refuse_a_missing_input(cnn_run, image_inputs, tmp_path, caplog):
    base = [f"paths.root_dir={tmp_path}", f"paths.output_dir={tmp_path / 'out'}", f"ckpt_path={cnn_run.ckpt}"]
    results = predict(compose_config("predict", [*base, f"inputs={image_inputs / 'b_tall.jpg'}"]))
    assert results["classified"] == 1 and results["failed"] == []
    # More classes asked for than the model has (one more, the edge): all of them, and a word that it is so.
    caplog.set_level(logging.WARNING, logger="cnnlab")
    for top_k, warned in ((11, True), (10, False)):
        caplog.clear()
        out = tmp_path / f"k{top_k}"
        predict(compose_config("predict", [f"paths.root_dir={tmp_path}", f"paths.output_dir={out}", f"ckpt_path={cnn_run.ckpt}",
                                           f"inputs={image_inputs / 'b_tall.jpg'}", f"top_k={top_k}"]))
        (record,) = json.loads((out / "predictions.json").read_text())
        assert len(record["top_k"]) == 10
        assert (f"top_k={top_k}, but the model has 10 classes: listing all 10" in caplog.text) is warned
    with pytest.raises(InputNotFoundError, match="missing.jpg"):
        predict(compose_config("predict", [*base, f"inputs={image_inputs / 'missing.jpg'}"]))


def with_flip_tta(ckpt: str, path: Path) -> Path:
    """A copy of ``ckpt`` as if its run had trained with classifier.flip_tta=true (same weights)."""
    checkpoint = torch.load(ckpt, map_location="cpu", weights_only=True)
    checkpoint[CHECKPOINT_KEY]["config"]["classifier"]["flip_tta"] = True
    torch.save(checkpoint, path)
    return path


def test_predict_and_visualize_predict_as_eval_scores_with_flip_tta(cnn_run, image_inputs, tmp_path):
    ckpt = with_flip_tta(cnn_run.ckpt, tmp_path / "tta.ckpt")
    base = [f"paths.root_dir={tmp_path}", f"ckpt_path={ckpt}"]
    predict(compose_config("predict", [*base, f"paths.output_dir={tmp_path / 'p'}", f"inputs={image_inputs}"]))
    records = [r for r in json.loads((tmp_path / "p" / "predictions.json").read_text()) if "error" not in r]
    net = load_trained_network(cnn_run.ckpt).net
    differs = 0
    for record in records:
        image = decode_image_file(Path(record["file"]), 32)[None]
        with torch.no_grad():
            tta = ((net(image) + net(image.flip(3))) / 2).softmax(dim=1)[0]
            plain = net(image).softmax(dim=1)[0]
        # The mean of the image's and its mirror image's logits, as eval scores with flip_tta.
        assert record["probability"] == pytest.approx(float(tta.max()), abs=1e-5)
        assert record["predicted_class"] == CIFAR_CLASSES[int(tta.argmax())]
        differs += abs(float(plain.max()) - record["probability"]) > 1e-3
    assert len(records) == 4 and differs > 0  # the network alone would give other probabilities

    photo = image_inputs / "b_tall.jpg"
    shown = visualize(compose_config("visualize", [*base, f"paths.output_dir={tmp_path / 'v'}", f"image={photo}"]))
    tta_record = next(r for r in records if r["file"].endswith("b_tall.jpg"))
    assert shown["predicted_class"] == tta_record["predicted_class"]
    assert shown["probability"] == pytest.approx(tta_record["probability"], abs=1e-5)
    assert shown["cam_flip_tta"] is True  # the heatmap is the mean over the image and its mirror image


@pytest.mark.parametrize(("override", "message"), [
    ("top_k=0", "top_k=0, but it must be a whole number of at least 1"),
    ("top_k=-1", "top_k=-1, but it must be a whole number of at least 1"),
    ("top_k=abc", "top_k='abc', but it must be a whole number of at least 1"),
    ("batch_size=0", "batch_size=0, but it must be a whole number of at least 1"),
    ("device=cuda", "device=cuda, but this machine has no CUDA GPU; run on the CPU with device=cpu"),
    ("device=gpu", "device=gpu is not a device torch knows"),
    ("recursive=no", "recursive must be true or false, got 'no': pass recursive=false"),  # 'no' would read sub-folders
])
def test_predict_refuses_bad_settings_by_name(cnn_run, image_inputs, tmp_path, monkeypatch, override, message):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    cfg = compose_config("predict", [f"paths.root_dir={tmp_path}", f"paths.output_dir={tmp_path / 'out'}",
                                     f"ckpt_path={cnn_run.ckpt}", f"inputs={image_inputs}", override])
    with pytest.raises(ConfigValueError, match=re.escape(message)):
        predict(cfg)


def test_predict_refuses_bad_decode_workers_before_reading_the_checkpoint(image_inputs, tmp_path):
    # The checkpoint does not exist: a refusal that came after reading it would be a CheckpointError.
    base = [f"paths.root_dir={tmp_path}", f"paths.output_dir={tmp_path / 'out'}", f"ckpt_path={tmp_path / 'none.ckpt'}",
            f"inputs={image_inputs}"]
    for value, shown in (("two", "'two'"), ("0", "0"), ("1.5", "1.5")):
        with pytest.raises(ConfigValueError, match=re.escape(
                f"decode_workers={shown}, but it must be a whole number of at least 1 (e.g. decode_workers=4)")):
            predict(compose_config("predict", [*base, f"decode_workers={value}"]))
    assert not (tmp_path / "out").exists()  # no run folder left behind either


def test_predict_in_batches_smaller_than_the_files_with_unreadable_files_among_them(cnn_run, image_inputs, tmp_path):
    # Six files, the 3rd (corrupt.jpg) and the 6th (z_cut.png) unreadable: batches of 2 mix good
    # and bad files, batches of 1 hold a bad file alone; each file must keep its own result.
    def predictions(batch_size: int) -> list[dict]:
        out = tmp_path / str(batch_size)
        predict(compose_config("predict", [f"paths.root_dir={tmp_path}", f"paths.output_dir={out}",
                                           f"ckpt_path={cnn_run.ckpt}", f"inputs={image_inputs}",
                                           f"batch_size={batch_size}"]))
        return json.loads((out / "predictions.json").read_text())

    whole = predictions(256)
    assert [Path(r["file"]).name for r in whole] == ["a_wide.png", "b_tall.jpg", "corrupt.jpg", "d_rgba.webp",
                                                     "c_grey.bmp", "z_cut.png"]
    assert [Path(r["file"]).name for r in whole if "error" in r] == ["corrupt.jpg", "z_cut.png"]
    for batch_size in (1, 2, 4):
        batched = predictions(batch_size)
        assert [(r["file"], r.get("error"), r.get("predicted_class")) for r in batched] == [
            (r["file"], r.get("error"), r.get("predicted_class")) for r in whole]
        assert [r.get("probability") for r in batched] == pytest.approx([r.get("probability") for r in whole], abs=1e-5)


def test_visualize_refuses_a_layer_grad_cam_cannot_use_and_no_channels(cnn_run, tmp_path):
    base = [f"paths.root_dir={tmp_path}", f"paths.output_dir={tmp_path / 'out'}", f"ckpt_path={cnn_run.ckpt}", "image=3"]
    with pytest.raises(LayerNotFoundError) as refused:
        visualize(compose_config("visualize", [*base, "cam_layer=classifier.1"]))
    assert ("cam_layer=classifier.1: layer 'classifier.1' outputs shape (1, 512), not feature maps, so Grad-CAM "
            "cannot look at it; choose a convolutional layer or block, such as features.0, features.3, features.6; "
            "or leave cam_layer out for the network's default, features.6") in str(refused.value)
    with pytest.raises(LayerNotFoundError, match="no layer named 'featrues.6'; did you mean features.6"):
        visualize(compose_config("visualize", [*base, "cam_layer=featrues.6"]))
    with pytest.raises(CnnlabError, match="zebra"):
        visualize(compose_config("visualize", [*base, "target_class=zebra"]))
    # A refused setting leaves no figure of the image behind (the feature maps were written first).
    assert not list((tmp_path / "out").glob("*.png")) and not (tmp_path / "out" / "visualization.json").exists()
    with pytest.raises(ConfigValueError, match="channels=0, but it must be a whole number of at least 1"):
        visualize(compose_config("visualize", [*base, "channels=0"]))


@pytest.fixture(scope="module")
def folder40_ckpt(tmp_path_factory: pytest.TempPathFactory, image_folder: Path) -> str:
    """simple_cnn trained for one step on 40x40 images of ``image_folder`` (cat, dog, fox)."""
    root = tmp_path_factory.mktemp("folder40")
    train(compose_config("train", [
        f"paths.root_dir={root}", f"paths.output_dir={root / 'run'}", f"paths.cache_dir={root / 'cache'}", *FAST,
        "trainer.max_epochs=1", "trainer.limit_train_batches=1", "trainer.limit_val_batches=1", "test=false",
        "data=folder", f"data.root={image_folder}", "data.image_size=40", "~callbacks.confusion_matrix",
        "~callbacks.misclassified", "~callbacks.conv_filters", "~callbacks.feature_maps", "~callbacks.grad_norm",
    ]))
    return str(root / "run" / "checkpoints" / "last.ckpt")


def test_visualize_an_image_of_other_data_as_eval_would(folder40_ckpt, tmp_path):
    # data=folder's own default is image_size: 32, which the 40x40 network cannot take.
    other = write_image_folder(tmp_path / "other", per_class=6, seed=1)
    base = [f"paths.root_dir={tmp_path}", f"ckpt_path={folder40_ckpt}", "image=1", "data=folder",
            "data.val_split=3", "data.test_split=6", f"data.cache_dir={tmp_path / 'cache'}"]
    record = visualize(compose_config("visualize", [*base, f"paths.output_dir={tmp_path / 'a'}", f"data.root={other}"]))
    assert record["feature_map_shape"][1:] == [40, 40]
    assert record["image"].startswith("test image 1 (true class: ")

    renamed = write_image_folder(tmp_path / "renamed", classes=("cat", "dog", "emu"), per_class=6)
    with pytest.raises(CheckpointError) as refused:
        visualize(compose_config("visualize", [*base, f"paths.output_dir={tmp_path / 'b'}", f"data.root={renamed}"]))
    assert "the checkpoint's fox not in the data, the data's emu not in the checkpoint" in str(refused.value)

    # A test/ folder alone, as eval takes it: labelled by the checkpoint's classes (fox is 2, not 1).
    alone = write_image_folder(tmp_path / "alone", classes=("cat", "fox"), per_class=3, splits=("test",), seed=2)
    record = visualize(compose_config("visualize", [*base, f"paths.output_dir={tmp_path / 'c'}", f"data.root={alone}",
                                                    "image=4"]))
    assert record["image"] == "test image 4 (true class: fox)"


def test_summary_script_prints_layers_shapes_and_parameter_counts(tmp_path):
    result = run_script("summary.py", tmp_path)
    assert "total parameters:     1,147,466" in result.stdout
    assert "trainable parameters: 1,147,466" in result.stdout
    lines = {line.split()[0]: line.split() for line in result.stdout.splitlines() if line.startswith("features.")}
    assert lines["features.0"][1:4] == ["Conv2d", "32x32x32", "896"]
    assert lines["features.7"][1:3] == ["MaxPool2d", "128x4x4"] and lines["features.8"][1] == "ReLU"
    assert not (tmp_path / "logs").exists() and not list(tmp_path.glob("*.log"))  # it only prints


def test_summary_of_a_checkpoint_uses_its_network_and_image_size(cnn_run, capsys):
    counts = summary(compose_config("summary", [f"ckpt_path={cnn_run.ckpt}"]))
    assert counts == {"params_total": 1_147_466, "params_trainable": 1_147_466}
    assert "for one 3x32x32 image" in capsys.readouterr().out


def test_summary_refuses_another_model_for_a_checkpoint_and_sizes_below_one_once_each(cnn_run, tmp_path):
    result = run_script("summary.py", tmp_path, f"ckpt_path={cnn_run.ckpt}", "model=simple_cnn_bn", expect=1)
    (line,) = result.stderr.strip().splitlines()  # once, not also as the job log's "failed:" line
    assert line.startswith(f"CheckpointError: {cnn_run.ckpt} holds a SimpleCNN model with batch_norm=False")
    assert line.endswith("(without model=, summary shows the checkpoint's own network)")
    for override in ("input_size=0", "num_classes=0", "num_classes=-3", "input_size=abc"):
        with pytest.raises(ConfigValueError, match=f"{override.split('=')[0]}=.*, but it must be a whole number"):
            summary(compose_config("summary", [override]))


def test_summary_of_the_frozen_resnet_shows_its_small_trainable_head(capsys):
    counts = summary(compose_config("summary", ["model=resnet18_ft", "model.input_size=224"]))
    assert counts == {"params_total": 11_181_642, "params_trainable": 5_130}
    printed = capsys.readouterr().out
    assert "trainable parameters: 5,130" in printed
    assert any(line.split()[:3] == ["backbone.layer4", "Sequential", "512x7x7"] for line in printed.splitlines())


def test_convolution_script_prints_the_worked_example_and_writes_the_kernel_figure(tmp_path):
    cat = tmp_path / "cat.png"
    Image.fromarray(np.random.default_rng(7).integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(cat)
    result = run_script("convolution.py", tmp_path, f"image={cat}", "image_size=48")
    assert "[[8 8 8]" in result.stdout and "[[-8 -8 -8]" in result.stdout
    out = only_run_dir(tmp_path, "convolution")
    assert png_size(out / "convolution.png") == (900, 660)  # 6 panels, 3 per row


def test_predict_lists_the_files_training_would_read_as_images_not_thumbnails_or_resource_forks(tmp_path: Path):
    photos = tmp_path / "photos"
    (photos / "@eaDir" / "a.jpg").mkdir(parents=True)  # a Synology NAS's thumbnails of a.jpg
    (photos / "@eaDir" / "a.jpg" / "SYNOPHOTO_THUMB_S.jpg").write_bytes(b"thumb")
    (photos / ".AppleDouble").mkdir()
    (photos / ".AppleDouble" / "a.jpg").write_bytes(b"resource fork")
    (photos / "trip").mkdir()
    for name in ("a.jpg", "._a.jpg", "trip/b.png", "notes.txt"):
        (photos / name).write_bytes(b"x")
    # Image files are read, in sub-folders too; other visible files are skipped with a warning, as training does.
    assert [p.relative_to(photos).as_posix() for p in list_input_files(photos)] == ["a.jpg", "trip/b.png"]
