"""Callbacks that show what the network does in TensorBoard: confusion matrices, misclassified
images, first-layer filters, feature maps, and the gradient norm.

Each callback is switched on in ``conf/callbacks/default.yaml`` and off with
``~callbacks.<name>`` (or ``every_n_epochs=0`` where it has one). On epochs where a callback
is off, its hooks return after one integer comparison: no tensor is copied, no hook is
registered, nothing is drawn. Figures are drawn and written by the global-zero process only;
metrics that need every process's data (the confusion matrix) are synchronised first.
"""

from __future__ import annotations

import logging
import pickle
from typing import Any, cast

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.utilities import rank_zero_warn
from torch import Tensor, nn
from torchmetrics.classification import MulticlassConfusionMatrix
from torchvision.utils import make_grid

from cnnlab.errors import LayerNotFoundError
from cnnlab.utils.config import ensure_switch
from cnnlab.visualize.feature_maps import ActivationCapture, find_layer
from cnnlab.visualize.figures import (
    confusion_matrix_figure,
    feature_map_grid,
    figure_to_array,
    filter_grid_image,
    image_grid_figure,
)

log = logging.getLogger(__name__)


def tensorboard_writer(trainer: L.Trainer) -> Any | None:
    """The ``SummaryWriter`` of the trainer's TensorBoard logger, or None without one (or off global zero)."""
    if not trainer.is_global_zero:
        return None
    for logger in trainer.loggers:
        if isinstance(logger, TensorBoardLogger):
            return logger.experiment
    return None


def logger_step(trainer: L.Trainer, train_epoch_end: bool = False) -> int:
    """The step at which Lightning writes the metrics logged now (``train_epoch_end``: those of the
    training epoch ending now), so that an image sits at the same x position in TensorBoard as the
    scalars of the same epoch and stage."""
    # Lightning's logger connector writes logged metrics at fit_loop.epoch_loop._batches_that_stepped,
    # as its LearningRateMonitor does; there is no public name for it. trainer.global_step is one
    # ahead of it during the validation that ends a training epoch (that batch is counted after
    # validation). After on_train_epoch_end Lightning lowers the counter by one to write the
    # training epoch's metrics at the step of its last batch, hence train_epoch_end. At test or
    # validate alone the counter holds what fit left: 0 for a fresh trainer.
    step = trainer.fit_loop.epoch_loop._batches_that_stepped
    return step - 1 if train_epoch_end else step


def network_of(pl_module: L.LightningModule) -> nn.Module:
    """The network inside a cnnlab classifier (``pl_module.net``), or the module itself."""
    net = getattr(pl_module, "net", None)
    return net if isinstance(net, nn.Module) else pl_module


def class_names_of(pl_module: L.LightningModule, num_classes: int) -> list[str]:
    names = getattr(pl_module, "class_names", None)
    return list(names) if names is not None and len(names) == num_classes else [str(i) for i in range(num_classes)]


def epoch_is_due(trainer: L.Trainer, every_n_epochs: int) -> bool:
    """True on epochs 0, n, 2n, ... and on the last planned epoch; never while sanity checking or when n <= 0."""
    if every_n_epochs <= 0 or trainer.sanity_checking:
        return False
    epoch = trainer.current_epoch
    return epoch % every_n_epochs == 0 or epoch == (trainer.max_epochs or 0) - 1


def trained_epoch(trainer: L.Trainer, stage: str) -> int | None:
    """The training epoch whose weights ``stage`` (val or test) runs on, counted from 0 as checkpoint
    names (epoch_002.ckpt) and Lightning's progress bar count; None when unknown.

    At test, Lightning leaves ``current_epoch`` at the number of epochs fit ran (one past the
    last), and a test of a checkpoint (``ckpt_path=best``) runs on that checkpoint's epoch.
    """
    if stage != "test":
        return trainer.current_epoch
    if trainer.ckpt_path:
        try:  # mmap: the weights are not read
            checkpoint = torch.load(trainer.ckpt_path, map_location="cpu", mmap=True, weights_only=True)
        except pickle.UnpicklingError:  # a checkpoint tested with weights_only=False: a title is no reason to fail
            return None
        epoch = checkpoint.get("epoch") if isinstance(checkpoint, dict) else None
        return int(epoch) if epoch is not None else None
    # The weights as fit left them; a trainer that never fit (eval) tests weights from elsewhere.
    return trainer.current_epoch - 1 if trainer.current_epoch > 0 else None


def figure_title(trainer: L.Trainer, stage: str) -> str:
    """``<stage> epoch <n>`` for a figure of the weights of training epoch n (see :func:`trained_epoch`), else ``<stage>``."""
    epoch = trained_epoch(trainer, stage)
    return stage if epoch is None else f"{stage} epoch {epoch}"


def _warn_without_tensorboard(trainer: L.Trainer, what: str) -> None:
    # fast_dev_run swaps every logger for a dummy on purpose, and ~logger asks for no logs at all:
    # nothing to warn about there. (Lightning sets trainer.fast_dev_run outside Trainer.__init__,
    # where mypy does not see it.)
    if trainer.is_global_zero and not trainer.fast_dev_run and trainer.loggers and not any(  # type: ignore[attr-defined]
            isinstance(lg, TensorBoardLogger) for lg in trainer.loggers):
        rank_zero_warn(f"{what}: no TensorBoard logger is configured (logger=tensorboard), so nothing is drawn")


def _labels(batch: Any) -> Tensor:
    return batch.labels if hasattr(batch, "labels") else batch[1]


def _images(batch: Any) -> Tensor:
    return batch.images if hasattr(batch, "images") else batch[0]


class ConfusionMatrixLogger(Callback):
    """The confusion matrix as a figure (``val/confusion_matrix``, ``test/confusion_matrix``) and
    per-class validation accuracy as scalars (``val/acc_class/<class>``, for each class the
    validation split has images of).

    Args:
        every_n_epochs: draw it at validation epochs 0, n, 2n, ... and the last; 0 never at validation.
        on_test: draw it at test.
    """

    def __init__(self, every_n_epochs: int = 1, on_test: bool = True) -> None:
        self.every_n_epochs = int(every_n_epochs)
        self.on_test = ensure_switch(on_test, "callbacks.confusion_matrix.on_test")
        self._matrix: MulticlassConfusionMatrix | None = None
        self._collecting = False

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        _warn_without_tensorboard(trainer, "ConfusionMatrixLogger")

    def _start(self, pl_module: L.LightningModule) -> None:
        # nn.Module types an attribute it does not know as Tensor | Module; a classifier's num_classes is an int.
        num_classes = int(cast(int, pl_module.num_classes))
        if self._matrix is None or self._matrix.num_classes != num_classes:
            self._matrix = MulticlassConfusionMatrix(num_classes)
        self._matrix = self._matrix.to(pl_module.device)
        self._matrix.reset()
        self._collecting = True

    def _update(self, outputs: Any, batch: Any) -> None:
        if self._collecting:
            assert self._matrix is not None
            self._matrix.update(outputs["logits"].detach(), _labels(batch))

    def _finish(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if not self._collecting:
            return
        self._collecting = False
        assert self._matrix is not None
        matrix = self._matrix.compute()  # synchronised across processes
        self._matrix.reset()
        names = class_names_of(pl_module, matrix.shape[0])
        if stage == "val":
            totals = matrix.sum(dim=1)
            per_class = matrix.diagonal().float() / totals.clamp_min(1)
            # A class with no validation images has no accuracy: 0.0 would read as "always wrong",
            # NaN would end up in metrics.json. It is left out; the figure still shows its row.
            accuracies = {f"val/acc_class/{name}": acc
                          for name, acc, total in zip(names, per_class, totals.tolist(), strict=True) if total > 0}
            # Every process holds the same synchronised values; sync_dist only keeps Lightning from warning.
            pl_module.log_dict(accuracies, sync_dist=True)
        writer = tensorboard_writer(trainer)
        if writer is not None:
            figure = confusion_matrix_figure(matrix, names, title=figure_title(trainer, stage))
            writer.add_image(f"{stage}/confusion_matrix", figure_to_array(figure), logger_step(trainer), dataformats="HWC")

    def on_validation_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if epoch_is_due(trainer, self.every_n_epochs):
            self._start(pl_module)

    def on_validation_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any,
                                batch_idx: int, dataloader_idx: int = 0) -> None:
        self._update(outputs, batch)

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._finish(trainer, pl_module, "val")

    def on_test_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.on_test:
            self._start(pl_module)

    def on_test_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any,
                          batch_idx: int, dataloader_idx: int = 0) -> None:
        self._update(outputs, batch)

    def on_test_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._finish(trainer, pl_module, "test")


class MisclassifiedImagesLogger(Callback):
    """A grid of misclassified test images titled with true and predicted class (``test/misclassified``).

    The first ``max_images`` mistakes in test order are shown; under multi-process testing,
    those of the global-zero process's share of the test set.

    Args:
        max_images: how many to show; 0 turns it off.
        columns: images per row.
    """

    def __init__(self, max_images: int = 32, columns: int = 8) -> None:
        self.max_images = int(max_images)
        self.columns = int(columns)
        self._images: list[Tensor] = []
        self._titles: list[str] = []

    def on_test_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._images, self._titles = [], []

    def on_test_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any,
                          batch_idx: int, dataloader_idx: int = 0) -> None:
        room = self.max_images - len(self._titles)
        if room <= 0 or not trainer.is_global_zero:
            return
        labels = _labels(batch)
        confidence, predicted = outputs["logits"].detach().softmax(dim=1).max(dim=1)
        wrong = (predicted != labels).nonzero().flatten()[:room]
        if len(wrong) == 0:
            return
        names = class_names_of(pl_module, outputs["logits"].shape[1])
        self._images.extend(_images(batch)[wrong].cpu())
        for i in wrong.tolist():
            self._titles.append(f"true {names[labels[i]]}\npred {names[predicted[i]]} {confidence[i]:.0%}")

    def on_test_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        writer = tensorboard_writer(trainer)
        if writer is None or not self._titles:
            return
        figure = image_grid_figure(torch.stack(self._images), self._titles, columns=self.columns)
        writer.add_image("test/misclassified", figure_to_array(figure), logger_step(trainer), dataformats="HWC")
        self._images, self._titles = [], []


class ConvFilterLogger(Callback):
    """A conv layer's filters as an image grid (``filters/<layer>``), at the end of every few training epochs.

    Args:
        every_n_epochs: draw at the end of epochs 0, n, 2n, ... and the last; 0 turns it off.
        layer: the conv layer's name in the network (``dict(net.named_modules())``); null = the first conv.
    """

    def __init__(self, every_n_epochs: int = 5, layer: str | None = None) -> None:
        self.every_n_epochs = int(every_n_epochs)
        self.layer = layer
        self._name = ""
        self._conv: nn.Conv2d | None = None

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # Resolved here so that a typo in the layer name stops the run before the first epoch.
        net = network_of(pl_module)
        self._name, layer = find_layer(net, self.layer)
        if not isinstance(layer, nn.Conv2d):
            raise LayerNotFoundError(f"callbacks.conv_filters.layer={self._name!r} is a {type(layer).__name__}, not a Conv2d")
        self._conv = layer
        _warn_without_tensorboard(trainer, "ConvFilterLogger")

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not epoch_is_due(trainer, self.every_n_epochs):
            return
        writer = tensorboard_writer(trainer)
        if writer is not None and self._conv is not None:
            writer.add_image(f"filters/{self._name}", filter_grid_image(self._conv.weight),
                             logger_step(trainer, train_epoch_end=True))


class FeatureMapLogger(Callback):
    """Feature maps of a chosen layer for the first few validation images (``feature_maps/<layer>/image_<i>``).

    Each image's first ``channels`` maps form a grid, channel 0 at the top left, row by row,
    each map on its own colour scale; ``feature_maps/inputs`` shows the images themselves.

    The maps are copied from the first validation batch as the validation step runs it (a
    forward hook on due epochs only), so there is no extra forward pass. The validation
    loader does not shuffle, so the images are the same at every epoch.

    Args:
        every_n_epochs: draw at validation epochs 0, n, 2n, ... and the last; 0 turns it off.
        layer: the layer's name in the network (``dict(net.named_modules())``); null = the first conv.
        num_images: how many validation images.
        channels: how many of the layer's first channels to show per image.
        columns: panels per row.
    """

    def __init__(self, every_n_epochs: int = 5, layer: str | None = None, num_images: int = 4, channels: int = 16,
                 columns: int = 4) -> None:
        self.every_n_epochs = int(every_n_epochs)
        self.layer = layer
        self.num_images = int(num_images)
        self.channels = int(channels)
        self.columns = int(columns)
        self._name = ""
        self._module: nn.Module | None = None
        self._capture: ActivationCapture | None = None
        self._inputs: Tensor | None = None
        self._inputs_logged = False

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._name, self._module = find_layer(network_of(pl_module), self.layer)
        _warn_without_tensorboard(trainer, "FeatureMapLogger")

    def on_validation_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, batch_idx: int,
                                  dataloader_idx: int = 0) -> None:
        if batch_idx != 0 or dataloader_idx != 0 or self._module is None or self.num_images <= 0:
            return
        if not epoch_is_due(trainer, self.every_n_epochs) or tensorboard_writer(trainer) is None:
            return
        self._inputs = _images(batch)[: self.num_images].detach().cpu()
        self._capture = ActivationCapture(self._module, keep=self.num_images)

    def on_validation_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any,
                                batch_idx: int, dataloader_idx: int = 0) -> None:
        if self._capture is None:
            return
        capture, self._capture = self._capture, None
        capture.remove()
        writer = tensorboard_writer(trainer)
        if capture.output is None or writer is None or self._inputs is None:
            return
        maps = capture.output.float().cpu()
        if maps.ndim != 4:
            rank_zero_warn(f"FeatureMapLogger: layer {self._name!r} outputs shape {tuple(maps.shape)}, not feature maps")
            return
        step = logger_step(trainer)
        if not self._inputs_logged:
            inputs = self._inputs if self._inputs.dtype == torch.uint8 else (self._inputs.clamp(0, 1) * 255).byte()
            writer.add_image("feature_maps/inputs", make_grid(inputs, nrow=len(inputs)), step)
            self._inputs_logged = True
        for index, image_maps in enumerate(maps):
            grid = feature_map_grid(image_maps[: self.channels], columns=self.columns)
            writer.add_image(f"feature_maps/{self._name}/image_{index}", grid, step)

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._capture is not None:  # the first batch never ended (an error): do not leave the hook behind
            self._capture.remove()
            self._capture = None


class GradientNormLogger(Callback):
    """The global norm of all gradients (``train/grad_norm``), before any clipping, at each optimizer
    step whose logs reach the loggers (every ``trainer.log_every_n_steps``).

    Under mixed precision Lightning unscales the gradients before this hook, so the value is
    the true norm.

    Args:
        norm_type: the p of the p-norm (2.0 for the usual Euclidean norm; ``inf`` for the largest entry).
    """

    def __init__(self, norm_type: float = 2.0) -> None:
        self.norm_type = float(norm_type)
        self._log_this_step = False

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, batch_idx: int) -> None:
        # Only steps whose logs reach the loggers (every trainer.log_every_n_steps) pay for the
        # norm. Decided here, where Lightning's LearningRateMonitor decides too: right after the
        # backward pass the same read of Lightning's state costs about 25 µs instead of 2.
        self._log_this_step = trainer._logger_connector.should_update_logs

    def on_before_optimizer_step(self, trainer: L.Trainer, pl_module: L.LightningModule, optimizer: Any) -> None:
        if not self._log_this_step:
            return
        grads = [p.grad.detach() for p in pl_module.parameters() if p.grad is not None]
        if not grads:
            return
        total = torch.nn.utils.get_total_norm(grads, self.norm_type)
        pl_module.log("train/grad_norm", total, on_step=True, on_epoch=False)
