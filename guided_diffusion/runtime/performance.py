"""Opt-in fast paths for inference and training: channels-last memory layout, torch.compile (with CUDA
graphs via mode="reduce-overhead" on GPU), reduced-precision matmuls. Every option defaults to off, so the
plain path is the default; benchmarks/ measures what each one gives and tests check they agree with it."""
from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch


def optimize_model(
    model: torch.nn.Module,
    *,
    channels_last: bool = False,
    compile: bool = False,
    compile_mode: str | None = None,
) -> torch.nn.Module:
    """Prepare a UNet or classifier for fast execution and return it (compiled models are wrappers).

    channels_last: NHWC weights; convolution outputs follow the weights' layout, so inputs need no change.
    compile: torch.compile with static shapes; "reduce-overhead" also captures CUDA graphs on GPU, while
    "max-autotune" searches kernels. Compilation happens on the first call for each input shape.
    """
    if channels_last:
        model = model.to(memory_format=torch.channels_last)  # type: ignore[call-overload]  # torch's stubs omit it
    if compile:
        model = torch.compile(model, mode=compile_mode, dynamic=False)  # type: ignore[assignment]  # a Module wrapper
    return model


@contextlib.contextmanager
def matmul_precision(tf32: bool) -> Iterator[None]:
    """Allow TF32 tensor-core matmuls and convolutions on Ampere+ GPUs inside the block (no effect on CPU)."""
    previous = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    torch.backends.cuda.matmul.allow_tf32 = tf32
    torch.backends.cudnn.allow_tf32 = tf32
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = previous


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The module under torch.compile / DDP wrappers (for attributes, state dicts and saving)."""
    while True:
        inner = getattr(model, "_orig_mod", None) or getattr(model, "module", None)
        if inner is None:
            return model
        model = inner
