"""The Hydra job's logging in the worker processes that Lightning's ``ddp_spawn`` starts."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any, Literal

import lightning as L
from hydra.core.hydra_config import HydraConfig
from hydra.core.utils import configure_log
from hydra.utils import get_class
from lightning.pytorch.strategies import ParallelStrategy
from lightning.pytorch.strategies.launchers import _MultiProcessingLauncher
from omegaconf import DictConfig, OmegaConf


class JobLoggingLauncher(_MultiProcessingLauncher):
    """Lightning's multiprocessing launcher whose workers first set up logging as the Hydra job did.

    A spawned worker is a fresh Python process without Hydra's logging setup, so every line
    logged inside the fit or test (the data line, warnings, a rank's error) would miss the job's
    log. ``job_logging`` is the job's logging config, resolved in the job's process (the worker
    has no Hydra config to resolve ``${hydra.runtime.output_dir}`` against).
    """

    def __init__(self, strategy: ParallelStrategy, start_method: Literal["spawn", "fork", "forkserver"],
                 job_logging: DictConfig, verbose: bool | str | Sequence[str]) -> None:
        super().__init__(strategy, start_method=start_method)
        self._job_logging = job_logging
        self._verbose = verbose

    def _wrapping_function(self, *args: Any, **kwargs: Any) -> None:
        # What each worker runs first, before Lightning unpacks the trainer's work. Hydra's own
        # function, as the job's process ran it: the same handlers, filters and checks.
        configure_log(self._job_logging, self._verbose)
        super()._wrapping_function(*args, **kwargs)


def log_spawned_workers_to_job_log(trainer: L.Trainer) -> None:
    """Have the worker processes of a spawn-based strategy (``ddp_spawn``) log as this Hydra job does.

    Their lines go where the job's logging sends them, through the same filters (under the
    default job logging, conf/hydra/job_logging/cnnlab.yaml: the console and the job's log file,
    cnnlab's lines below ERROR from rank zero only). Nothing changes outside a Hydra job, under ``ddp``
    (each process is started with Hydra's logging) or with the ``fork`` start method (a forked
    worker keeps its parent's logging).
    """
    strategy, launcher = trainer.strategy, trainer.strategy.launcher
    # Exactly Lightning's own launcher: a subclass (XLA's) starts its workers its own way.
    if (not isinstance(strategy, ParallelStrategy) or type(launcher) is not _MultiProcessingLauncher
            or launcher._start_method == "fork" or not HydraConfig.initialized()):
        return
    hydra_cfg = HydraConfig.get()
    job_logging: dict[str, Any] = OmegaConf.to_container(hydra_cfg.job_logging, resolve=True)  # type: ignore[assignment]
    for handler in (job_logging.get("handlers") or {}).values():
        if isinstance(handler.get("class"), str) and issubclass(get_class(handler["class"]), logging.FileHandler):
            handler["mode"] = "a"  # the job's process has written to the file already: never truncate it
    # Lightning builds the launcher with the strategy and offers no other way to start the workers.
    strategy._launcher = JobLoggingLauncher(strategy, launcher._start_method, OmegaConf.create(job_logging),
                                            hydra_cfg.verbose)
