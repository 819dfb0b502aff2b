"""Errors cnnlab raises for bad input. Each message names the problem and the fix."""

from __future__ import annotations

import contextlib
import logging
import os
import sys
from collections.abc import Iterator

from hydra.errors import CompactHydraException


class CnnlabError(Exception):
    """Base class of the errors a user can act on."""


class DatasetNotFoundError(CnnlabError, FileNotFoundError):
    """A dataset is not where the config says, and could not be fetched."""


class CorruptImageError(CnnlabError, ValueError):
    """One or more image files could not be decoded."""


class WeightsUnavailableError(CnnlabError, FileNotFoundError):
    """Pretrained weights are neither cached nor downloadable."""


class CheckpointError(CnnlabError, ValueError):
    """A checkpoint is missing, unreadable, or belongs to another model."""


class RunDirectoryInUseError(CnnlabError, FileExistsError):
    """A run would write into a folder that already holds another run's results."""


class InputNotFoundError(CnnlabError, FileNotFoundError):
    """An input file or folder named on the command line does not exist."""


class LayerNotFoundError(CnnlabError, ValueError):
    """A layer named in the config is not a layer of the network."""


class ConfigValueError(CnnlabError, ValueError):
    """A config value names something that does not exist (a metric, a folder)."""


class InputSizeError(ConfigValueError):
    """A network cannot be built for the configured image size.

    ``size`` is the size refused; ``requirement`` says what a size must be, without naming a
    config key (the message names training's ``data.image_size``; a caller whose size came from
    another key names that one); ``fitting_sizes`` are the nearest sizes that meet it.
    """

    def __init__(self, size: int, requirement: str, fitting_sizes: tuple[int, ...]) -> None:
        choices = " or ".join(str(fitting) for fitting in fitting_sizes)
        super().__init__(f"input_size {size} {requirement}: set data.image_size (which model.input_size follows) "
                         f"to {choices}")
        self.size = size
        self.requirement = requirement
        self.fitting_sizes = fitting_sizes


class SweepJobError(CompactHydraException):
    """A multirun job's :class:`CnnlabError` (its ``__cause__``), as the sweep reports it when it ends.

    Hydra ends a sweep with a failed job by printing that job's exception; an exception of this
    kind (Hydra's ``CompactHydraException``) it prints as its text alone, without a traceback.
    """


def user_error(error: BaseException) -> CnnlabError | None:
    """The :class:`CnnlabError` that ``error`` is or wraps (a library may have chained it), else None."""
    cause: BaseException | None = error
    while cause is not None and not isinstance(cause, CnnlabError):
        cause = cause.__cause__
    return cause


@contextlib.contextmanager
def plain_user_errors(record_in_job_log: bool = True) -> Iterator[None]:
    """Show a :class:`CnnlabError` (also one a library wrapped) as its message, without a traceback.

    Our messages are written to be read, and say what to fix. In a single Hydra run the error
    is printed as ``<ErrorType>: <message>`` on stderr and the process exits with status 1
    (``SystemExit``; Hydra's ``on_job_end`` callbacks then do not run, and cnnlab has none). In a
    multirun job it is raised as a :class:`SweepJobError` with that text and the job's folder:
    Hydra's launchers catch a job's ``Exception`` to record the job as failed (a ``SystemExit``
    would end the whole sweep: the basic launcher runs the jobs in this process), and when the
    sweep ends Hydra prints it without a traceback. ``HYDRA_FULL_ERROR=1`` keeps the traceback,
    as it does for Hydra's own errors. Outside Hydra it is re-raised as itself, also when a
    library wrapped it: ``hydra.utils.instantiate`` wraps whatever a constructor raises in an
    ``InstantiationException`` whose text is the error's repr, newlines escaped. Other errors
    keep their tracebacks.

    With ``record_in_job_log``, a Hydra job's error of either kind is also recorded in the job
    log (``<run>/<task>.log``), which otherwise would end without a word of why; the training
    task records its failures itself, with the marks ``scripts/summarize.py`` reads.
    """
    try:
        yield
    except Exception as error:
        cause = user_error(error)
        if record_in_job_log and _in_hydra_job():
            from cnnlab.utils.log_filters import JOB_LOG_ONLY  # not at the top: it imports this module

            shown = error if cause is None else cause
            # The console shows the error itself as the script ends.
            logging.getLogger(__name__).error("failed: %s: %s", type(shown).__name__, shown, extra=JOB_LOG_ONLY)
        if cause is None:
            raise
        if os.environ.get("HYDRA_FULL_ERROR") != "1":
            if single_hydra_run():
                print(f"{type(cause).__name__}: {cause}", file=sys.stderr)
                raise SystemExit(1) from None
            place = _sweep_job_place()
            if place is not None:
                raise SweepJobError(f"{type(cause).__name__}: {cause}\n({place})") from cause
        if cause is error:
            raise
        raise cause.with_traceback(None) from None


def _in_hydra_job() -> bool:
    from hydra.core.hydra_config import HydraConfig

    return HydraConfig.initialized()


def _sweep_job_place() -> str | None:
    """Where this multirun job runs, as the sweep's end names it (``job 1 of the sweep, in <folder>; ...``); else None."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    if not HydraConfig.initialized() or HydraConfig.get().mode != RunMode.MULTIRUN:
        return None
    hydra = HydraConfig.get()
    where = f"job {hydra.job.num} of the sweep, in {hydra.runtime.output_dir}"
    if hydra.job.name == "train":  # summarize reads training runs
        where += f"; every job's result: python scripts/summarize.py {hydra.sweep.dir}"
    return where


def single_hydra_run() -> bool:
    """Whether this is a single Hydra run (not a multirun job, not outside Hydra), where the error ends the process."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.RUN
