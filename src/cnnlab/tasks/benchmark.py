"""The benchmark task: where training time goes, side by side in one run on the same data and device.

Four paths train the same network with the same batch size and augmentation:

1. compute only: the model on batches already on the device (the ceiling);
2. cnnlab's data path in a bare loop (in-memory uint8 gather, on-device augmentation);
3. the same through Lightning's Trainer (steady-state throughput, and a whole epoch with
   validation);
4. the tutorial's plain loop (per-image PIL transforms in DataLoader workers).
"""

from __future__ import annotations

import logging
import platform
import time
from pathlib import Path
from typing import Any

import lightning as L
import torch
from hydra.utils import instantiate
from lightning.pytorch.callbacks import Callback
from omegaconf import DictConfig, OmegaConf
from torch import nn

from cnnlab.benchmark.measure import Measurement, PeakMemory, StepTimer
from cnnlab.benchmark.plain_loop import reference_datasets, run_plain_loop
from cnnlab.data.base import InMemoryImageDataModule
from cnnlab.training.callbacks import EpochTimer
from cnnlab.training.classifier import ImageClassifier
from cnnlab.training.factory import build_classifier
from cnnlab.utils.config import instantiate_all
from cnnlab.utils.cuda_check import skip_unloadable_nvml_check
from cnnlab.utils.host_memory import keep_freed_memory
from cnnlab.utils.io import atomic_write, atomic_write_json

log = logging.getLogger(__name__)


class _TrainerWindow(Callback):
    """Times a steady-state window of training steps inside ``Trainer.fit``."""

    def __init__(self, timer: StepTimer) -> None:
        self.timer = timer

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, batch_idx: int) -> None:
        self.timer.tick()


def _device(accelerator: str) -> torch.device:
    if accelerator in ("gpu", "cuda") or (accelerator == "auto" and torch.cuda.is_available()):
        return torch.device("cuda")
    return torch.device("cpu")


def _autocast_dtype(precision: Any) -> torch.dtype | None:
    text = str(precision)
    if "bf16" in text:
        return torch.bfloat16
    if text.startswith("16"):
        return torch.float16
    return None


def _train_step(model: ImageClassifier, optimizer: torch.optim.Optimizer, images: torch.Tensor, labels: torch.Tensor,
                device: torch.device, autocast_dtype: torch.dtype | None, with_metrics: bool = False) -> None:
    with torch.autocast(device.type, dtype=autocast_dtype or torch.float32, enabled=autocast_dtype is not None):
        logits = model(images)
        loss = model.criterion(logits, labels)
    if with_metrics:  # what training_step does besides the loss
        model.train_metrics.update(logits.detach(), labels)
        model.train_loss.update(loss.detach(), labels.shape[0])
    loss.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)


def _fresh_model(cfg: DictConfig, datamodule: InMemoryImageDataModule, device: torch.device) -> tuple[ImageClassifier, torch.optim.Optimizer]:
    model = build_classifier(cfg, datamodule.class_names).to(device).train()
    optimizer = instantiate(cfg.optimizer)([p for p in model.parameters() if p.requires_grad])
    return model, optimizer


def measure_compute_only(cfg, datamodule, device, timer, autocast_dtype) -> None:
    """The ceiling: the same training step on one batch made once and kept on the device.

    The batch is a real training batch through the same augmentation, so it has the same
    dtype and memory layout as the data path's batches: only the data work differs.
    """
    model, optimizer = _fresh_model(cfg, datamodule, device)
    batch = next(iter(datamodule.train_dataloader()))
    images = datamodule.transform(batch.images.to(device), train=True)
    labels = batch.labels.to(device)
    while not timer.done:
        timer.tick()
        _train_step(model, optimizer, images, labels, device, autocast_dtype)


def measure_bare_data_path(cfg, datamodule, device, timer, autocast_dtype) -> None:
    """cnnlab's data path and training step without Lightning: gather, transfer as uint8, augment
    on the device, then the step with the same metric updates as ``training_step``."""
    model, optimizer = _fresh_model(cfg, datamodule, device)
    while not timer.done:
        for batch in datamodule.train_dataloader():
            timer.tick()
            if timer.done:
                break
            images = datamodule.transform(batch.images.to(device, non_blocking=True), train=True)
            _train_step(model, optimizer, images, batch.labels.to(device, non_blocking=True), device, autocast_dtype,
                        with_metrics=True)


def measure_trainer(cfg, datamodule, timer, output_dir: Path, whole_epoch: bool) -> float | None:
    """cnnlab as users run it: Trainer.fit, for a whole epoch (returning its wall time, validation
    included) or for just the timing windows."""
    model = build_classifier(cfg, datamodule.class_names)
    epoch_timer = EpochTimer()
    callbacks = [*instantiate_all(cfg.get("callbacks")), epoch_timer, _TrainerWindow(timer)]
    callbacks = [c for c in callbacks if not isinstance(c, EpochTimer) or c is epoch_timer]
    trainer: L.Trainer = instantiate(
        cfg.trainer, callbacks=callbacks, logger=instantiate_all(cfg.get("logger")) or False,
        default_root_dir=str(output_dir),
        **({"max_epochs": 1} if whole_epoch else
           {"max_epochs": -1, "max_steps": timer.warmup + timer.steps * timer.repeats + 1, "limit_val_batches": 0}),
    )
    trainer.fit(model, datamodule=datamodule)
    return epoch_timer.epoch_seconds[0] if whole_epoch and epoch_timer.epoch_seconds else None


def _format_report(rows: list[Measurement], summary: dict[str, Any], header: dict[str, Any]) -> str:
    ceiling = next(r.images_per_s for r in rows if r.name.startswith("compute only"))
    plain = [r.images_per_s for r in rows if r.name.startswith("plain loop")]
    lines = [
        f"# cnnlab benchmark: {header['model']} on {header['data']}, batch {header['batch_size']}",
        "",
        f"- device: {header['device']}; host: {header['host']}; torch {header['torch']}, {header['threads']} threads",
        f"- command: `{header['command']}`",
        f"- augmentation: {header['augmentation']}",
        f"- optimizer (cnnlab's paths): {header['optimizer']}",
        f"- precision: {header['precision']}; channels_last: {header['channels_last']}; "
        f"host malloc (every path): {header['host_malloc']}; the plain loop: float32 (tutorial's Adam)",
        f"- timing: {header['windows']}",
        "",
        "| path | images/s (median) | best window | vs compute-only | vs plain loop | peak host RSS (MB) | peak device (MB) |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for row in rows:
        vs_plain = f"{row.images_per_s / max(plain):.2f}x" if plain else "-"
        device_mb = f"{row.peak_device_mb:,.0f}" if row.peak_device_mb is not None else "-"
        host_mb = f"{row.peak_host_mb:,.0f}" if row.peak_host_mb is not None else "-"
        lines.append(
            f"| {row.name} | {row.images_per_s:,.0f} | {row.best_images_per_s:,.0f} | {row.images_per_s / ceiling:.0%} "
            f"| {vs_plain} | {host_mb} | {device_mb} |"
        )
    lines.append("")
    for key, value in summary.items():
        lines.append(f"- {key}: {value}")
    return "\n".join(lines) + "\n"


def benchmark(cfg: DictConfig) -> dict[str, Any]:
    """Run every path, print the table, write ``benchmark.json`` and ``benchmark.md`` in the run folder."""
    output_dir = Path(cfg.paths.output_dir)
    bench = cfg.benchmark
    if cfg.get("seed") is not None:
        L.seed_everything(cfg.seed)
    datamodule: InMemoryImageDataModule = instantiate(cfg.data)
    datamodule.prepare_data()
    datamodule.setup("fit")
    OmegaConf.update(cfg, "model.num_classes", datamodule.num_classes, merge=False)
    device = _device(str(cfg.trainer.accelerator))
    autocast_dtype = _autocast_dtype(cfg.trainer.precision)
    batch_size = datamodule.batch_size
    image_size = datamodule.train_split.images.shape[-1]

    def window() -> StepTimer:
        return StepTimer(bench.warmup_steps, bench.steps, batch_size, device, repeats=bench.repeats)

    measured: dict[str, Measurement] = {}
    windows: dict[str, list[float]] = {}

    def record(name: str, run: Any, notes: str = "") -> None:
        """Measure one path; across rounds, a path pools its windows and keeps its highest peak memory."""
        timer = window()
        log.info("benchmark: %s ...", name)
        with PeakMemory(device) as memory:
            run(timer)
        windows.setdefault(name, []).extend(timer.windows)
        speeds = sorted(bench.steps * batch_size / seconds for seconds in windows[name])
        previous = measured.get(name)
        measured[name] = Measurement(
            name, speeds[len(speeds) // 2], batch_size, bench.steps,
            max(filter(None, [memory.host_mb, previous and previous.peak_host_mb]), default=None),
            max(filter(None, [memory.device_mb, previous and previous.peak_device_mb]), default=None),
            notes, best_images_per_s=speeds[-1], extra={"window_seconds": windows[name]},
        )
        log.info("benchmark: %s: %.0f images/s", name, timer.images_per_s)

    # Process-wide settings apply to every path, the tutorial's loop included (they can only
    # help it): the allocator setting, and no NVML probe on every optimizer step where there is
    # no NVML (a cost Lightning's import brings, which the tutorial's script would not pay).
    malloc_tuned = bool(cfg.get("tune_host_malloc")) and keep_freed_memory()
    skip_unloadable_nvml_check()
    reference = reference_datasets(datamodule, image_size) if bench.plain_loop else {}

    # The machine's speed can drift over a run (shared hosts, clock boost), so the paths take
    # turns: each round measures each of them once; a path's figure is the median of all its
    # windows (the fastest one is reported beside it).
    epoch_seconds: list[float | None] = []
    for round_index in range(bench.rounds):
        for name, dataset in reference.items():
            net = instantiate(cfg.model)
            net.normalize = nn.Identity()  # the tutorial's transforms already normalise
            record(name, lambda t, net=net, dataset=dataset: run_plain_loop(
                       net, dataset, device, t, bench.plain_loop_workers, float(cfg.optimizer.get("lr", 1e-3))),
                   notes=f"{bench.plain_loop_workers} DataLoader workers (their memory is not counted)")
        record("compute only (batch already on the device)", lambda t: measure_compute_only(cfg, datamodule, device, t, autocast_dtype))
        record("cnnlab data path, bare loop", lambda t: measure_bare_data_path(cfg, datamodule, device, t, autocast_dtype))
        whole_epoch = bench.epoch and round_index == 0
        record("cnnlab data path, Lightning Trainer",
               lambda t, whole_epoch=whole_epoch: epoch_seconds.append(measure_trainer(cfg, datamodule, t, output_dir, whole_epoch)))

    order = ["compute only", "cnnlab data path, bare", "cnnlab data path, Lightning", "plain loop"]
    rows = sorted(measured.values(), key=lambda row: next(i for i, prefix in enumerate(order) if row.name.startswith(prefix)))
    def ratios(speed: dict[str, float]) -> dict[str, float]:
        ceiling = speed["compute only (batch already on the device)"]
        bare = speed["cnnlab data path, bare loop"]
        trainer_speed = speed["cnnlab data path, Lightning Trainer"]
        plain = [value for name, value in speed.items() if name.startswith("plain loop")]
        values = {
            "data path efficiency, bare loop vs compute-only": bare / ceiling,
            "data path efficiency, Trainer vs compute-only": trainer_speed / ceiling,
            "Lightning overhead, Trainer vs bare loop": 1 - trainer_speed / bare,
        }
        if plain:
            values["speed-up, Trainer vs the fastest plain loop"] = trainer_speed / max(plain)
        return values

    median = ratios({row.name: row.images_per_s for row in rows})
    best = ratios({row.name: row.best_images_per_s for row in rows})
    summary: dict[str, Any] = {
        name: (f"{value:.2f}x (best windows: {best[name]:.2f}x)" if name.startswith("speed-up")
               else f"{value:.1%} (best windows: {best[name]:.1%})")
        for name, value in median.items()
    }
    if epoch_seconds and epoch_seconds[0] is not None:
        n_train, n_val = len(datamodule.train_split), len(datamodule.val_split)
        summary[f"one epoch through the Trainer ({n_train:,} train + {n_val:,} val images)"] = f"{epoch_seconds[0]:.1f} s"
    augment = datamodule.augment
    header = {
        "model": cfg.model._target_.rsplit(".", 1)[-1] + (f" ({cfg.model.arch})" if "arch" in cfg.model else ""),
        "data": cfg.data._target_.rsplit(".", 1)[-1],
        "batch_size": batch_size,
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU ({platform.processor() or platform.machine()})",
        "host": f"{platform.node()}, {torch.get_num_threads()} torch threads",
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "command": bench.get("command") or "python scripts/benchmark.py " + " ".join(_overrides()),
        "augmentation": repr(augment) if augment is not None else "none",
        "precision": str(cfg.trainer.precision),
        "optimizer": cfg.optimizer._target_.rsplit(".", 1)[-1] + (" (fused)" if cfg.optimizer.get("fused") else ""),
        "channels_last": bool(cfg.get("classifier", {}).get("channels_last", False)),
        "host_malloc": "tuned (freed memory kept for reuse)" if malloc_tuned else "C library default",
        "windows": f"median of {bench.rounds} interleaved rounds x {bench.repeats} windows of {bench.steps} steps, "
                   f"after {bench.warmup_steps} warm-up steps",
        "date": time.strftime("%Y-%m-%d %H:%M"),
    }
    report = _format_report(rows, summary, header)
    print(report, flush=True)
    results = {"header": header, "rows": [row.as_dict() for row in rows], "summary": summary}
    atomic_write_json(output_dir / "benchmark.json", results)
    atomic_write(output_dir / "benchmark.md", lambda f: f.write(report.encode()))
    return results


def _overrides() -> list[str]:
    try:
        from hydra.core.hydra_config import HydraConfig

        return list(HydraConfig.get().overrides.task)
    except ValueError:  # not running under @hydra.main (e.g. in tests)
        return []
