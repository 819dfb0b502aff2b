"""Edges of the benchmark's statistics, report and timing callbacks that a mutation round found untested: each
test pins a figure or a behaviour that a small change in the code (a flipped sign, a wrong reference path, a
dropped call) altered without any other test noticing. Tiny sizes and in-process only."""

from __future__ import annotations

import re
import statistics
from collections.abc import Callable
from pathlib import Path
from typing import Any

import lightning as L
import pytest
import torch
from hydra.utils import instantiate
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.demos.boring_classes import BoringModel
from lightning.pytorch.loggers import CSVLogger
from lightning.pytorch.plugins.precision import Precision
from omegaconf import DictConfig, OmegaConf

from cnnlab.benchmark.measure import Measurement
from cnnlab.benchmark.paired import PairedSteps, PairedTimes
from cnnlab.benchmark.rounds import (
    BARE_EFFICIENCY,
    CALLBACKS_MS,
    LOOP_MS,
    LOOP_OVERHEAD,
    OVERHEAD,
    OVERHEAD_MS,
    REPORT_ORDER,
    SPEED_UP,
    TRAINER_EFFICIENCY,
    fastest_quarter,
    format_interval,
    format_ratio,
    in_report_order,
    median_and_middle_half,
)
from cnnlab.errors import ConfigValueError
from cnnlab.tasks.benchmark import (
    BARE,
    CEILING,
    TRAINER,
    TRAINER_LOOP_ONLY,
    BareDataPath,
    ComputeOnly,
    InterleavedWindows,
    _format_paired,
    _format_report,
    _ratios,
    benchmark,
    ensure_same_step_on_every_path,
)
from conftest import compose_run_config

PLAIN_PIL = "plain loop (in-memory PIL, like CIFAR10)"
PLAIN_JPEG = "plain loop (ImageFolder, JPEG decode per image)"


# --- rounds.py: the statistics --------------------------------------------------------------------------------------


def test_ratios_of_other_versions_come_after_the_reports_own_and_sorted():
    """A pooled table lists the ratios this version knows in its order, then any an older run had, alphabetically."""
    names = ["zeta ratio of an older run", SPEED_UP, "alpha ratio of an older run", OVERHEAD, BARE_EFFICIENCY]
    assert in_report_order(names) == [BARE_EFFICIENCY, OVERHEAD, SPEED_UP,
                                      "alpha ratio of an older run", "zeta ratio of an older run"]
    assert in_report_order(list(reversed(REPORT_ORDER))) == list(REPORT_ORDER)


def test_fastest_quarter_of_twelve_windows_averages_the_fastest_three():
    # Eight windows (the other test's) cannot tell a quarter from a third: 8 // 4 == 8 // 3 == 2.
    speeds = [float(speed) for speed in range(100, 1300, 100)]  # 100 ... 1200 images/s
    assert fastest_quarter(speeds) == pytest.approx((1200 + 1100 + 1000) / 3)


def test_the_middle_half_is_the_inclusive_quartiles_around_the_median():
    """The report's "(middle half of the rounds)": the lower and upper quartile, Python's inclusive method."""
    assert median_and_middle_half([1.0, 2.0, 3.0, 4.0, 5.0]) == (3.0, 2.0, 4.0)
    # Skewed rounds: the median (not the mean, 3.0), quartiles in order.
    assert median_and_middle_half([1.0, 1.0, 2.0, 3.0, 8.0]) == (2.0, 1.0, 3.0)
    # Two rounds already spread: halfway between them, and a quarter of the way in from each.
    assert median_and_middle_half([1.0, 3.0]) == (2.0, 1.5, 2.5)
    assert median_and_middle_half([4.0]) == (4.0, 4.0, 4.0)


def test_milliseconds_speed_ups_and_shares_are_printed_each_in_their_unit():
    # The loop's and the callbacks' share of the overhead are milliseconds too, though their names go on after "(ms)".
    for name in (OVERHEAD_MS, LOOP_MS, CALLBACKS_MS):
        assert format_ratio(name, 0.4567) == "0.46"
    assert format_ratio(SPEED_UP, 2.714) == "2.71x"
    assert format_ratio(OVERHEAD, 0.0523) == "5.2%"
    assert format_interval(LOOP_MS, (0.25, 0.5)) == "0.25 to 0.50"
    assert format_interval(SPEED_UP, (2.0, 3.0), separator=", ") == "2.00x, 3.00x"  # pooling's brackets
    assert format_interval(OVERHEAD, None) == "none from one round"


# --- paired.py: the step-paired timing ------------------------------------------------------------------------------


def test_the_paired_summary_gives_the_mean_overhead_and_its_standard_error_in_milliseconds():
    times = PairedTimes(trainer=[0.010, 0.012, 0.014], bare=[0.005, 0.006, 0.008])
    summary = times.summary()
    # Differences 5, 6 and 6 ms: sample standard deviation 0.577 ms, over sqrt(3) pairs.
    assert summary["pairs"] == 3
    assert summary["trainer_ms"] == pytest.approx(12.0) and summary["bare_ms"] == pytest.approx(19 / 3)
    assert summary["overhead_ms"] == pytest.approx(12.0 - 19 / 3)
    assert summary["overhead_standard_error_ms"] == pytest.approx(statistics.stdev([5.0, 6.0, 6.0]) / 3 ** 0.5)
    assert summary["overhead_standard_error_ms"] == pytest.approx(1 / 3)
    assert summary["overhead_share"] == pytest.approx(1 - (19 / 3) / 12.0)


class _CountingStepper:
    """A stand-in bare loop that counts its steps."""

    def __init__(self) -> None:
        self.steps = 0

    def step(self) -> int:
        self.steps += 1
        return 1


def _quiet_trainer(tmp_path: Path, callbacks: list[Callback], max_steps: int, **kwargs: Any) -> L.Trainer:
    return L.Trainer(accelerator="cpu", callbacks=callbacks, max_epochs=-1, max_steps=max_steps, limit_val_batches=0,
                     enable_progress_bar=False, enable_model_summary=False, enable_checkpointing=False,
                     default_root_dir=tmp_path, **kwargs)


def test_the_paired_bare_loop_is_built_once_and_runs_on_from_step_to_step(tmp_path: Path):
    # One bare loop for the whole fit: a fresh one every step would start its data and model over each time.
    built: list[_CountingStepper] = []

    def build(trainer: L.Trainer) -> _CountingStepper:
        built.append(_CountingStepper())
        return built[-1]

    paired = PairedSteps(build, pairs=3, warmup_steps=1, phases=[TRAINER])
    _quiet_trainer(tmp_path, [paired], paired.steps_needed, logger=False).fit(BoringModel())
    assert len(built) == 1 and built[0].steps == 1 + 3
    assert len(paired.times[TRAINER].trainer) == 3


# --- tasks/benchmark.py: the ratios ---------------------------------------------------------------------------------


def test_the_ratios_compare_each_path_with_its_own_reference_round_by_round():
    """Two rounds of made-up speeds (images/s, batch 10): every ratio against the path the report names."""
    speeds = {
        CEILING: [1000.0, 800.0],
        BARE: [800.0, 400.0],
        TRAINER_LOOP_ONLY: [500.0, 250.0],
        TRAINER: [400.0, 200.0],
        PLAIN_PIL: [100.0, 50.0],
        PLAIN_JPEG: [200.0, 40.0],
    }
    ratios = _ratios(speeds, batch_size=10)
    assert list(ratios) == list(REPORT_ORDER)
    expected = {
        BARE_EFFICIENCY: [0.8, 0.5],  # bare loop / compute-only
        TRAINER_EFFICIENCY: [0.4, 0.25],  # Trainer / compute-only
        OVERHEAD: [0.5, 0.5],  # 1 - Trainer / bare loop
        OVERHEAD_MS: [12.5, 25.0],  # 10 images at 400/s: 25 ms a step, at 800/s: 12.5 ms
        LOOP_OVERHEAD: [0.375, 0.375],  # 1 - Trainer without callbacks / bare loop
        LOOP_MS: [7.5, 15.0],  # 20 - 12.5 ms; 40 - 25 ms
        CALLBACKS_MS: [5.0, 10.0],  # 25 - 20 ms; 50 - 40 ms
        SPEED_UP: [2.0, 4.0],  # against the faster plain loop of each round (JPEG 200/s, then PIL 50/s)
    }
    for name, values in expected.items():
        assert ratios[name] == pytest.approx(values), name


# --- tasks/benchmark.py: the report ---------------------------------------------------------------------------------

HEADER = {"model": "SimpleCNN", "data": "SyntheticDataModule", "batch_size": 16, "device": "CPU (x86_64)",
          "host": "h, 2 torch threads", "torch": "2", "command": "python scripts/benchmark.py", "augmentation": "none",
          "optimizer": "Adam", "precision": "32-true", "channels_last": True, "host_malloc": "C library default",
          "windows": "3 rounds"}


def _row(name: str, images_per_s: float, notes: str = "") -> Measurement:
    return Measurement(name, images_per_s, 16, 4, 100.0, None, notes=notes, best_images_per_s=images_per_s,
                       extra={"fastest_quarter_images_per_s": images_per_s})


def test_the_report_compares_with_the_fastest_plain_loop_and_notes_its_workers():
    workers = "2 DataLoader workers, whose memory the peak RSS does not count"
    rows = [_row(CEILING, 1000.0), _row(TRAINER, 800.0), _row(PLAIN_PIL, 400.0, workers),
            _row(PLAIN_JPEG, 200.0, workers)]
    report = _format_report(rows, {}, HEADER, None)
    assert f"| {TRAINER} | 800 | 800 | 800 | 80% | 2.00x | 100 | - |" in report  # 800 / 400, not / 200
    # Both plain loops' notes say the same: said once, under the path's name without its details.
    assert f"(vs columns: from the medians; plain loop: {workers})" in report


def test_the_step_paired_lines_label_each_trainer_and_give_the_standard_error_and_the_callbacks_cost():
    paired = {
        TRAINER: {"pairs": 1000, "trainer_ms": 12.0, "bare_ms": 9.0, "overhead_ms": 3.0,
                  "overhead_standard_error_ms": 0.04, "overhead_share": 0.25},
        TRAINER_LOOP_ONLY: {"pairs": 1000, "trainer_ms": 10.0, "bare_ms": 9.0, "overhead_ms": 1.0,
                            "overhead_standard_error_ms": 0.03, "overhead_share": 0.1},
    }
    lines = _format_paired(paired)
    assert "| with callbacks and logger | 12.00 | 9.00 | 3.00 ± 0.04 | 25.0% |" in lines
    assert "| without callbacks or logger | 10.00 | 9.00 | 1.00 ± 0.03 | 10.0% |" in lines
    assert "- of which callbacks and logger: 2.00 ms per step (the difference of the two overheads)" in lines
    assert any("1,000 pairs per line" in line for line in lines)


# --- tasks/benchmark.py: settings the benchmark refuses -------------------------------------------------------------


def _trainer_cfg(**settings: Any) -> DictConfig:
    return OmegaConf.create({"accelerator": "cpu", "devices": 1, "num_nodes": 1, "gradient_clip_val": None,
                             "accumulate_grad_batches": 1, **settings})


@pytest.mark.parametrize(("settings", "message"), [
    ({"num_nodes": 2}, "trainer.devices=1 trainer.num_nodes=2 (several processes"),
    ({"limit_val_batches": 0.5}, "trainer.limit_val_batches=0.5 (the whole epoch would not be whole"),
], ids=["num_nodes", "limit_val_batches"])
def test_several_nodes_or_a_shortened_validation_are_refused(settings: dict[str, Any], message: str):
    with pytest.raises(ConfigValueError, match=re.escape(message)):
        ensure_same_step_on_every_path(_trainer_cfg(**settings))
    ensure_same_step_on_every_path(_trainer_cfg())  # the defaults pass


# --- tasks/benchmark.py: the paths ----------------------------------------------------------------------------------


def test_the_bare_loop_trains_as_training_step_does_and_the_ceiling_batch_is_augmented(make_config: Callable[..., DictConfig]):
    """The bare loop: train mode, the metric updates of training_step, gradients cleared after each step (not
    summed into the next). The ceiling's one batch went through the augmentation: floats, as the data path's."""
    cfg = make_config("benchmark", ["data.num_images=60", "data.val_split=10", "data.test_split=10",
                                    "data.batch_size=8", "data.image_size=8", "model.channels=[4]", "model.hidden=8"])
    datamodule = instantiate(cfg.data)
    datamodule.setup("fit")
    cfg.model.num_classes = datamodule.num_classes
    bare = BareDataPath(cfg, datamodule, torch.device("cpu"), Precision())
    assert bare.step() == 8
    assert bare.model.training
    assert int(bare.model.train_metrics.total) == 8 and bare.model.train_loss.update_called
    assert all(p.grad is None for p in bare.model.parameters())
    ceiling = ComputeOnly(cfg, datamodule, torch.device("cpu"), Precision())
    assert datamodule.augment is not None and ceiling.images.dtype == torch.float32
    assert ceiling.model.training


# --- tasks/benchmark.py: the interleaved windows --------------------------------------------------------------------


class _TrainBatchEnds(Callback):
    def __init__(self) -> None:
        self.seen = 0

    def on_train_batch_end(self, *args: Any, **kwargs: Any) -> None:
        self.seen += 1


def test_after_a_round_ending_in_the_loop_only_window_the_callbacks_and_loggers_are_back(tmp_path: Path):
    # One round: the Trainer with callbacks, then without; the fit stops right after the other paths' windows.
    counter, logger = _TrainBatchEnds(), CSVLogger(tmp_path)
    windows = InterleavedWindows(lambda trainer: {"other": _CountingStepper}, torch.device("cpu"), rounds=1, steps=2,
                                 warmup_steps=1, window_warmup_steps=0, time_loop_only=True)
    trainer = _quiet_trainer(tmp_path, [counter, windows], windows.steps_needed, logger=logger)
    trainer.fit(BoringModel())
    assert windows.order == [TRAINER, TRAINER_LOOP_ONLY, "other"]
    # Lightning sets trainer.callbacks outside Trainer.__init__, where mypy does not see it.
    assert trainer.callbacks[:2] == [counter, windows] and trainer.loggers == [logger]  # type: ignore[attr-defined]


def test_the_other_paths_first_window_follows_warmup_steps_and_later_ones_window_warmup_steps(tmp_path: Path):
    # More warm-up steps than the spare in steps_needed: the fit must still have room for every round.
    other = _CountingStepper()
    windows = InterleavedWindows(lambda trainer: {"other": lambda: other}, torch.device("cpu"), rounds=2, steps=2,
                                 warmup_steps=6, window_warmup_steps=1)
    trainer = _quiet_trainer(tmp_path, [windows], windows.steps_needed, logger=False)
    trainer.fit(BoringModel())
    assert windows.rounds_done == 2
    assert other.steps == 6 + 2 + 1 + 2
    assert windows.times["other"].images == [2, 2]


# --- tasks/benchmark.py: one small run ------------------------------------------------------------------------------


TINY_RUN = [
    "data.num_images=100", "data.val_split=20", "data.test_split=20", "data.batch_size=8", "data.image_size=8",
    "model.channels=[4]", "model.hidden=8",  # a network of a few hundred weights: the runs are about the bookkeeping
    "benchmark.warmup_steps=1", "benchmark.window_warmup_steps=0", "benchmark.steps=1", "benchmark.epoch=false",
    "benchmark.plain_loop=false", "benchmark.split_overhead=false", "~callbacks.progress_bar", "~logger",
]


@pytest.fixture(scope="module")
def eight_rounds(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A benchmark of 8 one-step rounds without the epoch: enough windows for a fastest quarter of two."""
    folder = tmp_path_factory.mktemp("bench")
    return benchmark(compose_run_config("benchmark", folder, folder / "run", [*TINY_RUN, "benchmark.rounds=8"]))


def test_each_rows_best_window_and_fastest_quarter_come_from_its_own_windows(eight_rounds: dict[str, Any]):
    for row in eight_rounds["rows"]:
        speeds = [i / s for i, s in zip(row["extra"]["window_images"], row["extra"]["window_seconds"], strict=True)]
        assert len(speeds) == 8
        assert row["best_images_per_s"] == pytest.approx(max(speeds))
        assert row["extra"]["fastest_quarter_images_per_s"] == pytest.approx(statistics.mean(sorted(speeds)[-2:]))


def test_the_fastest_quarter_ratios_are_the_ratios_of_the_rows_fastest_quarters(eight_rounds: dict[str, Any]):
    # With 8 windows the fastest quarter is the two fastest: not the single best window, not round 1's.
    quarter = {row["name"]: row["extra"]["fastest_quarter_images_per_s"] for row in eight_rounds["rows"]}
    undisturbed = eight_rounds["ratios_fastest_quarter"]
    assert undisturbed[OVERHEAD] == pytest.approx(1 - quarter[TRAINER] / quarter[BARE])
    assert undisturbed[BARE_EFFICIENCY] == pytest.approx(quarter[BARE] / quarter[CEILING])
    assert eight_rounds["summary"][OVERHEAD]["fastest_quarter"] == format_ratio(OVERHEAD, undisturbed[OVERHEAD])


def test_the_summary_gives_the_middle_half_of_two_rounds_already(tmp_path: Path):
    # Two rounds are a spread ("a to b"); only a single round is "one round".
    results = benchmark(compose_run_config("benchmark", tmp_path, tmp_path / "run", [*TINY_RUN, "benchmark.rounds=2"]))
    per_round = results["ratios_per_round"][OVERHEAD]
    assert len(per_round) == 2
    middle, low, high = (format_ratio(OVERHEAD, value) for value in median_and_middle_half(per_round))
    assert results["summary"][OVERHEAD]["per_round_median"] == f"{middle} ({low} to {high})"


def test_without_the_epoch_the_trainer_rows_peak_memory_is_the_timing_fits(eight_rounds: dict[str, Any]):
    # benchmark.epoch=false: the peak of the windows' fit until the other paths were built, not nothing.
    rows = {row["name"]: row for row in eight_rounds["rows"]}
    assert rows[TRAINER]["peak_host_mb"] is not None and rows[TRAINER]["peak_host_mb"] > 0


@pytest.mark.parametrize(("accelerator", "devices", "one_process"), [
    ("cpu", 1, True), ("gpu", "1", True), ("gpu", [0], True), ("cpu", "auto", True),
    # On a machine with several GPUs Lightning gives devices=auto every one of them.
    ("gpu", "auto", False), ("auto", "auto", False), ("gpu", 2, False), ("gpu", -1, False), ("gpu", [0, 1], False),
])
def test_the_benchmark_takes_only_settings_that_run_as_one_process(accelerator: str, devices: Any, one_process: bool):
    trainer_cfg = _trainer_cfg(accelerator=accelerator, devices=devices)
    if one_process:
        ensure_same_step_on_every_path(trainer_cfg)
    else:
        every_gpu = "on a GPU machine, every GPU Lightning finds: " if devices == "auto" else ""
        with pytest.raises(ConfigValueError, match=re.escape(f"trainer.devices={trainer_cfg.devices} trainer.num_nodes=1 "
                                                             f"({every_gpu}several processes")):
            ensure_same_step_on_every_path(trainer_cfg)
