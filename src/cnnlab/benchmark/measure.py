"""Timing and peak-memory measurement for the benchmark."""

from __future__ import annotations

import resource
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Protocol

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.loggers import Logger


@dataclass
class Measurement:
    """One measured training path."""

    name: str
    images_per_s: float  # median over the path's timing windows
    batch_size: int
    steps: int
    peak_host_mb: float | None = None
    peak_device_mb: float | None = None
    notes: str = ""
    best_images_per_s: float | None = None  # the fastest window
    extra: dict = field(default_factory=dict)

    def as_dict(self) -> dict:
        return asdict(self)


class Stepper(Protocol):
    """A training path that the benchmark advances one step at a time."""

    def step(self) -> int:
        """One training step; returns how many images it trained on (a last partial batch has fewer)."""
        ...


def images_in(batch: Any) -> int:
    """The images in a training batch: cnnlab's (``.labels``), or any batch ``len()`` counts."""
    labels = getattr(batch, "labels", None)
    return len(labels if labels is not None else batch)


def synchronize(device: torch.device) -> None:
    """Wait for queued device work, so wall-clock times cover it."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_steps(step: Callable[[], int], count: int, device: torch.device) -> tuple[float, int]:
    """Seconds that ``count`` calls of ``step`` take, the device's queued work included, and the images they trained on."""
    synchronize(device)
    images = 0
    start = time.perf_counter()
    for _ in range(count):
        images += step()
    synchronize(device)
    return time.perf_counter() - start, images


class CallbacksAside:
    """Takes every callback but one, and the loggers, off a running Trainer, and puts them back.

    Lightning reads ``trainer.callbacks`` and ``trainer.loggers`` afresh at every hook call, so
    the steps in between run without them: the same fit, model and optimizer, so timing those
    steps against the others gives what the callbacks and logging cost.
    """

    def __init__(self) -> None:
        self._taken_off: tuple[list[Callback], list[Logger]] | None = None

    # Lightning sets trainer.callbacks outside Trainer.__init__ (in its callback connector), where
    # mypy does not see it: hence the ignores below.
    def take_off(self, trainer: L.Trainer, keep: Callback) -> None:
        if self._taken_off is None:
            self._taken_off = (trainer.callbacks, trainer.loggers)  # type: ignore[attr-defined]
            trainer.callbacks, trainer.loggers = [keep], []  # type: ignore[attr-defined]

    def put_back(self, trainer: L.Trainer) -> None:
        if self._taken_off is not None:
            trainer.callbacks, trainer.loggers = self._taken_off  # type: ignore[attr-defined]
            self._taken_off = None


class PeakMemory:
    """Peak resident host memory of this process (and device memory on CUDA) over a ``with`` block.

    On Linux the peak is reset at the start through ``/proc/self/clear_refs``, so each block
    reports its own peak; elsewhere it is the process's peak so far. Blocks may nest: a block
    that opens inside another first hands the peak so far to every open block around it, whose
    own peak its reset would otherwise erase, so each block's peak covers exactly its span.
    """

    _open: ClassVar[list[PeakMemory]] = []  # the blocks open now, outermost first

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.host_mb: float | None = None
        self.device_mb: float | None = None

    def __enter__(self) -> PeakMemory:
        for block in PeakMemory._open:
            block._fold(*block._peaks())
        self.host_mb = self.device_mb = None
        try:
            Path("/proc/self/clear_refs").write_text("5")
        except OSError:
            pass
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
        PeakMemory._open.append(self)
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._fold(*self._peaks())
        if self in PeakMemory._open:
            PeakMemory._open.remove(self)

    def _peaks(self) -> tuple[float, float | None]:
        """The peaks since the last reset: host RSS, and the device's where it keeps one."""
        device_mb = torch.cuda.max_memory_allocated(self.device) / 2**20 if self.device.type == "cuda" else None
        return _peak_rss_mb(), device_mb

    def _fold(self, host_mb: float, device_mb: float | None) -> None:
        self.host_mb = max(host_mb, self.host_mb or 0.0)
        if device_mb is not None:
            self.device_mb = max(device_mb, self.device_mb or 0.0)


def _peak_rss_mb() -> float:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
