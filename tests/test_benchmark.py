"""The benchmark's small-data mode: every path runs and the report is written."""

from __future__ import annotations

import json
import mmap
import random
import re
import statistics
import time
import warnings
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch
from hydra.utils import instantiate
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.demos.boring_classes import BoringModel, RandomDataset
from lightning.pytorch.loggers import CSVLogger
from lightning.pytorch.plugins.precision import HalfPrecision, MixedPrecision

from cnnlab.benchmark.measure import Measurement, PeakMemory
from cnnlab.benchmark.rounds import median_interval
from cnnlab.errors import ConfigValueError, user_error
from cnnlab.tasks.benchmark import (
    BARE,
    CEILING,
    TRAINER,
    TRAINER_LOOP_ONLY,
    BareDataPath,
    ComputeOnly,
    InterleavedWindows,
    PairedSteps,
    _format_report,
    benchmark,
    cpu_model,
    fastest_quarter,
)


def test_benchmark_on_synthetic_data_measures_every_path(make_config, tmp_path, monkeypatch):
    from lightning.pytorch.callbacks import model_checkpoint
    from lightning_utilities.core.rank_zero import WarningCache

    cfg = make_config("benchmark", [
        "data.num_images=400", "data.val_split=40", "data.test_split=40", "data.batch_size=16",
        "benchmark.warmup_steps=2", "benchmark.window_warmup_steps=1", "benchmark.steps=4", "benchmark.rounds=3",
        "benchmark.plain_loop_workers=0", "benchmark.paired_steps=3", "~callbacks.progress_bar", "logger=csv",
    ])
    # Lightning warns of a missing monitored key once per process: a fresh cache, so an earlier test's is not it.
    monkeypatch.setattr(model_checkpoint, "warning_cache", WarningCache())
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        results = benchmark(cfg)
    # The fits without validation (the windows', the step-paired one) by design: no warning that
    # the checkpoint callback's val/acc is missing. The callback ran in each fit, saving into a
    # scratch folder: no checkpoint of the three fits is left (cnnlab's scripts refuse them).
    assert not [w for w in caught if "could not find the monitored key" in str(w.message)]
    assert sorted(path.name for path in (tmp_path / "run").iterdir()) == ["benchmark.json", "benchmark.md", "csv"]
    names = [row["name"] for row in results["rows"]]
    assert names == [
        "compute only (batch already on the device)",
        "cnnlab data path, bare loop",
        "cnnlab data path, Lightning Trainer without callbacks or logger",
        "cnnlab data path, Lightning Trainer",
        "plain loop (in-memory PIL, like CIFAR10)",
    ]
    assert all(row["images_per_s"] > 0 and row["peak_host_mb"] > 0 for row in results["rows"])
    # Every path, the plain loop too, takes its turn in each of the 3 rounds: one window each.
    assert [len(row["extra"]["window_seconds"]) for row in results["rows"]] == [3, 3, 3, 3, 3]
    assert all(len(values) == 3 for values in results["ratios_per_round"].values())
    trainer_row = results["rows"][3]
    assert trainer_row["images_per_s"] == pytest.approx(statistics.median(4 * 16 / s for s in trainer_row["extra"]["window_seconds"]))
    assert results["header"]["optimizer"] == "Adam (fused)"
    assert results["header"]["windows"] == (
        "3 rounds; in each, every path runs 4 timed steps in turn, after 1 untimed one (the Trainer 2: the step that "
        "closes its window before runs untimed too; 2 before a path's first window)")
    assert results["header"]["cpu_model"] == cpu_model() != ""
    assert results["epoch_seconds"] > 0
    assert set(results["summary"]) == set(results["ratios_fastest_quarter"]) == {
        "data path efficiency, bare loop vs compute-only", "data path efficiency, Trainer vs compute-only",
        "Lightning overhead, Trainer vs bare loop", "speed-up, Trainer vs the fastest plain loop",
        "Lightning overhead per step (ms), Trainer minus bare loop",
        "Lightning overhead without callbacks or logger, vs bare loop",
        "of which Lightning's loop (ms), Trainer without callbacks or logger minus bare loop",
        "of which callbacks and logger (ms), Trainer minus Trainer without them",
    }
    # The overhead in milliseconds is the same comparison as the share: Trainer minus bare loop.
    rows = {row["name"]: row for row in results["rows"]}
    trainer_fq = rows["cnnlab data path, Lightning Trainer"]["extra"]["fastest_quarter_images_per_s"]
    bare_fq = rows["cnnlab data path, bare loop"]["extra"]["fastest_quarter_images_per_s"]
    assert results["ratios_fastest_quarter"]["Lightning overhead per step (ms), Trainer minus bare loop"] == \
        pytest.approx(1000 * 16 * (1 / trainer_fq - 1 / bare_fq))
    # ... and its two parts add up to it, round by round.
    per_round = results["ratios_per_round"]
    for total, loop, callbacks in zip(per_round["Lightning overhead per step (ms), Trainer minus bare loop"],
                                      per_round["of which Lightning's loop (ms), Trainer without callbacks or logger minus bare loop"],
                                      per_round["of which callbacks and logger (ms), Trainer minus Trainer without them"], strict=True):
        assert loop + callbacks == pytest.approx(total)
    # Each median comes with its bootstrap interval, which holds it.
    for name, (low, high) in results["median_intervals_95"].items():
        assert low <= statistics.median(per_round[name]) <= high
        assert results["summary"][name]["median_interval_95"].count(" to ") == 1
    # The step-paired overhead: 3 pairs with every callback, 3 without.
    paired = results["paired_steps"]
    assert set(paired) == {TRAINER, TRAINER_LOOP_ONLY} and all(values["pairs"] == 3 for values in paired.values())
    for values in paired.values():
        assert values["trainer_ms"] > 0 and values["bare_ms"] > 0
        assert values["overhead_ms"] == pytest.approx(values["trainer_ms"] - values["bare_ms"])
        assert values["overhead_share"] == pytest.approx(1 - values["bare_ms"] / values["trainer_ms"])
    written = json.loads((tmp_path / "run" / "benchmark.json").read_text())
    assert written["rows"] == results["rows"]
    report = (tmp_path / "run" / "benchmark.md").read_text()
    assert f"- device: {results['header']['device']}; CPU model: {cpu_model()}; host: " in report
    assert "| cnnlab data path, Lightning Trainer |" in report and "| Lightning overhead" in report
    assert "| the median's 95% interval (bootstrap over the rounds) |" in report
    assert "one epoch through the Trainer (320 train + 40 val images)" in report
    assert "Step by step: each Trainer step right after one bare-loop step, 3 pairs" in report
    assert "| without callbacks or logger |" in report and "- of which callbacks and logger:" in report


def test_the_cpu_model_is_the_one_linux_names():
    # The host name ("vm") and architecture (x86_64) do not tell two machines' CPUs apart.
    cpuinfo = Path("/proc/cpuinfo")
    names = [line.split(":", 1)[1].strip() for line in cpuinfo.read_text().splitlines()
             if line.startswith("model name")] if cpuinfo.exists() else []
    if names:
        assert cpu_model() == names[0]
    assert cpu_model() not in ("", "unknown")


def test_one_round_or_step_is_said_in_the_singular(make_config):
    from cnnlab.benchmark.pooling import WINDOW_NUMBERS
    from cnnlab.tasks.benchmark import _header

    cfg = make_config("benchmark", ["benchmark.rounds=1", "benchmark.steps=1", "benchmark.window_warmup_steps=1"])
    datamodule = instantiate(cfg.data)
    windows = _header(cfg, datamodule, torch.device("cpu"), False, "32-true")["windows"]
    assert windows.startswith("1 round; in each, every path runs 1 timed step in turn, after 1 untimed one (the Trainer 2:")
    assert WINDOW_NUMBERS.search(windows).groups() == ("1", "1", "30")  # pooling still reads the numbers


def test_the_report_describes_the_plain_loop_only_where_it_ran():
    header = {"model": "SimpleCNN", "data": "SyntheticDataModule", "batch_size": 16, "device": "CPU (x86_64)",
              "host": "h, 2 torch threads", "torch": "2", "command": "python scripts/benchmark.py",
              "augmentation": "none", "optimizer": "Adam", "precision": "32-true", "channels_last": True,
              "host_malloc": "C library default", "windows": "3 rounds"}

    def row(name: str, images_per_s: float) -> Measurement:
        return Measurement(name, images_per_s, 16, 4, 100.0, None, best_images_per_s=images_per_s,
                           extra={"fastest_quarter_images_per_s": images_per_s})

    rows = [row(CEILING, 1000.0), row(TRAINER, 800.0)]
    # benchmark.plain_loop=false: neither the plain loop's settings nor a column comparing with it.
    report = _format_report(rows, {}, header, None)
    assert "- device: CPU (x86_64); CPU model: not recorded; host: h, 2 torch threads; torch 2\n" in report
    assert "plain loop" not in report
    assert "- precision: 32-true; channels_last: True; host malloc (every path): C library default\n" in report
    assert ("| path | images/s (median) | fastest quarter | best window | vs compute-only | peak host RSS (MB) "
            "| peak device (MB) |\n|---|---:|---:|---:|---:|---:|---:|\n") in report
    assert f"| {TRAINER} | 800 | 800 | 800 | 80% | 100 | - |" in report

    report = _format_report([*rows, row("plain loop (in-memory PIL, like CIFAR10)", 400.0)], {}, header, None)
    assert "host malloc (every path): C library default; the plain loop: float32 (tutorial's Adam)\n" in report
    assert "| vs compute-only | vs plain loop | peak host RSS (MB) |" in report and "|---|---:|---:|---:|---:|---:|---:|---:|" in report
    assert f"| {TRAINER} | 800 | 800 | 800 | 80% | 2.00x | 100 | - |" in report


@pytest.mark.parametrize(("override", "message"), [
    ("benchmark.rounds=0", "benchmark.rounds must be a whole number of at least 1, got 0"),
    ("benchmark.rounds=2.5", "benchmark.rounds must be a whole number of at least 1, got 2.5"),
    ("benchmark.rounds=true", "benchmark.rounds must be a whole number of at least 1, got True"),  # True == 1 in Python
    ("benchmark.steps=abc", "benchmark.steps must be a whole number of at least 1, got 'abc'"),
    ("benchmark.warmup_steps=-5", "benchmark.warmup_steps must be a whole number of at least 0, got -5"),
    ("benchmark.window_warmup_steps=-1", "benchmark.window_warmup_steps must be a whole number of at least 0, got -1"),
    ("benchmark.plain_loop_workers=-1", "benchmark.plain_loop_workers must be a whole number of at least 0, got -1"),
    ("data.batch_size=0", "data.batch_size must be a whole number of at least 1, got 0"),
    # The plain loop drops an incomplete batch: with none whole, its empty loader ended the Trainer's epochs.
    ("data.batch_size=50000", r"the training split has 40000 images, fewer than one batch \(data.batch_size=50000\)"),
    # Only the Trainer's path would read cached features.
    ("model=resnet18_ft", "model.cache_features=true trains the head on stored features, which only the Trainer"),
    ("benchmark.split_overhead=flase", "benchmark.split_overhead must be true or false, got 'flase'"),
    ("tune_host_malloc=no", "tune_host_malloc must be true or false, got 'no': pass tune_host_malloc=false"),
    ("benchmark.paired_steps=-5", "benchmark.paired_steps must be 0 \\(off\\) or at least 2 pairs, got -5"),
    ("benchmark.paired_steps=1", "benchmark.paired_steps must be 0 \\(off\\) or at least 2 pairs, got 1"),
    # Settings that would change only the Trainer's step, which the report would call Lightning's overhead.
    ("trainer.accumulate_grad_batches=4", "does not take trainer.accumulate_grad_batches=4 \\(one optimizer step per"),
    ("trainer.gradient_clip_val=1.0", "does not take trainer.gradient_clip_val=1.0 \\(clipping"),
    ("trainer.profiler=simple", "does not take trainer.profiler \\(a profiler's cost per hook\\)"),
    ("trainer=ddp_cpu", "does not take trainer.devices=2 trainer.num_nodes=1 \\(several processes"),
    ("trainer.limit_train_batches=3", "does not take trainer.limit_train_batches=3 \\(the whole epoch would not be whole"),
])
def test_a_bad_benchmark_setting_is_named(make_config, override, message):
    extra = ["model.cache_features=true", "model.weights=null"] if override == "model=resnet18_ft" else []
    with pytest.raises(Exception) as refused:  # noqa: PT011 - a constructor's error comes wrapped by instantiate
        benchmark(make_config("benchmark", [override, *extra]))
    assert isinstance(user_error(refused.value), ConfigValueError) and re.search(message, str(user_error(refused.value)))


QUICK_BENCH = ["data.num_images=300", "data.val_split=40", "data.test_split=40", "data.batch_size=16",
               "benchmark.warmup_steps=1", "benchmark.window_warmup_steps=0", "benchmark.steps=1", "benchmark.rounds=1",
               "benchmark.epoch=false", "benchmark.plain_loop=false", "benchmark.split_overhead=false",
               "~callbacks.progress_bar"]


def test_a_benchmark_without_a_logger_runs_and_a_failed_one_leaves_no_empty_tensorboard_run(make_config, tmp_path,
                                                                                          monkeypatch):
    # As in training, ~logger leaves out the learning-rate monitor, which refuses to start without one.
    results = benchmark(make_config("benchmark", [*QUICK_BENCH, "~logger", "trainer.precision=16-mixed"],
                                    run_dir=tmp_path / "a"))
    assert results["rows"] and sorted(p.name for p in (tmp_path / "a").iterdir()) == ["benchmark.json", "benchmark.md"]
    assert results["header"]["precision"] == "bf16-mixed"  # what Lightning runs on a CPU for 16-mixed

    def fail(*args):
        raise RuntimeError("failed before the first step")

    monkeypatch.setattr(InterleavedWindows, "on_train_start", fail)
    with pytest.raises(RuntimeError, match="failed before the first step"):
        benchmark(make_config("benchmark", [*QUICK_BENCH, "logger=tensorboard"], run_dir=tmp_path / "b"))
    assert not list((tmp_path / "b").rglob("events.out.tfevents.*"))  # the folder can be used again


def test_a_one_round_benchmark_claims_no_interval(make_config, tmp_path):
    # Resampling one round gives that round every time: a "95% interval" of zero width.
    results = benchmark(make_config("benchmark", [*QUICK_BENCH, "~logger"], run_dir=tmp_path))
    assert results["median_intervals_95"] and set(results["median_intervals_95"].values()) == {None}
    saved = json.loads((tmp_path / "benchmark.json").read_text())
    assert set(saved["median_intervals_95"].values()) == {None}
    report = (tmp_path / "benchmark.md").read_text()
    overhead = next(line for line in report.splitlines() if line.startswith("| Lightning overhead, Trainer vs bare loop |"))
    assert "% (one round) | none from one round |" in overhead


def test_the_medians_interval_covers_the_true_median_and_narrows_with_more_rounds():
    rng = random.Random(2)
    # 200 runs of 48 rounds drawn around a true median of 5 (points of overhead, say): a 95%
    # interval should hold it in about 95% of them.
    covered = 0
    for run in range(200):
        rounds = [rng.gauss(5.0, 3.0) for _ in range(48)]
        low, high = median_interval(rounds, resamples=500, seed=run)
        assert low <= statistics.median(rounds) <= high
        covered += low <= 5.0 <= high
    assert 0.88 <= covered / 200 <= 0.99
    # Sixteen times the rounds: about a quarter of the width (the median's error falls as 1/sqrt(n)).
    rng = random.Random(1)
    rounds = [rng.gauss(5.0, 3.0) for _ in range(768)]
    short, long = median_interval(rounds[:48]), median_interval(rounds)
    assert 0.1 < (long[1] - long[0]) / (short[1] - short[0]) < 0.5
    assert median_interval(rounds[:48]) == short  # seeded: the same report from the same rounds
    assert median_interval([2.0]) is None  # one round: no interval, not one of zero width
    assert median_interval([3.0] * 10) == (3.0, 3.0)


def test_fastest_quarter_is_the_mean_of_the_fastest_windows():
    assert fastest_quarter([100.0, 400.0, 300.0, 200.0, 50.0, 350.0, 10.0, 20.0]) == 375.0
    assert fastest_quarter([5.0, 7.0]) == 7.0


def test_benchmark_uses_the_files_for_the_plain_loop_on_folder_data(make_config, image_folder):
    cfg = make_config("benchmark", [
        "data=folder", f"data.root={image_folder}", "data.batch_size=4", "data.image_size=16",
        "benchmark.warmup_steps=1", "benchmark.steps=2", "benchmark.rounds=2", "benchmark.plain_loop_workers=0", "benchmark.epoch=false",
        "benchmark.paired_steps=0",
        "~callbacks.progress_bar", "logger=csv",
    ])
    results = benchmark(cfg)
    assert "plain loop (ImageFolder, JPEG decode per image)" in [row["name"] for row in results["rows"]]
    assert results["paired_steps"] is None  # switched off


@pytest.mark.parametrize(("precision", "weight_dtype"), [
    (MixedPrecision("bf16-mixed", "cpu"), torch.float32),  # autocast around float32 weights
    (HalfPrecision("bf16-true"), torch.bfloat16),  # the weights themselves in bf16
])
def test_the_other_paths_compute_in_the_trainers_precision(make_config, precision, weight_dtype):
    """The ceiling and bare paths take the Trainer's precision plugin: its weight conversion and
    its autocast, so they compute as the Trainer's own steps do."""
    cfg = make_config("benchmark", ["data.num_images=200", "data.val_split=20", "data.test_split=20", "data.batch_size=8"])
    datamodule = instantiate(cfg.data)
    datamodule.setup("fit")
    cfg.model.num_classes = datamodule.num_classes
    for path in (ComputeOnly(cfg, datamodule, torch.device("cpu"), precision),
                 BareDataPath(cfg, datamodule, torch.device("cpu"), precision)):
        before = [p.detach().clone() for p in path.model.parameters()]
        path.step()
        assert {p.dtype for p in path.model.parameters()} == {weight_dtype}
        assert any(not torch.equal(b, p) for b, p in zip(before, path.model.parameters(), strict=True))  # it trained


class _TrainBatchEnds(Callback):
    def __init__(self) -> None:
        self.seen = 0

    def on_train_batch_end(self, *args, **kwargs) -> None:
        self.seen += 1


def test_the_loop_only_windows_run_without_callbacks_and_loggers_and_put_them_back(tmp_path):
    counter = _TrainBatchEnds()
    logger = CSVLogger(tmp_path)
    windows = InterleavedWindows(lambda trainer: {}, torch.device("cpu"), rounds=2, steps=3, warmup_steps=2,
                                 window_warmup_steps=1, time_loop_only=True)
    trainer = L.Trainer(accelerator="cpu", callbacks=[counter, windows], logger=logger, max_epochs=-1, max_steps=200,
                        limit_val_batches=0, enable_progress_bar=False, enable_model_summary=False,
                        enable_checkpointing=False, default_root_dir=tmp_path)
    trainer.fit(BoringModel())
    assert [len(windows.times[name].windows) for name in (TRAINER, TRAINER_LOOP_ONLY)] == [2, 2]
    assert windows.order == [TRAINER, TRAINER_LOOP_ONLY, TRAINER_LOOP_ONLY, TRAINER]  # swapped in round 2
    # Each loop-only window takes 1 + 1 + 3 steps that no other callback sees: the step that closes
    # the window before it (it runs after the close, so already without them), its untimed step
    # and its timed steps.
    assert counter.seen == trainer.global_step - 2 * 5
    assert trainer.callbacks[:2] == [counter, windows] and trainer.loggers == [logger]


class _SleepyStepper:
    """A stand-in bare loop whose every step takes a known, long time."""

    def __init__(self, seconds: float) -> None:
        self.seconds, self.steps = seconds, 0

    def step(self) -> int:
        time.sleep(self.seconds)
        self.steps += 1
        return 1


def test_every_path_gets_one_window_per_round_and_the_trainer_windows_swap_places(tmp_path):
    first, second = _SleepyStepper(0), _SleepyStepper(0)
    windows = InterleavedWindows(lambda trainer: {"first": lambda: first, "second": lambda: second}, torch.device("cpu"),
                                 rounds=3, steps=2, warmup_steps=1, window_warmup_steps=1, time_loop_only=True)
    trainer = L.Trainer(accelerator="cpu", callbacks=[windows], logger=False, max_epochs=-1, max_steps=windows.steps_needed,
                        limit_val_batches=0, enable_progress_bar=False, enable_model_summary=False,
                        enable_checkpointing=False, default_root_dir=tmp_path)
    trainer.fit(BoringModel())
    assert windows.order == [TRAINER, TRAINER_LOOP_ONLY, "first", "second",
                             TRAINER_LOOP_ONLY, TRAINER, "first", "second",
                             TRAINER, TRAINER_LOOP_ONLY, "first", "second"]
    # Each other path: its warm-up steps, then per round its untimed and timed steps.
    assert first.steps == second.steps == 1 + 2 + 2 * (1 + 2)
    assert windows.rounds_done == 3 and trainer.global_step < windows.steps_needed


class _SevenSamples(BoringModel):
    """Batches of 3, 3 and 1 samples in every epoch: a split that is no multiple of the batch size."""

    def train_dataloader(self):
        return torch.utils.data.DataLoader(RandomDataset(32, 7), batch_size=3)


def test_the_windows_count_the_images_of_a_last_partial_batch(tmp_path):
    # Speeds are images over seconds: counting steps x batch size put a small split's Trainer above its ceiling.
    other = _SleepyStepper(0)
    windows = InterleavedWindows(lambda trainer: {"other": lambda: other}, torch.device("cpu"), rounds=2, steps=2,
                                 warmup_steps=1, window_warmup_steps=1)
    trainer = L.Trainer(accelerator="cpu", callbacks=[windows], logger=False, max_epochs=-1, max_steps=windows.steps_needed,
                        limit_val_batches=0, enable_progress_bar=False, enable_model_summary=False,
                        enable_checkpointing=False, default_root_dir=tmp_path)
    trainer.fit(_SevenSamples())
    # Steps 0 (warm-up), 1-2 (window: 3 + 1), 3 (closes it), 4 (untimed), 5-6 (window: 1 + 3).
    assert windows.times[TRAINER].images == [4, 4]
    assert windows.times["other"].images == [2, 2]  # its steps' own counts


def test_the_speeds_are_the_images_each_window_trained_on_over_its_time(make_config, tmp_path):
    # 20 training images in batches of 8: epochs of 8 + 8 + 4, so a 3-step window trains on 20 to 24 images.
    overrides = [*QUICK_BENCH, "~logger", "data.num_images=40", "data.val_split=10", "data.test_split=10",
                 "data.batch_size=8", "benchmark.steps=3", "benchmark.rounds=3"]
    results = benchmark(make_config("benchmark", overrides, run_dir=tmp_path))
    for row in results["rows"]:
        images, seconds = row["extra"]["window_images"], row["extra"]["window_seconds"]
        assert len(images) == len(seconds) == 3
        assert row["images_per_s"] == pytest.approx(statistics.median(i / s for i, s in zip(images, seconds, strict=True)))
    counted = {row["name"]: row["extra"]["window_images"] for row in results["rows"]}
    assert counted[CEILING] == [24, 24, 24]  # one full batch, made once
    for path in (BARE, TRAINER):  # each crosses an epoch's last batch of 4
        assert all(20 <= images <= 24 for images in counted[path]) and any(images < 24 for images in counted[path])


def test_a_training_split_of_exactly_one_batch_is_enough_for_the_plain_loop(make_config, tmp_path):
    overrides = [*QUICK_BENCH, "~logger", "data.num_images=56", "data.val_split=20", "data.test_split=20",
                 "benchmark.plain_loop=true", "benchmark.plain_loop_workers=0"]
    results = benchmark(make_config("benchmark", overrides, run_dir=tmp_path))  # 16 training images, batch 16
    plain = [row for row in results["rows"] if row["name"].startswith("plain loop")]
    assert plain and all(row["extra"]["window_images"] == [16] for row in plain)


def test_paired_steps_time_each_trainer_step_apart_from_its_bare_step(tmp_path):
    counter, logger, bare = _TrainBatchEnds(), CSVLogger(tmp_path), _SleepyStepper(0.05)
    paired = PairedSteps(lambda trainer: bare, pairs=3, warmup_steps=2, phases=[TRAINER, TRAINER_LOOP_ONLY])
    trainer = L.Trainer(accelerator="cpu", callbacks=[counter, paired], logger=logger, max_epochs=-1,
                        max_steps=paired.steps_needed, limit_val_batches=0, enable_progress_bar=False,
                        enable_model_summary=False, enable_checkpointing=False, default_root_dir=tmp_path)
    trainer.fit(BoringModel())
    assert bare.steps == 2 * (2 + 3)  # per phase: the untimed pairs, then the timed ones
    for times in paired.times.values():
        assert len(times.trainer) == len(times.bare) == 3
        assert min(times.bare) >= 0.05
        # A BoringModel step takes about a millisecond: the bare step's 50 ms sleep is not in it.
        assert statistics.median(times.trainer) < 0.05
    # The second phase's Trainer steps ran without the other callbacks, which came back afterwards.
    assert counter.seen == trainer.global_step - (2 + 3)
    assert trainer.callbacks[:2] == [counter, paired] and trainer.loggers == [logger]


@pytest.mark.parametrize("in_batch_folder", [False, True], ids=["data.root", "data.root=cifar-10-batches-py"])
def test_the_plain_loop_reads_cifar_that_torchvision_refuses_from_memory(tmp_path, caplog, in_batch_folder):
    # torchvision checks each file's MD5 against the official archive's: it refuses test data
    # (and re-pickled copies) that the data module reads fine.
    import logging

    from cnnlab.benchmark.plain_loop import InMemoryPILDataset, reference_datasets
    from cnnlab.data.cifar10 import CIFAR10DataModule
    from conftest import write_cifar_batches

    root = write_cifar_batches(tmp_path / "cifar")
    datamodule = CIFAR10DataModule(root=str(root / "cifar-10-batches-py" if in_batch_folder else root),
                                   download=False, val_split=20)
    datamodule.setup("fit")
    caplog.set_level(logging.WARNING, logger="cnnlab.benchmark.plain_loop")
    datasets = reference_datasets(datamodule, 32)
    (name, dataset), = datasets.items()
    assert name == "plain loop (in-memory PIL, like CIFAR10)" and isinstance(dataset, InMemoryPILDataset)
    assert len(dataset) == 5 * 24 - 20
    image, label = dataset[0]
    assert image.shape == (3, 32, 32) and label == datamodule.train_split.labels[0].item()
    # torchvision was given the folder holding cifar-10-batches-py, also when data.root is that folder.
    (warning,) = [record.getMessage() for record in caplog.records]
    assert warning.startswith(f"torchvision's CIFAR10 refuses {root} (Dataset not found or corrupted")
    assert "reads the same images from memory instead" in warning


def test_the_plain_loop_resizes_folder_images_of_any_size_as_the_data_module_does(tmp_path):
    from PIL import Image

    from cnnlab.benchmark.plain_loop import ResizeUnlessSized, reference_datasets
    from cnnlab.data.folder import ImageFolderDataModule, decode_image_file
    from conftest import write_image_folder

    # Larger files, and files smaller than a 32-pixel crop with padding 4 can take (24).
    write_image_folder(tmp_path / "large", size=(96, 64))
    write_image_folder(tmp_path / "small", size=(12, 10))
    for name in ("small", "large"):
        datamodule = ImageFolderDataModule(root=str(tmp_path / name), image_size=32, val_split=3, test_split=3)
        datamodule.setup("fit")
        dataset = reference_datasets(datamodule, 32)["plain loop (ImageFolder, JPEG decode per image)"]
        images = [dataset[i][0] for i in range(len(dataset))]  # the old loop: "larger than the input image"
        assert {tuple(image.shape) for image in images} == {(3, 32, 32)}
        # Before the crop and flip, each image is the data module's view of the file: the same
        # resize of the shorter side and centre crop (Pillow's filter against torchvision's).
        resize = dataset.transform.transforms[0]
        assert isinstance(resize, ResizeUnlessSized)
        path = dataset.samples[0][0]
        with Image.open(path) as image:
            resized = torch.from_numpy(np.array(resize(image.convert("RGB")))).permute(2, 0, 1)
        assert (resized.float() - decode_image_file(Path(path), 32).float()).abs().mean() < 1
    # Files already 32 x 32 (CIFAR-10's JPEGs) are passed on as they are, not copied.
    image = Image.new("RGB", (32, 32))
    assert ResizeUnlessSized(32)(image) is image


def _resident(megabytes: int) -> mmap.mmap:
    """Anonymous memory with every page written, so resident; closing it hands it back at once."""
    block = mmap.mmap(-1, megabytes << 20)
    for offset in range(0, megabytes << 20, mmap.PAGESIZE):
        block[offset] = 1
    return block


def _rss_mb() -> float:
    status = Path("/proc/self/status").read_text()
    return int(status.split("VmRSS:")[1].split()[0]) / 1024


needs_peak_reset = pytest.mark.skipif(not Path("/proc/self/clear_refs").exists(),
                                      reason="each block's own peak needs Linux's /proc/self/clear_refs")


@needs_peak_reset
def test_nested_peak_memory_blocks_each_cover_exactly_their_span():
    cpu = torch.device("cpu")
    with PeakMemory(cpu) as outer:
        base = _rss_mb()
        _resident(256).close()  # before the inner blocks, whose resets must not erase it
        with PeakMemory(cpu) as inner:
            _resident(64).close()
        with PeakMemory(cpu) as empty:
            pass
    assert outer.host_mb >= base + 250
    assert base + 60 <= inner.host_mb < base + 200
    assert empty.host_mb < base + 40
    assert outer.device_mb is inner.device_mb is None  # no device peak on the CPU


class _BigStepper:
    """A stand-in path that holds 256 MB from the moment it is built."""

    def __init__(self) -> None:
        self.memory = _resident(256)

    def step(self) -> int:
        return 1


@needs_peak_reset
def test_the_trainers_peak_memory_ends_before_the_other_paths_are_built(tmp_path):
    windows = InterleavedWindows(lambda trainer: {"big": _BigStepper}, torch.device("cpu"), rounds=2, steps=2,
                                 warmup_steps=1, window_warmup_steps=1)
    trainer = L.Trainer(accelerator="cpu", callbacks=[windows], logger=False, max_epochs=-1, max_steps=windows.steps_needed,
                        limit_val_batches=0, enable_progress_bar=False, enable_model_summary=False,
                        enable_checkpointing=False, default_root_dir=tmp_path)
    before = _rss_mb()
    trainer.fit(BoringModel())
    # benchmark.epoch=false gives the Trainer rows this peak: the fit's own, not the big path's.
    assert windows.trainer_memory.host_mb < before + 100
    assert windows.times["big"].peak_host_mb >= before + 250


def test_the_benchmark_refuses_apples_gpu_that_the_trainer_would_pick(make_config, monkeypatch):
    from lightning.pytorch.accelerators import MPSAccelerator

    from cnnlab.tasks.benchmark import _device

    # A Mac: the Trainer would train on MPS while the other paths ran on the CPU.
    monkeypatch.setattr(MPSAccelerator, "is_available", staticmethod(lambda: True))
    with pytest.raises(ConfigValueError, match="trainer.accelerator=auto trains on mps here, but the benchmark times its "
                                               "paths on a CUDA GPU or the CPU only. Run it with trainer.accelerator=cpu"):
        benchmark(make_config("benchmark", ["trainer.accelerator=auto"]))
    for accelerator in ("gpu", "mps"):  # "gpu" was taken for CUDA
        with pytest.raises(ConfigValueError, match=f"trainer.accelerator={accelerator} trains on mps here"):
            _device(accelerator)
    assert _device("cpu") == torch.device("cpu")
