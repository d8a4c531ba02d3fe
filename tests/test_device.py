"""`resolve_device`: the device a `--device` value names, auto-detection (CUDA, then Apple's MPS, then the
CPU), and a one-line SettingError naming `device` for a device this PyTorch or machine lacks. The GPU and
MPS cases are simulated by patching PyTorch's availability checks."""
from __future__ import annotations

import pytest
import torch

from guided_diffusion import cli
from guided_diffusion.runtime import distributed
from guided_diffusion.runtime.distributed import available_devices, resolve_device
from guided_diffusion.runtime.errors import SettingError, UserError


@pytest.fixture
def no_gpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)


@pytest.fixture
def apple(no_gpu, monkeypatch):
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: True)
    monkeypatch.setattr(torch.backends.mps, "is_built", lambda: True)


@pytest.fixture
def two_gpus(no_gpu, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(distributed, "dev", lambda: torch.device("cuda", 1))  # this rank's GPU


def error_of(name: str) -> SettingError:
    with pytest.raises(SettingError) as info:
        resolve_device(name)
    assert info.value.setting == "device" and isinstance(info.value, UserError)
    message = cli.flag_message(info.value)
    assert message.startswith("--device ") and "\n" not in message
    return info.value


def test_cpu_only_machine_picks_and_accepts_the_cpu(no_gpu):
    for name in (None, "", "auto", "AUTO", "cpu", " cpu "):
        assert resolve_device(name) == torch.device("cpu")
    assert available_devices() == ["auto", "cpu"]


def test_apple_silicon_auto_picks_mps_and_accepts_it(apple):
    assert resolve_device(None) == torch.device("mps")
    assert resolve_device("mps") == torch.device("mps") and resolve_device("MPS") == torch.device("mps")
    assert resolve_device("cpu") == torch.device("cpu")
    assert "cuda" in str(error_of("cuda"))


def test_cuda_machine_prefers_this_ranks_gpu_and_checks_the_index(two_gpus):
    assert resolve_device(None) == torch.device("cuda", 1)
    assert resolve_device("cuda") == torch.device("cuda", 1)
    assert resolve_device("cuda:0") == torch.device("cuda", 0)
    assert "this machine has 2 CUDA device(s)" in str(error_of("cuda:2"))
    assert available_devices() == ["auto", "cuda", "cuda:0", "cuda:1", "cpu"]


def test_missing_backends_say_why_and_what_to_use(no_gpu, monkeypatch):
    monkeypatch.setattr(torch.backends.mps, "is_built", lambda: False)
    assert "built without MPS" in str(error_of("mps")) and "use auto, cpu" in str(error_of("mps"))
    monkeypatch.setattr(torch.backends.mps, "is_built", lambda: True)
    assert "Apple silicon" in str(error_of("mps"))
    monkeypatch.setattr(torch.version, "cuda", None)
    assert "built without CUDA" in str(error_of("cuda:0"))
    monkeypatch.setattr(torch.version, "cuda", "12.4")
    assert "no CUDA GPU is visible" in str(error_of("cuda"))


def test_names_pytorch_does_not_know_are_refused(no_gpu):
    for name in ("gpu", "cuda:x", "metal"):
        assert "is not a device name; use auto, cpu" in str(error_of(name))
