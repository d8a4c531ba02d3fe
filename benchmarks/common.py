"""Shared benchmark helpers: released architectures with random weights, interleaved timing, reporting."""
from __future__ import annotations

import platform
import statistics
import time
from collections.abc import Callable

import torch

from guided_diffusion.config.presets import PRESETS
from guided_diffusion.weights.checkpoints import preset_network_config


def randomise(module: torch.nn.Module, seed: int) -> torch.nn.Module:
    """Give the zero-initialised output layers random weights, so every block contributes to the output."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            if not p.any():
                p.copy_(torch.randn(p.shape, generator=gen) * 0.02)
    return module


def released_network(name: str, seed: int, fp16: bool = False) -> tuple[object, torch.nn.Module]:
    """(config, network) of a released checkpoint's architecture with random weights, in eval mode."""
    cfg = preset_network_config(PRESETS[name])
    cfg = cfg.replace(**({"use_fp16": fp16} if hasattr(cfg, "use_fp16") else {"classifier_use_fp16": fp16}))
    return cfg, randomise(cfg.build(), seed).eval()


def time_paths(paths: dict[str, Callable[[], torch.Tensor]], repeats: int, sync: Callable[[], None] = lambda: None):
    """Run each path once to warm up (compile, caches), then `repeats` rounds interleaved so load drift
    hits every path alike. Returns ({name: median seconds}, {name: warm-up output})."""
    outputs, times = {}, {name: [] for name in paths}
    for name, fn in paths.items():
        outputs[name] = fn()
        sync()
    for _ in range(repeats):
        for name, fn in paths.items():
            start = time.perf_counter()
            fn()
            sync()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(ts) for name, ts in times.items()}, outputs


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.double(), b.double()
    return float((a - b).norm() / b.norm()) if b.norm() > 0 else float((a - b).norm())


def machine() -> str:
    if torch.cuda.is_available():
        return torch.cuda.get_device_name()
    return f"{platform.processor() or platform.machine()} CPU, {torch.get_num_threads()} threads"


def report(title: str, seconds: dict[str, float], outputs: dict[str, torch.Tensor], baseline: str, items: int,
           unit: str = "images/s") -> None:
    print(f"{title}  [{machine()}, torch {torch.__version__}]")
    print(f"{'path':<34}{'s/iter':>10}{unit:>12}{'speed-up':>10}{'rel. error':>12}")
    for name, s in seconds.items():
        err = rel_err(outputs[name], outputs[baseline])
        print(f"{name:<34}{s:>10.3f}{items / s:>12.3f}{seconds[baseline] / s:>9.2f}x{err:>12.2e}")
