"""Timing and peak-memory measurement for the benchmark."""

from __future__ import annotations

import resource
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch


@dataclass
class Measurement:
    """One measured training path."""

    name: str
    images_per_s: float
    batch_size: int
    steps: int
    peak_host_mb: float | None = None
    peak_device_mb: float | None = None
    notes: str = ""
    extra: dict = field(default_factory=dict)

    def as_dict(self) -> dict:
        return asdict(self)


def synchronize(device: torch.device) -> None:
    """Wait for queued device work, so wall-clock times cover it."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class StepTimer:
    """Times a steady-state window: ``warmup`` steps are skipped, the next ``steps`` are timed.

    Call :meth:`tick` once at the start of every step; :attr:`done` turns true after the
    window. The device is synchronised only at the window's two ends.
    """

    def __init__(self, warmup: int, steps: int, batch_size: int, device: torch.device) -> None:
        self.warmup, self.steps, self.batch_size, self.device = warmup, steps, batch_size, device
        self.count = 0
        self._start = 0.0
        self.seconds: float | None = None

    @property
    def done(self) -> bool:
        return self.seconds is not None

    def tick(self) -> None:
        if self.count == self.warmup:
            synchronize(self.device)
            self._start = time.perf_counter()
        elif self.count == self.warmup + self.steps:
            synchronize(self.device)
            self.seconds = time.perf_counter() - self._start
        self.count += 1

    @property
    def images_per_s(self) -> float:
        if self.seconds is None:
            raise RuntimeError(f"the timing window was not reached (ran {self.count} of {self.warmup + self.steps + 1} steps)")
        return self.steps * self.batch_size / self.seconds


class PeakMemory:
    """Peak resident host memory of this process (and device memory on CUDA) over a ``with`` block.

    On Linux the peak is reset at the start through ``/proc/self/clear_refs``, so each block
    reports its own peak; elsewhere it is the process's peak so far.
    """

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.host_mb: float | None = None
        self.device_mb: float | None = None

    def __enter__(self) -> PeakMemory:
        try:
            Path("/proc/self/clear_refs").write_text("5")
        except OSError:
            pass
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.host_mb = _peak_rss_mb()
        if self.device.type == "cuda":
            self.device_mb = torch.cuda.max_memory_allocated(self.device) / 2**20


def _peak_rss_mb() -> float:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
