"""Pretrained weights through torchvision's weights API, with a local-file path and a clear offline error."""

from __future__ import annotations

import logging
import os
import pickle
import zipfile
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torchvision.models import Weights, get_model_weights

from cnnlab.errors import WeightsUnavailableError
from cnnlab.utils.io import torch_load_error_detail

log = logging.getLogger(__name__)


def resolve_weights(arch: str, weights: str | None) -> Weights | None:
    """Look up torchvision's weights enum entry (e.g. ``IMAGENET1K_V1`` or ``DEFAULT``) for ``arch``."""
    if weights is None:
        return None
    enum = get_model_weights(arch)
    try:
        return enum[weights] if weights != "DEFAULT" else enum.DEFAULT
    except KeyError:
        # Iterating an enum skips aliases such as DEFAULT, which __members__ would list again.
        known = ", ".join(["DEFAULT", *(member.name for member in enum)])
        raise WeightsUnavailableError(f"{arch} has no weights named {weights!r}; choose one of: {known}, or null") from None


def torchvision_cache_file(weights: Weights) -> Path:
    """Where torchvision keeps (or would download) the file of these weights."""
    return Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(weights.url)


def _is_training_checkpoint(state: object) -> bool:
    """Whether a loaded file is a cnnlab training checkpoint: Lightning's dict whose ``state_dict``
    holds the classifier's weights, every name under its network ``net.``."""
    inner = state.get("state_dict") if isinstance(state, dict) else None
    return isinstance(inner, dict) and bool(inner) and all(str(name).startswith("net.") for name in inner)


def _example_weights_file(arch: str, weights: str | None) -> str:
    """The name of torchvision's file of ``arch``'s weights (e.g. ``resnet18-f37072fd.pth``), for a message."""
    try:
        resolved = resolve_weights(arch, weights or "DEFAULT")
    except (ValueError, KeyError, WeightsUnavailableError):  # no weights for arch, or a mistyped name
        resolved = None
    return f"torchvision's {os.path.basename(resolved.url)}" if resolved else f"a torchvision {arch}'s .pth file"


def _read_local_weights(path: Path, arch: str, weights: str | None = None) -> dict[str, Any]:
    if path.is_dir():
        found = sorted(str(p) for p in path.iterdir() if p.suffix in (".pth", ".pt") and p.is_file())
        listing = (f": {', '.join(found[:5])}{' ...' if len(found) > 5 else ''}" if found
                   else f" (there is none in {path})")
        raise WeightsUnavailableError(
            f"model.weights_path={path} is a folder, not a weights file: pass the path of a .pth or .pt file "
            f"holding a state_dict of {arch}'s weights{listing}"
        )
    if not path.is_file():
        raise WeightsUnavailableError(f"model weights file {path} does not exist (model.weights_path)")
    try:
        with path.open("rb"):
            pass
    except OSError as error:  # the file itself cannot be opened (permissions): no matter what it holds
        raise WeightsUnavailableError(f"cannot read weights file {path} (model.weights_path): {error}") from error
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # noqa: BLE001 - torch.load fails on a bad file in many ways (KeyError, EOFError, ...)
        detail = torch_load_error_detail(error)
        # torch.save writes a zip archive. Only a complete one can hold objects that weights_only
        # refuses (a whole pickled module, say); any other file (an image, text: read as pickle
        # opcodes) or a truncated one is no weights file.
        if isinstance(error, pickle.UnpicklingError) and zipfile.is_zipfile(path):
            raise WeightsUnavailableError(
                f"model.weights_path={path} cannot be read safely (torch.load with weights_only=True): it holds "
                f"objects other than tensors ({detail}); pass a file holding only the state_dict of {arch}'s "
                f"weights, as torch.save(model.state_dict(), path) writes it"
            ) from error
        raise WeightsUnavailableError(
            f"model.weights_path={path} is not a PyTorch weights file (or it is corrupt or truncated); pass the .pth "
            f"file of the network's weights, e.g. {_example_weights_file(arch, weights)} ({detail})"
        ) from error
    if _is_training_checkpoint(state):
        # Its weights are the whole classifier's, named net.*: loading them here would list every name as missing.
        raise WeightsUnavailableError(
            f"model.weights_path={path} is a cnnlab training checkpoint, not a weights file: pass it as "
            f"ckpt_path={path} to scripts/train.py (to continue that run) or scripts/eval.py (to test it); "
            f"model.weights_path takes a .pth or .pt file holding a state_dict of {arch}'s weights"
        )
    # Accept a bare state dict or the common {"state_dict": ...} / {"model": ...} wrappers.
    for key in ("state_dict", "model"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict):
        raise WeightsUnavailableError(f"{path} does not hold a state dict (a mapping of parameter names to tensors)")
    return state


def _download_weights(arch: str, weights: Weights, cache_features: bool = False) -> dict[str, Any]:
    cache_file = torchvision_cache_file(weights)
    # A backbone that trains cannot have its features cached (model.cache_features=true: a linear probe).
    scratch = "model.weights=null model.trainable_stages=-1" + (" model.cache_features=false" if cache_features else "")
    try:
        return weights.get_state_dict(progress=True, check_hash=True)
    except Exception as error:  # noqa: BLE001 - offline, proxy, corrupt partial file: same remedy
        raise WeightsUnavailableError(
            f"pretrained weights {type(weights).__name__}.{weights.name} for {arch} are not in torchvision's "
            f"cache and could not be downloaded ({type(error).__name__}: {error}).\n"
            f"Put the file {cache_file.name} (from {weights.url}) at\n"
            f"  {cache_file}\n"
            f"(torchvision's cache, read by every run and every job of a sweep; to use another folder, set "
            f"TORCH_HOME=DIR and put the file at DIR/hub/checkpoints/{cache_file.name}).\n"
            f"Where every job of the command has this model's options (not in a sweep that also has the scratch "
            f"CNNs, such as experiment=compare_models: Hydra refuses the override there), you may instead:\n"
            f"  - pass model.weights_path=/path/to/{cache_file.name}, or\n"
            f"  - train from random initialisation: {scratch}\n"
            f"    ({'a backbone that trains needs model.cache_features=false; ' if cache_features else ''}"
            f"model.weights=null alone keeps the backbone frozen at its random weights: only the head would train)."
        ) from error


def load_pretrained(model: nn.Module, arch: str, weights: str | None, weights_path: str | None,
                    cache_features: bool = False) -> None:
    """Load pretrained weights into a freshly built torchvision ``model`` of architecture ``arch``.

    ``weights_path`` (a local file) wins over ``weights`` (a torchvision weights name, fetched
    into torchvision's cache when online). With neither, the model keeps its random init.
    ``cache_features`` (``model.cache_features``, which needs a frozen backbone) makes the
    error's advice to train from scratch turn the cache off too.
    """
    if weights_path:
        source = str(weights_path)
        state = _read_local_weights(Path(weights_path).expanduser(), arch, weights)
    else:
        resolved = resolve_weights(arch, weights)
        if resolved is None:
            log.info("%s: no pretrained weights, random initialisation", arch)
            return
        source = f"{type(resolved).__name__}.{resolved.name}"
        state = _download_weights(arch, resolved, cache_features)
    try:
        model.load_state_dict(state)
    except RuntimeError as error:
        raise WeightsUnavailableError(f"weights from {source} do not fit {arch}: {error}") from error
    log.info("%s: loaded pretrained weights from %s", arch, source)
