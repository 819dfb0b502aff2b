"""Hydra callbacks: checks and preparations that must come before Hydra writes into a run or sweep folder (or a sweeper starts)."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from enum import Enum
from pathlib import Path
from typing import Any

import yaml
from hydra.experimental.callback import Callback
from omegaconf import DictConfig, ListConfig, read_write

from cnnlab.errors import CnnlabError, ConfigValueError, RunDirectoryInUseError
from cnnlab.utils.config import (
    CHECKPOINTS_FOLDER,
    LAST_CHECKPOINT,
    RESULTS_FILE,
    continues_in,
    override_key,
    process_rank,
)
from cnnlab.utils.io import atomic_write
from cnnlab.utils.override_check import refuse_unread_additions

log = logging.getLogger(__name__)


def run_leftovers(output_dir: Path, any_content: bool = False) -> list[Path]:
    """What in ``output_dir`` shows that a run already used it.

    For training, its results and checkpoints (a folder where a run failed before writing
    either may be reused); with ``any_content``, everything in it, unless all it holds is
    Hydra's ``.hydra/`` record and logs (evaluation, prediction, the drawing tasks and the
    benchmark have no resume and their outputs have many names, but each writes at least one
    output when it succeeds, so such a folder is an attempt that failed before writing any,
    and may be reused as a failed training run's is).
    """
    if not any_content:
        return [p for p in (output_dir / RESULTS_FILE, output_dir / CHECKPOINTS_FOLDER) if p.exists()]
    content = sorted(output_dir.iterdir()) if output_dir.is_dir() else []
    return [] if all(_is_record_or_log(p) for p in content) else content


def _is_record_or_log(path: Path) -> bool:
    # What Hydra writes before the task starts: the config record and the job's log files
    # (Hydra's file handler appends, so a failed attempt's log is kept when the folder is reused).
    return (path.name == ".hydra" and path.is_dir()) or (path.suffix == ".log" and path.is_file())


def refuse_used_run_dir(output_dir: Path, any_content: bool = False) -> None:
    """Refuse to run in a folder that already holds another run's results (see :func:`run_leftovers`)."""
    if leftovers := run_leftovers(output_dir, any_content):
        shown = ", ".join(p.name for p in leftovers[:6]) + (", ..." if len(leftovers) > 6 else "")
        resume = ("" if any_content else
                  f"; to continue that run, pass ckpt_path={output_dir / CHECKPOINTS_FOLDER / LAST_CHECKPOINT}")
        raise RunDirectoryInUseError(
            f"{output_dir} already holds results of another run ({shown}); nothing was overwritten. Leave "
            f"hydra.run.dir at its default (a new folder per run) or pick a new one{resume}."
        )


class RefuseUsedRunFolder(Callback):
    """Stop a training run or sweep aimed at a folder that holds another run's results.

    Hydra writes the composed config into ``<run>/.hydra/`` (and a sweep's ``multirun.yaml``)
    before the task starts, so the training task's own check would come after the earlier
    run's record had been replaced. These hooks run before that. A run that resumes one of
    the folder's own checkpoints may go on there: its config goes to ``.hydra/resumed_<date>``.

    Hydra turns an exception raised in a callback into a warning and goes on, so a refusal
    ends the process itself (``SystemExit``, exit status 1, the message on stderr).

    Args:
        any_content: count any file in the folder as another run's (tasks without a resume),
            except a failed attempt's ``.hydra/`` and log; else only a training run's results
            and checkpoints.
    """

    def __init__(self, any_content: bool = False) -> None:
        self.any_content = any_content

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        if process_rank() != 0:
            return  # the other processes of a DDP run start in the folder rank zero has begun
        output_dir = Path(str(config.hydra.run.dir)).absolute()
        ckpt_path = config.get("ckpt_path")
        if self.any_content or not (ckpt_path and continues_in(output_dir, str(ckpt_path))):
            _exit_on_refusal(lambda: refuse_used_run_dir(output_dir, self.any_content))

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        sweep_dir = Path(str(config.hydra.sweep.dir)).absolute()
        ckpt_path = config.get("ckpt_path")
        if ckpt_path and not self.any_content and (
                ckpt_path == "last"
                or Path(str(ckpt_path)).expanduser().absolute().parent.resolve().is_relative_to(sweep_dir.resolve())):
            if process_rank() == 0:
                keep_earlier_sweep_record(sweep_dir)
            return  # each job resumes its own folder; the training task checks them one by one
        # A checkpoint from elsewhere starts every job's first session: Hydra would write over a job's record.
        _exit_on_refusal(lambda: refuse_used_sweep_dir(sweep_dir, self.any_content))


class RefuseUnreadOverrides(Callback):
    """Stop a run, or a sweep at the first job it fails, whose command adds a config key nothing reads (``+targetclass=cat``).

    Checked before the run writes anything (a multirun job: before its task, after Hydra's
    ``.hydra/`` record and log), against each job's own config: a swept group choice may change
    where an added key lands. See :func:`cnnlab.utils.override_check.refuse_unread_additions`.
    Exits as :class:`RefuseUsedRunFolder` does: in a multirun that ends the sweep, as the same
    typo would fail every later job too.
    """

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        _exit_on_refusal(lambda: refuse_unread_additions(config))

    def on_job_start(self, config: DictConfig, **kwargs: Any) -> None:
        from hydra.types import RunMode

        if config.hydra.mode == RunMode.MULTIRUN:  # a single run was checked in on_run_start
            _exit_on_refusal(lambda: refuse_unread_additions(config))


def keep_earlier_sweep_record(sweep_dir: Path) -> None:
    """Keep a copy of a continued sweep's earlier ``multirun.yaml`` as ``multirun.before_<date>_<time>.yaml``.

    Hydra's basic sweeper writes the continuing command's record over it, and it is the only
    record of how the sweep was first run (the jobs' own records stay in their ``.hydra/``). A
    copy, not a move: a command refused after this, or a sweeper that writes no record
    (Optuna's), leaves the original where it was.
    """
    record = sweep_dir / "multirun.yaml"
    if not record.is_file():
        return
    stamp = time.strftime("%Y-%m-%d_%H-%M-%S")
    for attempt in range(100):
        kept = sweep_dir / f"multirun.before_{stamp}{f'_{attempt}' if attempt else ''}.yaml"
        try:
            with open(kept, "xb") as copy:  # never over an earlier kept record
                copy.write(record.read_bytes())
            return
        except FileExistsError:
            continue


def refuse_used_sweep_dir(sweep_dir: Path, any_content: bool = False) -> None:
    """Refuse a sweep into a folder where jobs of an earlier sweep left results (see :func:`run_leftovers`)."""
    used = (sorted(job.name for job in sweep_dir.iterdir() if job.is_dir() and run_leftovers(job, any_content))
            if sweep_dir.is_dir() else [])
    if used:
        raise RunDirectoryInUseError(
            f"{sweep_dir} already holds the results of an earlier sweep (jobs {', '.join(used[:10])}"
            f"{', ...' if len(used) > 10 else ''}); nothing was overwritten. Leave hydra.sweep.dir at its "
            f"default (a new folder per sweep) or pick a new one."
        )


def expected_direction(metric: str) -> str | None:
    """The direction a search over ``metric`` must take: ``minimize`` for a loss, ``maximize`` for an accuracy, else None."""
    if metric.endswith("loss"):
        return "minimize"
    if "acc" in metric.rsplit("/", 1)[-1]:
        return "maximize"
    return None


def refuse_wrong_direction(metric: str, direction: Any) -> None:
    """Refuse a sweeper ``direction`` that would search for the worst ``metric`` (the largest loss, the lowest accuracy).

    ``direction`` is the sweeper's setting as composed: a string, Optuna's ``Direction`` enum
    (its default, ``minimize``, when the config sets none), or a list for a multi-objective
    study. The training task returns one value, ``optimized_metric``, so a list is checked
    only when it has one entry; longer lists are left to Optuna.
    """
    if isinstance(direction, (list, tuple, ListConfig)):
        if len(direction) != 1:
            return
        (direction,) = direction
    given = direction.name if isinstance(direction, Enum) else str(direction)
    expected = expected_direction(metric)
    if expected is None or given not in ("maximize", "minimize") or given == expected:
        return
    kind, worst = ("a loss", "largest") if expected == "minimize" else ("an accuracy", "lowest")
    raise ConfigValueError(
        f"optimized_metric={metric} is {kind}, but the sweeper's direction is {given} (hydra.sweeper.direction), "
        f"so the search would look for the {worst} {metric}. Add hydra.sweeper.direction={expected} to the command "
        f"(or optimize another metric); no trial was started."
    )


class RefuseWrongSweepDirection(Callback):
    """Stop a sweep whose sweeper (Optuna's) would maximise a loss or minimise an accuracy, before any trial.

    The direction comes from the search's config (``hparams_search=...``) and the metric from
    ``optimized_metric``, so overriding one without the other is easy to miss. Sweepers without
    a direction (Hydra's basic sweeper) are left alone. Exits as :class:`RefuseUsedRunFolder` does.
    """

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        metric = config.get("optimized_metric")
        direction = config.hydra.sweeper.get("direction")
        if metric and direction is not None:
            _exit_on_refusal(lambda: refuse_wrong_direction(str(metric), direction))


def sqlite_database_file(storage: str) -> Path | None:
    """The database file of an Optuna storage URL ``sqlite:///<path>`` (relative to the start folder), else None."""
    from sqlalchemy.engine import make_url  # Optuna's storage layer; only sweeps with a storage get here
    from sqlalchemy.exc import ArgumentError

    try:
        url = make_url(storage)
    except ArgumentError:
        return None  # not a database URL: Optuna names it
    database = url.database
    if url.get_backend_name() != "sqlite" or not database or database == ":memory:" or database.startswith("file:"):
        return None
    return Path(database)


def make_storage_folder(storage: str) -> None:
    """Create the missing folder of a ``sqlite:///`` storage's database file (SQLite creates the file, not its folder)."""
    database = sqlite_database_file(storage)
    if database is None or database.parent.is_dir():
        return
    try:
        database.parent.mkdir(parents=True)
    except OSError as error:
        raise ConfigValueError(f"hydra.sweeper.storage={storage}: cannot create the folder {database.parent} for the "
                               f"study's database ({error}); give a path in a folder you can write to. No trial was "
                               f"started.") from None
    log.info("Created %s for the Optuna study's database %s", database.parent, database.name)


def trials_in_study(storage: str, study_name: str) -> int:
    """How many trials (of any state) the study ``study_name`` in ``storage`` holds; 0 if there is no such study."""
    import optuna  # only sweeps need it, and it takes a second to import

    try:
        study = optuna.load_study(study_name=study_name, storage=storage)
    except KeyError:  # Optuna's answer for a study name the storage does not hold
        return 0
    return len(study.get_trials(deepcopy=False))


class ContinueOptunaStudy(Callback):
    """Prepare an Optuna search that keeps its study in a database (``hydra.sweeper.storage``), before any trial.

    Creates the missing folder of a ``sqlite:///`` database file. When the study (by
    ``hydra.sweeper.study_name``) already holds trials and the sampler is seeded, sets the
    sampler's seed to its seed plus the trials held in the config the sweeper is then built from,
    logs it, and adds it to the overrides each trial's config is composed from (so the trial's
    ``.hydra/hydra.yaml`` records the seed that drew it). Other sweepers are left alone. Exits as
    :class:`RefuseUsedRunFolder` does.
    """

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        sweeper = config.hydra.sweeper
        storage, study_name = sweeper.get("storage"), sweeper.get("study_name")
        if not isinstance(storage, str):
            return  # a study in memory (or no Optuna sweeper): it starts afresh with every command
        _exit_on_refusal(lambda: make_storage_folder(storage))
        sampler = sweeper.get("sampler")
        seed = sampler.get("seed") if isinstance(sampler, DictConfig) else None
        if not isinstance(seed, int) or not study_name:
            return  # an unseeded sampler draws afresh; without a name every command makes a new study
        trials_held = trials_in_study(storage, str(study_name))
        if trials_held:
            # A seeded sampler in a new process starts its random draws over, so a continued study
            # would repeat its first trials. seed + the trials held is distinct within the study,
            # and the same sessions run again on a new database start from the same draws.
            new_seed = seed + trials_held
            with read_write(config.hydra):
                sampler.seed = new_seed  # for the sweeper, built from this config
                # Each trial's config is composed again from these overrides: its .hydra/hydra.yaml records the seed.
                config.hydra.overrides.hydra.append(f"hydra.sweeper.sampler.seed={new_seed}")
            log.info("Optuna study %s in %s already holds %d trial%s: the sampler's seed is %d (hydra.sweeper.sampler."
                     "seed=%d plus the trials held), so this session draws new trials", study_name, storage,
                     trials_held, "" if trials_held == 1 else "s", new_seed, seed)


SEARCH_RECORD = "optuna_search.yaml"  # in the sweep folder: the parameters the sampler draws


def searched_parameters(sweeper_params: Any, command_overrides: Any) -> list[str]:
    """The keys of ``hydra.sweeper.params`` that the sampler draws: those the command does not fix.

    A value given on the command line (``data.batch_size=64``) takes that parameter out of
    Optuna's search, though ``hydra.sweeper.params`` (and so each trial's record) still lists it.
    """
    fixed = {override_key(override) for override in command_overrides or []}
    return [str(key) for key in (sweeper_params or {}) if str(key) not in fixed]


class RecordOptunaSearch(Callback):
    """Write the parameters an Optuna search draws into ``<sweep>/optuna_search.yaml`` before its first trial.

    Each trial's overrides hold both the drawn values and the command's own, so only the
    command tells them apart; ``scripts/summarize.py`` reads this record to show the drawn
    parameters as the sweep's columns. Other sweepers are left alone.
    """

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        params = config.hydra.sweeper.get("params")
        is_optuna = "optuna" in str(config.hydra.sweeper.get("_target_", "")).lower()
        if not is_optuna or not isinstance(params, DictConfig) or process_rank() != 0:
            return  # Hydra's basic sweeper's own params are a grid: each job's overrides show it
        searched = searched_parameters(params, config.hydra.overrides.task)
        sweep_dir = Path(str(config.hydra.sweep.dir))
        sweep_dir.mkdir(parents=True, exist_ok=True)
        atomic_write(sweep_dir / SEARCH_RECORD, lambda f: f.write(yaml.safe_dump({"searched": searched}).encode()))


def _exit_on_refusal(check: Callable[[], None]) -> None:
    try:
        check()
    except CnnlabError as error:
        raise SystemExit(f"{type(error).__name__}: {error}") from None
