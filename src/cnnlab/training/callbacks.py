"""Callbacks the training task adds to every run."""

from __future__ import annotations

import os
import re
import time
import warnings
from datetime import timedelta
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from lightning.pytorch.utilities.warnings import PossibleUserWarning

CHECKPOINT_KEY = "cnnlab"
CHECKPOINT_FORMAT = 1


class RunRecordInCheckpoint(Callback):
    """Store the run's resolved config and class names in every checkpoint.

    With them a checkpoint is self-describing: ``scripts/eval.py`` rebuilds the exact
    network and data pipeline from the file alone. Everything stored is plain Python data,
    so the checkpoint still loads with ``torch.load(weights_only=True)``.
    """

    def __init__(self, config: dict[str, Any], class_names: list[str]) -> None:
        self.record = {"format": CHECKPOINT_FORMAT, "config": config, "class_names": list(class_names)}

    def on_save_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict[str, Any]) -> None:
        checkpoint[CHECKPOINT_KEY] = self.record


class HideFrozenStagesEvalModeWarning(Callback):
    """Hide Lightning's warning about modules in eval mode, from the fit's start until training starts, when they are
    exactly the network's frozen stages.

    A fine-tuner keeps its frozen stages in eval mode on purpose (``kept_in_eval_mode`` in
    models/torchvision_ft.py), and Lightning warns about every module it finds in eval mode as
    training starts ("Found 68 module(s) ... may lead to unexpected behavior"). Matched by that
    count, and only for this fit, the warning still shows when any other module is in eval mode.
    The filter is taken out as training starts, and also when the fit fails before that (in its
    sanity check, say), so it never outlives its fit. The classifier attaches this callback itself
    (``ImageClassifier.configure_callbacks``).
    """

    def __init__(self) -> None:
        self._hidden: warnings.catch_warnings | None = None

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._show_again()
        network = getattr(pl_module, "net", None)
        kept = {id(module) for root in getattr(network, "kept_in_eval_mode", []) for module in root.modules()}
        in_eval = {id(module) for module in pl_module.modules() if not module.training}
        # <=, not ==: a stage may be a container of its own (the stem's conv1 and bn1 in a
        # ModuleList), which is not in the model's module tree.
        if in_eval and in_eval <= kept:
            self._hidden = warnings.catch_warnings()
            self._hidden.__enter__()
            warnings.filterwarnings("ignore", category=PossibleUserWarning, message=re.escape(
                f"Found {len(in_eval)} module(s) in eval mode at the start of training."))

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._show_again()  # Lightning has checked the modes

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        self._show_again()

    def teardown(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        self._show_again()

    def _show_again(self) -> None:
        if self._hidden is not None:
            self._hidden.__exit__(None, None, None)
            self._hidden = None


class RunFolderCheckpoint(ModelCheckpoint):
    """Lightning's ModelCheckpoint, with ``last.ckpt`` always the newest epoch, also in a moved or copied run folder.

    A checkpoint stores the callback's folder and its files' paths (the top-k files, ``last.ckpt``).
    Lightning restores those paths only when the folder is unchanged: resumed in a moved or copied
    run folder, it forgets them, so ``save_last: link`` writes ``last-v1.ckpt`` beside a stale
    ``last.ckpt`` (the next ``ckpt_path=last`` redoes finished epochs) and the old top-k files are
    never pruned. Here the stored paths under the stored folder are moved to this callback's folder
    when every one of those files is there, i.e. the folder is the same run's. A checkpoint of
    another run, starting a new run elsewhere, finds none of its files here: this callback then
    neither adopts nor deletes them (Lightning's behaviour, and its warning).

    With ``save_last: link`` and a monitored top-k, Lightning 2.6 links ``last.ckpt`` to the newest
    top-k file, an earlier epoch's when the last epoch was not among the best, so a resume from it
    would redo epochs. At such an epoch ``last.ckpt`` is written as a file of its own instead.
    """

    def __init__(self, *, every_n_train_steps: int | None = None, train_time_interval: timedelta | None = None,
                 **kwargs: Any) -> None:
        """Takes ModelCheckpoint's arguments, by keyword (as Hydra passes them)."""
        super().__init__(every_n_train_steps=every_n_train_steps, train_time_interval=train_time_interval, **kwargs)
        # ModelCheckpoint saves from its per-batch hook only every n training steps or every time
        # interval; without either, Lightning's call of that hook on every step only checks and returns.
        self._saves_within_epoch = bool(every_n_train_steps) or train_time_interval is not None
        # Set by the training task when the session continues a run from a checkpoint: the files
        # already in the folder are then that run's own.
        self.continuing_run = False

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        """Lightning's setup, without its "not empty" warning when continuing a run; the per-batch hook taken
        out of Lightning's loop where it would only check and return."""
        with warnings.catch_warnings():
            if self.continuing_run:  # a new run's folder holding checkpoints still gets Lightning's warning
                warnings.filterwarnings("ignore", message=r"Checkpoint directory .* exists and is not empty\.")
            super().setup(trainer, pl_module, stage)
        # Read after the network's passes, its checks cost about 30 µs a step on a 2-core CPU
        # (docs/performance.md). Lightning's dispatcher passes by a hook that is not callable.
        if not self._saves_within_epoch:
            self.on_train_batch_end = None  # type: ignore[assignment,method-assign]

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Adopt the run's ``last.ckpt`` when the session resumes from it, so the next epoch updates it."""
        super().on_train_start(trainer, pl_module)
        # A first epoch's top-k file is written before last.ckpt exists, so the state it stores names no
        # last checkpoint. Resumed from it (last.ckpt links to it), Lightning would take last.ckpt for
        # another's and save the next epoch as last-v1.ckpt, leaving last.ckpt for `ckpt_path=last`
        # to resume the same epoch again. A last.ckpt that is not the resumed file keeps Lightning's
        # protection: it holds a later state than the one resumed.
        last = self.format_checkpoint_name({}, self.CHECKPOINT_NAME_LAST)
        resumed = trainer.ckpt_path
        if (self.save_last and not self.last_model_path and resumed and os.path.isfile(last)
                and os.path.isfile(resumed) and os.path.samefile(last, resumed)):
            # Both: Lightning updates last.ckpt at an epoch without a new top-k file only once
            # _last_checkpoint_saved is set (load_state_dict set it from the stored, empty path).
            self.last_model_path = self._last_checkpoint_saved = last

    def teardown(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        """Give the callback its per-batch hook back, so it leaves the run as it came."""
        vars(self).pop("on_train_batch_end", None)
        super().teardown(trainer, pl_module, stage)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Lightning's final ``last.ckpt``, except under ``fast_dev_run``, which saves no checkpoints."""
        # Lightning 2.6 checks fast_dev_run everywhere it saves but here, so a smoke test left a
        # one-step last.ckpt that a later `ckpt_path=last` in the same folder would resume from.
        if not trainer.fast_dev_run:  # type: ignore[attr-defined]  # set outside Trainer.__init__, unseen by mypy
            super().on_train_end(trainer, pl_module)

    @property
    def state_key(self) -> str:
        """Lightning's key for ModelCheckpoint's state, so runs checkpointed with either class resume with the other."""
        return super().state_key.replace(type(self).__qualname__, ModelCheckpoint.__qualname__, 1)

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore the callback's state, its paths moved to this folder where the run's files moved with it."""
        old = state_dict.get("dirpath")
        if old and self.dirpath and old != self.dirpath:
            state_dict = _reroot(state_dict, old, self.dirpath) or state_dict
        super().load_state_dict(state_dict)
        # Lightning updates last.ckpt at an epoch without a new top-k file only once this is set in the session.
        self._last_checkpoint_saved = self._last_checkpoint_saved or self.last_model_path

    def _save_last_checkpoint(self, trainer: L.Trainer, monitor_candidates: dict[str, Any]) -> None:
        # Lightning 2.6 links last.ckpt to the newest top-k file even when that holds an earlier epoch
        # (the last epoch was not the best): last.ckpt is then written as a file of its own.
        if self.save_last == "link" and self._last_global_step_saved != trainer.global_step:
            self._last_checkpoint_saved = ""
        super()._save_last_checkpoint(trainer, monitor_candidates)


def _reroot(state: dict[str, Any], old: str | Path, new: str | Path) -> dict[str, Any] | None:
    """``state`` with its checkpoint paths under ``old`` moved to ``new``, or None unless all of them exist there."""
    keys = [key for key in ("best_model_path", "kth_best_model_path", "last_model_path") if state.get(key)]
    best_k = state.get("best_k_models") or {}
    moved = {}
    for path in {state[key] for key in keys} | set(best_k):
        relative = os.path.relpath(path, old)
        if relative.startswith(os.pardir) or not os.path.lexists(os.path.join(new, relative)):
            return None
        moved[path] = os.path.join(new, relative)
    return {**state, "dirpath": new, **{key: moved[state[key]] for key in keys},
            "best_k_models": {moved[path]: score for path, score in best_k.items()}}


# The trainer's callback_metrics key of the epoch times so far (see EpochTimer).
EPOCH_SECONDS = "time/epoch_seconds"
EARLIER_FIT_SECONDS = "time/earlier_fit_seconds"


class EpochTimer(Callback):
    """Log the wall time of every epoch, training and validation together, as ``time/epoch``.

    The times also end up in ``metrics.json`` (``epoch_seconds``), e.g. to compare a
    linear probe's first epoch (features computed) with the later ones (features cached).
    They are kept in ``epoch_seconds`` and, as a tensor, in the trainer's ``callback_metrics``
    under ``EPOCH_SECONDS``: with a spawn-based strategy (``ddp_spawn``) this callback runs in
    the worker processes, and those metrics are what Lightning hands back to the main process.

    The times live in the run's checkpoints too, so that a resumed run's ``epoch_seconds`` has
    one entry per epoch of the whole run, and ``EARLIER_FIT_SECONDS`` (in ``callback_metrics``)
    is the fit time of the sessions before this one, up to the checkpoint it resumed.
    """

    def __init__(self) -> None:
        self.epoch_seconds: list[float] = []
        self.earlier_fit_seconds = 0.0
        self._started: float | None = None
        self._epoch: int | None = None  # the epoch being timed, as Lightning counts it
        self._fit_started: float | None = None
        self._restored_epoch: tuple[int, float] | None = None  # from a checkpoint saved before its epoch's end hook

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._fit_started = time.perf_counter()

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        now = time.perf_counter()
        self._started, self._epoch = now, trainer.current_epoch
        if self._restored_epoch is not None:
            epoch, seconds = self._restored_epoch
            if epoch == trainer.current_epoch:  # a checkpoint from within this epoch: its time so far counts
                self._started = now - seconds
            else:  # saved at its epoch's end (after validation, before this hook): that epoch is done
                self._record(trainer, seconds)
            self._restored_epoch = None

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # Lightning runs the epoch's validation before this hook, so the time includes it.
        if self._started is None:
            return
        seconds = time.perf_counter() - self._started
        self._started = self._epoch = None
        self._record(trainer, seconds)
        # The slowest process's time is the epoch's (and logging it synced keeps Lightning from warning under DDP).
        pl_module.log("time/epoch", seconds, sync_dist=True, reduce_fx="max")

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._restored_epoch is not None:  # a resume with nothing left to train: the checkpoint's epoch is done
            self._record(trainer, self._restored_epoch[1])
            self._restored_epoch = None
        self._publish(trainer)

    def _record(self, trainer: L.Trainer, seconds: float) -> None:
        self.epoch_seconds.append(round(seconds, 3))
        self._publish(trainer)

    def _publish(self, trainer: L.Trainer) -> None:
        # float64, so that the main process reads back exactly the rounded values.
        trainer.callback_metrics[EPOCH_SECONDS] = torch.tensor(self.epoch_seconds, dtype=torch.float64)
        trainer.callback_metrics[EARLIER_FIT_SECONDS] = torch.tensor(self.earlier_fit_seconds, dtype=torch.float64)

    def state_dict(self) -> dict[str, Any]:
        """The finished epochs' times, the epoch under way (a checkpoint is saved before its end hook) and the fit time so far."""
        now = time.perf_counter()
        in_progress = None if self._started is None or self._epoch is None else [self._epoch, now - self._started]
        if in_progress is None and self._restored_epoch is not None:
            in_progress = list(self._restored_epoch)
        session = now - self._fit_started if self._fit_started is not None else 0.0
        return {"epoch_seconds": list(self.epoch_seconds), "epoch_in_progress": in_progress,
                "fit_seconds": self.earlier_fit_seconds + session}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.epoch_seconds = [float(seconds) for seconds in state_dict.get("epoch_seconds", [])]
        in_progress = state_dict.get("epoch_in_progress")
        self._restored_epoch = (int(in_progress[0]), float(in_progress[1])) if in_progress else None
        self.earlier_fit_seconds = float(state_dict.get("fit_seconds", 0.0))


# The callback hooks Lightning calls at every batch: six per training step, two per evaluation batch.
PER_BATCH_HOOKS = (
    "on_train_batch_start",
    "on_before_backward",
    "on_after_backward",
    "on_before_optimizer_step",
    "on_before_zero_grad",
    "on_train_batch_end",
    "on_validation_batch_start",
    "on_validation_batch_end",
    "on_test_batch_start",
    "on_test_batch_end",
    "on_predict_batch_start",
    "on_predict_batch_end",
)


class SkipUnusedBatchHooks(Callback):
    """Take every callback out of the per-batch hooks it does not implement.

    Lightning calls each per-batch hook on every callback, the base class's empty method
    included: with cnnlab's default callbacks that is over 70 calls per training step, of which
    four do work, and each call costs Lightning's bookkeeping (the callback's state key, the
    profiler's context), about 1 µs on a 2-core CPU and more inside the loop, where the network's
    kernels have evicted that Python from the caches. Lightning's dispatcher skips a hook that is
    not callable, so at ``setup`` each hook a callback inherits unchanged from ``Callback`` is
    shadowed on that instance by ``None``, until ``teardown`` takes the shadows away again (so a
    callback leaves the run as it came, e.g. for a Trainer without this one). Hooks a callback
    implements, in its class or on the instance (as Lightning's ``LambdaCallback`` sets them),
    and all other hooks are untouched: what runs is exactly what ran before.
    """

    def __init__(self) -> None:
        self._shadowed: list[tuple[Callback, str]] = []

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        for callback in trainer.callbacks:  # type: ignore[attr-defined]  # set outside Trainer.__init__, unseen by mypy
            for hook in PER_BATCH_HOOKS:
                # Lightning's is_overridden would also do, but it fails on a hook that is a
                # callable object (no __code__); identity with the base method cannot misjudge.
                inherited = hook not in vars(callback) and getattr(type(callback), hook) is getattr(Callback, hook)
                if inherited:
                    setattr(callback, hook, None)
                    self._shadowed.append((callback, hook))

    def teardown(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        for callback, hook in self._shadowed:
            if vars(callback).get(hook, False) is None:  # still the shadow set at setup, not a hook set since
                delattr(callback, hook)  # the class's empty method shows through again
        self._shadowed.clear()
