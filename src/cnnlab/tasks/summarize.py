"""Summarising a sweep: one row per job (its overrides and final metrics), best first, and a plot.

A sweep folder (``logs/train/multiruns/<sweep>``) holds one sub-folder per job with Hydra's
``.hydra/overrides.yaml`` and, when the job finished, the ``metrics.json`` the training task
wrote. A job folder without ``metrics.json``, or whose log records that the run failed after
writing it, is a failed (or unfinished) job and is listed as such, with the error its log
recorded. Any folder of run folders (``logs/train/runs``) works too.
"""

from __future__ import annotations

import csv
import io
import json
import math
import re
from bisect import bisect_right
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from cnnlab.errors import ConfigValueError
from cnnlab.utils.config import RESULTS_FILE, override_key, session_overrides
from cnnlab.utils.hydra_callbacks import SEARCH_RECORD, expected_direction
from cnnlab.utils.io import atomic_write

DEFAULT_METRIC = "val/acc_best"
DIRECTIONS = ("maximize", "minimize")
# Metrics shown in the Markdown table after the optimised one, when the jobs have them (the CSV has all).
TABLE_METRICS = ("val/acc_best", "val/acc", "val/acc_top5", "val/loss", "test/acc", "test/acc_top5", "test/loss",
                 "epochs", "fit_seconds", "params_trainable")
# What the training task logs when a run ends (it logs these very strings): a job's outcome is
# read from these lines, since a run can fail after writing metrics.json.
FAILED_LOG_MARK = "training failed: "
# A resumed session that failed before training (refused, or no device, no data): the run is as it was.
RESUME_REFUSED_LOG_MARK = "resumed session failed before training: "
FINISHED_LOG_MARK = "results in "  # the last line, after metrics.json is written
# A run stopped by the user (Ctrl-C); the line goes on with its last checkpoint and the command that continues it.
INTERRUPTED_LOG_MARK = "interrupted (Ctrl-C)"
FINISHED_MARK = f"] - {FINISHED_LOG_MARK}"  # as the whole message of a log record
LOG_RECORD_START = re.compile(r"\[[^\]]*\]\[[^\]]*\]\[[A-Z]+\] - ")  # Hydra's "[<time>][<logger>][<LEVEL>] - "
# A log record's time (logging's asctime, local time, as resume_session names a session).
LOG_RECORD_TIME = re.compile(r"\[(\d{4}-\d\d-\d\d) (\d\d):(\d\d):(\d\d)[,.\]]")


@dataclass
class Job:
    """One job of a sweep: where it ran, what it overrode, and what it reached."""

    name: str
    path: Path
    overrides: dict[str, str]
    metrics: dict[str, Any] = field(default_factory=dict)
    error: str = ""
    # Stopped by the user (Ctrl-C) before it finished, which is no failure: error holds the
    # logged line, with the command that continues the run.
    interrupted: bool = False
    # A run in the folder failed (or was interrupted) after an earlier one had finished (e.g. a
    # resumed session): the metrics are the finished run's, so the job still counts, with that shown.
    later_failure: str = ""
    later_interrupted: bool = False
    # The Hydra record (.hydra/ or a resumed session's) the overrides came from, and the values
    # its config had for swept keys this job did not override (filled in by summarize()).
    record_dir: Path | None = None
    from_config: dict[str, str] = field(default_factory=dict)

    def setting(self, key: str) -> str:
        """The job's value of an override key: its own override, else its config's value ('' if unknown)."""
        return self.overrides.get(key, self.from_config.get(key, ""))

    @property
    def unranked(self) -> bool:
        """Whether the job has no results to rank (it failed, or was interrupted before finishing)."""
        return not self.metrics or bool(self.error)

    @property
    def failed(self) -> bool:
        """Whether the job has no results to rank for another reason than the user stopping it."""
        return self.unranked and not self.interrupted

    @property
    def status(self) -> str:
        if self.interrupted:
            return self.error
        if self.failed:
            return f"failed: {self.error}"
        if self.later_failure:
            return f"ok; a later run in its folder {'was' if self.later_interrupted else 'failed:'} {self.later_failure}"
        return "ok"


@dataclass
class SweepSummary:
    """The jobs of a sweep, best first (failed jobs last), and what they were ranked by."""

    sweep_dir: Path
    metric: str
    direction: str
    jobs: list[Job]
    swept: list[str]              # override keys whose value differs between jobs
    common: dict[str, str]        # overrides every job shares
    best_found: dict[str, Any] | None = None  # Optuna's optimization_results.yaml, when the sweep has one

    @property
    def finished(self) -> list[Job]:
        return [job for job in self.jobs if not job.unranked]


def parse_overrides(lines: Sequence[str]) -> dict[str, str]:
    """``["model=simple_cnn", "+trainer.x=1", "~callbacks.progress_bar"]`` as ``{key: value}``."""
    parsed: dict[str, str] = {}
    for line in lines:
        _, has_value, value = str(line).partition("=")
        parsed[override_key(line)] = "(deleted)" if str(line).startswith("~") else value if has_value else ""
    return parsed


@dataclass
class LoggedOutcome:
    """What a job's log (the training task's) records."""

    failure: str = ""         # the error of a run that failed after the last finished one
    interruption: str = ""    # the line of a run interrupted (Ctrl-C) after the last finished one, from its mark on
    # Only the later of those two is kept: a session's end replaces the previous session's.
    finished: bool = False    # whether any run finished (wrote its results)
    resume_failure: str = ""  # the error of the last resumed session that failed before training
    # When (as a session name: "resumed_<date>_<time>") the last run finished and each early
    # failure of a resumed session was logged; None for a record without a readable time.
    finished_at: str | None = None
    refused_at: list[str | None] = field(default_factory=list)


def _as_session_time(line: str) -> str | None:
    # "[2026-01-01 10:00:05,123][...]" as "resumed_2026-01-01_10-00-05": comparable with session names.
    match = LOG_RECORD_TIME.match(line)
    return "resumed_{}_{}-{}-{}".format(*match.groups()) if match else None


def logged_outcome(job_dir: Path) -> LoggedOutcome:
    """What the job's log records: the error of a run that failed, or the line of one the user
    interrupted, after the last finished one (whichever came later; "" if none), whether any run
    finished, the error of the last resumed session that failed before training ("" if none
    did), and when those were logged."""
    errors = {FAILED_LOG_MARK: "", INTERRUPTED_LOG_MARK: "", RESUME_REFUSED_LOG_MARK: ""}
    session_ends = (FAILED_LOG_MARK, INTERRUPTED_LOG_MARK)
    outcome = LoggedOutcome()
    for log_file in sorted(job_dir.glob("*.log")):
        current = None  # the mark whose error the following lines continue
        for line in log_file.read_text(errors="replace").splitlines():
            if FINISHED_MARK in line:
                errors[FAILED_LOG_MARK], errors[INTERRUPTED_LOG_MARK], current = "", "", None
                outcome.finished, outcome.finished_at = True, _as_session_time(line)
            elif mark := next((m for m in errors if m in line), None):
                if mark in session_ends:  # the later session's end replaces the earlier one's
                    errors[FAILED_LOG_MARK] = errors[INTERRUPTED_LOG_MARK] = ""
                # The interrupted line reads on from its mark ("interrupted (Ctrl-C); its last checkpoint ...").
                errors[mark] = (line[line.index(mark):] if mark == INTERRUPTED_LOG_MARK else line.split(mark, 1)[1]).strip()
                current = mark
                if mark == RESUME_REFUSED_LOG_MARK:
                    outcome.refused_at.append(_as_session_time(line))
            elif current and not LOG_RECORD_START.match(line):
                if line.strip():  # the error's further lines (the files it names, its fix), joined into one row
                    errors[current] += " " + line.strip()
            else:
                current = None
    outcome.failure, outcome.resume_failure = errors[FAILED_LOG_MARK], errors[RESUME_REFUSED_LOG_MARK]
    outcome.interruption = errors[INTERRUPTED_LOG_MARK]
    return outcome


def job_folders(sweep_dir: Path) -> list[Path]:
    """The job folders of a sweep: sub-folders with Hydra's ``.hydra/`` or a ``metrics.json``, in job order."""
    folders = [p for p in sweep_dir.iterdir() if p.is_dir() and ((p / ".hydra").is_dir() or (p / RESULTS_FILE).is_file())]
    return sorted(folders, key=lambda p: (0, int(p.name), "") if p.name.isdigit() else (1, 0, p.name))


def _session_at(sessions: list[str], time: str) -> str:
    # The last session that started by then; "" (the first) sorts before every resumed_<...>.
    return sessions[bisect_right(sessions, time) - 1]


def session_overrides_file(job_dir: Path, results: dict[str, Any] | None, outcome: LoggedOutcome) -> Path:
    """The ``overrides.yaml`` of the session whose results ``metrics.json`` holds, or without
    results (``None``) of the last session that was not refused.

    A resumed run keeps its first session's record in ``.hydra/`` and each later session's in
    ``.hydra/resumed_<date>_<time>/``; the row must show the overrides (``trainer.max_epochs``,
    ``ckpt_path``) the metrics came from. A resumed session's ``metrics.json`` names it
    (``session``); one without that key and without ``resumed_from`` is the first session's.
    Older results are placed by the job log's times (session names sort by time), and failing
    those, by file times, which a copied folder does not keep.
    """
    results = results or {}
    named = results.get("session")
    if isinstance(named, str) and session_overrides(job_dir, named).is_file():
        return session_overrides(job_dir, named)
    if results and "resumed_from" not in results:
        return session_overrides(job_dir, "")
    sessions = ["", *sorted(p.parent.name for p in (job_dir / ".hydra").glob("resumed_*/overrides.yaml"))]
    if results and outcome.finished_at:
        return session_overrides(job_dir, _session_at(sessions, outcome.finished_at))
    if not results and None not in outcome.refused_at:
        refused = {_session_at(sessions, time) for time in outcome.refused_at if time} - {""}
        return session_overrides(job_dir, [session for session in sessions if session not in refused][-1])
    first = session_overrides(job_dir, "")
    metrics_file = job_dir / RESULTS_FILE
    written = metrics_file.stat().st_mtime if results and metrics_file.is_file() else math.inf
    resumed = [session_overrides(job_dir, s) for s in sessions[1:] if session_overrides(job_dir, s).stat().st_mtime <= written]
    return resumed[-1] if resumed else first


def read_job(job_dir: Path) -> Job:
    """A job's overrides (those of the session its results came from) and final metrics (``metrics.json``, absent if it failed)."""
    outcome = logged_outcome(job_dir)
    failure, finished = outcome.failure, outcome.finished
    results = job_dir / RESULTS_FILE
    error, metrics = "", None
    if results.is_file():
        try:
            metrics = json.loads(results.read_text(encoding="utf-8"))
        except ValueError as decode_error:  # not JSON, or not text at all (UnicodeDecodeError)
            error = f"unreadable {RESULTS_FILE}: {decode_error}"
        else:
            if not isinstance(metrics, dict):  # JSON, but no metrics by name: [0.7], "done", null
                shown = json.dumps(metrics)
                shown = shown if len(shown) <= 40 else f"{shown[:37]}..."
                error, metrics = f"unreadable {RESULTS_FILE}: it holds {shown}, not metrics by name", None
    overrides_file = session_overrides_file(job_dir, metrics, outcome)
    overrides = parse_overrides(yaml.safe_load(overrides_file.read_text()) or []) if overrides_file.is_file() else {}
    job = Job(job_dir.name, job_dir, overrides, error=error, record_dir=overrides_file.parent)
    if not results.is_file():
        # A resumed session's early failure leaves a finished run as it was; without results it is the news.
        job.interrupted = bool(outcome.interruption)
        job.error = (failure or outcome.interruption
                     or (outcome.resume_failure and f"a resumed session failed before training: {outcome.resume_failure}")
                     or f"no {RESULTS_FILE} (the job crashed, was killed, or is still running)")
        return job
    job.metrics = metrics or {}
    if (failure or outcome.interruption) and finished:
        job.later_failure = failure or outcome.interruption
        job.later_interrupted = bool(outcome.interruption)
    elif failure:
        # The run wrote its metrics, then failed before finishing: Hydra counted the job as failed.
        job.error = job.error or f"{failure} (after writing {RESULTS_FILE})"
    return job


def configured_values(record_dir: Path, keys: Sequence[str]) -> dict[str, str]:
    """What a run's Hydra record says each of ``keys`` was: a config group's choice (``model``),
    else the config's value (``optimizer.lr``, as written: interpolations unresolved); keys it
    has no value for are left out. Each record file is read once."""
    hydra_file, config_file = record_dir / "hydra.yaml", record_dir / "config.yaml"
    hydra = yaml.safe_load(hydra_file.read_text()) if hydra_file.is_file() else None
    choices = ((((hydra or {}).get("hydra") or {}).get("runtime") or {}).get("choices") or {})
    config = yaml.safe_load(config_file.read_text()) if config_file.is_file() else None
    values: dict[str, str] = {}
    for key in keys:
        node: Any = choices.get(key) if key in choices else config
        for name in [] if key in choices else key.split("."):
            node = node.get(name) if isinstance(node, dict) else None
        if node is not None and not isinstance(node, dict):
            values[key] = str(node)
    return values


def sweep_settings(jobs: Sequence[Job]) -> tuple[str | None, str | None, list[str]]:
    """The optimised metric the jobs ran with, the sweeper's direction (Optuna's) and the
    parameters it may search (Optuna's ``hydra.sweeper.params``; a value fixed on the command
    line is still among them), where recorded."""
    for job in jobs:
        config_file, hydra_file = job.path / ".hydra" / "config.yaml", job.path / ".hydra" / "hydra.yaml"
        if config_file.is_file() and hydra_file.is_file():
            metric = (yaml.safe_load(config_file.read_text()) or {}).get("optimized_metric")
            sweeper = ((yaml.safe_load(hydra_file.read_text()) or {}).get("hydra") or {}).get("sweeper") or {}
            direction, params = sweeper.get("direction"), sweeper.get("params")
            return (metric, direction if isinstance(direction, str) else None,
                    [str(key) for key in params] if isinstance(params, dict) else [])
    return None, None, []


def _sort_key(job: Job, metric: str, direction: str) -> tuple[int, float]:
    value = job.metrics.get(metric)
    if job.unranked:
        return 2, 0.0
    if not isinstance(value, (int, float)) or math.isnan(value):
        return 1, 0.0
    return 0, -value if direction == "maximize" else value


def summarize(sweep_dir: str | Path, metric: str | None = None, direction: str | None = None) -> SweepSummary:
    """Read every job of ``sweep_dir`` and rank them by ``metric`` (default: the sweep's ``optimized_metric``).

    ``direction`` (``maximize``/``minimize``) defaults to the Optuna sweeper's for the metric it
    optimised, else ``minimize`` for a loss and ``maximize`` for anything else.
    Raises :class:`ConfigValueError` for a missing or empty folder, a file, a single run folder, and for a
    metric no job recorded.
    """
    sweep_dir = Path(sweep_dir)
    if sweep_dir.exists() and not sweep_dir.is_dir():
        raise ConfigValueError(f"{sweep_dir} is a file, not a folder; pass a sweep folder like logs/train/multiruns/<sweep>")
    if not sweep_dir.is_dir():
        raise ConfigValueError(f"sweep folder {sweep_dir} does not exist; pass a folder like logs/train/multiruns/<sweep>")
    jobs = [read_job(folder) for folder in job_folders(sweep_dir)]
    if not jobs and ((sweep_dir / ".hydra").is_dir() or (sweep_dir / RESULTS_FILE).is_file()):
        raise ConfigValueError(f"{sweep_dir} is a run folder (it holds .hydra/ or {RESULTS_FILE} itself), not a folder of "
                               f"runs; to compare runs, pass the folder that holds them, e.g. {sweep_dir.parent}")
    if not jobs:
        raise ConfigValueError(f"{sweep_dir} holds no job folders (sub-folders with .hydra/ or {RESULTS_FILE}); "
                               f"pass a sweep folder like logs/train/multiruns/<sweep>")
    recorded_metric, recorded_direction, searched = sweep_settings(jobs)
    ranked_by = metric or recorded_metric or DEFAULT_METRIC
    # The sweeper's direction belongs to the metric it optimised; any other metric (a loss
    # passed with --metric, val/loss as optimized_metric of a basic sweep) goes by its kind.
    own_direction = recorded_direction if ranked_by == recorded_metric else None
    direction = direction or own_direction or expected_direction(ranked_by) or "maximize"
    if direction not in DIRECTIONS:
        raise ConfigValueError(f"direction must be one of {DIRECTIONS}, got {direction!r}")
    known = sorted({key for job in jobs for key, value in job.metrics.items() if isinstance(value, (int, float))})
    # A sweep whose jobs all failed has no metrics to choose from: its table of failures is still wanted.
    if known and not any(ranked_by in job.metrics for job in jobs):
        origin = "" if metric else " (the jobs' optimized_metric)" if recorded_metric else " (the default)"
        raise ConfigValueError(f"no job in {sweep_dir} recorded the metric {ranked_by!r}{origin}; "
                               f"pass --metric with one of: {', '.join(known)}")

    best_found = None
    optuna_results = sweep_dir / "optimization_results.yaml"
    if optuna_results.is_file():
        best_found = yaml.safe_load(optuna_results.read_text())
    # The parameters the sampler drew (hydra.sweeper.params less those the command fixed), as
    # the search recorded them at its start; hydra.sweeper.params alone for a search without it.
    search_record = sweep_dir / SEARCH_RECORD
    if search_record.is_file():
        searched = list((yaml.safe_load(search_record.read_text()) or {}).get("searched") or [])

    keys = list(dict.fromkeys(key for job in jobs for key in job.overrides))
    # A searched parameter is swept even where every trial drew the same value: the user did not set it.
    swept = [key for key in keys if len({job.overrides.get(key) for job in jobs}) > 1 or key in searched]
    common = {key: jobs[0].overrides[key] for key in keys if key not in swept}
    # A job that did not override a swept key (summarize.py logs/train/runs, where some runs chose
    # model= and some did not) shows the value its config gave it (an experiment's or the default).
    for job in jobs:
        unset = [key for key in swept if key not in job.overrides]
        if unset and job.record_dir:
            job.from_config = configured_values(job.record_dir, unset)
    ranked = sorted(jobs, key=lambda job: _sort_key(job, ranked_by, direction))  # stable: ties keep job order
    return SweepSummary(sweep_dir, ranked_by, direction, ranked, swept, common, best_found)


def _format(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4f}" if abs(value) < 10 else f"{value:.2f}" if abs(value) < 1e6 else f"{value:.4g}"
    return "" if value is None else str(value)


def _format_override(value: str) -> str:
    # Optuna's samples (0.00024156772025296256) shortened for reading; the CSV keeps them whole.
    number = _as_number(value) if "." in value or "e" in value.lower() else None
    return f"{number:.4g}" if number is not None else value


def _shown_setting(job: Job, key: str) -> str:
    if key in job.from_config:
        return f"{_format_override(job.from_config[key])} (config)"
    return _format_override(job.overrides.get(key, ""))


def table_metrics(summary: SweepSummary) -> list[str]:
    """The metric columns of the Markdown table: the optimised metric first, then the usual ones present."""
    present = {key for job in summary.finished for key in job.metrics}
    return [summary.metric] + [m for m in TABLE_METRICS if m in present and m != summary.metric]


def to_markdown(summary: SweepSummary) -> str:
    """The summary as a Markdown table, best first, with the overrides all jobs share listed above it."""
    metrics = table_metrics(summary)
    header = ["rank", "job", *summary.swept, *metrics, "status"]
    rows = []
    for rank, job in enumerate(summary.jobs, start=1):
        cells = [str(rank) if not job.unranked else "-", job.name, *(_shown_setting(job, k) for k in summary.swept),
                 *(_format(job.metrics.get(m)) for m in metrics), job.status]
        rows.append("| " + " | ".join(cell.replace("|", "\\|") for cell in cells) + " |")
    interrupted = sum(job.interrupted for job in summary.jobs)
    failed = sum(job.failed for job in summary.jobs)
    lines = [
        f"# Sweep {summary.sweep_dir.name}",
        "",
        f"{len(summary.jobs)} job{'s' if len(summary.jobs) != 1 else ''}, {len(summary.jobs) - failed - interrupted} finished, "
        f"{failed} failed{f', {interrupted} interrupted' if interrupted else ''}; ranked by `{summary.metric}` ({summary.direction}).",
    ]
    if summary.common:
        lines += ["", "Shared overrides: " + " ".join(f"`{k}={v}`" for k, v in summary.common.items())]
    if summary.best_found:
        lines += ["", f"Optuna's best: `{summary.best_found.get('best_value')}` with "
                  + " ".join(f"`{k}={v}`" for k, v in (summary.best_found.get("best_params") or {}).items())]
    lines += ["", "| " + " | ".join(header) + " |", "|" + "---|" * len(header), *rows, ""]
    return "\n".join(lines)


def to_csv(summary: SweepSummary) -> str:
    """The summary as CSV: every override and every final metric of every job, best first."""
    metric_keys = sorted({key for job in summary.jobs for key in job.metrics} - {summary.metric})
    override_keys = [*summary.swept, *summary.common]
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["rank", "job", "status", "error", *override_keys, summary.metric, *metric_keys, "path"])
    for rank, job in enumerate(summary.jobs, start=1):
        writer.writerow([rank if not job.unranked else "", job.name, "interrupted" if job.interrupted else "failed" if job.failed else "ok", job.error or job.later_failure,
                         *(job.setting(k) for k in override_keys),
                         *(job.metrics.get(k, "") for k in [summary.metric, *metric_keys]), str(job.path)])
    return buffer.getvalue()


def _as_number(value: str) -> float | None:
    try:
        number = float(value)
    except ValueError:
        return None
    return number if math.isfinite(number) else None


def plot_points(summary: SweepSummary, param: str) -> list[tuple[str, float]]:
    """The finished jobs' (value of ``param``, optimised metric) pairs the plot shows; ``param="job"`` gives the job's name.

    A job that left ``param`` at its config's value is shown at that value, as the table shows
    it; a job without a finite metric is left out.
    """
    points = [(job.name if param == "job" else job.setting(param), job.metrics.get(summary.metric))
              for job in summary.finished]
    return [(x, y) for x, y in points if isinstance(y, (int, float)) and math.isfinite(y)]


def plot(summary: SweepSummary, path: Path) -> Path:
    """A PNG of the optimised metric against each swept parameter (one panel each), finished jobs only."""
    import matplotlib

    matplotlib.use("Agg")  # files only; no display needed
    import matplotlib.pyplot as plt

    params = summary.swept or ["job"]
    fig, axes = plt.subplots(1, len(params), figsize=(4.2 * len(params), 3.6), squeeze=False)
    for ax, param in zip(axes[0], params, strict=True):
        points = plot_points(summary, param)
        numbers = [_as_number(x) for x, _ in points]
        if points and param != "job" and all(n is not None for n in numbers):
            ax.scatter(numbers, [y for _, y in points])
            positive = [n for n in numbers if n and n > 0]
            if len(positive) == len(numbers) and max(positive) / min(positive) >= 20:
                ax.set_xscale("log")
        else:
            labels = sorted({x for x, _ in points})
            ax.scatter([labels.index(x) for x, _ in points], [y for _, y in points])
            if labels:  # no finished job: an empty panel, not matplotlib's warning about an empty range
                ax.set_xlim(-0.5, len(labels) - 0.5)
            ax.set_xticks(range(len(labels)), labels, rotation=30 if len(labels) > 3 else 0, ha="right" if len(labels) > 3 else "center")
        ax.set_xlabel(param)
        ax.set_ylabel(summary.metric)
        ax.grid(alpha=0.3)
    failed = len(summary.jobs) - len(summary.finished)
    fig.suptitle(f"{summary.sweep_dir.name}: {summary.metric} ({summary.direction})" + (f", {failed} job(s) without results not shown" if failed else ""),
                 fontsize=10)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100)
    plt.close(fig)
    return atomic_write(path, lambda f: f.write(buffer.getvalue()))


def write_summary(summary: SweepSummary, out_dir: Path | None = None) -> dict[str, Path]:
    """Write ``summary.md``, ``summary.csv`` and ``summary.png`` (into the sweep folder by default)."""
    out_dir = Path(out_dir or summary.sweep_dir)
    markdown, table = to_markdown(summary), to_csv(summary)
    return {
        "markdown": atomic_write(out_dir / "summary.md", lambda f: f.write(markdown.encode())),
        "csv": atomic_write(out_dir / "summary.csv", lambda f: f.write(table.encode())),
        "plot": plot(summary, out_dir / "summary.png"),
    }

