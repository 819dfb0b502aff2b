"""Hydra's submitit launchers (``hydra/launcher=slurm``, ``hydra/launcher=local``), resuming when requeued.

Requeueing is submitit's job alone: when SLURM warns that a job will hit its time limit (or
is preempted), submitit calls the launcher's ``checkpoint`` and requeues the job. Here a job
that has saved a checkpoint is requeued with ``ckpt_path=last``, so it continues in its own
folder from that checkpoint instead of refusing to overwrite it; a job stopped before its
first checkpoint is requeued as it was started (from scratch, or from the ``ckpt_path`` it
was given, such as another run's checkpoint). Lightning's own SLURM auto-requeue is turned
off in the training task (``cnnlab.tasks.train.cluster_plugins``).

Hydra only instantiates launcher classes defined in the ``hydra_plugins`` namespace, hence
this module's place.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from hydra.core.hydra_config import HydraConfig
from hydra.core.utils import JobReturn
from hydra_plugins.hydra_submitit_launcher.submitit_launcher import LocalLauncher, SlurmLauncher

from cnnlab.utils.config import CHECKPOINTS_FOLDER, LAST_CHECKPOINT, override_key, register_resolvers

# A submitit job unpickles this launcher, and so imports this module, before Hydra resolves the
# job's folders in the worker process: cnnlab's resolvers must be registered there too.
register_resolvers()

RESUME_OVERRIDE = "ckpt_path=last"


def resume_overrides(overrides: Sequence[str]) -> list[str]:
    """A job's overrides for its requeued run: the same, continuing from the job's own last checkpoint."""
    kept = [o for o in overrides if override_key(o) != "ckpt_path"]
    return [*kept, RESUME_OVERRIDE]


def requeue_overrides(overrides: Sequence[str], output_dir: Path, job_started: float) -> list[str]:
    """The overrides a requeued job runs with: ``ckpt_path=last`` once this job has saved a checkpoint.

    Before its first checkpoint a job is requeued with the overrides it was started with, so a
    job that began from another run's checkpoint begins from it again instead of from scratch.
    "Saved by this job" is a ``last.ckpt`` written since ``job_started`` (see
    :func:`attempt_started`). A folder's older ``last.ckpt`` does not count: a job given one of
    its folder's earlier checkpoints (``ckpt_path=<run>/checkpoints/<epoch>.ckpt``) goes back to
    that one again.
    """
    last = output_dir / CHECKPOINTS_FOLDER / LAST_CHECKPOINT
    if last.is_file() and last.stat().st_mtime >= job_started:
        return resume_overrides(overrides)
    return list(overrides)


def attempt_started(output_dir: Path, output_subdir: str | None, fallback: float) -> float:
    """When this attempt of the job began, on the clock that stamps the files in its folder.

    That is the time of the Hydra record (``<output_subdir>/hydra.yaml``) the attempt wrote as it
    began: on a shared filesystem the file server stamps both it and ``last.ckpt``, and the
    compute node's own clock may differ. ``fallback`` (the node's time at the start) where the
    attempt wrote no record.
    """
    record = output_dir / output_subdir / "hydra.yaml" if output_subdir else None
    return record.stat().st_mtime if record is not None and record.is_file() else fallback


class _ResumeOnRequeue:
    _job_started: float = 0.0

    def __call__(self, sweep_overrides: list[str], *args: Any, **kwargs: Any) -> JobReturn:
        """Run the job, noting when it started (in the job's process)."""
        self._job_started = time.time()
        return super().__call__(sweep_overrides, *args, **kwargs)  # type: ignore[misc]

    def checkpoint(self, sweep_overrides: list[str], *args: Any, **kwargs: Any) -> Any:
        """What submitit requeues: this job again, continuing from its own last checkpoint if it saved one."""
        import submitit

        hydra_cfg = HydraConfig.get()
        output_dir = Path(hydra_cfg.runtime.output_dir)
        started = attempt_started(output_dir, hydra_cfg.output_subdir, self._job_started)
        overrides = requeue_overrides(sweep_overrides, output_dir, started)
        return submitit.helpers.DelayedSubmission(self, overrides, *args, **kwargs)


class ResumingSlurmLauncher(_ResumeOnRequeue, SlurmLauncher):
    """Hydra's submitit SLURM launcher; a requeued job continues from its last checkpoint."""


class ResumingLocalLauncher(_ResumeOnRequeue, LocalLauncher):
    """Hydra's submitit local launcher (jobs as local processes), with the same requeue behaviour."""
