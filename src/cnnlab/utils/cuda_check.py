"""GPU checks: whether the configured accelerator is there, and a per-step cost of CUDA builds of
PyTorch on machines without an NVIDIA driver."""

from __future__ import annotations

import ctypes
import logging
import os

import torch

from cnnlab.errors import ConfigValueError

log = logging.getLogger(__name__)

_NVML_FLAG = "PYTORCH_NVML_BASED_CUDA_CHECK"
_NVML_LIBRARY = "libnvidia-ml.so.1"


def skip_unloadable_nvml_check() -> bool:
    """Stop ``torch.cuda.is_available()`` from trying to load NVML on every call where it cannot.

    Lightning sets ``PYTORCH_NVML_BASED_CUDA_CHECK=1`` when it is imported, so that
    ``torch.cuda.is_available()`` asks NVML rather than the CUDA runtime. torch does not cache
    that answer before CUDA is initialised, and ``Adam.step`` asks on every step (its graph-capture
    check). On a machine without NVML (no NVIDIA driver: CPU-only hosts running the default
    CUDA wheel) each call tries to ``dlopen`` the library, fails, and falls back to the CUDA
    runtime's device count anyway: about 0.3 ms per training step, over 1% of the scratch CNN's
    CPU step. Where the library cannot be loaded, dropping the flag gives the same answer by the
    same fallback, minus the failed load. Returns whether the flag was dropped.
    """
    if os.environ.get(_NVML_FLAG) != "1" or not torch.backends.cuda.is_built():
        return False
    try:
        ctypes.CDLL(_NVML_LIBRARY)
    except OSError:
        del os.environ[_NVML_FLAG]
        log.debug("%s cannot be loaded: torch.cuda.is_available() asks the CUDA runtime directly", _NVML_LIBRARY)
        return True
    return False


GPU_KINDS = ("cuda", "mps", "gpu")


def gpu_present(kind: str) -> tuple[bool, str]:
    """Whether this machine has the GPU ``kind`` names (``cuda``, ``mps``, or ``gpu`` for either), and its name in words.

    Only the kind named is queried: asking CUDA costs a driver probe.
    """
    if kind == "cuda":
        return torch.cuda.is_available(), "CUDA GPU"
    if kind == "mps":
        return torch.backends.mps.is_available(), "Apple GPU (MPS)"
    if kind == "gpu":
        return torch.cuda.is_available() or torch.backends.mps.is_available(), "CUDA or Apple (MPS) GPU"
    raise ValueError(f"not a GPU kind: {kind!r}; one of {GPU_KINDS}")


def ensure_accelerator_available(accelerator: str) -> None:
    """Fail before any work when ``trainer.accelerator`` asks for a GPU this machine does not have.

    Lightning's own error ("No supported gpu backend found!") names neither the setting nor a fix.
    Other accelerators (``cpu``, ``auto``) are left to Lightning, and no device is queried for them.
    """
    accelerator = str(accelerator).lower()
    if accelerator not in GPU_KINDS:
        return
    present, wanted = gpu_present(accelerator)
    if not present:
        raise ConfigValueError(
            f"trainer.accelerator={accelerator}, but this machine has no {wanted}. Train on the CPU with "
            f"trainer=cpu, or with the default trainer, which uses a GPU when there is one."
        )
