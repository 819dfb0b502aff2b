"""The training task: compose data, model and trainer from config, fit, test, record the results."""

from __future__ import annotations

import contextlib
import logging
import math
import os
import shlex
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, NamedTuple

import lightning as L
import torch
from hydra.utils import instantiate
from lightning.pytorch.callbacks import LearningRateMonitor, ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger
from lightning.pytorch.plugins.environments import SLURMEnvironment
from lightning.pytorch.strategies.launchers import _MultiProcessingLauncher
from lightning.pytorch.utilities import rank_zero_only
from omegaconf import DictConfig, ListConfig, OmegaConf
from tensorboard.backend.event_processing.event_file_loader import EventFileLoader

from cnnlab.checkpoint import (
    ensure_same_model,
    ensure_same_setup,
    ensure_training_left,
    read_checkpoint,
    saved_epoch_metrics,
)
from cnnlab.errors import ConfigValueError, single_hydra_run, user_error
from cnnlab.tasks.results import (
    TEST_DATA_KEY,
    earlier_test_results,
    log_hparams_with_metrics,
    metric_values,
    write_metrics,
)
from cnnlab.tasks.summarize import FAILED_LOG_MARK, FINISHED_LOG_MARK, INTERRUPTED_LOG_MARK, RESUME_REFUSED_LOG_MARK
from cnnlab.training.callbacks import (
    EARLIER_FIT_SECONDS,
    EPOCH_SECONDS,
    EpochTimer,
    RunFolderCheckpoint,
    RunRecordInCheckpoint,
)
from cnnlab.training.classifier import ImageClassifier
from cnnlab.training.factory import build_classifier
from cnnlab.utils.config import (
    CHECKPOINTS_FOLDER,
    LAST_CHECKPOINT,
    RESULTS_FILE,
    config_dict,
    continues_in,
    ensure_switch,
    ensure_values_set,
    instantiate_all,
    override_key,
    print_config,
    resume_session,
    run_folder,
)
from cnnlab.utils.cuda_check import ensure_accelerator_available, skip_unloadable_nvml_check
from cnnlab.utils.host_memory import keep_freed_memory
from cnnlab.utils.hydra_callbacks import refuse_used_run_dir
from cnnlab.utils.job_logging import log_spawned_workers_to_job_log
from cnnlab.utils.log_filters import JOB_LOG_ONLY

log = logging.getLogger(__name__)


@rank_zero_only
def log_once(level: int, message: str, *args: Any) -> None:
    """Log ``message`` from global rank zero only.

    Under DDP every process runs the task, each with its own log file (Hydra's job log for rank
    zero): a line about the run as a whole would appear once per process, and the finished mark
    that ``scripts/summarize.py`` looks for would be in another process's log before rank zero
    has written ``metrics.json``. A process's own failure is still logged by that process.
    """
    log.log(level, message, *args, stacklevel=3)  # the caller's line, past rank_zero_only's wrapper


@rank_zero_only
def ensure_fresh_run_dir(output_dir: Path) -> None:
    """Refuse to train into a folder that already holds another run's checkpoints or results (rank zero checks)."""
    refuse_used_run_dir(output_dir)


def resume_checkpoint(ckpt_path: str | None, output_dir: Path) -> str | None:
    """The checkpoint a run continues from (``last`` is this folder's last checkpoint), or None to start afresh."""
    if not ckpt_path:
        return None
    if ckpt_path == "last":
        last = output_dir / CHECKPOINTS_FOLDER / LAST_CHECKPOINT
        if last.is_file():
            return str(last)
        log_once(logging.WARNING, "ckpt_path=last, but %s holds no %s/%s yet: training from scratch", output_dir,
                 CHECKPOINTS_FOLDER, LAST_CHECKPOINT)
        return None
    return str(ckpt_path)


def cluster_plugins(trainer_cfg: DictConfig) -> list[Any]:
    """Under SLURM: Lightning's SLURM environment with its auto-requeue off.

    Requeueing belongs to one side only: submitit (``hydra/launcher=slurm``) requeues a job
    that times out or is preempted, and the requeued job continues from its last checkpoint.
    A config that sets ``trainer.plugins`` itself is left alone.
    """
    if trainer_cfg.get("plugins") or not SLURMEnvironment.detect():
        return []
    return [SLURMEnvironment(auto_requeue=False)]


def ensure_launchable(trainer_cfg: DictConfig) -> None:
    """Refuse Lightning's ``ddp`` over several local processes inside a local multirun.

    ``ddp`` starts the other processes by re-running the command line, which in a multirun
    would start the whole sweep again in each of them. ``trainer=ddp`` picks ``ddp_spawn``
    there by itself; this catches ``trainer.strategy=ddp`` set by hand, and ``auto`` (what
    Lightning resolves to ``ddp``) with ``trainer.devices`` above one.
    """
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode
    from lightning.fabric.plugins.environments import TorchElasticEnvironment

    devices = trainer_cfg.get("devices", 1)
    # "auto" and -1 count as one here: how many that is depends on the machine, not the config.
    several = (len(devices) > 1 if isinstance(devices, (list, ListConfig)) else str(devices).isdigit() and int(devices) > 1)
    single_process = not several and trainer_cfg.get("num_nodes", 1) == 1
    if (str(trainer_cfg.get("strategy", "auto")) not in ("ddp", "auto") or single_process or SLURMEnvironment.detect()
            or TorchElasticEnvironment.detect() or not HydraConfig.initialized()
            or HydraConfig.get().mode != RunMode.MULTIRUN):
        return
    raise ConfigValueError(
        f"trainer.strategy={trainer_cfg.get('strategy', 'auto')} with several processes is Lightning's ddp, which "
        "re-runs the command line for each extra process, which in a local multirun would start the whole sweep "
        "again; use trainer.strategy=ddp_spawn here (trainer=ddp or trainer=ddp_cpu choose it by themselves), or "
        "run the sweep on SLURM (hydra/launcher=slurm), where SLURM starts the processes"
    )


def build_run(cfg: DictConfig, resuming: bool = False) -> tuple[L.LightningDataModule, ImageClassifier, L.Trainer]:
    """Instantiate the data module, the model (sized to the data's classes) and the trainer.

    ``resuming``: the fit starts from a checkpoint, which holds every weight, so a fine-tuner's
    pretrained weights are not read (neither downloaded nor needed as a file again).
    """
    ensure_launchable(cfg.trainer)
    root = cfg.data.get("root")
    if isinstance(root, str) and not Path(root).expanduser().is_absolute():
        # Recorded in the checkpoint: eval, predict and visualize rebuild the data from it, started from anywhere.
        OmegaConf.update(cfg, "data.root", str(Path(root).expanduser().absolute()), merge=False)
    datamodule = instantiate(cfg.data)
    # Recorded in the config (and so in checkpoints): the network's size follows the data.
    OmegaConf.update(cfg, "model.num_classes", datamodule.num_classes, merge=False)
    model = build_classifier(cfg, datamodule.class_names, pretrained=not resuming)
    record = RunRecordInCheckpoint(config_dict(cfg, resolve=True, throw_on_missing=True), datamodule.class_names)
    loggers = instantiate_all(cfg.get("logger"))
    callbacks = [*without_logging_callbacks(instantiate_all(cfg.get("callbacks")), loggers), record]
    extra: dict[str, Any] = {"plugins": plugins} if (plugins := cluster_plugins(cfg.trainer)) else {}
    if not any(isinstance(callback, ModelCheckpoint) for callback in callbacks):
        # Lightning would otherwise add its own checkpoint callback (the last epoch, under the logger's folder).
        extra["enable_checkpointing"] = False
    for callback in callbacks:
        if isinstance(callback, RunFolderCheckpoint):
            callback.continuing_run = resuming
    trainer: L.Trainer = instantiate(cfg.trainer, callbacks=callbacks, logger=loggers or False, **extra)
    log_spawned_workers_to_job_log(trainer)
    return datamodule, model, trainer


def without_logging_callbacks(callbacks: list[Any], loggers: list[Any]) -> list[Any]:
    """``callbacks`` less the learning-rate monitor when the run has no logger (``~logger``).

    Lightning's LearningRateMonitor refuses to start without a logger; with no logger there is
    nowhere for it to write, so it is left out instead of failing the run.
    """
    if loggers:
        return callbacks
    kept = [callback for callback in callbacks if not isinstance(callback, LearningRateMonitor)]
    if len(kept) < len(callbacks):
        log_once(logging.INFO, "no logger configured: the learning-rate monitor (callbacks.lr_monitor) is left out")
    return kept


def fit_progress(trainer: L.Trainer) -> tuple[int, int]:
    """Epochs completed and optimizer steps taken by ``trainer.fit``.

    With a spawn-based strategy (``ddp_spawn``) the fit ran in worker processes and this
    process's trainer never counted; the last checkpoint the workers wrote has the numbers.
    """
    spawned = isinstance(trainer.strategy.launcher, _MultiProcessingLauncher)
    checkpoint = trainer.checkpoint_callback
    if spawned and isinstance(checkpoint, ModelCheckpoint) and checkpoint.dirpath:
        last = Path(checkpoint.dirpath) / LAST_CHECKPOINT
        if last.is_file():
            saved = torch.load(last, map_location="cpu", weights_only=True)
            return int(saved["epoch"]) + 1, int(saved["global_step"])
    return trainer.current_epoch, trainer.global_step


class RunTimes(NamedTuple):
    """A run's epoch times (every session's, up to the checkpoint a resumed one started from) and its earlier sessions' fit time."""

    epoch_seconds: list[float]
    earlier_fit_seconds: float


def epoch_times(trainer: L.Trainer) -> RunTimes | None:
    """The seconds of each epoch of the run (a resumed run's earlier sessions' too) and the fit
    seconds of its sessions before this one, or None when the run has no EpochTimer.

    Read from the fit's ``callback_metrics`` (gone after ``trainer.test``): with ``ddp_spawn``
    the timer ran in worker processes, and those metrics are what came back from them.
    """
    # trainer.callbacks is set outside Trainer.__init__, where mypy does not see it.
    if not any(isinstance(callback, EpochTimer) for callback in trainer.callbacks):  # type: ignore[attr-defined]
        return None
    times = trainer.callback_metrics.get(EPOCH_SECONDS)
    earlier = trainer.callback_metrics.get(EARLIER_FIT_SECONDS)
    return RunTimes(times.tolist() if times is not None else [], float(earlier) if earlier is not None else 0.0)


@rank_zero_only
def warn_if_last_checkpoint_lags(trainer: L.Trainer, global_step: int) -> None:
    """Warn when training went on after the last checkpoint, so that resuming would repeat those steps.

    The checkpoint callback saves after validation; when the last epochs run no validation
    (``trainer.check_val_every_n_epoch=2`` with an odd ``trainer.max_epochs``), ``last.ckpt``
    stays at the last validated epoch.
    """
    checkpoint = trainer.checkpoint_callback
    saved_step = getattr(checkpoint, "_last_global_step_saved", None) if isinstance(checkpoint, ModelCheckpoint) else None
    if saved_step and saved_step < global_step:
        log.warning(
            "the last checkpoint is from step %d, but training ran to step %d: checkpoints are saved after validation, "
            "and none ran after step %d (trainer.check_val_every_n_epoch=%s, trainer.max_epochs=%s). A run resumed "
            "from it repeats those steps.", saved_step, global_step, saved_step, trainer.check_val_every_n_epoch,
            trainer.max_epochs)


EVENT_FILES = "events.out.tfevents.*"
LOGGER_HPARAMS_FILE = "hparams.yaml"  # what Lightning's TensorBoard and CSV loggers write beside their logs


@contextlib.contextmanager
def no_empty_logger_run(trainer: L.Trainer) -> Iterator[Callable[[], None]]:
    """On a failure, remove the TensorBoard event files and the logger folders this block created that hold no data.

    Lightning opens the loggers' event files and folders before it sets up the data, so a data
    error (a corrupt image, too few images to split) would leave a run without data that
    ``tensorboard --logdir`` lists, and an empty ``csv/`` folder. Files and folders that were
    there before, and event files with anything logged in them, stay. The block gets the removal
    itself, for a fit that succeeded without logging anything (a finished run resumed again).
    """
    folders = [Path(logger.log_dir) for logger in trainer.loggers if isinstance(logger, (TensorBoardLogger, CSVLogger))]
    before = {folder: (set(folder.glob(EVENT_FILES)) if folder.is_dir() else None) for folder in folders}

    def remove_empty() -> None:
        for folder, earlier in before.items():
            remove_empty_logs(folder, earlier)

    try:
        yield remove_empty
    except BaseException:
        remove_empty()
        raise


@rank_zero_only
def remove_empty_logs(folder: Path, earlier: set[Path] | None) -> None:
    """Remove the event files in ``folder`` that are not in ``earlier`` and hold only the file's version record.

    ``earlier`` None means the folder did not exist before: it goes too, if nothing else is left in
    it but Lightning's ``hparams.yaml`` (a CSV logger's folder holds no event files, so only this
    applies to it).
    """
    if not folder.is_dir():
        return
    for events in set(folder.glob(EVENT_FILES)) - (earlier or set()):
        if all(event.WhichOneof("what") == "file_version" for event in EventFileLoader(str(events)).Load()):
            events.unlink()
            log.info("removed %s: nothing was logged to it", events)
    if earlier is None and {path.name for path in folder.iterdir()} <= {LOGGER_HPARAMS_FILE}:
        (folder / LOGGER_HPARAMS_FILE).unlink(missing_ok=True)
        folder.rmdir()


@rank_zero_only
def keep_previous_results(output_dir: Path, session: str) -> None:
    """Before a resumed session records its results, keep the ones the run had as ``metrics.before_<session>.json``."""
    previous = output_dir / RESULTS_FILE
    if session and previous.is_file():
        os.replace(previous, output_dir / f"metrics.before_{session}.json")


def optimized_value(cfg: DictConfig, results: dict[str, Any]) -> float | None:
    """The final value of ``cfg.optimized_metric`` (what a Hydra sweeper such as Optuna optimises)."""
    metric = cfg.get("optimized_metric")
    if not metric:
        return None
    if metric not in results:
        prefix = metric.split("/", 1)[0] + "/"
        if "/" in metric and not any(key.startswith(prefix) for key in results):
            # e.g. val/acc_best after a run with trainer.limit_val_batches=0: nothing to return, not a typo.
            log_once(logging.WARNING, "optimized_metric=%s: this run logged no %s metrics (did any validation run?), "
                     "so it returns no value to a sweeper", metric, prefix)
            return None
        known = ", ".join(k for k, v in results.items() if isinstance(v, float))
        raise ConfigValueError(f"optimized_metric={metric} is not among the run's final metrics; choose one of: {known}")
    value = float(results[metric])
    if math.isnan(value):
        log_once(logging.WARNING, "the optimised metric %s is NaN (the run diverged?)", metric)
    return value


def train(cfg: DictConfig) -> dict[str, Any]:
    """Train and test one model as ``cfg`` describes; return the run's final metrics.

    The run folder ends up with the TensorBoard events, the checkpoints (best and last), the
    resolved config (Hydra's ``.hydra/``) and ``metrics.json``. With ``ckpt_path`` the run
    continues from that checkpoint's epoch and step; in its own folder when the checkpoint is
    one of that folder's. Under DDP every process runs this; only rank zero writes files.
    """
    try:
        return _train_session(cfg)
    finally:
        # The session's name is decided once per process, so that every part of it agrees; a
        # later session in this process (train() called again, as a notebook might) decides anew.
        resume_session.cache_clear()


def _train_session(cfg: DictConfig) -> dict[str, Any]:
    try:
        run = _prepare(cfg)
    except Exception as error:
        # A resumed session that never trained leaves its run as it was: summarize.py must not
        # read this as the run failing after it finished.
        _log_failure(RESUME_REFUSED_LOG_MARK if cfg.get("session") else FAILED_LOG_MARK, error)
        raise
    try:
        return _fit_and_test(cfg, run)
    except Exception as error:
        _log_failure(FAILED_LOG_MARK, error)
        raise
    except (KeyboardInterrupt, SystemExit) as stop:
        # Lightning answers Ctrl-C by shutting down and calling sys.exit(1) in its handler.
        if isinstance(stop, KeyboardInterrupt) or isinstance(stop.__context__, KeyboardInterrupt):
            log_interrupted(run)
        raise


@rank_zero_only
def log_interrupted(run: PreparedRun) -> None:
    """Log that the user interrupted the run (Ctrl-C): where it stopped, and the command that continues it."""
    _log_job_interrupted(run)
    if sweep_command := continuing_sweep_command():
        log.warning("To continue the whole sweep, each job from its own folder's last checkpoint or from scratch "
                    "where it has none (a job that had finished and been tested keeps its results, and is not tested again): "
                    "python scripts/train.py %s", shlex.join(sweep_command))


def _log_job_interrupted(run: PreparedRun) -> None:
    checkpoint = run.trainer.checkpoint_callback
    folder = Path(checkpoint.dirpath) if isinstance(checkpoint, ModelCheckpoint) and checkpoint.dirpath else None
    last = folder / LAST_CHECKPOINT if folder else None
    try:  # mmap: the weights are not read
        saved = torch.load(last, map_location="cpu", weights_only=True, mmap=True) if last and last.is_file() else None
    except Exception as error:  # noqa: BLE001 - the interrupt must not turn into another traceback here
        log.warning("%s; its last checkpoint %s cannot be read (%s)", INTERRUPTED_LOG_MARK, last, error)
        return
    if saved is None:
        log.warning("%s before the first checkpoint was saved, so the run cannot be continued: start it again",
                    INTERRUPTED_LOG_MARK)
        return
    # From the checkpoint, not this process's trainer, which under ddp_spawn never counted.
    log.warning("%s; its last checkpoint %s is from epoch %d (step %d). To continue the run from it: "
                "python scripts/train.py %s", INTERRUPTED_LOG_MARK, last, int(saved["epoch"]) + 1, int(saved["global_step"]),
                shlex.join(continuing_overrides(run.output_dir)))


def continuing_overrides(output_dir: Path) -> list[str]:
    """This session's command-line overrides, made to continue its run from the run folder's last checkpoint."""
    from hydra.core.hydra_config import HydraConfig

    if not HydraConfig.initialized():  # not launched by Hydra (a notebook): its overrides are not known here
        return ["<the run's overrides>", f"hydra.run.dir={output_dir}", "ckpt_path=last"]
    given = [str(o) for o in HydraConfig.get().overrides.task if override_key(str(o)) != "ckpt_path"]
    return [*given, f"hydra.run.dir={output_dir}", "ckpt_path=last"]


def continuing_sweep_command() -> list[str] | None:
    """In a grid sweep's job, the arguments that continue the whole sweep in its folder; otherwise None.

    They are the sweep's own command line, from the ``multirun.yaml`` Hydra wrote as the sweep
    started (a job's config holds only its own values). None for a search (Optuna): run again,
    it draws other trials, so the job numbers would not match the folders' runs.
    """
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    if not HydraConfig.initialized():
        return None
    hydra_cfg = HydraConfig.get()
    if hydra_cfg.mode != RunMode.MULTIRUN or hydra_cfg.runtime.choices.get("hydra/sweeper") != "basic":
        return None
    sweep_dir = Path(hydra_cfg.sweep.dir).absolute()
    try:
        recorded = OmegaConf.load(sweep_dir / "multirun.yaml").hydra.overrides
        task, launch = [str(o) for o in recorded.task], [str(o) for o in recorded.hydra]
    except Exception:  # noqa: BLE001 - the record is gone or unreadable: no command rather than a wrong one
        return None
    dropped = {"ckpt_path", "hydra.mode", "hydra.sweep.dir"}
    kept = [o for o in [*task, *launch] if override_key(o) not in dropped]
    return ["-m", *kept, f"hydra.sweep.dir={sweep_dir}", "ckpt_path=last"]


def _log_failure(mark: str, error: BaseException) -> None:
    # In a multirun the job log is where `scripts/summarize.py` finds why a job failed. A single
    # run's console shows the error itself as the script ends: the line goes to the log file only.
    log.error("%s%s", mark, failure_reason(error), extra=JOB_LOG_ONLY if single_hydra_run() else None)


def failure_reason(error: BaseException) -> str:
    """``"<type>: <message>"`` of the error a user can act on: ours, else the innermost cause.

    Libraries wrap the error that explains a failure (``hydra.utils.instantiate`` turns
    "input_size 31 must be divisible by 8" into "Error in call to target ..."), so the outer
    error's message would not say what to fix. The whole message, all its lines: the job log
    keeps it (the files a CorruptImageError names, the fix a WeightsUnavailableError gives).
    """
    shown: BaseException | None = user_error(error)
    if shown is None:
        shown = error
        while shown.__cause__ is not None:
            shown = shown.__cause__
    return f"{type(shown).__name__}: {str(shown).strip()}"


def test_data_fingerprint(datamodule: L.LightningDataModule) -> str | None:
    """A digest of the test split's images and labels, where the data module is one of cnnlab's and set up in this process."""
    identity = getattr(datamodule, "split_identity", None)
    if identity is None:
        return None
    try:
        return str(identity("test")[0])
    except RuntimeError:  # not set up here (ddp_spawn sets it up in its worker processes)
        return None


class ResumedFrom(NamedTuple):
    """What a resumed session needs of its checkpoint once it is loaded."""

    epoch: int  # as Lightning counts: the epoch it was saved in, from 0
    global_step: int
    metrics: dict[str, float]  # its epoch's train/ and val/ metrics (see saved_epoch_metrics)
    all_metrics: bool  # False for an older checkpoint holding only val/acc_best


class PreparedRun(NamedTuple):
    """A run checked and built, ready to fit."""

    output_dir: Path
    ckpt_path: str | None
    datamodule: L.LightningDataModule
    model: ImageClassifier
    trainer: L.Trainer
    counts: dict[str, int]
    resumed: ResumedFrom | None
    composed: dict[str, Any]  # the config as composed (Hydra's record of it), before the build filled in the data's values


def _prepare(cfg: DictConfig) -> PreparedRun:
    """Check the run (its folder, the checkpoint it resumes) and build it; nothing is trained yet."""
    ensure_values_set(cfg)
    composed = config_dict(cfg, resolve=False)
    for switch, default in (("test", True), ("tune_host_malloc", False)):  # test=no would be a truthy string
        ensure_switch(cfg.get(switch, default), switch)
    output_dir = run_folder(cfg)
    ensure_accelerator_available(cfg.trainer.get("accelerator", "auto"))
    ckpt_path = resume_checkpoint(cfg.get("ckpt_path"), output_dir)
    resumed = None
    if ckpt_path:
        checkpoint = read_checkpoint(ckpt_path)
        resumed = ResumedFrom(int(checkpoint.get("epoch", 0)), int(checkpoint.get("global_step", 0)),
                              *saved_epoch_metrics(checkpoint))
        ensure_same_model(checkpoint, cfg.model, ckpt_path)
        ensure_same_setup(checkpoint, cfg, ckpt_path)
        ensure_training_left(checkpoint, cfg.trainer, ckpt_path)
        if not continues_in(output_dir, ckpt_path):
            ensure_fresh_run_dir(output_dir)
        log_once(logging.INFO, "continuing from %s in %s", ckpt_path, output_dir)
    else:
        ensure_fresh_run_dir(output_dir)
    if cfg.get("tune_host_malloc"):
        keep_freed_memory()
    skip_unloadable_nvml_check()
    if cfg.get("seed") is not None:
        L.seed_everything(cfg.seed, workers=True)

    datamodule, model, trainer = build_run(cfg, resuming=bool(ckpt_path))
    print_config(cfg)
    counts = model.parameter_counts()
    log_once(logging.INFO, "model: %s parameters, %s trainable", f"{counts['params_total']:,}",
             f"{counts['params_trainable']:,}")
    return PreparedRun(output_dir, ckpt_path, datamodule, model, trainer, counts, resumed, composed)


def _fit_and_test(cfg: DictConfig, run: PreparedRun) -> dict[str, Any]:
    """Fit, test the best checkpoint, and record the results in the run's folder."""
    output_dir, ckpt_path, datamodule, model, trainer, counts, resumed, composed = run
    started = time.perf_counter()
    with no_empty_logger_run(trainer) as remove_empty_logger_runs:
        trainer.fit(model, datamodule=datamodule, ckpt_path=ckpt_path)
    fit_seconds = time.perf_counter() - started
    results: dict[str, Any] = metric_values(trainer.callback_metrics, prefixes=("val/", "train/"))
    epochs, global_step = fit_progress(trainer)
    checkpoint_callback = trainer.checkpoint_callback
    best = checkpoint_callback.best_model_path if isinstance(checkpoint_callback, ModelCheckpoint) else ""
    if resumed and global_step == resumed.global_step:
        # Nothing was left to train: a requeued job whose training had ended, or a finished job of a continued sweep.
        # Rank zero's reading for every process: all of them test, or none does.
        earlier = trainer.strategy.broadcast(
            earlier_test_results(output_dir, composed, global_step, best, test_data_fingerprint(datamodule))
            if cfg.get("test", True) else None)
        if earlier is not None:
            log_once(logging.INFO, "the run was already complete and tested: %s is from the end of the run (epoch %d, "
                     "step %d) and %s holds the test of its best checkpoint with this same config, so its results "
                     "stand and nothing runs again (scripts/eval.py ckpt_path=%s tests it anew)", ckpt_path,
                     resumed.epoch + 1, global_step, output_dir / RESULTS_FILE, best)
            remove_empty_logger_runs()  # the session logged nothing: no run without data in TensorBoard
            log_once(logging.INFO, "%s%s", FINISHED_LOG_MARK, output_dir)
            return earlier
        # The results of that epoch are the run's. Lightning may run the epoch's end again (its checkpoint was saved
        # before), logging empty metrics.
        results = dict(resumed.metrics)
        log_once(logging.INFO if resumed.all_metrics else logging.WARNING,
                 "training was already complete: %s is from the end of the run (epoch %d, step %d), so only the test "
                 "runs; the train/ and val/ metrics are the checkpoint's%s", ckpt_path, resumed.epoch + 1, global_step,
                 "" if resumed.all_metrics else ", which (from an older cnnlab) holds only val/acc_best of them")
    timed = epoch_times(trainer)
    if timed is not None:  # a resumed run's time is that of all its sessions (up to the checkpoint it resumed)
        fit_seconds += timed.earlier_fit_seconds
    warn_if_last_checkpoint_lags(trainer, global_step)

    if cfg.get("test", True):
        if not best and not trainer.fast_dev_run:  # type: ignore[attr-defined]  # fast_dev_run saves none, by design
            log_once(logging.WARNING, "no best checkpoint was saved; testing the weights as they are after training")
        trainer.test(model, datamodule=datamodule, ckpt_path=best or None, weights_only=True)
        results.update(metric_values(trainer.callback_metrics, prefixes=("test/",)))
        results["best_checkpoint"] = best
        if (test_data := test_data_fingerprint(datamodule)) is not None:
            results[TEST_DATA_KEY] = test_data

    results.update(counts)
    if timed is not None:
        results["epoch_seconds"] = timed.epoch_seconds
    results.update(epochs=epochs, global_step=global_step, fit_seconds=round(fit_seconds, 2))
    if ckpt_path:
        results["resumed_from"] = str(Path(ckpt_path).absolute())  # the path as given: last.ckpt may be a link
    if cfg.get("session"):  # whose record in .hydra/<session>/ these results are (summarize.py reads it)
        results["session"] = cfg.session
    keep_previous_results(output_dir, cfg.get("session") or "")
    write_metrics(output_dir / RESULTS_FILE, results)
    # Nested: TensorBoard's logger flattens it to model/arch, ...; the CSV logger's hparams.yaml keeps the shape.
    log_hparams_with_metrics(trainer, config_dict(cfg, resolve=True), results)
    log_once(logging.INFO, "%s%s", FINISHED_LOG_MARK, output_dir)
    return results
