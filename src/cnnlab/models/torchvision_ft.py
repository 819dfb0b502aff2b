"""Any torchvision classification model as a frozen (or partly unfrozen) backbone with a new head.

This is where the backbone is frozen: :class:`TorchvisionFineTuner` turns off the gradients of
the frozen stages (so the optimizer never sees them), :meth:`TorchvisionFineTuner.train`
keeps their BatchNorm (and dropout) layers in eval mode, and a fully frozen backbone runs
without autograd while training. ``resnet18_ft`` is a preset of this class.
"""

from __future__ import annotations

import logging
from typing import cast

import torch
import torch.nn.functional as F
import torchvision
from torch import Tensor, nn
from torchvision.models import Weights, get_model, list_models

from cnnlab.errors import ConfigValueError
from cnnlab.models.feature_cache import FeatureCache, module_fingerprint
from cnnlab.models.normalize import NormalizeBatch
from cnnlab.models.pretrained import load_pretrained, resolve_weights
from cnnlab.utils.config import ensure_switch
from cnnlab.utils.io import ensure_cache_folder_usable

log = logging.getLogger(__name__)

# Containers whose children are the model's stages rather than one stage.
_EXPANDED_CONTAINERS = {"features", "encoder", "layers", "trunk_output"}


def _replace_head(model: nn.Module, arch: str) -> int:
    """Swap the model's ImageNet classification layer for ``nn.Identity``; return its input width.

    torchvision names it ``fc`` (ResNet, Inception, RegNet), ``classifier`` (a Linear in
    DenseNet; a Sequential ending in a Linear in EfficientNet, MobileNet, ConvNeXt, VGG, whose
    earlier layers stay part of the backbone), ``heads`` (ViT) or ``head`` (Swin).
    """
    for name in ("fc", "head"):
        layer = getattr(model, name, None)
        if isinstance(layer, nn.Linear):
            setattr(model, name, nn.Identity())
            return layer.in_features
    heads = getattr(model, "heads", None)
    if isinstance(heads, nn.Sequential) and isinstance(heads[-1], nn.Linear):
        in_features = heads[-1].in_features
        model.heads = nn.Identity()
        return in_features
    classifier = getattr(model, "classifier", None)
    if isinstance(classifier, nn.Linear):
        model.classifier = nn.Identity()
        return classifier.in_features
    if isinstance(classifier, nn.Sequential) and isinstance(classifier[-1], nn.Linear):
        in_features = classifier[-1].in_features
        classifier[-1] = nn.Identity()
        return in_features
    raise ConfigValueError(
        f"cnnlab does not know where the classification head of {arch} is (no fc, classifier, heads or head "
        f"ending in a Linear layer): choose another model.arch"
    )


def _has_parameters(module: nn.Module) -> bool:
    return any(True for _ in module.parameters())


def find_stages(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """The backbone's blocks in forward order, as (name, module), for freezing the first ones.

    Top-level children in registration order, with ``features``/``encoder``/``layers``
    containers opened up; a run of leaf layers (a stem's conv and norm) is one stage.
    """
    stages: list[tuple[str, nn.Module]] = []
    leaves: list[tuple[str, nn.Module]] = []

    def flush() -> None:
        if leaves:
            name = leaves[0][0] if len(leaves) == 1 else f"{leaves[0][0]}..{leaves[-1][0]}"
            stages.append((name, nn.ModuleList([m for _, m in leaves])))
            leaves.clear()

    def visit(prefix: str, module: nn.Module) -> None:
        for name, child in module.named_children():
            full = f"{prefix}{name}"
            if not _has_parameters(child):
                continue
            if name in _EXPANDED_CONTAINERS:
                flush()
                visit(f"{full}.", child)
            elif next(child.children(), None) is None:
                leaves.append((full, child))
            else:
                flush()
                stages.append((full, child))

    visit("", model)
    flush()
    return stages


class TorchvisionFineTuner(nn.Module):
    """A torchvision classifier with a new linear head; the backbone frozen except its last stages.

    Args:
        num_classes: classes of the new head.
        arch: torchvision model name (resnet18, resnet50, densenet121, inception_v3,
            efficientnet_b0, mobilenet_v3_large, convnext_tiny, vit_b_16, ...).
        weights: torchvision weights name (``IMAGENET1K_V1``, ``DEFAULT``, ...) or None for a
            random initialisation.
        weights_path: a local weights file, used instead of torchvision's download/cache.
        input_size: side of the square image the backbone sees; batches of another size are
            resized on the device. None: the crop size the weights were trained at (224; 299
            for Inception v3).
        trainable_stages: how many of the backbone's last stages to train (see
            :func:`find_stages`; the names are logged at start). 0 freezes the whole backbone
            (a linear probe); -1 trains all of it.
        backbone_lr_scale: the unfrozen backbone stages train at this fraction of the head's
            learning rate (discriminative learning rates).
        head_dropout: dropout before the new head.
        normalize: the input normalisation, applied first. None: the mean and std the weights
            were trained with (ImageNet's for torchvision's weights).
        load_weights: False builds the architecture without loading pretrained weights
            (evaluation does this: the checkpoint holds every weight).
        cache_features: compute each image's backbone features once and train the head on the
            stored features (a linear probe: needs a fully frozen backbone and no training
            augmentation). See :mod:`cnnlab.models.feature_cache`.
        feature_cache_dir: keep complete feature stores on disk here; None keeps them in memory.
    """

    def __init__(
        self,
        num_classes: int,
        arch: str = "resnet18",
        weights: str | None = "DEFAULT",
        weights_path: str | None = None,
        input_size: int | None = None,
        trainable_stages: int = 0,
        backbone_lr_scale: float = 1.0,
        head_dropout: float = 0.0,
        normalize: nn.Module | None = None,
        load_weights: bool = True,
        cache_features: bool = False,
        feature_cache_dir: str | None = None,
    ) -> None:
        super().__init__()
        load_weights = ensure_switch(load_weights, "model.load_weights")
        cache_features = ensure_switch(cache_features, "model.cache_features")
        pretrained = weights is not None or weights_path is not None
        self.arch = arch
        self.backbone = self._build_backbone(arch, pretrained)
        if load_weights:
            load_pretrained(self.backbone, arch, weights, weights_path, cache_features=cache_features)
        reference = self._reference_weights(arch, weights)
        self.feature_dim = _replace_head(self.backbone, arch)
        self.head = nn.Sequential(nn.Dropout(head_dropout), nn.Linear(self.feature_dim, num_classes))
        native_size = reference.transforms().crop_size[0] if reference else 224
        self.input_size = input_size or native_size
        self._ensure_input_size_fits(native_size)
        if normalize is None:
            transforms = reference.transforms() if reference else None
            mean = transforms.mean if transforms else (0.485, 0.456, 0.406)
            std = transforms.std if transforms else (0.229, 0.224, 0.225)
            normalize = NormalizeBatch(mean, std)
        self.normalize = normalize
        self.backbone_lr_scale = backbone_lr_scale

        stages = find_stages(self.backbone)
        n_trainable = len(stages) if trainable_stages < 0 else trainable_stages
        if n_trainable > len(stages):
            raise ConfigValueError(
                f"{arch} has {len(stages)} stages ({', '.join(name for name, _ in stages)}); "
                f"model.trainable_stages={trainable_stages} is too many: pass 0 to {len(stages)}, or -1 to train all of it"
            )
        self.stage_names = [name for name, _ in stages]
        self._stages = dict(stages)  # a plain dict: the modules are already registered in the backbone
        self._frozen_stages = [module for _, module in stages[: len(stages) - n_trainable]]
        self.backbone.requires_grad_(False)
        for _, module in stages[len(stages) - n_trainable :]:
            module.requires_grad_(True)
        if n_trainable == len(stages):  # everything trains, loose tensors (ViT's class token) too
            self.backbone.requires_grad_(True)
        self.fully_frozen = not any(p.requires_grad for p in self.backbone.parameters())
        if cache_features and not self.fully_frozen:
            raise ConfigValueError(
                f"model.cache_features=true needs a fully frozen backbone: pass model.trainable_stages=0 "
                f"(got {trainable_stages}), or model.cache_features=false to train the unfrozen stages"
            )
        if load_weights and not pretrained and self.fully_frozen:
            # Legitimate as a random-features baseline, but far more often a forgotten trainable_stages.
            log.warning(
                "%s: model.weights=null with a frozen backbone: the backbone keeps its random initialisation and "
                "only the head trains; pass model.trainable_stages=-1%s to train the whole network from scratch",
                arch, " model.cache_features=false" if cache_features else "",  # a backbone that trains has no cache
            )
        if cache_features and feature_cache_dir:
            ensure_cache_folder_usable(feature_cache_dir, "model.feature_cache_dir")
        self.cache_features = cache_features
        self.feature_cache_dir = feature_cache_dir
        self._feature_cache: FeatureCache | None = None
        log.info(
            "%s: %d stages (%s); training the last %d, backbone %s",
            arch, len(stages), ", ".join(self.stage_names), n_trainable, "frozen" if self.fully_frozen else "partly trainable",
        )
        self.train()

    @staticmethod
    def _build_backbone(arch: str, pretrained: bool) -> nn.Module:
        known = list_models(module=torchvision.models)
        if arch not in known:
            raise ConfigValueError(f"unknown torchvision classification model {arch!r}; model.arch is one of: {', '.join(known)}")
        if arch == "inception_v3":
            # Built as torchvision builds it for its weights (they include the auxiliary head,
            # and expect the input re-scaled from ImageNet's to Inception's own normalisation);
            # the auxiliary head is then dropped: a frozen backbone gains nothing from it.
            model = get_model(arch, weights=None, aux_logits=True, init_weights=False, transform_input=pretrained)
            model.AuxLogits = None
            model.aux_logits = False
            return model
        return get_model(arch, weights=None)

    def _ensure_input_size_fits(self, native_size: int) -> None:
        """Refuse an input size the backbone cannot take, at start rather than at the first batch.

        Some families only take their own size (ViT checks it) or need a minimum (Inception v3's
        stem and pools shrink a small image to nothing); others take any size. One image through
        the backbone tells which; the weights' own size is known to fit.
        """
        size = self.input_size
        if size == native_size:
            return
        self.backbone.eval()  # BatchNorm in train mode refuses a batch of one image
        try:
            with torch.no_grad():
                self.backbone(torch.zeros(1, 3, size, size))
        except (AssertionError, RuntimeError, ValueError) as error:
            reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
            raise ConfigValueError(
                f"{self.arch} cannot take {size}x{size} images (model.input_size={size}; {reason}): pass "
                f"model.input_size={native_size}, the size its weights were trained at (model.input_size=null "
                f"chooses it), or another model.arch"
            ) from error

    @staticmethod
    def _reference_weights(arch: str, weights: str | None) -> Weights | None:
        """The weights whose preprocessing (input size, mean, std) this model follows."""
        try:
            return resolve_weights(arch, weights or "DEFAULT")
        except (ValueError, KeyError):  # an architecture torchvision ships without weights
            return None

    def train(self, mode: bool = True) -> TorchvisionFineTuner:
        """Switch train/eval mode, but keep the frozen stages in eval mode.

        Frozen means frozen: in train mode BatchNorm would update its running statistics from
        our batches even without gradients, and the pretrained features would drift.
        """
        super().train(mode)
        for module in self.kept_in_eval_mode:
            module.eval()
        return self

    @property
    def kept_in_eval_mode(self) -> list[nn.Module]:
        """The frozen stages, which stay in eval mode when the model trains (each with its submodules)."""
        # A fully frozen backbone is a fixed feature extractor: all of it in eval mode (also
        # dropout a family keeps before its head), so its features are the same every epoch.
        return [self.backbone] if self.fully_frozen else list(self._frozen_stages)

    def cam_target_layer(self) -> nn.Module:
        """The layer Grad-CAM looks at by default: the last stage with convolutions."""
        for name in reversed(self.stage_names):
            if any(isinstance(m, nn.Conv2d) for m in self._stages[name].modules()):
                return self._stages[name]
        raise ValueError(f"{self.arch} has no convolutional stage for Grad-CAM")

    def parameter_groups(self) -> list[dict]:
        """Optimizer parameter groups: the head, and the unfrozen backbone at ``backbone_lr_scale``."""
        groups: list[dict] = [{"params": list(self.head.parameters()), "lr_scale": 1.0}]
        backbone = [p for p in self.backbone.parameters() if p.requires_grad]
        if backbone:
            groups.append({"params": backbone, "lr_scale": self.backbone_lr_scale})
        return groups

    def _prepare(self, x: Tensor) -> Tensor:
        x = self.normalize(x)
        if x.shape[-2:] != (self.input_size, self.input_size):
            x = F.interpolate(x, size=(self.input_size, self.input_size), mode="bilinear", align_corners=False)
        return x

    def features(self, x: Tensor) -> Tensor:
        """Backbone features (N, feature_dim) for a batch of images (uint8 or floats in [0, 1])."""
        x = self._prepare(x)
        if self.training and self.fully_frozen:
            # Forward-only cost while training: no activations are kept for backward.
            # Outside training gradients may flow to the input (Grad-CAM needs them).
            with torch.no_grad():
                return self.backbone(x)
        return self.backbone(x)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.features(x))

    def forward_cached(self, x: Tensor, indices: Tensor, split: str, data_fingerprint: str, split_size: int) -> Tensor:
        """Logits from stored features of the samples ``indices`` of ``split``, computing the missing ones."""
        if self._feature_cache is None:
            model_key = f"{self.arch}|{self.input_size}|{module_fingerprint(self.backbone)}|{module_fingerprint(self.normalize)}"
            self._feature_cache = FeatureCache(self._fixed_features, self.feature_dim, model_key, self.feature_cache_dir)
        features = self._feature_cache.lookup(x, indices, split, data_fingerprint, split_size)
        # The store is float32; a head converted to bfloat16 (trainer.precision=bf16-true) takes its own dtype.
        linear = cast(nn.Linear, self.head[-1])  # the head is (Dropout, Linear), built in __init__
        return self.head(features.to(linear.weight.dtype))

    @torch.no_grad()
    def _fixed_features(self, x: Tensor) -> Tensor:
        return self.backbone(self._prepare(x))
