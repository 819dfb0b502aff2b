"""Statistics over the benchmark's windows and rounds: a path's undisturbed speed, each ratio's median,
its scatter, and how far to trust it."""

from __future__ import annotations

import random
import statistics

# The report's ratios, in the order it lists them (benchmark.json's keys come sorted, so a reader
# of earlier runs, pooling for one, takes the order from here).
BARE_EFFICIENCY = "data path efficiency, bare loop vs compute-only"
TRAINER_EFFICIENCY = "data path efficiency, Trainer vs compute-only"
OVERHEAD = "Lightning overhead, Trainer vs bare loop"
OVERHEAD_MS = "Lightning overhead per step (ms), Trainer minus bare loop"
LOOP_OVERHEAD = "Lightning overhead without callbacks or logger, vs bare loop"
LOOP_MS = "of which Lightning's loop (ms), Trainer without callbacks or logger minus bare loop"
CALLBACKS_MS = "of which callbacks and logger (ms), Trainer minus Trainer without them"
SPEED_UP = "speed-up, Trainer vs the fastest plain loop"
REPORT_ORDER = (BARE_EFFICIENCY, TRAINER_EFFICIENCY, OVERHEAD, OVERHEAD_MS, LOOP_OVERHEAD, LOOP_MS, CALLBACKS_MS, SPEED_UP)


def in_report_order(names: list[str]) -> list[str]:
    """Ratio names in the report's order; names it does not list (from other versions) after them, sorted."""
    known = [name for name in REPORT_ORDER if name in names]
    return known + sorted(name for name in names if name not in REPORT_ORDER)


def fastest_quarter(speeds: list[float]) -> float:
    """Mean of the fastest quarter of a path's windows (at least one).

    Other load on a shared host only ever slows a window down, so the fastest windows estimate
    the path's speed on an undisturbed machine (the reasoning behind ``timeit`` reporting its
    minimum), with less scatter than the single fastest window.
    """
    fastest = sorted(speeds, reverse=True)[: max(1, len(speeds) // 4)]
    return sum(fastest) / len(fastest)


def median_and_middle_half(values: list[float]) -> tuple[float, float, float]:
    """The median of the per-round values and their lower and upper quartile."""
    if len(values) < 2:
        return values[0], values[0], values[0]
    quartiles = statistics.quantiles(values, n=4, method="inclusive")
    return statistics.median(values), quartiles[0], quartiles[2]


def median_interval(values: list[float], confidence: float = 0.95, resamples: int = 2000,
                    seed: int = 0) -> tuple[float, float] | None:
    """Percentile-bootstrap interval of the median of the per-round values.

    The middle half says how much single rounds scatter; this says how far the median itself
    can be trusted, i.e. whether a run decides a comparison at all (a 5% target, say, with an
    interval of 3-8% is undecided). Resampling with a fixed seed keeps a report's figures
    reproducible from its ``benchmark.json``. None for a single round: resampling one value
    always gives that value, an interval of zero width that would claim a certainty one round
    cannot give.
    """
    if len(values) < 2:
        return None
    rng = random.Random(seed)
    medians = sorted(statistics.median(rng.choices(values, k=len(values))) for _ in range(resamples))
    tail = (1 - confidence) / 2
    return medians[int(tail * (resamples - 1))], medians[round((1 - tail) * (resamples - 1))]


def format_interval(name: str, interval: tuple[float, float] | None, separator: str = " to ") -> str:
    """A median's interval as the report prints it, or why there is none."""
    if interval is None:
        return "none from one round"
    return separator.join(format_ratio(name, bound) for bound in interval)


def format_ratio(name: str, value: float) -> str:
    """A ratio as the report prints it: milliseconds for "(ms)" ratios, "2.71x" for speed-ups, else a share."""
    if "(ms)" in name:
        return f"{value:.2f}"
    if name.startswith("speed-up"):
        return f"{value:.2f}x"
    return f"{value:.1%}"
