"""How close the guided DDIM step is to this machine's compute floor.

Counts the step's floating-point operations (UNet forward + classifier forward and backward, by
torch.utils.flop_counter), measures the machine's fp32 throughput on a large matmul and on the UNet's
typical 3x3 convolution, and compares the step's measured time with FLOPs / throughput. The printed
ratio (measured time over floor) bounds what any further CPU-side optimisation can give at fp32.

    python benchmarks/bench_cpu_floor.py                 # 64x64 ADM + classifier, batch 4
"""
from __future__ import annotations

import argparse
import time

import torch
from common import machine, released_network
from torch.utils.flop_counter import FlopCounterMode

from guided_diffusion.config import DiffusionConfig
from guided_diffusion.config.presets import PRESETS
from guided_diffusion.runtime.performance import optimize_model
from guided_diffusion.sampling.guidance import classifier_cond_fn


def throughput(fn, flops: float, repeats: int = 3) -> float:
    fn()
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return flops / best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="64x64_diffusion")
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: leave as is)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    preset = PRESETS[args.preset]
    cfg, model = released_network(args.preset, 0)
    _, classifier = released_network(preset.classifier, 1)
    model = optimize_model(model, channels_last=True)
    classifier = optimize_model(classifier, channels_last=True)
    diffusion = DiffusionConfig.from_dict({**preset.flags, "timestep_respacing": "ddim25"}).build()
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(args.batch, 3, cfg.image_size, cfg.image_size, generator=gen)
    y = torch.randint(0, 1000, (args.batch,), generator=gen)
    t = torch.full((args.batch,), 12, dtype=torch.long)
    cond_fn = classifier_cond_fn(classifier, preset.classifier_scale)

    @torch.no_grad()
    def step():
        return diffusion.ddim_sample(model, x, t, cond_fn=cond_fn, model_kwargs={"y": y})["sample"]

    # Counted part by part: the flop counter does not support torch.autograd.grad, which cond_fn uses.
    original_t = torch.tensor(diffusion.timestep_map)[t]
    with FlopCounterMode(display=False) as counter:
        with torch.no_grad():
            model(x, original_t, y=y)
    unet_flops = counter.get_total_flops()
    x_in = x.clone().requires_grad_(True)
    with FlopCounterMode(display=False) as counter:
        torch.log_softmax(classifier(x_in, original_t), dim=-1)[torch.arange(len(y)), y].sum().backward()
    step_flops = unet_flops + counter.get_total_flops()

    start = time.perf_counter()
    step()
    step_seconds = time.perf_counter() - start

    n = 2048
    a, b = torch.randn(n, n), torch.randn(n, n)
    matmul_rate = throughput(lambda: a @ b, 2 * n**3)
    width = cfg.num_channels
    conv = torch.nn.Conv2d(width, width, 3, padding=1).to(memory_format=torch.channels_last)
    feat = torch.randn(args.batch, width, cfg.image_size, cfg.image_size).contiguous(memory_format=torch.channels_last)
    conv_flops = 2 * args.batch * width * width * 9 * cfg.image_size**2
    with torch.no_grad():
        conv_rate = throughput(lambda: conv(feat), conv_flops)

    best_rate = max(matmul_rate, conv_rate)
    floor = step_flops / best_rate
    print(f"guided DDIM step, {args.preset} + {preset.classifier}, batch {args.batch}  [{machine()}, torch {torch.__version__}]")
    print(f"step FLOPs: {step_flops / 1e9:.0f} G (UNet forward {unet_flops / 1e9:.0f} G, classifier fwd+bwd "
          f"{(step_flops - unet_flops) / 1e9:.0f} G)")
    print(f"machine fp32 throughput: matmul {matmul_rate / 1e9:.1f} GFLOP/s, 3x3 conv ({width} ch, "
          f"{cfg.image_size}x{cfg.image_size}) {conv_rate / 1e9:.1f} GFLOP/s")
    print(f"step time: measured {step_seconds:.2f} s, floor at the best rate {floor:.2f} s; "
          f"measured/floor = {step_seconds / floor:.2f} (the most any fp32 CPU optimisation could still gain)")


if __name__ == "__main__":
    main()
