"""Finding a network's layers by name and capturing what they output for given images."""

from __future__ import annotations

import contextlib
import difflib
from collections.abc import Iterator

import torch
from torch import Tensor, nn

from cnnlab.errors import LayerNotFoundError


@contextlib.contextmanager
def evaluation_mode(net: nn.Module) -> Iterator[nn.Module]:
    """Put every module of ``net`` in eval mode, and restore each module's own mode afterwards.

    Restoring module by module (not ``net.train(previous)``) keeps mixed states as they were,
    such as a fine-tuner's frozen BatchNorm layers that stay in eval mode while training.
    """
    modes = [(module, module.training) for module in net.modules()]
    net.eval()
    try:
        yield net
    finally:
        for module, training in modes:
            module.training = training


def conv_layer_names(net: nn.Module) -> list[str]:
    """Names of the ``nn.Conv2d`` layers of ``net``, in registration order."""
    return [name for name, module in net.named_modules() if isinstance(module, nn.Conv2d)]


def first_conv_name(net: nn.Module) -> str:
    """The name of the first ``nn.Conv2d`` in ``net`` (in registration order)."""
    if convs := conv_layer_names(net):
        return convs[0]
    raise LayerNotFoundError(f"{type(net).__name__} has no nn.Conv2d layer to show")


def layer_names(net: nn.Module) -> list[str]:
    """Names of all sub-layers of ``net``, as ``dict(net.named_modules())`` keys them."""
    return [name for name, _ in net.named_modules() if name]


def find_layer(net: nn.Module, name: str | None) -> tuple[str, nn.Module]:
    """The layer called ``name`` in ``net`` (its first conv when ``name`` is None or empty).

    Raises :class:`LayerNotFoundError` naming the closest layer names when there is no such layer.
    """
    if not name:
        name = first_conv_name(net)
    layers = dict(net.named_modules())
    if name in layers and name:
        return name, layers[name]
    names = layer_names(net)
    # Names inside a wrapper (backbone.layer4) are what users shorten most; difflib scores them low.
    ends_alike = [full for full in names if full.endswith(f".{name}")]
    close = ends_alike[:5] or difflib.get_close_matches(name, names, n=5)
    hint = f"; did you mean {', '.join(close)}?" if close else ""
    shown = ", ".join(names[:40]) + (f", ... ({len(names)} in all)" if len(names) > 40 else "")
    raise LayerNotFoundError(f"{type(net).__name__} has no layer named {name!r}{hint}\nIts layers: {shown}")


def module_name(net: nn.Module, layer: nn.Module) -> str:
    """The name under which ``layer`` is registered in ``net``."""
    for name, module in net.named_modules():
        if module is layer:
            return name
    raise LayerNotFoundError(f"the given layer ({type(layer).__name__}) is not part of {type(net).__name__}")


class ActivationCapture:
    """Copy a layer's output (its first ``keep`` samples) while the network runs forward.

    The output is copied inside the hook, because a following in-place operation (such as
    ``nn.ReLU(inplace=True)`` after a conv) would otherwise change it afterwards. Use as a
    context manager; the hook is removed on exit.
    """

    def __init__(self, layer: nn.Module, keep: int | None = None) -> None:
        self.keep = keep
        self.output: Tensor | None = None
        self._handle = layer.register_forward_hook(self._hook)

    def _hook(self, module: nn.Module, inputs: tuple[Tensor, ...], output: Tensor) -> None:
        if not isinstance(output, Tensor):
            raise LayerNotFoundError(f"{type(module).__name__} does not output a single tensor; choose another layer")
        kept = output if self.keep is None else output[: self.keep]
        self.output = kept.detach().clone()

    def remove(self) -> None:
        self._handle.remove()

    def __enter__(self) -> ActivationCapture:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.remove()


@torch.no_grad()
def capture_activations(net: nn.Module, images: Tensor, layer: nn.Module) -> tuple[Tensor, Tensor]:
    """Run ``images`` through ``net`` in eval mode; return ``layer``'s output and the logits.

    The network's train/eval mode is restored afterwards.
    """
    with evaluation_mode(net), ActivationCapture(layer) as capture:
        logits = net(images)
    if capture.output is None:
        raise LayerNotFoundError(f"{type(layer).__name__} layer was not used in {type(net).__name__}'s forward pass")
    return capture.output, logits
