"""The LightningModule that trains any image classification network in cnnlab."""

from __future__ import annotations

import inspect
import logging
import math
from collections.abc import Callable, Iterable, Sequence
from functools import partial
from typing import Any, cast

import lightning as L
import torch
from lightning.pytorch.plugins.precision import MixedPrecision
from lightning.pytorch.trainer.states import TrainerFn
from lightning.pytorch.utilities.types import OptimizerLRSchedulerConfig
from torch import Tensor, nn
from torch.optim import Optimizer
from torch.optim.lr_scheduler import LRScheduler
from torchmetrics import MaxMetric, MeanMetric
from torchmetrics.classification import MulticlassStatScores

from cnnlab.data.base import Batch
from cnnlab.errors import CheckpointError, ConfigValueError
from cnnlab.tasks.results import metric_values
from cnnlab.training.callbacks import HideFrozenStagesEvalModeWarning
from cnnlab.training.metrics import TopKAccuracy
from cnnlab.utils.config import ensure_switch

OptimizerFactory = Callable[[Iterable[Any]], Optimizer]
SchedulerFactory = Callable[..., LRScheduler]

log = logging.getLogger(__name__)

# self.log options for a value computed at an epoch's end from torchmetrics states, which
# torchmetrics has already combined across processes, so it is the same in every process. Lightning
# warns about any epoch-level value logged without sync_dist under DDP; its sync of such a value is one
# all-reduce per value, at the epoch's end only, and "max" returns it unchanged for any number of
# processes (a mean of equal floats can round).
SYNCED: dict[str, Any] = {"sync_dist": True, "reduce_fx": "max"}

# The checkpoint's record of the train/ and val/ metrics of the epoch it was saved at (see ImageClassifier._epoch_metrics).
EPOCH_METRICS = "epoch_metrics"


class ImageClassifier(L.LightningModule):
    """Cross-entropy training of ``net`` with top-1/top-5 accuracy for train, val and test.

    Args:
        net: the network, mapping a batch of images (uint8, or floats in [0, 1] after
            augmentation) to (N, num_classes) logits. cnnlab's networks normalise their input
            as their first layer, so a checkpoint carries the statistics its weights expect.
        num_classes: number of classes.
        optimizer: a factory taking the trainable parameters, e.g. ``partial(torch.optim.Adam, lr=1e-3)``;
            None for a model that is only evaluated.
        scheduler: a factory taking the optimizer, or None for a constant learning rate. A
            ``total_steps`` (OneCycleLR) or ``T_max`` (CosineAnnealingLR) argument left unset is
            filled with the run's length in steps or epochs, per ``scheduler_interval``; a
            resumed run must then be as long as the run it continues.
        scheduler_interval: ``step`` or ``epoch``: when the scheduler advances.
        label_smoothing: label smoothing of the training loss (val/test loss is the plain cross-entropy).
        class_names: names for per-class metrics; defaults to the class indices.
        flip_tta: at validation and test, average the logits of each image and its mirror image.
        channels_last: keep weights and activations in channels-last memory order (faster
            convolutions on recent GPUs, above all with mixed precision).
        compile: run the network through ``torch.compile`` (the checkpoint keeps the plain
            network's parameter names).
    """

    # Set in __init__ with object.__setattr__ (outside the module tree): the network, or its compiled form.
    _run_net: Callable[[Tensor], Tensor]

    def __init__(
        self,
        net: nn.Module,
        num_classes: int,
        optimizer: OptimizerFactory | None = None,
        scheduler: SchedulerFactory | None = None,
        scheduler_interval: str = "epoch",
        label_smoothing: float = 0.0,
        class_names: Sequence[str] | None = None,
        flip_tta: bool = False,
        channels_last: bool = False,
        compile: bool = False,
    ) -> None:
        super().__init__()
        flip_tta = ensure_switch(flip_tta, "classifier.flip_tta")
        channels_last = ensure_switch(channels_last, "classifier.channels_last")
        compile = ensure_switch(compile, "classifier.compile")
        if scheduler_interval not in ("step", "epoch"):
            raise ConfigValueError(f"scheduler.interval must be step or epoch, got {scheduler_interval!r}")
        # torch accepts a negative smoothing silently and refuses one above 1 only at the first
        # training step; 1 itself makes every target uniform, so nothing could be learnt.
        if not 0.0 <= label_smoothing < 1.0:
            raise ConfigValueError(
                f"classifier.label_smoothing={label_smoothing} is outside [0, 1): it is the share of each target "
                f"spread over all classes (0.1 is usual, 0 turns it off)"
            )
        if class_names is not None and len(class_names) != num_classes:
            raise ValueError(f"{len(class_names)} class names for {num_classes} classes")
        self.net = net
        self.num_classes = num_classes
        self.optimizer_factory = optimizer
        self.scheduler_factory = scheduler
        self.scheduler_interval = scheduler_interval
        self.class_names = list(class_names) if class_names is not None else [str(i) for i in range(num_classes)]
        self.criterion = nn.CrossEntropyLoss(label_smoothing=label_smoothing)
        # val/test loss is the plain cross-entropy, so runs with other label smoothing compare on it.
        self.eval_criterion = nn.CrossEntropyLoss()
        self.train_loss = MeanMetric()
        self.train_metrics = TopKAccuracy(num_classes, (1, 5), prefix="train/")
        self.val_metrics = TopKAccuracy(num_classes, (1, 5), prefix="val/")
        self.test_metrics = TopKAccuracy(num_classes, (1, 5), prefix="test/")
        # tp and support per class: a class with no test images gets no accuracy (not 0).
        self.test_per_class = MulticlassStatScores(num_classes, average=None, validate_args=False)
        self.val_acc_best = MaxMetric()
        self.flip_tta = flip_tta
        self.channels_last = channels_last
        if channels_last:
            self.net.to(memory_format=torch.channels_last)
        # Kept out of the module tree, so state_dict names do not change when compiling.
        object.__setattr__(self, "_run_net", torch.compile(self.net) if compile else self.net)
        self._resumed_val_acc_best: float | None = None
        self._resumed_epoch_metrics: dict[str, float] = {}
        self._resumed_scheduler_states: list[dict[str, Any]] | None = None
        self._log_this_step = False  # whether this training step's logs reach the loggers
        # Open from the fit's start to its training's start: hides Lightning's eval-mode warning.

    def __setattr__(self, name: str, value: Any) -> None:
        # Lightning records which hook is running (_current_fx_name) before and after each of
        # the ~20 hook calls of a training step. nn.Module.__setattr__ first checks every value
        # for being a parameter, buffer or submodule (~1 µs each time); a hook's name is none,
        # nor is the per-step logging decision.
        if name == "_current_fx_name" or name == "_log_this_step":
            object.__setattr__(self, name, value)
        else:
            super().__setattr__(name, value)

    def forward(self, images: Tensor) -> Tensor:
        """Logits for a batch of images: uint8 (0..255) or floats in [0, 1], on the model's device."""
        if self.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        logits = self._run_net(images)
        if self.flip_tta and not self.training:
            logits = (logits + self._run_net(images.flip(3))) / 2
        return logits

    def parameter_counts(self) -> dict[str, int]:
        """Total and trainable parameter counts of the network."""
        params = list(self.net.parameters())
        return {
            "params_total": sum(p.numel() for p in params),
            "params_trainable": sum(p.numel() for p in params if p.requires_grad),
        }

    # --- steps ------------------------------------------------------------------------------
    def _loss_and_logits(self, batch: Batch, split: str) -> tuple[Tensor, Tensor, Tensor]:
        if getattr(self.net, "cache_features", False):
            # Lightning sets trainer.datamodule outside Trainer.__init__, where mypy does not see it.
            fingerprint, size = self.trainer.datamodule.split_identity(split)  # type: ignore[attr-defined]
            # A method of the networks that cache features (nn.Module's attribute type is Tensor | Module).
            forward_cached = cast(Callable[..., Tensor], self.net.forward_cached)
            logits = forward_cached(batch.images, batch.indices, split, fingerprint, size)
        else:
            logits = self(batch.images)
        criterion = self.criterion if split == "train" else self.eval_criterion
        return criterion(logits, batch.labels), logits, batch.labels

    def setup(self, stage: str) -> None:
        """Give Lightning's model summary one training image, so it lists each layer's output size and FLOPs.

        The summary runs the model in eval mode: with ``flip_tta`` its FLOPs are those of both passes.
        """
        # Without an example input the summary prints a FLOPs column of zeros. A compiled network
        # is left without one: the summary's counting hooks would make torch warn on every run.
        split = getattr(self.trainer.datamodule, "train_split", None)  # type: ignore[attr-defined]  # set outside Trainer.__init__
        if (stage == "fit" and self.example_input_array is None and split is not None and len(split)
                and self._run_net is self.net):
            self.example_input_array = split.images[:1].clone()  # not a view: it would hold (and pickle) every image

    def configure_callbacks(self) -> list[L.Callback]:
        """The callback that keeps Lightning quiet about the frozen stages held in eval mode (only they, only as a fit starts).

        Lightning asks at every fit, test or validate; the trainer keeps what it was given, so a
        later run of the same trainer (the test after the fit) gets nothing new, and Lightning has
        no callback of ours to announce as overridden.
        """
        attached = self.trainer.callbacks  # type: ignore[attr-defined]  # set outside Trainer.__init__, unseen by mypy
        if any(isinstance(callback, HideFrozenStagesEvalModeWarning) for callback in attached):
            return []
        return [HideFrozenStagesEvalModeWarning()]

    def on_fit_start(self) -> None:
        if getattr(self.net, "cache_features", False):
            datamodule = self.trainer.datamodule  # type: ignore[attr-defined]  # set outside Trainer.__init__
            if not hasattr(datamodule, "split_identity"):
                raise ConfigValueError("model.cache_features=true needs one of cnnlab's in-memory data modules")
            if getattr(datamodule, "augment", None) is not None:
                raise ConfigValueError(
                    "model.cache_features=true stores each image's features once, so training augmentation "
                    "would be ignored: turn it off with ~data/augment (or use experiment=linear_probe)"
                )
            # The cache holds the features of the unflipped images only, so the mirror images'
            # logits of flip TTA cannot come from it.
            if self.flip_tta:
                raise ConfigValueError(
                    "classifier.flip_tta=true cannot apply with model.cache_features=true (the feature cache holds "
                    "only the unflipped images' features): pass classifier.flip_tta=false, or "
                    "model.cache_features=false to run the backbone on every image and its mirror image"
                )

    def on_train_batch_start(self, batch: Batch, batch_idx: int) -> None:
        """Note whether this step's logs reach the loggers; a subclass overriding this calls ``super()``."""
        # Decided before the network runs: after the forward pass has gone through the caches,
        # the same read of Lightning's state costs 18-25 µs instead of about 1.3 (docs/performance.md).
        self._log_this_step = self.trainer._logger_connector.should_update_logs

    def training_step(self, batch: Batch, batch_idx: int) -> Tensor:
        loss, logits, labels = self._loss_and_logits(batch, "train")
        self.train_metrics.update(logits.detach(), labels)
        self.train_loss.update(loss.detach(), labels.shape[0])
        # self.log costs about a millisecond; a small CPU step is ~25 ms. So the step loss is
        # logged only on the steps whose logs reach the loggers (every trainer.log_every_n_steps);
        # the epoch's mean loss comes from train_loss.
        if self._log_this_step:
            self.log("train/loss_step", loss, prog_bar=True)
        return loss

    def validation_step(self, batch: Batch, batch_idx: int) -> dict[str, Tensor]:
        loss, logits, labels = self._loss_and_logits(batch, "val")
        self.val_metrics.update(logits, labels)
        self.log("val/loss", loss, on_epoch=True, prog_bar=True, sync_dist=True, batch_size=labels.shape[0])
        # Callbacks (confusion matrix, misclassified images) read the logits from here.
        return {"loss": loss, "logits": logits}

    def test_step(self, batch: Batch, batch_idx: int) -> dict[str, Tensor]:
        loss, logits, labels = self._loss_and_logits(batch, "test")
        self.test_metrics.update(logits, labels)
        self.test_per_class.update(logits, labels)
        self.log("test/loss", loss, on_epoch=True, sync_dist=True, batch_size=labels.shape[0])
        return {"loss": loss, "logits": logits}

    # --- epoch ends: compute (synchronised across processes under DDP), log, reset ------------
    def on_train_start(self) -> None:
        # The sanity check's validation batches must not count as the best epoch.
        self.val_metrics.reset()
        self.val_acc_best.reset()
        if self._resumed_val_acc_best is not None:
            self.val_acc_best.update(self._resumed_val_acc_best)

    # A metric's state is not part of the state_dict: a resumed run carries its best so far here.
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        if self.val_acc_best.update_called:
            checkpoint["val_acc_best"] = float(self.val_acc_best.compute())
        if metrics := self._epoch_metrics():
            checkpoint[EPOCH_METRICS] = metrics

    def _epoch_metrics(self) -> dict[str, float]:
        """The train/ and val/ metrics of the epoch being saved, or those the resumed checkpoint held.

        A session resumed from a checkpoint of the run's last epoch trains nothing, and its
        results take these. The checkpoint callback saves after ``on_train_epoch_end`` logs the
        epoch's training metrics, or, where validation does not run once every epoch, after the
        validation, before they are logged: they then come from their states.
        """
        if self._trainer is None:
            return self._resumed_epoch_metrics
        metrics = metric_values(self.trainer.callback_metrics, prefixes=("train/", "val/"))
        if self.train_loss.update_called:  # this epoch's training, not yet logged
            metrics.update({name: float(value) for name, value in self.train_metrics.compute().items()})
            metrics["train/loss"] = float(self.train_loss.compute())
        return metrics or self._resumed_epoch_metrics

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        self._resumed_val_acc_best = checkpoint.get("val_acc_best")
        self._resumed_epoch_metrics = dict(checkpoint.get(EPOCH_METRICS) or {})
        # Lightning calls this before configure_optimizers, and loads these states into the new
        # schedulers after it: kept so that configure_optimizers can check they still fit the run.
        fitting = self._trainer is not None and self.trainer.state.fn == TrainerFn.FITTING
        self._resumed_scheduler_states = checkpoint.get("lr_schedulers") if fitting else None

    def on_train_epoch_end(self) -> None:
        if not self.train_loss.update_called:
            return  # a resumed session repeating the end of the epoch its checkpoint was saved in, before this hook
        self.log_dict({"train/loss": self.train_loss.compute(), **self.train_metrics.compute()}, **SYNCED)
        self.train_metrics.reset()
        self.train_loss.reset()

    def on_validation_epoch_end(self) -> None:
        values = self.val_metrics.compute()
        self.val_metrics.reset()
        self.log_dict(values, prog_bar=True, **SYNCED)
        if not self.trainer.sanity_checking:
            self.val_acc_best.update(values["val/acc"])
            self.log("val/acc_best", self.val_acc_best.compute(), **SYNCED)

    def on_test_epoch_end(self) -> None:
        self.log_dict(self.test_metrics.compute(), **SYNCED)
        true_positives, support = self.test_per_class.compute()[:, [0, 4]].unbind(dim=1)
        accuracy = true_positives / support.clamp(min=1)
        self.log_dict({f"test/acc_class/{name}": accuracy[i]
                       for i, name in enumerate(self.class_names) if support[i] > 0}, **SYNCED)
        self.test_metrics.reset()
        self.test_per_class.reset()

    # --- optimisation ---------------------------------------------------------------------------
    def configure_optimizers(self) -> Optimizer | OptimizerLRSchedulerConfig:
        # Frozen parameters are not handed to the optimizer at all (no weight decay, no state).
        if self.optimizer_factory is None:
            raise ValueError("this classifier was built without an optimizer; it can be evaluated, not trained")
        groups = self._parameter_groups()
        optimizer = self._optimizer_factory_for_trainer()(groups)
        if self.scheduler_factory is None:
            return optimizer
        scheduler = self._build_scheduler(optimizer, groups)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": self.scheduler_interval}}

    def _optimizer_factory_for_trainer(self) -> OptimizerFactory:
        """The optimizer factory, made unfused where the trainer's gradient clipping needs it.

        A fused optimizer unscales mixed-precision gradients inside its step, after Lightning
        would have clipped them, so Lightning refuses to clip them at all.
        """
        factory = self.optimizer_factory
        assert factory is not None
        trainer = self._trainer
        if trainer is None:  # the optimizer is built outside a run: no clipping then
            return factory
        clipping = bool(trainer.gradient_clip_val) and isinstance(trainer.precision_plugin, MixedPrecision)
        if clipping and isinstance(factory, partial) and factory.keywords.get("fused"):
            if trainer.is_global_zero:
                log.info(
                    "optimizer.fused=false for this run: trainer.gradient_clip_val=%s with "
                    "trainer.precision=%s clips the gradients before the optimizer step, which a fused optimizer "
                    "does not allow (it unscales them inside its step)",
                    trainer.gradient_clip_val, trainer.precision,
                )
            factory = partial(factory, fused=False)
        return factory

    def _build_scheduler(self, optimizer: Optimizer, groups: list[dict[str, Any]]) -> LRScheduler:
        """The scheduler for this run; a resumed run's is checked against the stored schedule's length."""
        factory = self.scheduler_factory
        assert factory is not None
        name = getattr(getattr(factory, "func", factory), "__name__", "the scheduler")
        kwargs = self._scheduler_kwargs(groups, name)
        try:
            scheduler = factory(optimizer, **kwargs)
        except (ArithmeticError, ValueError) as error:
            unit = "optimizer steps" if self.scheduler_interval == "step" else "epochs"
            run = "".join(f" of {value} {unit} ({key}={value})" for key, value in kwargs.items()
                          if key in ("total_steps", "T_max"))
            settings = ", ".join(f"scheduler.scheduler.{key}={value}"
                                 for key, value in getattr(factory, "keywords", {}).items())
            raise ConfigValueError(
                f"the learning-rate schedule {name} cannot be built for this run{run} with {settings or 'its defaults'}"
                f": {type(error).__name__}: {error}. Train for more {unit} (trainer.max_epochs, trainer.max_steps, "
                f"trainer.limit_train_batches), change one of those scheduler.scheduler settings, or train without "
                f"a schedule (scheduler=none)"
            ) from error
        self._ensure_resumed_schedule_fits(scheduler, name)
        return scheduler

    def _ensure_resumed_schedule_fits(self, scheduler: LRScheduler, name: str) -> None:
        """Refuse a resume whose run is longer or shorter than the schedule the checkpoint holds.

        Lightning loads the stored scheduler state over the new one, length included, so the
        schedule would end part-way through the run (OneCycleLR then fails, CosineAnnealingLR
        climbs back up); a schedule spanning the whole run cannot be stretched part-way either.
        """
        stored = self._resumed_scheduler_states
        self._resumed_scheduler_states = None
        if not stored:
            return
        new = scheduler.state_dict()
        unit = "optimizer steps" if self.scheduler_interval == "step" else "epochs"
        for key in ("total_steps", "T_max"):
            if key in new and key in stored[0] and new[key] != stored[0][key]:
                raise CheckpointError(
                    f"ckpt_path={self.trainer.ckpt_path} continues a run whose {name} schedule is "
                    f"{stored[0][key]} {unit} long ({key}), but this command's run would be {new[key]} {unit} long. "
                    f"A schedule over the whole run cannot be stretched part-way (the stored one, which Lightning "
                    f"restores, ends where that run ends). To continue the run, resume with its trainer.max_epochs, "
                    f"trainer.max_steps, trainer.limit_train_batches and trainer.accumulate_grad_batches; to train "
                    f"longer, start a new run (without ckpt_path). Nothing was trained."
                )

    def _parameter_groups(self) -> list[dict[str, Any]]:
        """Trainable parameters, grouped by learning-rate scale when the network asks for it.

        A network may define ``parameter_groups()`` returning ``{"params", "lr_scale"}`` dicts
        (the fine-tuner's head and unfrozen backbone); each group then trains at
        ``lr_scale`` times the optimizer's ``lr``.
        """
        base_lr = getattr(self.optimizer_factory, "keywords", {}).get("lr")
        net_groups: Callable[[], Iterable[dict[str, Any]]] | None = getattr(self.net, "parameter_groups", None)
        if net_groups is not None:
            groups = [dict(group) for group in net_groups()]
        else:
            groups = [{"params": [p for p in self.parameters() if p.requires_grad], "lr_scale": 1.0}]
        for group in groups:
            if group["lr_scale"] != 1.0:
                if base_lr is None:
                    raise ValueError("a backbone learning-rate scale needs the optimizer config to set lr")
                group["lr"] = base_lr * group["lr_scale"]
        return groups

    def _scheduler_kwargs(self, groups: list[dict[str, Any]], name: str) -> dict[str, Any]:
        """Fill a scheduler's length (and per-group peak rates) from the trainer and the groups."""
        factory = self.scheduler_factory
        assert factory is not None
        given = getattr(factory, "keywords", {})
        accepted = inspect.signature(getattr(factory, "func", factory)).parameters
        unset = [key for key in ("total_steps", "T_max") if key in accepted and key not in given]
        kwargs: dict[str, Any] = {}
        if unset:
            # Lightning counts an endless run (max_epochs=-1, no max_steps) as inf steps, and -1 epochs;
            # a run of 0 steps is left to the scheduler's own check, reported by _build_scheduler.
            if self.scheduler_interval == "step":
                steps = self.trainer.estimated_stepping_batches
                if math.isinf(steps):
                    raise ConfigValueError(
                        f"the learning-rate schedule {name} spans the whole run, so it needs the run's length: "
                        f"set trainer.max_epochs (or trainer.max_steps), or use scheduler=none"
                    )
                length = int(steps)
            else:
                length = self.trainer.max_epochs or 0
                if length <= 0:
                    raise ConfigValueError(
                        f"the learning-rate schedule {name} with scheduler.interval=epoch spans the run's epochs, so "
                        f"it needs trainer.max_epochs (trainer.max_steps does not say how many epochs that is); "
                        f"set trainer.max_epochs, or scheduler.interval=step to schedule over trainer.max_steps"
                    )
            kwargs.update({key: length for key in unset})
        max_lr = given.get("max_lr")
        if isinstance(max_lr, (int, float)) and any(group["lr_scale"] != 1.0 for group in groups):
            kwargs["max_lr"] = [max_lr * group["lr_scale"] for group in groups]
        return kwargs
