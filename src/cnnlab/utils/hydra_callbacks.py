"""Hydra callbacks: checks that must run before Hydra writes anything into a run folder."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from cnnlab.errors import RunDirectoryInUseError
from cnnlab.utils.config import CHECKPOINTS_FOLDER, process_rank

RESULTS_FILE = "metrics.json"
LAST_CHECKPOINT = "last.ckpt"


def run_leftovers(output_dir: Path) -> list[Path]:
    """What in ``output_dir`` shows that a run already trained there: its results, its checkpoints."""
    return [p for p in (output_dir / RESULTS_FILE, output_dir / CHECKPOINTS_FOLDER) if p.exists()]


def refuse_used_run_dir(output_dir: Path) -> None:
    """Refuse to train into a folder that already holds another run's checkpoints or results."""
    if leftovers := run_leftovers(output_dir):
        raise RunDirectoryInUseError(
            f"{output_dir} already holds results of another run ({', '.join(p.name for p in leftovers)}); "
            f"nothing was overwritten. Leave hydra.run.dir at its default (a new folder per run) or pick a new one; "
            f"to continue that run, pass ckpt_path={output_dir / CHECKPOINTS_FOLDER / LAST_CHECKPOINT}."
        )


def continues_in(output_dir: Path, ckpt_path: str) -> bool:
    """Whether ``ckpt_path`` resumes the run in ``output_dir``: ``last`` with a last checkpoint there, or one of its checkpoints."""
    if ckpt_path == "last":
        return (output_dir / CHECKPOINTS_FOLDER / LAST_CHECKPOINT).is_file()
    checkpoint = Path(ckpt_path).expanduser().resolve()
    return checkpoint.parent.name == CHECKPOINTS_FOLDER and checkpoint.parent.parent == output_dir.resolve()


class RefuseUsedRunFolder(Callback):
    """Stop a training run or sweep aimed at a folder that holds another run's results.

    Hydra writes the composed config into ``<run>/.hydra/`` (and a sweep's ``multirun.yaml``)
    before the task starts, so the training task's own check would come after the earlier
    run's record had been replaced. These hooks run before that. A run that resumes one of
    the folder's own checkpoints may go on there: its config goes to ``.hydra/resumed_<date>``.

    Hydra turns an exception raised in a callback into a warning and goes on, so a refusal
    ends the process itself (``SystemExit``, exit status 1, the message on stderr).
    """

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        if process_rank() != 0:
            return  # the other processes of a DDP run start in the folder rank zero has begun
        output_dir = Path(str(config.hydra.run.dir)).absolute()
        ckpt_path = config.get("ckpt_path")
        if not (ckpt_path and continues_in(output_dir, str(ckpt_path))):
            _exit_on_refusal(refuse_used_run_dir, output_dir)

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        if config.get("ckpt_path"):
            return  # each job resumes its own folder; the training task checks them one by one
        _exit_on_refusal(refuse_used_sweep_dir, Path(str(config.hydra.sweep.dir)).absolute())


def refuse_used_sweep_dir(sweep_dir: Path) -> None:
    """Refuse a sweep into a folder where jobs of an earlier sweep left results or checkpoints."""
    used = sorted(job.name for job in sweep_dir.iterdir() if job.is_dir() and run_leftovers(job)) if sweep_dir.is_dir() else []
    if used:
        raise RunDirectoryInUseError(
            f"{sweep_dir} already holds the results of an earlier sweep (jobs {', '.join(used[:10])}"
            f"{', ...' if len(used) > 10 else ''}); nothing was overwritten. Leave hydra.sweep.dir at its "
            f"default (a new folder per sweep) or pick a new one."
        )


def _exit_on_refusal(check: Callable[[Path], None], folder: Path) -> None:
    try:
        check(folder)
    except RunDirectoryInUseError as error:
        raise SystemExit(f"{type(error).__name__}: {error}") from None
