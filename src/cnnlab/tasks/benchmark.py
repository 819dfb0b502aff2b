"""The benchmark task: where training time goes, side by side in one run on the same data and device.

The paths train the same network with the same batch size and augmentation:

1. compute only: the model on one batch already on the device (the ceiling);
2. cnnlab's data path in a bare loop (in-memory uint8 gather, on-device augmentation);
3. the same through Lightning's Trainer, as ``train.py`` runs it;
4. optionally the same Trainer with its callbacks and logger switched off for the window, which
   splits Lightning's overhead into its training loop and what the configured callbacks cost;
5. the tutorial's plain loop (per-image PIL transforms in DataLoader workers).

A shared host's speed drifts by tens of percent within minutes, more than the differences
measured here. So the paths take turns window by window: one ``Trainer.fit`` runs throughout,
and between two of its timing windows a callback runs one window of every other path. Each
round's windows lie within seconds of each other; the report gives the median of the per-round
ratios and the ratios of each path's fastest quarter of windows (its speed when undisturbed).
"""

from __future__ import annotations

import logging
import platform
import re
import statistics
import tempfile
import time
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import partial
from pathlib import Path
from typing import Any, cast

import lightning as L
import torch
from hydra.utils import instantiate
from lightning.pytorch.accelerators import CUDAAccelerator, MPSAccelerator, XLAAccelerator
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from lightning.pytorch.plugins.precision import Precision
from omegaconf import DictConfig, ListConfig, OmegaConf
from torch import nn
from torch.utils.data import Dataset

from cnnlab.benchmark.measure import (
    CallbacksAside,
    Measurement,
    PeakMemory,
    Stepper,
    images_in,
    synchronize,
    time_steps,
)
from cnnlab.benchmark.paired import PairedSteps
from cnnlab.benchmark.plain_loop import PlainLoop, reference_datasets
from cnnlab.benchmark.rounds import (
    BARE_EFFICIENCY,
    CALLBACKS_MS,
    LOOP_MS,
    LOOP_OVERHEAD,
    OVERHEAD,
    OVERHEAD_MS,
    SPEED_UP,
    TRAINER_EFFICIENCY,
    fastest_quarter,
    format_interval,
    format_ratio,
    median_and_middle_half,
    median_interval,
)
from cnnlab.data.base import InMemoryImageDataModule
from cnnlab.errors import ConfigValueError
from cnnlab.tasks.train import no_empty_logger_run, without_logging_callbacks
from cnnlab.training.callbacks import EpochTimer
from cnnlab.training.classifier import ImageClassifier
from cnnlab.training.factory import build_classifier
from cnnlab.utils.config import ensure_count, ensure_switch, ensure_values_set, instantiate_all, is_count, run_folder
from cnnlab.utils.cuda_check import ensure_accelerator_available, skip_unloadable_nvml_check
from cnnlab.utils.host_memory import keep_freed_memory
from cnnlab.utils.io import atomic_write, atomic_write_json

log = logging.getLogger(__name__)

CEILING = "compute only (batch already on the device)"
BARE = "cnnlab data path, bare loop"
TRAINER = "cnnlab data path, Lightning Trainer"
TRAINER_LOOP_ONLY = "cnnlab data path, Lightning Trainer without callbacks or logger"


def _device(accelerator: str) -> torch.device:
    """The device the Trainer picks for ``trainer.accelerator``, where every path runs.

    Refuses anything but CUDA and the CPU: the other paths would run elsewhere than the
    Trainer's, and the timing waits for queued device work on CUDA only.
    """
    chosen = accelerator.lower()
    if chosen == "auto":  # Lightning's order: a TPU, Apple's GPU, then CUDA
        chosen = ("tpu" if XLAAccelerator.is_available() else "mps" if MPSAccelerator.is_available()
                  else "cuda" if CUDAAccelerator.is_available() else "cpu")
    elif chosen == "gpu":
        chosen = "mps" if MPSAccelerator.is_available() else "cuda"
    if chosen not in ("cpu", "cuda"):
        raise ConfigValueError(
            f"trainer.accelerator={accelerator} trains on {chosen} here, but the benchmark times its paths on a "
            f"CUDA GPU or the CPU only. Run it with trainer.accelerator=cpu (or trainer.accelerator=cuda on a CUDA GPU)"
        )
    return torch.device(chosen)


def _train_step(model: ImageClassifier, optimizer: torch.optim.Optimizer, images: torch.Tensor, labels: torch.Tensor,
                precision: Precision, with_metrics: bool = False) -> None:
    with precision.train_step_context():  # autocast under *-mixed, as the Trainer's training_step runs
        logits = model(images)
        loss = model.criterion(logits, labels)
    if with_metrics:  # what training_step does besides the loss
        model.train_metrics.update(logits.detach(), labels)
        model.train_loss.update(loss.detach(), labels.shape[0])
    loss.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)


class ComputeOnly:
    """The ceiling: the training step on one batch made once and kept on the device.

    The batch is a real training batch through the same augmentation, so it has the same
    dtype and memory layout as the data path's batches: only the data work differs.
    """

    def __init__(self, cfg: DictConfig, datamodule: InMemoryImageDataModule, device: torch.device, precision: Precision) -> None:
        self.model, self.optimizer = _fresh_model(cfg, datamodule, device, precision)
        batch = next(iter(datamodule.train_dataloader()))
        self.images = datamodule.transform(batch.images.to(device), train=True)
        self.labels = batch.labels.to(device)
        self.precision = precision

    def step(self) -> int:
        _train_step(self.model, self.optimizer, self.images, self.labels, self.precision)
        return len(self.labels)


class BareDataPath:
    """cnnlab's data path and training step without Lightning: gather, transfer as uint8,
    augment on the device, then the step with the same metric updates as ``training_step``."""

    def __init__(self, cfg: DictConfig, datamodule: InMemoryImageDataModule, device: torch.device, precision: Precision) -> None:
        self.model, self.optimizer = _fresh_model(cfg, datamodule, device, precision)
        self.datamodule, self.device, self.precision = datamodule, device, precision
        self._batches = iter(datamodule.train_dataloader())

    def step(self) -> int:
        try:
            batch = next(self._batches)
        except StopIteration:
            self._batches = iter(self.datamodule.train_dataloader())
            batch = next(self._batches)
        images = self.datamodule.transform(batch.images.to(self.device, non_blocking=True), train=True)
        _train_step(self.model, self.optimizer, images, batch.labels.to(self.device, non_blocking=True),
                    self.precision, with_metrics=True)
        return len(batch.labels)


def _fresh_model(cfg: DictConfig, datamodule: InMemoryImageDataModule, device: torch.device,
                 precision: Precision) -> tuple[ImageClassifier, torch.optim.Optimizer]:
    """A new classifier and optimizer, the weights converted as the Trainer's precision converts
    its own (bf16 weights under ``bf16-true``; unchanged under ``*-mixed``)."""
    # Lightning's precisions convert the module in place and hand it back: still the ImageClassifier.
    converted = precision.convert_module(build_classifier(cfg, datamodule.class_names))
    model = cast(ImageClassifier, converted).to(device).train()
    optimizer = instantiate(cfg.optimizer)([p for p in model.parameters() if p.requires_grad])
    return model, optimizer


class _PathTimes:
    """One path's timing windows (seconds each, and the images each trained on) and its peak memory."""

    def __init__(self) -> None:
        self.windows: list[float] = []
        self.images: list[int] = []
        self.peak_host_mb: float | None = None
        self.peak_device_mb: float | None = None


class InterleavedWindows(Callback):
    """Times the Trainer's steps in windows and, between two of them, one window of every other path.

    Each window follows some untimed steps: ``warmup_steps`` before a path's first window
    (allocator, kernel caches, worker start-up), ``window_warmup_steps`` before later ones (the
    caches and prefetch queues that the other paths' windows disturbed). A Trainer window is
    closed at the start of the step after its last, and that step runs untimed too, so the
    Trainer's later windows follow ``window_warmup_steps + 1`` untimed steps. The other paths are
    built at the Trainer's first window boundary, when the data module is attached to the
    Trainer, so they gather batches exactly as the Trainer does (on the GPU, when the data is
    device-resident) and compute in its precision (its precision plugin). Stops the fit after ``rounds`` rounds.

    With ``time_loop_only``, each round also times a Trainer window with every other callback
    and the loggers taken off the Trainer (and put back after it): the same fit, model and
    optimizer, so the difference is what the callbacks and logging cost per step. The two
    Trainer windows swap places from one round to the next. ``order`` lists every window's
    path in the order they ran.

    ``trainer_memory`` holds the Trainer's peak memory from the fit's start until the other
    paths are built, so theirs is not in it (the Trainer rows' peak under ``benchmark.epoch=false``).
    """

    def __init__(self, build_paths: Callable[[L.Trainer], dict[str, Callable[[], Stepper]]], device: torch.device,
                 rounds: int, steps: int, warmup_steps: int, window_warmup_steps: int, time_loop_only: bool = False) -> None:
        self.build_paths, self.device = build_paths, device
        self.rounds, self.steps = rounds, steps
        self.warmup_steps, self.window_warmup_steps = warmup_steps, window_warmup_steps
        self._trainer_paths = [TRAINER, TRAINER_LOOP_ONLY] if time_loop_only else [TRAINER]
        self.times: dict[str, _PathTimes] = {name: _PathTimes() for name in self._trainer_paths}
        self._round_order = list(self._trainer_paths)  # this round's Trainer windows, in the order they run
        self._current = 0  # index in _round_order of the Trainer window that is open or next
        self.order: list[str] = []
        self._aside = CallbacksAside()
        self._paths: dict[str, Stepper] | None = None
        self._untimed = warmup_steps  # Trainer steps still to run before its next window
        self._timed = -1  # Trainer steps run in the open window; -1: no window open
        self._window_start = 0.0
        self._window_images = 0  # images of the open Trainer window's steps (a last partial batch has fewer)
        self.trainer_memory = PeakMemory(device)

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        self.trainer_memory.__enter__()

    def teardown(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        self._close_trainer_memory()

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        self._close_trainer_memory()

    def _close_trainer_memory(self) -> None:
        if self.trainer_memory.host_mb is None:  # still open: a closed block has its peak
            self.trainer_memory.__exit__(None, None, None)

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, batch_idx: int) -> None:
        if self._untimed > 0:
            self._untimed -= 1
            return
        if self._timed < 0:  # this step opens a window
            synchronize(self.device)
            self._window_start, self._timed, self._window_images = time.perf_counter(), 1, images_in(batch)
            return
        if self._timed < self.steps:
            self._timed += 1
            self._window_images += images_in(batch)
            return
        synchronize(self.device)
        times = self.times[self._round_order[self._current]]
        times.windows.append(time.perf_counter() - self._window_start)
        times.images.append(self._window_images)
        self.order.append(self._round_order[self._current])
        self._timed = -1
        self._untimed = self.window_warmup_steps
        self._current += 1
        if self._current < len(self._round_order):
            self._prepare(trainer, self._round_order[self._current])
            return
        self._current = 0
        self._aside.put_back(trainer)
        self._run_other_windows(trainer)
        if len(self.times[TRAINER].windows) == self.rounds:
            trainer.should_stop = True
            return
        # Whichever window runs first in a round follows the other paths' windows, the only ones
        # that run other models and (the plain loop) worker processes; rounds alternate which
        # Trainer window that is, so neither carries that position's cost in every round.
        self._round_order.reverse()
        self._prepare(trainer, self._round_order[0])

    def _prepare(self, trainer: L.Trainer, path: str) -> None:
        """Set the Trainer up for ``path``'s window: its callbacks and loggers on, or taken off."""
        if path == TRAINER_LOOP_ONLY:
            self._aside.take_off(trainer, keep=self)
        else:
            self._aside.put_back(trainer)

    def _run_other_windows(self, trainer: L.Trainer) -> None:
        if self._paths is None:
            self._close_trainer_memory()
            self._paths = {}
            for name, build in self.build_paths(trainer).items():
                times = self.times[name] = _PathTimes()
                with PeakMemory(self.device) as memory:
                    path = self._paths[name] = build()
                    time_steps(path.step, self.warmup_steps, self.device)
                times.peak_host_mb, times.peak_device_mb = memory.host_mb, memory.device_mb
        else:
            for path in self._paths.values():
                time_steps(path.step, self.window_warmup_steps, self.device)
        for name, path in self._paths.items():
            seconds, images = time_steps(path.step, self.steps, self.device)
            self.times[name].windows.append(seconds)
            self.times[name].images.append(images)
            self.order.append(name)

    @property
    def steps_needed(self) -> int:
        """Trainer steps that cover every window (a few spare: the fit stops itself after the last round)."""
        # The step that closes the window before (untimed), the untimed ones, the timed ones.
        per_window = 1 + self.window_warmup_steps + self.steps
        return self.warmup_steps + self.rounds * len(self._trainer_paths) * per_window + 2

    @property
    def rounds_done(self) -> int:
        return min(len(times.windows) for times in self.times.values())


@contextmanager
def _trainer(cfg: DictConfig, output_dir: Path, callbacks: list[Callback], **overrides: Any) -> Iterator[L.Trainer]:
    """The configured Trainer (callbacks and logger as in training) with ``callbacks`` added, for one fit.

    The configured checkpoint callbacks stay, since their hooks are part of what a Trainer step
    costs, but save into a scratch folder in the run folder (the same disk: the same cost per
    save), removed when the fit is done: the benchmark's models are of no use to anyone, and
    cnnlab's scripts refuse them. A fit without validation (``limit_val_batches=0``: the timing
    fits, by design) is not warned that the checkpoints' monitored metric is missing.
    """
    loggers = instantiate_all(cfg.get("logger"))
    # As in training: without a logger (~logger) the learning-rate monitor, which refuses to start, is left out.
    configured = [c for c in without_logging_callbacks(instantiate_all(cfg.get("callbacks")), loggers)
                  if not isinstance(c, EpochTimer)]
    output_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".benchmark-checkpoints-", dir=output_dir) as scratch, \
            warnings.catch_warnings():
        checkpoints = [c for c in configured if isinstance(c, ModelCheckpoint)]
        for i, checkpoint in enumerate(checkpoints):
            # Set before the fit, as the callback's own dirpath argument would be (its setup keeps it).
            checkpoint.dirpath = str(Path(scratch).resolve() / str(i))
            if overrides.get("limit_val_batches") == 0 and checkpoint.monitor is not None:
                warnings.filterwarnings("ignore", message=re.escape(
                    f"`ModelCheckpoint(monitor={checkpoint.monitor!r})` could not find the monitored key"))
        trainer = instantiate(cfg.trainer, callbacks=[*configured, *callbacks], logger=loggers or False,
                              default_root_dir=str(output_dir), **overrides)
        with no_empty_logger_run(trainer):  # a failed fit leaves no TensorBoard run without data
            yield trainer


def time_one_epoch(cfg: DictConfig, datamodule: InMemoryImageDataModule, output_dir: Path) -> float:
    """Wall time of one whole training epoch with its validation, through ``Trainer.fit``."""
    epoch_timer = EpochTimer()
    with _trainer(cfg, output_dir, [epoch_timer], max_epochs=1) as trainer:
        trainer.fit(build_classifier(cfg, datamodule.class_names), datamodule=datamodule)
    return epoch_timer.epoch_seconds[0]


def time_paired_steps(cfg: DictConfig, datamodule: InMemoryImageDataModule, output_dir: Path, device: torch.device,
                      pairs: int, warmup_steps: int, loop_only: bool) -> dict[str, dict[str, float]]:
    """Lightning's overhead step by step (see :class:`PairedSteps`): a fresh Trainer, each of its
    steps right after one step of a fresh bare loop; per phase the summary of ``PairedTimes``."""
    phases = [TRAINER, TRAINER_LOOP_ONLY] if loop_only else [TRAINER]
    paired = PairedSteps(lambda trainer: BareDataPath(cfg, datamodule, device, trainer.precision_plugin),
                         pairs, warmup_steps, phases)
    with _trainer(cfg, output_dir, [paired], max_epochs=-1, max_steps=paired.steps_needed, limit_val_batches=0) as trainer:
        trainer.fit(build_classifier(cfg, datamodule.class_names), datamodule=datamodule)
    if any(len(times.trainer) < pairs for times in paired.times.values()):
        raise RuntimeError("the step-paired timing stopped early; is the training split smaller than one batch?")
    return {name: times.summary() for name, times in paired.times.items()}


def _ratios(speeds: dict[str, list[float]], batch_size: int) -> dict[str, list[float]]:
    """The report's ratios, one per entry of each path's speed list (per round, or one overall).

    Lightning's overhead is also given in milliseconds per step (a share alone depends on the
    step's length) and, when the loop-only Trainer path ran, split into its loop and the callbacks.
    """
    count = min(len(values) for values in speeds.values())
    plain = [name for name in speeds if name.startswith("plain loop")]

    def share(path: str, reference: str) -> list[float]:
        return [speeds[path][r] / speeds[reference][r] for r in range(count)]

    def extra_milliseconds(path: str, reference: str) -> list[float]:
        return [1000 * batch_size * (1 / speeds[path][r] - 1 / speeds[reference][r]) for r in range(count)]

    ratios = {
        BARE_EFFICIENCY: share(BARE, CEILING),
        TRAINER_EFFICIENCY: share(TRAINER, CEILING),
        OVERHEAD: [1 - value for value in share(TRAINER, BARE)],
        OVERHEAD_MS: extra_milliseconds(TRAINER, BARE),
    }
    if TRAINER_LOOP_ONLY in speeds:
        ratios[LOOP_OVERHEAD] = [1 - value for value in share(TRAINER_LOOP_ONLY, BARE)]
        ratios[LOOP_MS] = extra_milliseconds(TRAINER_LOOP_ONLY, BARE)
        ratios[CALLBACKS_MS] = extra_milliseconds(TRAINER, TRAINER_LOOP_ONLY)
    if plain:
        ratios[SPEED_UP] = [
            speeds[TRAINER][r] / max(speeds[name][r] for name in plain) for r in range(count)
        ]
    return ratios


def _format_paired(paired: dict[str, dict[str, float]]) -> list[str]:
    pairs = next(iter(paired.values()))["pairs"]
    lines = ["", f"Step by step: each Trainer step right after one bare-loop step, {pairs:,} pairs per line "
                 "(mean over the pairs; the overhead with its standard error):", "",
             "| Trainer | Trainer (ms/step) | bare loop (ms/step) | Lightning overhead (ms/step) | share of a Trainer step |",
             "|---|---:|---:|---:|---:|"]
    for name, values in paired.items():
        label = "with callbacks and logger" if name == TRAINER else "without callbacks or logger"
        lines.append(f"| {label} | {values['trainer_ms']:.2f} | {values['bare_ms']:.2f} "
                     f"| {values['overhead_ms']:.2f} ± {values['overhead_standard_error_ms']:.2f} | {values['overhead_share']:.1%} |")
    if TRAINER_LOOP_ONLY in paired:
        callbacks_ms = paired[TRAINER]["overhead_ms"] - paired[TRAINER_LOOP_ONLY]["overhead_ms"]
        lines += ["", f"- of which callbacks and logger: {callbacks_ms:.2f} ms per step (the difference of the two overheads)"]
    return lines


def _format_report(rows: list[Measurement], summary: dict[str, tuple[str, str, str]], header: dict[str, Any],
                   epoch: tuple[str, str] | None, paired: dict[str, dict[str, float]] | None = None) -> str:
    ceiling = next(r.images_per_s for r in rows if r.name == CEILING)
    plain = [r.images_per_s for r in rows if r.name.startswith("plain loop")]
    # The plain loop's settings and column only where it ran (benchmark.plain_loop=false leaves it out).
    plain_settings = "; the plain loop: float32 (tutorial's Adam)" if plain else ""
    plain_column = (" vs plain loop |", "---:|") if plain else ("", "")
    lines = [
        f"# cnnlab benchmark: {header['model']} on {header['data']}, batch {header['batch_size']}",
        "",
        f"- device: {header['device']}; CPU model: {header.get('cpu_model', 'not recorded')}; host: {header['host']}; "
        f"torch {header['torch']}",
        f"- command: `{header['command']}`",
        f"- augmentation: {header['augmentation']}",
        f"- optimizer (cnnlab's paths): {header['optimizer']}",
        f"- precision: {header['precision']}; channels_last: {header['channels_last']}; "
        f"host malloc (every path): {header['host_malloc']}{plain_settings}",
        f"- timing: {header['windows']}",
        "",
        f"| path | images/s (median) | fastest quarter | best window | vs compute-only |{plain_column[0]} "
        "peak host RSS (MB) | peak device (MB) |",
        f"|---|---:|---:|---:|---:|{plain_column[1]}---:|---:|",
    ]
    for row in rows:
        vs_plain = f" {row.images_per_s / max(plain):.2f}x |" if plain else ""
        device_mb = f"{row.peak_device_mb:,.0f}" if row.peak_device_mb is not None else "-"
        host_mb = f"{row.peak_host_mb:,.0f}" if row.peak_host_mb is not None else "-"
        lines.append(
            f"| {row.name} | {row.images_per_s:,.0f} | {row.extra['fastest_quarter_images_per_s']:,.0f} "
            f"| {row.best_images_per_s:,.0f} | {row.images_per_s / ceiling:.0%} |{vs_plain} {host_mb} | {device_mb} |"
        )
    notes = sorted({f"{row.name.split(' (')[0]}: {row.notes}" for row in rows if row.notes})
    lines += ["", "(vs columns: from the medians" + "".join(f"; {note}" for note in notes) + ")", "",
              "| ratio | median of the per-round ratios (middle half of the rounds) "
              "| the median's 95% interval (bootstrap over the rounds) | from each path's fastest quarter |",
              "|---|---:|---:|---:|"]
    lines += [f"| {key} | {per_round} | {interval} | {undisturbed} |"
              for key, (per_round, interval, undisturbed) in summary.items()]
    if paired:
        lines += _format_paired(paired)
    if epoch is not None:
        lines += ["", f"- {epoch[0]}: {epoch[1]}"]
    return "\n".join(lines) + "\n"


def runs_in_one_process(devices: Any, accelerator: Any) -> bool:
    """Whether Lightning runs ``trainer.devices`` on ``trainer.accelerator`` as one process.

    One device: ``1``, or one device's index in a list (``[0]``). ``auto`` is one device on a CPU
    only: on a GPU machine Lightning takes every GPU it finds.
    """
    if isinstance(devices, (list, ListConfig)):
        return len(devices) == 1
    if str(devices) == "auto":
        return str(accelerator) == "cpu"
    return str(devices) == "1"


def ensure_same_step_on_every_path(trainer_cfg: DictConfig) -> None:
    """Refuse trainer settings that would make the Trainer's step another step than the other paths'.

    The bare loop and the compute-only path step the optimizer on every batch, without clipping
    or profiling, in one process, and the epoch is timed whole: a setting that changes only the
    Trainer's side would be reported as Lightning's overhead.
    """
    changed = []
    if trainer_cfg.get("accumulate_grad_batches", 1) != 1:
        changed.append(f"trainer.accumulate_grad_batches={trainer_cfg.accumulate_grad_batches} (one optimizer step per "
                       f"several batches)")
    if trainer_cfg.get("gradient_clip_val"):
        changed.append(f"trainer.gradient_clip_val={trainer_cfg.gradient_clip_val} (clipping, and an unfused optimizer "
                       f"under mixed precision)")
    profiler = trainer_cfg.get("profiler")
    if profiler is not None and not (isinstance(profiler, DictConfig) and str(profiler.get("_target_", "")).endswith("NoProfiler")):
        changed.append("trainer.profiler (a profiler's cost per hook)")
    devices, nodes = trainer_cfg.get("devices", 1), trainer_cfg.get("num_nodes", 1)
    if not runs_in_one_process(devices, trainer_cfg.get("accelerator", "auto")) or nodes != 1:
        every_gpu = "on a GPU machine, every GPU Lightning finds: " if str(devices) == "auto" else ""
        changed.append(f"trainer.devices={devices} trainer.num_nodes={nodes} ({every_gpu}several processes: every path "
                       f"would run in each, the Trainer's with gradient all-reduce)")
    for limit in ("limit_train_batches", "limit_val_batches"):
        if trainer_cfg.get(limit) is not None:
            changed.append(f"trainer.{limit}={trainer_cfg[limit]} (the whole epoch would not be whole; "
                           f"benchmark.steps and benchmark.rounds set the windows, benchmark.epoch=false skips the epoch)")
    if changed:
        raise ConfigValueError(
            "the benchmark times the same training step on every path in one process, so it does not take "
            + "; ".join(changed) + ". Leave these at the defaults of conf/trainer/default.yaml (trainer=gpu or "
            "trainer=cpu choose the device)"
        )


def benchmark(cfg: DictConfig) -> dict[str, Any]:
    """Run every path, print the table, write ``benchmark.json`` and ``benchmark.md`` in the run folder."""
    ensure_values_set(cfg)
    output_dir = run_folder(cfg)
    ensure_accelerator_available(cfg.trainer.get("accelerator", "auto"))
    device = _device(str(cfg.trainer.get("accelerator", "auto")))
    bench = cfg.benchmark
    for key, least in (("rounds", 1), ("steps", 1), ("warmup_steps", 0), ("window_warmup_steps", 0),
                       ("plain_loop_workers", 0)):
        ensure_count(bench[key], f"benchmark.{key}", least)
    for switch in ("epoch", "plain_loop", "split_overhead"):  # a mistyped value would be a truthy string
        ensure_switch(bench[switch], f"benchmark.{switch}")
    tune_host_malloc = ensure_switch(cfg.get("tune_host_malloc", False), "tune_host_malloc")
    paired_steps = bench.get("paired_steps", 0)
    if not is_count(paired_steps) or paired_steps == 1:
        # A standard error needs two pairs at least.
        raise ConfigValueError(f"benchmark.paired_steps must be 0 (off) or at least 2 pairs, got {paired_steps!r}")
    ensure_same_step_on_every_path(cfg.trainer)
    if cfg.model.get("cache_features") is True:
        raise ConfigValueError(
            "model.cache_features=true trains the head on stored features, which only the Trainer's path would read "
            "(the compute-only and bare-loop paths run the backbone on every batch); the benchmark compares the same "
            "step on every path: pass model.cache_features=false")
    if cfg.get("seed") is not None:
        L.seed_everything(cfg.seed)
    datamodule: InMemoryImageDataModule = instantiate(cfg.data)
    datamodule.prepare_data()
    datamodule.setup("fit")
    OmegaConf.update(cfg, "model.num_classes", datamodule.num_classes, merge=False)
    batch_size = datamodule.batch_size
    train_split, val_split = datamodule.train_split, datamodule.val_split
    assert train_split is not None and val_split is not None, "setup() loads the splits"
    image_size = train_split.images.shape[-1]
    if bench.plain_loop and len(train_split) < batch_size:
        # (A StopIteration from its empty loader would end the Trainer's epochs as if its own data had run out.)
        raise ConfigValueError(f"the training split has {len(train_split)} images, fewer than one batch "
                               f"(data.batch_size={batch_size}), so the plain loop, which drops an incomplete batch as "
                               f"the reference always has, would have none: pass data.batch_size={len(train_split)} or "
                               f"lower, more data, or benchmark.plain_loop=false")

    # Process-wide settings apply to every path, the tutorial's loop included (they can only
    # help it): the allocator setting, and no NVML probe on every optimizer step where there is
    # no NVML (a cost Lightning's import brings, which the tutorial's script would not pay).
    malloc_tuned = tune_host_malloc and keep_freed_memory()
    skip_unloadable_nvml_check()

    epoch_seconds = None
    trainer_memory = PeakMemory(device)
    if bench.epoch:
        log.info("benchmark: one whole epoch with validation through the Trainer ...")
        with trainer_memory:
            epoch_seconds = time_one_epoch(cfg, datamodule, output_dir)

    def build_paths(trainer: L.Trainer) -> dict[str, Callable[[], Stepper]]:
        precision = trainer.precision_plugin  # the Trainer's own: the same autocast or weight dtype
        # The windows run in this order, right before the Trainer's: the plain loop first, so its
        # worker processes are idle again before the paths compared with the Trainer; the bare
        # loop last, so it and the Trainer's next window lie closest in time.
        builders: dict[str, Callable[[], Stepper]] = {}

        def plain_loop(dataset: Dataset) -> Stepper:
            return PlainLoop(_tutorial_net(cfg), dataset, device, batch_size, bench.plain_loop_workers,
                             float(cfg.optimizer.get("lr", 1e-3)))

        if bench.plain_loop:
            for name, dataset in reference_datasets(datamodule, image_size).items():
                builders[name] = partial(plain_loop, dataset)
        builders[CEILING] = lambda: ComputeOnly(cfg, datamodule, device, precision)
        builders[BARE] = lambda: BareDataPath(cfg, datamodule, device, precision)
        return builders

    log.info("benchmark: %s of %d-step windows, the paths taking turns ...", _count(bench.rounds, "round"), bench.steps)
    windows = InterleavedWindows(build_paths, device, bench.rounds, bench.steps, bench.warmup_steps,
                                 bench.window_warmup_steps, time_loop_only=bench.split_overhead)
    with _trainer(cfg, output_dir, [windows], max_epochs=-1, max_steps=windows.steps_needed, limit_val_batches=0) as trainer:
        trainer.fit(build_classifier(cfg, datamodule.class_names), datamodule=datamodule)
        precision_used = str(trainer.precision)
        if windows.rounds_done < bench.rounds:
            raise RuntimeError(f"only {windows.rounds_done} of {bench.rounds} timing rounds ran")
    memory = trainer_memory if bench.epoch else windows.trainer_memory
    for name in (TRAINER, TRAINER_LOOP_ONLY):  # one fit runs both Trainer paths: one peak
        if name in windows.times:
            windows.times[name].peak_host_mb, windows.times[name].peak_device_mb = memory.host_mb, memory.device_mb

    paired = None
    if paired_steps and device.type == "cpu":
        log.info("benchmark: %d Trainer steps, each right after a bare-loop step ...", paired_steps)
        paired = time_paired_steps(cfg, datamodule, output_dir, device, paired_steps, bench.warmup_steps, bench.split_overhead)
    elif paired_steps:
        log.info("benchmark: no step-paired timing on %s (it would synchronise every step)", device.type)

    order = [CEILING, BARE, TRAINER_LOOP_ONLY, TRAINER]
    names = [name for name in order if name in windows.times] + sorted(name for name in windows.times if name not in order)
    # Images counted, not steps x batch size: a split that is no multiple of the batch ends each epoch in a smaller batch.
    speeds = {name: [images / seconds for images, seconds in zip(windows.times[name].images, windows.times[name].windows,
                                                                 strict=True)] for name in names}
    rows = [
        Measurement(name, statistics.median(speeds[name]), batch_size, bench.steps,
                    windows.times[name].peak_host_mb, windows.times[name].peak_device_mb,
                    notes=(f"{bench.plain_loop_workers} DataLoader workers, whose memory the peak RSS does not count"
                           if name.startswith("plain loop") and bench.plain_loop_workers else ""),
                    best_images_per_s=max(speeds[name]),
                    extra={"window_seconds": windows.times[name].windows, "window_images": windows.times[name].images,
                           "fastest_quarter_images_per_s": fastest_quarter(speeds[name])})
        for name in names
    ]
    per_round = _ratios(speeds, batch_size)
    undisturbed = _ratios({name: [fastest_quarter(values)] for name, values in speeds.items()}, batch_size)
    summary: dict[str, tuple[str, str, str]] = {}
    intervals = {name: median_interval(values) for name, values in per_round.items()}
    for name, values in per_round.items():
        middle, low, high = (format_ratio(name, value) for value in median_and_middle_half(values))
        spread = f"{low} to {high}" if len(values) > 1 else "one round"
        summary[name] = (f"{middle} ({spread})", format_interval(name, intervals[name]),
                         format_ratio(name, undisturbed[name][0]))
    epoch = None
    if epoch_seconds is not None:
        n_train, n_val = len(train_split), len(val_split)
        epoch = (f"one epoch through the Trainer ({n_train:,} train + {n_val:,} val images)", f"{epoch_seconds:.1f} s")
    header = _header(cfg, datamodule, device, malloc_tuned, precision_used)
    report = _format_report(rows, summary, header, epoch, paired)
    print(report, flush=True)
    results = {
        "header": header,
        "rows": [row.as_dict() for row in rows],
        "window_order": windows.order,
        "summary": {name: {"per_round_median": a, "median_interval_95": b, "fastest_quarter": c}
                    for name, (a, b, c) in summary.items()},
        "ratios_per_round": per_round,
        "median_intervals_95": {name: None if bounds is None else list(bounds) for name, bounds in intervals.items()},
        "ratios_fastest_quarter": {name: values[0] for name, values in undisturbed.items()},
        "epoch_seconds": epoch_seconds,
        "paired_steps": paired,
    }
    atomic_write_json(output_dir / "benchmark.json", results)
    atomic_write(output_dir / "benchmark.md", lambda f: f.write(report.encode()))
    return results


def _tutorial_net(cfg: DictConfig) -> nn.Module:
    """The configured network as the tutorial trains it: float32, NCHW, normalised by its transforms."""
    net = instantiate(cfg.model)
    net.normalize = nn.Identity()
    return net


def _header(cfg: DictConfig, datamodule: InMemoryImageDataModule, device: torch.device, malloc_tuned: bool,
            precision: str) -> dict[str, Any]:
    """The report's setup lines; ``precision`` is the one the Trainer ran in (on a CPU it runs ``16-mixed`` as ``bf16-mixed``)."""
    bench = cfg.benchmark
    augment = datamodule.augment
    return {
        "model": cfg.model._target_.rsplit(".", 1)[-1] + (f" ({cfg.model.arch})" if "arch" in cfg.model else ""),
        "data": cfg.data._target_.rsplit(".", 1)[-1],
        "batch_size": datamodule.batch_size,
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU ({platform.processor() or platform.machine()})",
        "cpu_model": cpu_model(),
        "host": f"{platform.node()}, {torch.get_num_threads()} torch threads",
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "command": bench.get("command") or "python scripts/benchmark.py " + " ".join(_overrides()),
        "augmentation": repr(augment) if augment is not None else "none",
        "precision": precision,
        "optimizer": cfg.optimizer._target_.rsplit(".", 1)[-1] + (" (fused)" if cfg.optimizer.get("fused") else ""),
        "channels_last": bool(cfg.get("classifier", {}).get("channels_last", False)),
        "host_malloc": "tuned (freed memory kept for reuse)" if malloc_tuned else "C library default",
        # Pooling reads the numbers back from this sentence (pooling.WINDOW_NUMBERS).
        "windows": f"{_count(bench.rounds, 'round')}; in each, every path runs {_count(bench.steps, 'timed step')} in "
                   f"turn, after {_count(bench.window_warmup_steps, 'untimed one')} (the Trainer "
                   f"{bench.window_warmup_steps + 1}: the step that closes its window before runs untimed too; "
                   f"{bench.warmup_steps} before a path's first window)",
        "date": time.strftime("%Y-%m-%d %H:%M"),
    }


def _count(number: int, noun: str) -> str:
    return f"{number} {noun}" + ("" if number == 1 else "s")


def cpu_model() -> str:
    """The CPU's model name (Linux: /proc/cpuinfo's "model name"; elsewhere what Python's platform says).

    The host's name and the architecture do not tell machines apart (every VM here is "vm",
    x86_64), so the report records this, and pooling refuses runs of two CPU models.
    """
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name" and value.strip():
                return value.strip()
    except OSError:  # not Linux
        pass
    return platform.processor() or platform.machine() or "unknown"


def _overrides() -> list[str]:
    try:
        from hydra.core.hydra_config import HydraConfig

        return list(HydraConfig.get().overrides.task)
    except ValueError:  # not running under @hydra.main (e.g. in tests)
        return []
