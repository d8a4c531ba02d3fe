"""Reduced-precision execution of networks, shared by sampling and training.

Two ways to run a network in bfloat16: `autocast` (weights stay float32 and are cast at every call), and a
network prepared once with `runtime.performance.prepare_for_bf16` (its torso holds bfloat16 weights).
`autocast_for` picks the no-op for a prepared network, so callers need not know which one they hold.
`bf16_is_native` says whether the device computes bfloat16 in hardware; where it does not, bfloat16 is
emulated and slower than float32 (`warn_if_bf16_is_slow`).
"""
from __future__ import annotations

import functools
import platform
import subprocess
import warnings
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path

import torch

__all__ = ["autocast", "autocast_for", "network_dtype", "bf16_is_native", "bf16_slowness", "warn_if_bf16_is_slow"]


def autocast(device: torch.device, dtype: torch.dtype | None) -> AbstractContextManager[object]:
    """`torch.autocast` to `dtype` (e.g. torch.bfloat16) on `device`, or a no-op when dtype is None."""
    if dtype is None:
        return nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def network_dtype(network: torch.nn.Module) -> torch.dtype:
    """The dtype a UNet or classifier runs its torso in (`network.dtype`, set by use_fp16 or
    convert_to_bf16; float32 for other modules), looking through torch.compile / DDP wrappers."""
    while True:
        inner = getattr(network, "_orig_mod", None) or getattr(network, "module", None)
        if not isinstance(inner, torch.nn.Module):
            break
        network = inner
    dtype = getattr(network, "dtype", torch.float32)
    return dtype if isinstance(dtype, torch.dtype) else torch.float32


def autocast_for(network: torch.nn.Module, device: torch.device, dtype: torch.dtype | None) -> AbstractContextManager[object]:
    """`autocast(device, dtype)`, except a no-op when the network's torso already holds `dtype` weights:
    autocast would only re-cast its float32 embeddings and head, which are float32 on purpose."""
    if dtype is not None and network_dtype(network) == dtype:
        return nullcontext()
    return autocast(device, dtype)


@functools.cache
def _cpu_has_native_bf16() -> bool:
    """Whether this CPU has bfloat16 arithmetic instructions (x86 AVX512-BF16 or AMX-BF16, Arm BF16)."""
    try:  # torch >= 2.4 reports the CPU's features itself
        features = torch._C._cpu._get_cpu_capability()
        if isinstance(features, dict) and "avx512_bf16" in features:
            return bool(features.get("avx512_bf16") or features.get("amx_bf16"))
    except (AttributeError, RuntimeError):
        pass
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        flags = set(cpuinfo.read_text(errors="replace").split())
        return bool(flags & {"avx512_bf16", "amx_bf16", "bf16"})  # "bf16": the Arm feature name
    if platform.system() == "Darwin" and platform.machine() == "arm64":
        try:
            answer = subprocess.run(["sysctl", "-n", "hw.optional.arm.FEAT_BF16"], capture_output=True, text=True,
                                    timeout=5, check=False).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            return False
        return answer == "1"
    return False


def bf16_is_native(device: torch.device | str) -> bool:
    """Whether `device` computes in bfloat16 in hardware: CUDA compute capability 8.0 or newer (Ampere),
    a CPU with AVX512-BF16, AMX-BF16 or Arm BF16 instructions, or MPS. Elsewhere PyTorch emulates
    bfloat16 through float32 and `--bf16` is slower than float32."""
    device = torch.device(device)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            return False
        return torch.cuda.get_device_capability(device) >= (8, 0)
    if device.type == "cpu":
        return _cpu_has_native_bf16()
    return device.type == "mps"


def bf16_slowness(device: torch.device | str) -> str | None:
    """The one-line warning for bfloat16 on `device`, or None where bfloat16 is native."""
    device = torch.device(device)
    if bf16_is_native(device):
        return None
    what = "this CPU has no bfloat16 instructions (AVX512-BF16, AMX or Arm BF16)" if device.type == "cpu" \
        else f"{device} has no native bfloat16 arithmetic"
    return f"bfloat16 (--bf16) will be slower than float32 here: {what}, so PyTorch emulates it; leave it off"


def warn_if_bf16_is_slow(device: torch.device | str) -> bool:
    """Warn (a one-line RuntimeWarning under the CLI) when bfloat16 is emulated on `device`; return
    whether it warned."""
    message = bf16_slowness(device)
    if message is not None:
        warnings.warn(message, RuntimeWarning, stacklevel=2)
    return message is not None
