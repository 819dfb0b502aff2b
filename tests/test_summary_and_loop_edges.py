"""Edges of the summary task (frozen counts, checkpoints, depth, unused layers) and of the benchmark's plain loop."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision.transforms as T
from hydra import compose, initialize_config_dir
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf
from torch import nn

from cnnlab.benchmark.measure import _peak_rss_mb
from cnnlab.benchmark.plain_loop import InMemoryPILDataset, PlainLoop, ResizeUnlessSized, tutorial_transform
from cnnlab.errors import CheckpointError
from cnnlab.models.simple_cnn import SimpleCNN
from cnnlab.tasks.summary import layer_table, summarize, summary
from cnnlab.training.callbacks import CHECKPOINT_FORMAT, CHECKPOINT_KEY
from cnnlab.training.factory import build_classifier
from conftest import CONF_DIR, compose_run_config


def summary_config(overrides: list[str]) -> DictConfig:
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose("summary", overrides=overrides)


def save_checkpoint(tmp_path: Path, cifar_root: Path, overrides: list[str], name: str) -> Path:
    """A checkpoint as training writes it (weights and config record) for the network ``overrides`` configure."""
    cfg = compose_run_config("train", tmp_path, tmp_path / "run", overrides, cifar_root)
    model = build_classifier(cfg, ["a", "b", "c"], train=False)
    record = {"format": CHECKPOINT_FORMAT, "config": OmegaConf.to_container(cfg, resolve=True), "class_names": ["a", "b", "c"]}
    path = tmp_path / name
    torch.save({"state_dict": model.state_dict(), CHECKPOINT_KEY: record}, path)
    return path


def count_line(printed: str, label: str) -> int:
    (value,) = re.findall(rf"^{label} parameters:\s+([\d,]+)$", printed, flags=re.MULTILINE)
    return int(value.replace(",", ""))


def test_the_frozen_count_of_a_fine_tuner_is_its_frozen_backbone(capsys):
    counts = summary(summary_config(["model=resnet18_ft"]))
    printed = capsys.readouterr().out
    assert count_line(printed, "total") == counts["params_total"]
    assert count_line(printed, "trainable") == counts["params_trainable"] == 5_130  # the new head only
    assert count_line(printed, "frozen") == counts["params_total"] - counts["params_trainable"]


def test_a_model_typed_on_the_command_line_that_is_not_the_checkpoints_is_refused(tmp_path: Path, cifar_root: Path):
    ckpt = save_checkpoint(tmp_path, cifar_root, ["model=simple_cnn_bn"], "simple_cnn_bn.ckpt")
    # Only a model= the user typed is compared with the checkpoint's (summary.yaml always composes one):
    # the command line comes from Hydra's config, as in a run of scripts/summary.py.
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose("summary", overrides=["model=simple_cnn", f"ckpt_path={ckpt}"], return_hydra_config=True)
    HydraConfig.instance().set_config(cfg)
    try:
        with pytest.raises(CheckpointError, match=r"holds a SimpleCNN model with batch_norm=True, not one with "
                                                  r"batch_norm=False \(model=simple_cnn in this command\); .*"
                                                  r"\(without model=, summary shows the checkpoint's own network\)$"):
            summary(cfg)
    finally:
        HydraConfig.instance().cfg = None


def test_a_checkpoint_trained_at_another_image_size_is_summarised_at_that_size(tmp_path: Path, cifar_root: Path,
                                                                                capsys):
    # summary.yaml's data.image_size (32) is not the checkpoint's: its own training size is.
    ckpt = save_checkpoint(tmp_path, cifar_root, ["model=simple_cnn", "data.image_size=64"], "simple_cnn_64.ckpt")
    summary(summary_config([f"ckpt_path={ckpt}"]))
    assert "for one 3x64x64 image" in capsys.readouterr().out


def test_max_depth_lists_layers_to_that_many_levels_of_nesting():
    net = SimpleCNN(num_classes=3, input_size=8, channels=(4, 8, 8), hidden=16)
    example = torch.zeros(1, 3, 8, 8, dtype=torch.uint8)
    everything = [row.name for row in layer_table(net, example)]
    assert any(name.count(".") >= 1 for name in everything)
    top = [row.name for row in layer_table(net, example, max_depth=1)]
    assert top and set(top) == {name for name in everything if "." not in name}
    two = [row.name for row in layer_table(net, example, max_depth=2)]
    assert set(two) == {name for name in everything if name.count(".") <= 1}
    assert set(two) > set(top)


class _WithUnusedLayer(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.used = nn.Conv2d(3, 2, 3)
        self.unused = nn.Linear(4, 5)  # e.g. a head kept for another task

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.used(x.float())


def test_a_layer_that_never_runs_is_still_listed_as_not_run():
    rows = layer_table(_WithUnusedLayer(), torch.zeros(1, 3, 8, 8, dtype=torch.uint8))
    assert [(row.name, row.output_shape, row.params) for row in rows] == [("used", "2x6x6", 56), ("unused", "(not run)", 25)]
    assert re.search(r"^unused\s+Linear\s+\(not run\)\s+25\s+25$", summarize(_WithUnusedLayer(), 8), flags=re.MULTILINE)


@pytest.mark.parametrize("resize", [False, True], ids=["in memory", "files"])
def test_the_plain_loops_transforms_are_the_tutorials(resize: bool):
    # The reference the issue defines: random crop with padding 4, horizontal flip, ToTensor, Normalize to [-1, 1].
    steps = tutorial_transform(24, resize=resize).transforms
    if resize:
        assert isinstance(steps[0], ResizeUnlessSized) and steps[0].size == 24
        steps = steps[1:]
    assert [type(step) for step in steps] == [T.RandomCrop, T.RandomHorizontalFlip, T.ToTensor, T.Normalize]
    crop, flip, _, normalize = steps
    assert tuple(crop.size) == (24, 24) and crop.padding == 4
    assert flip.p == 0.5
    assert tuple(normalize.mean) == (0.5, 0.5, 0.5) and tuple(normalize.std) == (0.5, 0.5, 0.5)


def test_the_plain_loop_trains_on_full_batches_only_across_epochs():
    # 2 batches of 4 and one image over: a last batch of 1 would time fewer images per step, and a
    # BatchNorm network in training mode can fail on it.
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    images = torch.from_numpy(rng.integers(0, 256, size=(9, 3, 8, 8), dtype=np.uint8))
    dataset = InMemoryPILDataset(images, torch.arange(9) % 3, tutorial_transform(8))
    net = SimpleCNN(num_classes=3, input_size=8, batch_norm=True, channels=(4, 8, 8), hidden=16)
    net.normalize = nn.Identity()  # the tutorial's transforms normalise, as the benchmark sets up
    loop = PlainLoop(net, dataset, torch.device("cpu"), batch_size=4, num_workers=0)
    assert [loop.step() for _ in range(5)] == [4] * 5  # into the third epoch


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="VmHWM is in Linux's /proc/self/status")
def test_the_peak_host_memory_is_vmhwm_in_mebibytes():
    def vmhwm_kib() -> int:
        status = Path("/proc/self/status").read_text()
        return int(status.split("VmHWM:")[1].split()[0])

    # The high-water mark only rises: read around the call, so a rise between the reads cannot fail the test.
    before = vmhwm_kib()
    peak = _peak_rss_mb()
    after = vmhwm_kib()
    assert before / 1024 <= peak <= after / 1024
