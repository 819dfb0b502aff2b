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
    images_per_s: float  # median over the timing windows
    batch_size: int
    steps: int
    peak_host_mb: float | None = None
    peak_device_mb: float | None = None
    notes: str = ""
    best_images_per_s: float | None = None  # the fastest window
    extra: dict = field(default_factory=dict)

    def as_dict(self) -> dict:
        return asdict(self)


def synchronize(device: torch.device) -> None:
    """Wait for queued device work, so wall-clock times cover it."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class StepTimer:
    """Times steady-state windows: ``warmup`` steps are skipped, then ``repeats`` back-to-back
    windows of ``steps`` steps each are timed.

    Call :meth:`tick` once at the start of every step; :attr:`done` turns true after the last
    window. The device is synchronised only at window boundaries. Throughput is taken from the
    median window; :attr:`best_images_per_s` gives the fastest one.
    """

    def __init__(self, warmup: int, steps: int, batch_size: int, device: torch.device, repeats: int = 1) -> None:
        self.warmup, self.steps, self.batch_size, self.device = warmup, steps, batch_size, device
        self.repeats = repeats
        self.count = 0
        self._start = 0.0
        self.windows: list[float] = []

    @property
    def done(self) -> bool:
        return len(self.windows) == self.repeats

    def tick(self) -> None:
        since_warmup = self.count - self.warmup
        if since_warmup >= 0 and since_warmup % self.steps == 0 and not self.done:
            synchronize(self.device)
            now = time.perf_counter()
            if since_warmup > 0:
                self.windows.append(now - self._start)
            self._start = now
        self.count += 1

    def _check(self) -> None:
        if not self.done:
            needed = self.warmup + self.steps * self.repeats + 1
            raise RuntimeError(f"the timing windows were not reached (ran {self.count} of {needed} steps)")

    @property
    def images_per_s(self) -> float:
        """Throughput of the median window."""
        self._check()
        return self.steps * self.batch_size / sorted(self.windows)[len(self.windows) // 2]

    @property
    def best_images_per_s(self) -> float:
        """Throughput of the fastest window."""
        self._check()
        return self.steps * self.batch_size / min(self.windows)


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
