"""Lightning's overhead measured step by step: Trainer and bare-loop steps in alternation."""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import Callback

from cnnlab.benchmark.measure import CallbacksAside, Stepper


@dataclass
class PairedTimes:
    """Seconds of each timed Trainer step and of the bare-loop step run right before it."""

    trainer: list[float] = field(default_factory=list)
    bare: list[float] = field(default_factory=list)

    def summary(self) -> dict[str, float]:
        """Mean step times, the overhead's mean and standard error (ms), and its share of a Trainer step."""
        differences = [t - b for t, b in zip(self.trainer, self.bare, strict=True)]
        trainer_ms, bare_ms = 1000 * statistics.fmean(self.trainer), 1000 * statistics.fmean(self.bare)
        spread = statistics.stdev(differences)  # the benchmark asks for two pairs at least
        return {
            "pairs": len(differences),
            "trainer_ms": trainer_ms,
            "bare_ms": bare_ms,
            "overhead_ms": trainer_ms - bare_ms,
            "overhead_standard_error_ms": 1000 * spread / math.sqrt(len(differences)),
            "overhead_share": 1 - bare_ms / trainer_ms,  # as the windows' share: 1 - Trainer speed / bare speed
        }


class PairedSteps(Callback):
    """Runs one bare-loop step between two Trainer steps and times both, ``pairs`` times.

    The timing windows compare paths seconds apart, and a shared host's speed changes within
    seconds, so their overhead figure scatters by about a millisecond per step from round to
    round. Here the two loops alternate step by step in one process: each pair sees the same
    machine, and the mean of the per-pair differences is known to a few hundredths of a
    millisecond after 1,000 pairs. Both models then take turns in the caches every step.

    The bare step runs at the end of a Trainer step (this callback comes last), so each loop's
    whole step, from fetching its batch to the optimizer, runs in one piece after the other's.
    Run at ``on_train_batch_start`` instead, between the Trainer's augmentation and its
    forward pass, the bare step evicted the Trainer's fresh batch and model from the caches,
    and the overhead came out about 0.3 ms per bf16 step higher on the dev CPU. Even at the end,
    the interplay biases the figure by some tenths of a millisecond, in either direction: a
    float32 run on the JPEG copy gave 0.13 ± 0.09 ms, less than Lightning's loop alone costs
    with a toy network (0.72 ms). So it is a diagnostic, off by default. A Trainer step
    is timed from this hook to the next, so it covers everything the Trainer does per step
    (logging, fetch, transfer, hooks, optimizer). The first ``warmup_steps`` pairs are not
    timed. A second phase, when ``phases`` names one, repeats the pairs with every other
    callback and the loggers taken off the Trainer.

    On a GPU, timing each step needs a synchronisation that takes away the overlap of
    Lightning's Python with the device's queued work, so the benchmark uses this on a CPU only.
    """

    def __init__(self, build_bare: Callable[[L.Trainer], Stepper], pairs: int, warmup_steps: int,
                 phases: list[str]) -> None:
        self.build_bare = build_bare
        self.pairs, self.warmup_steps = pairs, warmup_steps
        self.phases = phases  # the first with every callback; any second without them
        self.times = {name: PairedTimes() for name in phases}
        self._phase = 0
        self._bare: Stepper | None = None
        self._untimed = warmup_steps  # pairs still to run untimed in this phase
        self._trainer_step_timed = False  # whether the Trainer step now ending follows a timed bare step
        self._trainer_step_start = 0.0
        self._aside = CallbacksAside()

    @property
    def steps_needed(self) -> int:
        """Trainer steps that cover every phase (a spare: the fit stops itself after the last pair)."""
        return len(self.phases) * (self.warmup_steps + self.pairs) + 2

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        now = time.perf_counter()
        if self._bare is None:
            self._bare = self.build_bare(trainer)
        if self._trainer_step_timed:
            times = self.times[self.phases[self._phase]]
            times.trainer.append(now - self._trainer_step_start)
            if len(times.trainer) == self.pairs and not self._next_phase(trainer):
                trainer.should_stop = True
                return
        start = time.perf_counter()
        self._bare.step()
        bare_seconds = time.perf_counter() - start
        self._trainer_step_timed = self._untimed == 0
        if self._trainer_step_timed:
            self.times[self.phases[self._phase]].bare.append(bare_seconds)
        else:
            self._untimed -= 1
        self._trainer_step_start = time.perf_counter()

    def _next_phase(self, trainer: L.Trainer) -> bool:
        """Move on to the next phase (the callbacks taken off); False when every phase is done."""
        self._phase += 1
        self._untimed = self.warmup_steps
        self._trainer_step_timed = False
        if self._phase == len(self.phases):
            self._aside.put_back(trainer)
            return False
        self._aside.take_off(trainer, keep=self)
        return True
