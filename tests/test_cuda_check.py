"""The NVML probe is dropped only where NVML cannot be loaded (the answer stays the same); a GPU trainer
without a GPU fails first, with the fix."""

from __future__ import annotations

import ctypes
import os

import pytest
import torch

from cnnlab.errors import ConfigValueError
from cnnlab.utils import cuda_check
from cnnlab.utils.cuda_check import ensure_accelerator_available, skip_unloadable_nvml_check

FLAG = "PYTORCH_NVML_BASED_CUDA_CHECK"


def test_flag_dropped_when_nvml_cannot_load(monkeypatch):
    monkeypatch.setenv(FLAG, "1")
    monkeypatch.setattr(torch.backends.cuda, "is_built", lambda: True)

    def missing(name: str) -> None:
        raise OSError(f"{name}: cannot open shared object file")

    monkeypatch.setattr(cuda_check.ctypes, "CDLL", missing)
    available = torch.cuda.is_available()
    assert skip_unloadable_nvml_check() is True
    assert FLAG not in os.environ
    assert torch.cuda.is_available() == available


def test_flag_kept_when_nvml_loads_or_is_not_asked_for(monkeypatch):
    monkeypatch.setattr(torch.backends.cuda, "is_built", lambda: True)
    real_cdll = ctypes.CDLL
    monkeypatch.setattr(cuda_check.ctypes, "CDLL", lambda name: real_cdll(None))  # "loads": the process itself
    monkeypatch.setenv(FLAG, "1")
    assert skip_unloadable_nvml_check() is False
    assert os.environ[FLAG] == "1"
    monkeypatch.delenv(FLAG)
    assert skip_unloadable_nvml_check() is False
    assert FLAG not in os.environ


def test_a_gpu_trainer_on_a_machine_without_one_fails_first_with_the_fix(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    for accelerator in ("gpu", "cuda", "GPU"):
        with pytest.raises(ConfigValueError, match=r"trainer.accelerator=gpu|trainer.accelerator=cuda") as error:
            ensure_accelerator_available(accelerator)
        assert "trainer=cpu" in str(error.value)
    for accelerator in ("cpu", "auto"):
        ensure_accelerator_available(accelerator)  # no error

    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: True)  # an Apple GPU serves "gpu", not "cuda"
    ensure_accelerator_available("gpu")
    with pytest.raises(ConfigValueError):
        ensure_accelerator_available("cuda")
