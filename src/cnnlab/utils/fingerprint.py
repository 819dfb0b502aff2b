"""Content digests for cache keys: a cache is only reused for exactly the same inputs."""

from __future__ import annotations

import hashlib

import torch
from torch import Tensor


def tensor_fingerprint(*tensors: Tensor) -> str:
    """A digest of tensors' shapes, dtypes and values."""
    digest = hashlib.sha256()
    for tensor in tensors:
        digest.update(f"{tuple(tensor.shape)}|{tensor.dtype}".encode())
        digest.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()
