"""bfloat16 autocast against fp32 on the CPU, for the classifier-guided sampling step.

1. Speed: one guided DDIM step (ADM forward + classifier forward and backward) of the 64x64 preset
   architecture with random weights, batch `--batch`, the two precisions interleaved in one process on
   the same weights and noise (`--threads` torch threads, default 1).
2. Agreement on that model: a short guided DDIM run (`--steps` levels) from the same noise in both
   precisions; PSNR between the final uint8 images.
3. Agreement where quality can be judged: the demo's trained digits models (`--models`, a
   `guided-diffusion demo` output folder), `--samples` guided samples at scale 4 in both precisions;
   the judge's accuracy on the intended class in each, and the mean PSNR between the two sets.

    python benchmarks/bench_bf16_cpu.py --models /path/to/demo_output
"""
from __future__ import annotations

import argparse
import math
import os
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).parent))

from common import released_network, time_paths

from guided_diffusion.config import DiffusionConfig
from guided_diffusion.config.presets import PRESETS
from guided_diffusion.demo.judge import JudgeFeatures
from guided_diffusion.diffusion.stepping import guided_x0
from guided_diffusion.sampling.generate import SamplerSettings, draw
from guided_diffusion.sampling.guidance import GuidedModel, classifier_cond_fn
from guided_diffusion.sampling.output import to_uint8
from guided_diffusion.weights.checkpoints import load_model, read_config_json


def psnr(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Per-image PSNR in dB between uint8 image sets (inf where identical)."""
    mse = ((a.astype(np.float64) - b.astype(np.float64)) ** 2).reshape(len(a), -1).mean(1)
    with np.errstate(divide="ignore"):
        return 10 * np.log10(255.0**2 / mse)


def _checkpoint(folder: Path, pattern: str) -> Path:
    found = sorted(folder.glob(pattern))
    if not found:
        raise SystemExit(f"no {pattern} in {folder}: pass --models a folder written by `guided-diffusion demo`")
    return found[-1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", default="64x64_diffusion")
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--steps", type=int, default=5, help="levels of the short 64x64 run")
    parser.add_argument("--models", default=None, help="demo output folder for the digits check (skipped if absent)")
    parser.add_argument("--samples", type=int, default=500)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    cpu = torch.device("cpu")
    flags = open("/proc/cpuinfo").read() if os.path.exists("/proc/cpuinfo") else ""
    print(f"CPU reports avx512_bf16: {'avx512_bf16' in flags}, amx_bf16: {'amx_bf16' in flags}; "
          f"{args.threads} thread(s); load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")

    # 1. speed of the guided step
    preset = PRESETS[args.preset]
    model_cfg, unet = released_network(args.preset, 0)
    _, classifier = released_network(preset.classifier, 1)
    size = model_cfg.image_size
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(args.batch, 3, size, size, generator=generator)
    y = torch.randint(0, 1000, (args.batch,), generator=generator)
    diffusion = DiffusionConfig.from_dict({**preset.flags, "timestep_respacing": ""}).build()
    settings = SamplerSettings(sampler="ddim", steps=args.steps)
    scale = preset.classifier_scale

    def step(dtype):
        model_fn = GuidedModel(unet, class_cond=model_cfg.class_cond, autocast_dtype=dtype)
        cond_fn = classifier_cond_fn(classifier, scale, autocast_dtype=dtype)
        denoiser = settings.denoiser(model_fn, diffusion)
        k = denoiser.num_steps - 1

        @torch.no_grad()
        def run():
            return guided_x0(denoiser, x, k, model_kwargs={"y": y}, cond_fn=cond_fn, clip_denoised=True,
                             threshold=None)
        return run

    seconds, outputs = time_paths({"fp32": step(None), "bf16 autocast": step(torch.bfloat16)}, args.repeats)
    rel = float((outputs["bf16 autocast"] - outputs["fp32"]).norm() / outputs["fp32"].norm())
    print(f"guided step ({args.preset} + {preset.classifier}, batch {args.batch}): fp32 {seconds['fp32']:.2f} s, "
          f"bf16 {seconds['bf16 autocast']:.2f} s, speed-up {seconds['fp32'] / seconds['bf16 autocast']:.2f}x; "
          f"relative difference of the guided x0 prediction {rel:.2e}")

    # 2. agreement of a short run on the 64x64 architecture
    def short_run(dtype):
        model_fn = GuidedModel(unet, class_cond=model_cfg.class_cond, autocast_dtype=dtype)
        cond_fn = classifier_cond_fn(classifier, scale, autocast_dtype=dtype)
        out = draw(model_fn, diffusion, indices=list(range(args.batch)), seed=0, image_shape=(3, size, size),
                   device=cpu, settings=settings, labels=y.numpy(), cond_fn=cond_fn)
        return to_uint8(out).numpy()

    values = psnr(short_run(None), short_run(torch.bfloat16))
    print(f"short guided run ({args.steps} DDIM levels, random weights): PSNR fp32 vs bf16 of the final uint8 "
          f"images {np.mean(values):.1f} dB mean, {np.min(values):.1f} dB worst")

    # 3. judged agreement on the trained digits models
    if not args.models:
        print("digits check skipped: pass --models DIR (a `guided-diffusion demo` output folder)")
        return
    root = Path(args.models) / "checkpoints"
    unet_path = _checkpoint(root / "diffusion", "ema_*.pt")
    digits_unet = load_model(unet_path).eval()
    guide = load_model(_checkpoint(root / "classifier", "model*.pt")).eval()
    judge = JudgeFeatures(load_model(_checkpoint(root / "judge", "model*.pt")).eval())
    digits_diffusion = DiffusionConfig.from_dict(read_config_json(unet_path)["diffusion"]).replace(
        timestep_respacing="").build()
    labels = np.arange(args.samples) % 10
    images = {}
    for name, dtype in (("fp32", None), ("bf16", torch.bfloat16)):
        model_fn = GuidedModel(digits_unet, class_cond=False, autocast_dtype=dtype)
        cond_fn = classifier_cond_fn(guide, 4.0, autocast_dtype=dtype)
        out = draw(model_fn, digits_diffusion, indices=list(range(args.samples)), seed=0, image_shape=(3, 8, 8),
                   device=cpu, settings=SamplerSettings(sampler="ddim", steps=20), labels=labels, cond_fn=cond_fn)
        images[name] = to_uint8(out).numpy()
    accuracy = {name: float(np.mean(judge.predict(imgs) == labels)) for name, imgs in images.items()}
    digit_psnr = psnr(images["fp32"], images["bf16"])
    finite = digit_psnr[np.isfinite(digit_psnr)]
    print(f"digits, {args.samples} samples, scale 4, DDIM 20 levels: judge accuracy fp32 {accuracy['fp32']:.3f}, "
          f"bf16 {accuracy['bf16']:.3f} (difference {accuracy['bf16'] - accuracy['fp32']:+.3f}); "
          f"PSNR {np.mean(finite) if len(finite) else math.inf:.1f} dB mean over images that differ "
          f"({len(finite)} of {args.samples}), {np.min(digit_psnr):.1f} dB worst")


if __name__ == "__main__":
    main()
