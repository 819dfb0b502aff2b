"""Pooling the rounds of several benchmark runs of one setup into one figure per ratio.

A run's median of per-round ratios is known to a few points at best (the host's speed drifts
from round to round), so a target near the line needs more rounds than one run holds. Runs of
the same setup on the same machine can be pooled round by round: the pooled median and its
bootstrap interval then rest on every run's rounds. Runs of different setups cannot, so the
setups (every setting in the runs' Hydra records but how long they measured and where the data
loads from) are compared first; and a run given twice would count its rounds twice, so it is refused.
The runs are taken in one order whatever order they are given in (the bootstrap draws from their
rounds in that order), so the same runs give the same figures.
"""

from __future__ import annotations

import json
import re
import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from omegaconf import DictConfig, OmegaConf

from cnnlab.benchmark.rounds import format_interval, format_ratio, in_report_order, median_interval
from cnnlab.errors import ConfigValueError, InputNotFoundError
from cnnlab.utils.moved_classes import with_current_targets

RESULTS_FILE = "benchmark.json"
# What must be the same for the rounds of two runs to measure the same thing.
SETUP_KEYS = ("model", "data", "image_size", "batch_size", "device", "host", "torch", "precision", "optimizer",
              "channels_last", "host_malloc", "augmentation")
# The same from the run's Hydra record, where it has one: the header names the model's class and
# the data's, not their settings (simple_cnn and simple_cnn_bn are both 'SimpleCNN'). The Trainer's
# settings, callbacks and logger are part of what its windows time, and the benchmark's own settings
# choose the paths that share each round (and the plain loop's workers), so all of these compare.
RECORD_SECTIONS = ("model", "classifier", "optimizer", "scheduler", "data", "trainer", "callbacks", "logger",
                   "benchmark")
# Settings that may differ between poolable runs. Data settings that only say where or how fast
# the data loads (data.root is not one of them: another folder is other data).
LOADING_KEYS = frozenset({"data.num_workers", "data.cache_dir", "data.decode_workers"})
# How long to measure and what the report is labelled, not what a round measures: the number of
# rounds (pooling exists to add rounds), the report's command line, and the step-paired
# diagnostic, which runs after the last round and adds no ratio per round.
MEASURING_KEYS = frozenset({"benchmark.rounds", "benchmark.command", "benchmark.paired_steps"})
# Trainer settings the benchmark replaces in every Trainer it builds (tasks/benchmark.py: the
# whole epoch runs with max_epochs=1, the rounds with max_epochs=-1, each in the run's folder),
# so they cannot differ between runs' rounds.
REPLACED_KEYS = frozenset({"trainer.max_epochs", "trainer.default_root_dir"})
NOT_COMPARED = LOADING_KEYS | MEASURING_KEYS | REPLACED_KEYS
# Settings added to conf after benchmark runs were recorded, with the value a run recorded
# before then ran with: such a run and a later one with that value ran the same setup.
ADDED_SETTINGS: dict[str, Any] = {"model.channels": [32, 64, 128], "model.hidden": 512, "data.drop_last": False}
DIFFERENCES_NAMED = 3
# "runs 50 timed steps in turn, after 5 untimed ones (... 30 before its / a path's first window)"; "1 timed step", "1 untimed one"
WINDOW_NUMBERS = re.compile(r"runs (\d+) timed steps? in turn, after (\d+) untimed ones? \(.*?(\d+) before (?:its|a path's) first window\)")


class _NotSet:
    def __repr__(self) -> str:
        return "not set"


NOT_SET = _NotSet()


@dataclass
class BenchmarkRun:
    """One benchmark run's setup and per-round ratios, as its ``benchmark.json`` holds them."""

    path: Path
    header: dict[str, Any]
    ratios_per_round: dict[str, list[float]]
    file: Path  # its benchmark.json, links resolved
    setup: dict[str, Any] | None = None  # the record's settings by dotted key; None without a record

    @property
    def window_setup(self) -> str:
        """The timing windows' length and warm-up; the number of rounds may differ between pooled runs.

        Read as numbers from the report's sentence, whose wording changed over time (45de7a8 on
        said how many untimed steps the Trainer's windows get) while the timing did not.
        """
        text = self.header.get("windows", "").split("; ", 1)[-1]
        found = WINDOW_NUMBERS.search(text)
        if found is None:
            return text
        steps, untimed, first = found.groups()
        return f"{steps} timed steps after {untimed} untimed ones, {first} before a path's first window"


@dataclass
class PooledRatio:
    """One ratio: each run's median and 95% interval, and the same over all the runs' rounds."""

    name: str
    per_run: list[tuple[float, tuple[float, float] | None, int]]  # (median, interval or None for one round, rounds)
    median: float
    interval: tuple[float, float] | None
    rounds: int


def load_run(path: Path) -> BenchmarkRun:
    """A run from its folder (or its ``benchmark.json``).

    ``benchmark.json`` does not record the image size nor the model's, data's, Trainer's and other
    settings; they are read from the run's Hydra record (``.hydra/config.yaml``) where there is
    one, and are None otherwise.
    """
    file = path / RESULTS_FILE if path.is_dir() else path
    if not file.is_file():
        raise InputNotFoundError(f"no {RESULTS_FILE} at {path}: give a benchmark run folder "
                                 f"(logs/benchmark/runs/<run>) or its {RESULTS_FILE}")
    try:
        results = json.loads(file.read_text())
        header = dict(results["header"])
        ratios = _ratios_per_round(results["ratios_per_round"])
    except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError, ValueError) as error:
        # Another file of the run (its benchmark.md, say) is a wrong argument, not a cut-off run.
        hint = (f"pass the run's folder ({file.parent})" if file.name != RESULTS_FILE
                else "was the run interrupted before it wrote its results?")
        raise ConfigValueError(f"{file} is not a benchmark report ({type(error).__name__}: {error}); {hint}") from error
    image_size, setup = _read_record(file.parent)
    return BenchmarkRun(file.parent, {"image_size": image_size, **header}, ratios, file.resolve(), setup)


def pool(runs: list[BenchmarkRun]) -> list[PooledRatio]:
    """Every ratio the runs share, per run and pooled over all their rounds.

    The runs are pooled in :func:`canonical_order`, so the figures do not depend on the order
    they are given in. Raises ConfigValueError when a run is given twice (the same
    ``benchmark.json``, or a copy of it), or when two runs differ in setup (model, data, image
    size, precision, machine, CPU model where both runs recorded it ...; with
    Hydra records, any model, classifier, optimizer, scheduler, data, trainer, callback, logger or
    benchmark setting but those in ``NOT_COMPARED``, such as ``benchmark.rounds``) or in their
    windows' length, naming the difference.
    """
    if not runs:
        raise ConfigValueError("no benchmark runs to pool")
    for i, run in enumerate(runs):
        for earlier in runs[:i]:
            copy = (run.header, run.ratios_per_round) == (earlier.header, earlier.ratios_per_round)
            if run.file == earlier.file or copy:
                given = f"one {RESULTS_FILE}" if run.file == earlier.file else f"identical {RESULTS_FILE} files"
                raise ConfigValueError(f"{run.path} and {earlier.path} are the same run ({given}): its rounds "
                                       f"would count twice; give each run once")
    # The host's name and the architecture do not tell two machines apart (every VM may be "vm",
    # x86_64); the CPU model does. Runs from before it was recorded are of an unknown CPU and pool
    # with any, so the known models are compared among themselves, not only with the first run's.
    known = [run for run in runs if run.header.get("cpu_model")]
    for run in known[1:]:
        if run.header["cpu_model"] != known[0].header["cpu_model"]:
            raise ConfigValueError(f"{run.path} and {known[0].path} ran on different CPUs (cpu_model: "
                                   f"{run.header['cpu_model']!r} against {known[0].header['cpu_model']!r}); pool only "
                                   f"runs of one command on one machine")
    first = runs[0]
    for run in runs[1:]:
        for key in SETUP_KEYS:
            if run.header.get(key) != first.header.get(key):
                raise ConfigValueError(
                    f"{run.path} and {first.path} ran different setups ({key}: {run.header.get(key)!r} against "
                    f"{first.header.get(key)!r}); pool only runs of one command on one machine")
        if run.setup is not None and first.setup is not None:
            keys = dict.fromkeys([*first.setup, *run.setup])
            differ = [key for key in keys if not _same_setting(key, run.setup.get(key, NOT_SET), first.setup.get(key, NOT_SET))]
            if differ:
                named = "; ".join(f"{key}: {run.setup.get(key, NOT_SET)!r} against {first.setup.get(key, NOT_SET)!r}"
                                  for key in differ[:DIFFERENCES_NAMED])
                more = f"; and {len(differ) - DIFFERENCES_NAMED} more" if len(differ) > DIFFERENCES_NAMED else ""
                raise ConfigValueError(
                    f"{run.path} and {first.path} ran different setups ({named}{more}); pool only runs of one "
                    f"command on one machine (their settings are in each run's .hydra/config.yaml)")
        if run.window_setup != first.window_setup:
            raise ConfigValueError(f"{run.path} and {first.path} timed different windows ({run.window_setup!r} "
                                   f"against {first.window_setup!r}); pool only runs with the same benchmark.steps "
                                   f"and warm-up")
    # Refusals name the runs as given; the figures come from one order of the runs, however given.
    runs = canonical_order(runs)
    first = runs[0]
    names = in_report_order([name for name in first.ratios_per_round if all(name in run.ratios_per_round for run in runs)])
    pooled = []
    for name in names:
        per_run = []
        for run in runs:
            values = run.ratios_per_round[name]
            per_run.append((statistics.median(values), median_interval(values), len(values)))
        values = [value for run in runs for value in run.ratios_per_round[name]]
        pooled.append(PooledRatio(name, per_run, statistics.median(values), median_interval(values), len(values)))
    return pooled


def canonical_order(runs: list[BenchmarkRun]) -> list[BenchmarkRun]:
    """The runs by the time they ran, then by their rounds: one order for the same runs however given."""
    return sorted(runs, key=lambda run: (str(run.header.get("date", "")), json.dumps(run.ratios_per_round, sort_keys=True)))


def to_markdown(runs: list[BenchmarkRun], pooled: list[PooledRatio]) -> str:
    """A table of each ratio per run (in :func:`canonical_order`, as :func:`pool` took them) and
    pooled: the median with its 95% bootstrap interval."""
    runs = canonical_order(runs)
    header = runs[0].header
    size = f" at {header['image_size']}x{header['image_size']}" if header.get("image_size") else ""
    # pool() refused runs of two known CPU models; runs from before the header had one lack it.
    cpu_model = next((run.header["cpu_model"] for run in runs if run.header.get("cpu_model")), "not recorded")
    unrecorded = [str(i) for i, run in enumerate(runs, start=1) if not run.header.get("cpu_model")]
    cpu = f"; CPU model: {cpu_model}" + (f" (not recorded by run {', '.join(unrecorded)})"
                                         if unrecorded and cpu_model != "not recorded" else "")
    lines = [f"# {len(runs)} benchmark {'run' if len(runs) == 1 else 'runs'} pooled: {header.get('model')} on "
             f"{header.get('data')}{size}, batch {header.get('batch_size')}, {header.get('precision')}", "",
             f"- device: {header.get('device')}{cpu}; host: {header.get('host')}; torch {header.get('torch')}"]
    lines += [f"- run {i}: {run.path} ({run.header.get('date', '?')}): `{run.header.get('command', '?')}`"
              for i, run in enumerate(runs, start=1)]
    lines += ["", "Each cell: the median of the per-round ratios [its 95% interval, bootstrap over the rounds].", "",
              "| ratio | " + " | ".join(f"run {i}" for i in range(1, len(runs) + 1)) + " | pooled | pooled rounds |",
              "|---|" + "---:|" * (len(runs) + 2)]
    for ratio in pooled:
        cells = [_cell(ratio.name, median, interval) for median, interval, _ in ratio.per_run]
        lines.append(f"| {ratio.name} | " + " | ".join(cells)
                     + f" | {_cell(ratio.name, ratio.median, ratio.interval)} | {ratio.rounds} |")
    return "\n".join(lines) + "\n"


def _ratios_per_round(ratios: Any) -> dict[str, list[float]]:
    """``benchmark.json``'s per-round ratios, each a non-empty list of numbers (ValueError otherwise)."""
    if not isinstance(ratios, dict) or not ratios:
        raise ValueError("ratios_per_round holds no ratios")
    for name, values in ratios.items():
        if not isinstance(values, list) or not values:
            raise ValueError(f"ratios_per_round[{name!r}] holds no rounds")
        if not all(isinstance(value, (int, float)) and not isinstance(value, bool) for value in values):
            raise ValueError(f"ratios_per_round[{name!r}] holds a value that is not a number")
    return ratios


def _read_record(folder: Path) -> tuple[int | None, dict[str, Any] | None]:
    """The image size and the settings to compare by dotted key, from the run's Hydra record."""
    record = folder / ".hydra" / "config.yaml"
    if not record.is_file():
        return None, None
    # Pooling a run whose record cannot be read as one without a record would skip the setup check.
    def unreadable(what: object) -> ConfigValueError:
        return ConfigValueError(f"{record} is not a readable Hydra record ({type(what).__name__}: {what}); it holds "
                                f"the run's settings, which pooling compares: restore it from a copy of the run, or "
                                f"leave this run out")

    try:
        config = OmegaConf.load(record)
    except (yaml.YAMLError, UnicodeDecodeError) as error:
        raise unreadable(error) from error
    if not isinstance(config, DictConfig):
        raise unreadable(config)
    image_size = OmegaConf.select(config, "data.image_size", throw_on_resolution_failure=False)
    setup: dict[str, Any] = {}
    # Unresolved: interpolations (${data.image_size}, ${paths...}) compare as written, and
    # resolvers that only the training script registers are not needed here.
    written = with_current_targets(OmegaConf.to_container(config, resolve=False))
    for section in RECORD_SECTIONS:
        setup.update(_flatten(section, written.get(section, NOT_SET)))
    return image_size, {key: value for key, value in setup.items() if key not in NOT_COMPARED}


def _same_setting(key: str, one: Any, other: Any) -> bool:
    """Equal values, or a setting added later (:data:`ADDED_SETTINGS`) not set on one side and its old value on the other."""
    if one == other:
        return True
    return NOT_SET in (one, other) and key in ADDED_SETTINGS and ADDED_SETTINGS[key] in (one, other)


def _flatten(prefix: str, value: Any) -> dict[str, Any]:
    if isinstance(value, dict) and value:
        return {key: leaf for name, item in value.items() for key, leaf in _flatten(f"{prefix}.{name}", item).items()}
    return {prefix: value}


def _cell(name: str, median: float, interval: tuple[float, float] | None) -> str:
    return f"{format_ratio(name, median)} [{format_interval(name, interval, separator=', ')}]"
