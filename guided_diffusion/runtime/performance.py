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
    compile_backend: str = "inductor",
) -> torch.nn.Module:
    """Prepare a UNet or classifier for fast execution and return it (compiled models are wrappers).

    channels_last: NHWC weights; convolution outputs follow the weights' layout, so inputs need no change.
    compile: torch.compile with static shapes; "reduce-overhead" also captures CUDA graphs on GPU, while
    "max-autotune" searches kernels. Compilation happens on the first call for each input shape.
    compile_backend: torch.compile's backend; "eager" only traces (seconds, for tests of the compiled path).
    """
    if channels_last:
        model = model.to(memory_format=torch.channels_last)  # type: ignore[call-overload]  # torch's stubs omit it
    if compile:
        mode = compile_mode if compile_backend == "inductor" else None  # modes are inductor's
        model = torch.compile(model, mode=mode, dynamic=False, backend=compile_backend)  # type: ignore[assignment]  # a Module wrapper
    return model


def prepare_for_bf16(model: torch.nn.Module, *, channels_last: bool | None = None) -> torch.nn.Module:
    """Make a UNet or classifier run in bfloat16 for sampling and guidance, in place; returns it.

    The torso's convolutions (attention's included) get bfloat16 weights once (`convert_to_bf16`), so no
    call re-casts them as autocast does; the time embedding, the norms' parameters and the output head
    stay float32 (the original's fp16 boundary), and the output is float32. Norm statistics and the
    attention softmax accumulate in float32 inside their kernels. Gradients through the network (the
    classifier's guidance gradient) are bfloat16 inside and float32 at the float32 input.

    channels_last: NHWC layout. None = where it helps: on a CPU for networks that only run forward (the
    UNet: 1.06x on this project's AVX512-BF16 CPU); not for a classifier on a CPU, whose guidance gradient
    runs GroupNorm's backward, 7x slower in NHWC there (torch 2.13); and not on a GPU, where the 256x256
    ADM-G guided DDIM-25 ran at 0.90x the original in NHWC against 1.31x in NCHW (H200, torch 2.11,
    benchmarks/gpu_check.py: GroupNorm dominates and is slower in NHWC).
    Call it with the model on the device it will sample on, before `optimize_model(compile=True)`.
    """
    network = unwrap(model)
    convert = getattr(network, "convert_to_bf16", None)
    if convert is None:
        raise TypeError(f"{type(network).__name__} has no convert_to_bf16: prepare a UNetModel or EncoderUNetModel")
    convert()
    if channels_last is None:
        device = next(network.parameters()).device
        is_classifier = hasattr(network, "pool")  # EncoderUNetModel: guidance differentiates it
        channels_last = device.type == "cpu" and not is_classifier
    if channels_last:
        network.to(memory_format=torch.channels_last)  # type: ignore[call-overload]  # torch's stubs omit it
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
