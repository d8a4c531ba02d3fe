"""Reduced-precision execution of networks, shared by sampling and training."""
from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext

import torch

__all__ = ["autocast"]


def autocast(device: torch.device, dtype: torch.dtype | None) -> AbstractContextManager:
    """`torch.autocast` to `dtype` (e.g. torch.bfloat16) on `device`, or a no-op when dtype is None."""
    if dtype is None:
        return nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)
