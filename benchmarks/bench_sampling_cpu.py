"""CPU time per image of the sampling pipeline on a released architecture with random weights.

Draws a batch with `guided_diffusion.sampling` (per-sample seeds, denoiser wrapper, uint8 output) and,
in the same process with the same weights, with the plain original-style loop
(`diffusion.ddim_sample_loop` with the global generator). Prints wall-clock and CPU seconds per image
per step, projected seconds per image at common step counts, and the ratio plain / ours (about 1
means the user-facing extras cost nothing; the model evaluations dominate). CPU time (summed over
threads) is the steadier figure on a shared machine; the load average is printed alongside.

    python benchmarks/bench_sampling_cpu.py                         # 64x64 ADM, 3 steps, batch 2
    python benchmarks/bench_sampling_cpu.py --sampler dpm++2m --guided --threads 2
"""
from __future__ import annotations

import argparse
import os
import time

import torch
from common import released_network

from guided_diffusion.config import DiffusionConfig
from guided_diffusion.config.presets import PRESETS
from guided_diffusion.sampling.draw import class_labels_for, draw, to_numpy_uint8
from guided_diffusion.sampling.guidance import GuidedModel, classifier_cond_fn
from guided_diffusion.sampling.settings import SamplerSettings


def timed(fn) -> tuple[float, float]:
    """(wall seconds, CPU seconds of this process) for one call."""
    wall, cpu = time.perf_counter(), time.process_time()
    fn()
    return time.perf_counter() - wall, time.process_time() - cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="64x64_diffusion")
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--sampler", default="ddim", choices=["ddim", "dpm++2m"])
    parser.add_argument("--guided", action="store_true", help="add the preset's classifier guidance")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: leave as is)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    preset = PRESETS[args.preset]
    _, model = released_network(args.preset, 0)
    diffusion = DiffusionConfig.from_dict({**preset.flags, "timestep_respacing": str(args.steps)}).build()
    size = preset.resolution
    class_cond = bool(preset.flags.get("class_cond"))
    labels = class_labels_for(range(args.batch), 0, 1000)
    y = torch.from_numpy(labels)
    cond_fn = None
    if args.guided:
        _, classifier = released_network(preset.classifier, 1)
        cond_fn = classifier_cond_fn(classifier, preset.classifier_scale)

    model_fn = GuidedModel(model, class_cond=class_cond)
    settings = SamplerSettings(sampler=args.sampler)

    def ours() -> None:
        x = draw(model_fn, diffusion, indices=range(args.batch), seed=0, image_shape=(3, size, size),
                 device=torch.device("cpu"), settings=settings, labels=labels, cond_fn=cond_fn)
        to_numpy_uint8(x)

    def original_model_fn(x, t, y=None):  # as the original classifier_sample.py
        return model(x, t, y if class_cond else None)

    def plain() -> None:
        with torch.no_grad():
            x = diffusion.ddim_sample_loop(original_model_fn, (args.batch, 3, size, size), cond_fn=cond_fn,
                                           model_kwargs={"y": y}, device=torch.device("cpu"))
        ((x + 1) * 127.5).clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).numpy()

    ours()  # warm up kernels and allocator
    ours_times, plain_times = [], []
    for _ in range(args.repeats):  # interleaved, so a busy machine slows both alike
        ours_times.append(timed(ours))
        plain_times.append(timed(plain))
    per_image = args.batch
    (ours_wall, ours_cpu), (plain_wall, plain_cpu) = min(ours_times), min(plain_times)
    print(f"{args.preset} ({size}x{size}), sampler {args.sampler}{' + classifier guidance' if args.guided else ''}, "
          f"batch {args.batch}, {args.steps} steps, {torch.get_num_threads()} threads, "
          f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")
    for name, wall, cpu in (("ours ", ours_wall, ours_cpu), ("plain", plain_wall, plain_cpu)):
        print(f"{name}: {wall / per_image / args.steps:.2f} s/image/step wall, "
              f"{cpu / per_image / args.steps:.2f} s/image/step CPU")
    print(f"ratio plain/ours: {plain_wall / ours_wall:.2f} wall, {plain_cpu / ours_cpu:.2f} CPU")
    for steps in (20, 25, 250):
        print(f"projected at {steps:>3} steps: {ours_wall / per_image / args.steps * steps:.0f} s/image wall, "
              f"{ours_cpu / per_image / args.steps * steps:.0f} s/image CPU")

if __name__ == "__main__":
    main()
