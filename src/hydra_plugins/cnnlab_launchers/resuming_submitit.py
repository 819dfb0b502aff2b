"""Hydra's submitit launchers (``hydra/launcher=slurm``, ``hydra/launcher=local``), resuming when requeued.

Requeueing is submitit's job alone: when SLURM warns that a job will hit its time limit (or
is preempted), submitit calls the launcher's ``checkpoint`` and requeues the job. Here the
requeued job gets ``ckpt_path=last``, so it continues in its own folder from its last
checkpoint instead of refusing to overwrite it. Lightning's own SLURM auto-requeue is turned
off in the training task (``cnnlab.tasks.train.cluster_plugins``).

Hydra only instantiates launcher classes defined in the ``hydra_plugins`` namespace, hence
this module's place.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from hydra_plugins.hydra_submitit_launcher.submitit_launcher import LocalLauncher, SlurmLauncher

from cnnlab.utils.config import register_resolvers

# A submitit job unpickles this launcher, and so imports this module, before Hydra resolves the
# job's folders in the worker process: cnnlab's resolvers must be registered there too.
register_resolvers()

RESUME_OVERRIDE = "ckpt_path=last"


def resume_overrides(overrides: Sequence[str]) -> list[str]:
    """A job's overrides for its requeued run: the same, continuing from the job's own last checkpoint."""
    kept = [o for o in overrides if o.split("=", 1)[0].lstrip("+~") != "ckpt_path"]
    return [*kept, RESUME_OVERRIDE]


class _ResumeOnRequeue:
    def checkpoint(self, sweep_overrides: list[str], *args: Any, **kwargs: Any) -> Any:
        """What submitit requeues: this job again, with ``ckpt_path=last``."""
        import submitit

        return submitit.helpers.DelayedSubmission(self, resume_overrides(sweep_overrides), *args, **kwargs)


class ResumingSlurmLauncher(_ResumeOnRequeue, SlurmLauncher):
    """Hydra's submitit SLURM launcher; a requeued job continues from its last checkpoint."""


class ResumingLocalLauncher(_ResumeOnRequeue, LocalLauncher):
    """Hydra's submitit local launcher (jobs as local processes), with the same requeue behaviour."""
