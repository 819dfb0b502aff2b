"""Fixtures: tiny CIFAR-format files, image folders and random weights, made on the spot.

Nothing here downloads anything; the whole suite runs offline on a CPU.
"""

from __future__ import annotations

import os
import pickle
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig
from PIL import Image
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from torchvision.models import resnet18

from cnnlab.utils.config import register_resolvers

ROOT = Path(__file__).resolve().parents[1]
CONF_DIR = ROOT / "conf"
CIFAR_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]

register_resolvers()

# Under pytest-xdist the workers share the cores: each takes its share of torch's threads, and
# so do the scripts the tests start (they inherit OMP_NUM_THREADS), instead of every process
# running as many threads as there are cores.
if "PYTEST_XDIST_WORKER_COUNT" in os.environ:
    _threads = max(1, (os.cpu_count() or 1) // int(os.environ["PYTEST_XDIST_WORKER_COUNT"]))
    torch.set_num_threads(_threads)
    os.environ["OMP_NUM_THREADS"] = str(_threads)


def scalar_events(log_dir: Path, tag: str) -> list[tuple[int, float]]:
    """(step, value) of each time a scalar was written, over every TensorBoard event file in ``log_dir``."""
    written: list[tuple[int, float]] = []
    for events in sorted(log_dir.glob("events.out.tfevents.*")):
        accumulator = EventAccumulator(str(events))
        accumulator.Reload()
        if tag in accumulator.Tags()["scalars"]:
            written += [(event.step, event.value) for event in accumulator.Scalars(tag)]
    return written


def scalar_steps(log_dir: Path, tag: str) -> list[int]:
    """The steps at which a scalar was written, over every TensorBoard event file in ``log_dir``."""
    return [step for step, _ in scalar_events(log_dir, tag)]


def class_images(labels: np.ndarray, size: int, rng: np.random.Generator) -> np.ndarray:
    """uint8 images (N, 3, size, size) whose mean colour depends on the label, plus noise."""
    colours = np.linspace(30, 225, 10)[labels % 10]
    base = np.stack([colours, 255 - colours, (colours * 7) % 255], axis=1)
    noise = rng.integers(-30, 30, size=(len(labels), 3, size, size))
    return np.clip(base[:, :, None, None] + noise, 0, 255).astype(np.uint8)


def write_cifar_batches(root: Path, per_batch: int = 24, n_test: int = 30, seed: int = 0) -> Path:
    """Write a miniature CIFAR-10 in the official python format under ``root/cifar-10-batches-py``."""
    rng = np.random.default_rng(seed)
    batch_dir = root / "cifar-10-batches-py"
    batch_dir.mkdir(parents=True)

    def dump(name: str, n: int) -> None:
        labels = rng.integers(0, 10, size=n)
        data = class_images(labels, 32, rng).reshape(n, -1)
        with (batch_dir / name).open("wb") as f:
            pickle.dump({"data": data, "labels": labels.tolist(), "batch_label": name}, f)

    for i in range(1, 6):
        dump(f"data_batch_{i}", per_batch)
    dump("test_batch", n_test)
    with (batch_dir / "batches.meta").open("wb") as f:
        pickle.dump({"label_names": CIFAR_CLASSES, "num_vis": 3072}, f)
    return root


def write_image_folder(root: Path, classes: tuple[str, ...] = ("cat", "dog", "fox"), per_class: int = 12,
                       size: tuple[int, int] = (40, 30), splits: tuple[str, ...] = ("train",), seed: int = 0) -> Path:
    """Write ``root/<split>/<class>/<i>.{png,jpg}`` images of a non-square size."""
    rng = np.random.default_rng(seed)
    for split in splits:
        for label, name in enumerate(classes):
            folder = root / split / name
            folder.mkdir(parents=True)
            pixels = class_images(np.full(per_class, label * 3), max(size), rng)
            for i in range(per_class):
                image = Image.fromarray(pixels[i].transpose(1, 2, 0)).resize(size)
                image.save(folder / f"{i:03d}.{'png' if i % 2 else 'jpg'}")
    return root


@pytest.fixture(scope="session")
def cifar_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_cifar_batches(tmp_path_factory.mktemp("cifar10"))


@pytest.fixture(scope="session")
def image_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_image_folder(tmp_path_factory.mktemp("folder"))


@pytest.fixture(scope="session")
def resnet_weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A ResNet-18 state dict with random weights, standing in for the ImageNet file."""
    torch.manual_seed(0)
    model = resnet18()
    # Non-trivial BatchNorm statistics, so a test can tell whether they moved.
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.uniform_(-0.1, 0.1)
            module.running_var.uniform_(0.5, 1.5)
    path = tmp_path_factory.mktemp("weights") / "resnet18-random.pth"
    torch.save(model.state_dict(), path)
    return path


# Overrides that keep a training run to a few seconds on a CPU.
FAST = [
    "trainer=cpu",
    "trainer.max_epochs=2",
    "trainer.log_every_n_steps=1",
    "+trainer.enable_progress_bar=false",
    "~callbacks.progress_bar",
    "data.batch_size=16",
    "data.eval_batch_size=32",
]


def compose_run_config(name: str, folder: Path, run_dir: Path, overrides: list[str],
                       cifar_root: Path | None = None) -> DictConfig:
    """Compose ``conf/<name>.yaml`` as the scripts would, writing under ``folder`` and into ``run_dir``.

    Training configs get the FAST settings and, unless ``overrides`` pick other data, the
    CIFAR files at ``cifar_root``; the other entry configs a quiet CPU trainer.
    """
    base = [f"paths.root_dir={folder}", f"paths.output_dir={run_dir}", f"paths.cache_dir={folder / 'cache'}"]
    if name == "train":
        base += FAST
        if not any(o.startswith("data=") for o in overrides):
            if cifar_root is None:
                raise ValueError("a train config on CIFAR files needs cifar_root (the cifar_root fixture), or a data= override")
            base += [f"data.root={cifar_root}", "data.val_split=20", "data.download=false"]
    else:
        base += ["trainer=cpu", "+trainer.enable_progress_bar=false"]
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose(name, overrides=base + list(overrides))


@pytest.fixture
def make_config(tmp_path: Path, cifar_root: Path) -> Callable[..., DictConfig]:
    """Compose ``conf/<name>.yaml`` as the scripts would, writing into this test's tmp folder."""

    def make(name: str = "train", overrides: list[str] | None = None, run_dir: Path | None = None) -> DictConfig:
        return compose_run_config(name, tmp_path, run_dir or tmp_path / "run", list(overrides or []), cifar_root)

    return make


@pytest.fixture
def hydra_multirun_job(tmp_path: Path) -> Iterator[DictConfig]:
    """Hydra's runtime config as a multirun job sees it (set for this test only), its run folder ``tmp_path/run``."""
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose("train", overrides=["hydra.mode=MULTIRUN"], return_hydra_config=True)
    cfg.hydra.runtime.output_dir = str(tmp_path / "run")
    HydraConfig.instance().set_config(cfg)
    yield cfg
    HydraConfig.instance().cfg = None  # type: ignore[assignment]
