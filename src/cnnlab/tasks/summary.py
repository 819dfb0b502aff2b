"""The summary task: a network's architecture, each layer's output shape, and its parameter counts."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from torch import Tensor, nn

from cnnlab.checkpoint import build_model_from_checkpoint, checkpoint_config, ensure_same_model, read_checkpoint
from cnnlab.errors import ConfigValueError, InputSizeError, user_error
from cnnlab.tasks.evaluate import command_line_keys
from cnnlab.tasks.inference import positive_count
from cnnlab.visualize.feature_maps import evaluation_mode


def parameter_counts(net: nn.Module) -> tuple[int, int]:
    """Total and trainable parameter counts of ``net``."""
    params = list(net.parameters())
    return sum(p.numel() for p in params), sum(p.numel() for p in params if p.requires_grad)


def build_network(cfg: DictConfig) -> tuple[nn.Module, int]:
    """The network ``cfg.model`` describes (or the one in ``cfg.ckpt_path``), without fetching
    pretrained weights, and the image size it is trained at (``cfg.input_size`` when set).

    Pretrained weights change no shape or count, so the summary works offline. A network sized
    for its images (``simple_cnn``: ``model.input_size: ${data.image_size}``) is built for
    ``cfg.input_size``, as training at ``data.image_size=<input_size>`` would build it.
    """
    if cfg.get("input_size") is not None:
        positive_count(cfg.input_size, "input_size")
    if cfg.get("ckpt_path"):
        checkpoint = read_checkpoint(cfg.ckpt_path)
        if "model" in command_line_keys():  # summary.yaml always composes a model: only a chosen one is a mistake
            ensure_same_model(checkpoint, cfg.model, cfg.ckpt_path,
                              advice="without model=, summary shows the checkpoint's own network")
        trained = checkpoint_config(checkpoint)
        return build_model_from_checkpoint(checkpoint).net, int(trained.data.image_size)
    positive_count(cfg.num_classes, "num_classes")
    image_size = int(cfg.get("input_size") or cfg.data.image_size)
    sized = OmegaConf.merge(cfg, {"data": {"image_size": image_size}})
    model_cfg = OmegaConf.to_container(sized.model, resolve=True)
    assert isinstance(model_cfg, dict)
    model_cfg["num_classes"] = cfg.num_classes
    if "load_weights" in model_cfg:
        # Built as for its weights but without reading them: nulling model.weights instead would
        # make a fine-tuner warn that a random frozen backbone trains only its head.
        model_cfg["load_weights"] = False
    else:
        for key in ("weights", "weights_path"):
            if key in model_cfg:
                model_cfg[key] = None
    try:
        return instantiate(OmegaConf.create(model_cfg)), image_size
    except Exception as error:
        too_small = user_error(error)
        if not isinstance(too_small, InputSizeError):
            raise
        network = cfg.model._target_.rsplit(".", 1)[-1]
        if too_small.size != image_size:  # an override fixed model.input_size against the size asked for
            raise ConfigValueError(f"model.input_size={too_small.size}: {network}'s input side {too_small.requirement}; "
                                   f"drop the model.input_size override and choose the size with input_size=") from error
        # Its message names data.image_size, training's knob; input_size replaces that here.
        option = "input_size" if cfg.get("input_size") else "data.image_size"
        choices = " or ".join(f"{option}={size}" for size in too_small.fitting_sizes)
        raise ConfigValueError(f"{option}={image_size}: {network}'s input side {too_small.requirement}; "
                               f"pass {choices}") from error


@dataclass
class LayerRow:
    """One row of the layer table."""

    name: str
    kind: str
    output_shape: str
    params: int
    trainable: int


@torch.no_grad()
def layer_table(net: nn.Module, example: Tensor, max_depth: int = -1) -> list[LayerRow]:
    """Every layer of ``net`` (to ``max_depth`` levels of nesting; -1 for all) with its output
    shape for ``example`` and its parameters (its own and its sub-layers'), in the order they run.

    Layer names are those of ``dict(net.named_modules())``, the names ``layer=`` and ``cam_layer=`` take.
    """
    modules = {name: module for name, module in net.named_modules() if name}
    if max_depth >= 0:
        modules = {name: m for name, m in modules.items() if name.count(".") < max_depth}
    shapes: dict[str, str] = {}
    order: list[str] = []

    def record_start(name: str):
        def hook(module: nn.Module, inputs: Any) -> None:
            if name not in order:
                order.append(name)
        return hook

    def record_shape(name: str):
        def hook(module: nn.Module, inputs: Any, output: Any) -> None:
            if name not in shapes:
                shapes[name] = "x".join(map(str, output.shape[1:])) if isinstance(output, Tensor) else type(output).__name__
        return hook

    handles = [module.register_forward_pre_hook(record_start(name)) for name, module in modules.items()]
    handles += [module.register_forward_hook(record_shape(name)) for name, module in modules.items()]
    try:
        with evaluation_mode(net):
            net(example)
    finally:
        for handle in handles:
            handle.remove()
    # Layers that never ran (e.g. an unused module) are listed last, without a shape.
    order += [name for name in modules if name not in order]
    rows = []
    for name in order:
        params = list(modules[name].parameters())
        rows.append(LayerRow(name, type(modules[name]).__name__, shapes.get(name, "(not run)"),
                             sum(p.numel() for p in params), sum(p.numel() for p in params if p.requires_grad)))
    return rows


def summarize(net: nn.Module, input_size: int, channels: int = 3, max_depth: int = -1) -> str:
    """The architecture, a table of every layer's output shape and parameters for one
    ``channels`` x ``input_size`` x ``input_size`` uint8 image, and the exact parameter counts."""
    example = torch.zeros(1, channels, input_size, input_size, dtype=torch.uint8)
    rows = layer_table(net, example, max_depth)
    header = LayerRow("layer", "type", "output shape", 0, 0)
    width_name = max(len(r.name) for r in [header, *rows])
    width_kind = max(len(r.kind) for r in [header, *rows])
    width_shape = max(len(r.output_shape) for r in [header, *rows])
    line = f"{{:<{width_name}}}  {{:<{width_kind}}}  {{:<{width_shape}}}  {{:>12}}  {{:>12}}"
    table = [line.format("layer", "type", "output shape", "parameters", "trainable")]
    table.append("-" * len(table[0]))
    table += [line.format(r.name, r.kind, r.output_shape, f"{r.params:,}", f"{r.trainable:,}") for r in rows]
    total, trainable = parameter_counts(net)
    return "\n".join([
        "architecture:",
        str(net),
        "",
        f"layers and their output shapes (channels x height x width) for one {channels}x{input_size}x{input_size} image:",
        *table,
        "",
        f"total parameters:     {total:,}",
        f"trainable parameters: {trainable:,}",
        f"frozen parameters:    {total - trainable:,}",
    ])


def summary(cfg: DictConfig) -> dict[str, int]:
    """Print the summary of the configured network; return its parameter counts."""
    net, trained_size = build_network(cfg)
    input_size = int(cfg.input_size or trained_size)
    try:
        text = summarize(net, input_size, max_depth=cfg.get("max_depth", -1))
    except RuntimeError as error:
        if not cfg.input_size:
            raise
        # A network with a fixed input size (simple_cnn's classifier) fails on another one.
        reason = (str(error).splitlines() or [""])[0]
        if cfg.get("ckpt_path"):
            raise ConfigValueError(
                f"the network in {cfg.ckpt_path} is built for {trained_size}x{trained_size} images and cannot take "
                f"{input_size}x{input_size} ones ({reason}); leave input_size unset, or pass model=<its model> "
                f"input_size={input_size} without ckpt_path for a network built for that size") from None
        raise ConfigValueError(
            f"the network model= describes has its input size fixed by an override (e.g. model.input_size) and cannot "
            f"take {input_size}x{input_size} images ({reason}); drop that override (input_size= sizes the network) "
            f"or leave input_size unset") from None
    print(text, flush=True)
    total, trainable = parameter_counts(net)
    return {"params_total": total, "params_trainable": trainable}
