"""Why guided multistep solvers broke: the size and smoothness of the guidance term along the guided ODE.

    python benchmarks/bench_guidance_terms.py --models DEMO_DIR [--scale 4] [--samples 50]

Walks the reference solution (DDIM on 250 karras levels from sigma_max 80, the study's reference) of the
digits demo's models at classifier scale `--scale`, and prints, every 12 levels: the noise level (VE sigma s
and log-SNR lambda), the RMS size (per sample, averaged) of the model's clipped data prediction D, of the
guidance's shift of the noise prediction G = sigma * s_c * grad log p(y | x), and of the guidance's part of the
guided data prediction, x0 - D = (sigma / alpha) G; and each one's roughness, the norm of its second
difference in lambda per unit lambda^2, relative to its size.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch

from guided_diffusion.config import DiffusionConfig
from guided_diffusion.diffusion.stepping import SamplerContext
from guided_diffusion.runtime.rng import SampleNoise
from guided_diffusion.sampling.guidance import GuidedModel, classifier_cond_fn
from guided_diffusion.sampling.settings import SamplerSettings
from guided_diffusion.weights.checkpoints import load_model, read_config_json


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default="demo_out", help="output folder of `guided-diffusion demo` (--quick or not)")
    parser.add_argument("--scale", type=float, default=4.0)
    parser.add_argument("--samples", type=int, default=50)
    parser.add_argument("--every", type=int, default=12)
    args = parser.parse_args()
    torch.set_num_threads(1)
    root = Path(args.models) / "checkpoints"
    unet_path = sorted((root / "diffusion").glob("ema_*.pt"))[-1]
    unet = load_model(unet_path).eval().requires_grad_(False)
    guide = load_model(sorted((root / "classifier").glob("model*.pt"))[-1]).eval().requires_grad_(False)
    saved = read_config_json(unet_path)
    assert saved is not None
    diffusion = DiffusionConfig.from_dict(saved["diffusion"]).replace(timestep_respacing="").build()
    denoiser = SamplerSettings(sampler="ddim", steps=250, step_grid="karras").denoiser(
        GuidedModel(unet, class_cond=False), diffusion)
    noise = SampleNoise(7, range(args.samples))
    x = noise.randn((args.samples, 3, 8, 8), device=torch.device("cpu"))
    labels = torch.arange(args.samples) % 10
    ctx = SamplerContext(denoiser, cond_fn=classifier_cond_fn(guide, args.scale), model_kwargs={"y": labels})
    walk = []
    with torch.no_grad():
        for here, there in zip(ctx.levels, ctx.levels[1:]):
            d = ctx.denoise(x, here)
            assert d.guidance is not None
            walk.append((here.ve_sigma, here.log_snr, d.data, d.guidance, d.x0 - d.data))
            eps = denoiser.eps_from_x0(x, here, d.x0)
            x = there.alpha * d.x0 + there.sigma * eps

    def size(t: torch.Tensor) -> float:
        return float(t.flatten(1).norm(dim=1).mean())

    def roughness(i: int, part: int) -> float:
        h1, h2 = walk[i][1] - walk[i - 1][1], walk[i + 1][1] - walk[i][1]
        a, b, c = walk[i - 1][part], walk[i][part], walk[i + 1][part]
        second = ((c - b) / h2 - (b - a) / h1) / ((h1 + h2) / 2)
        return size(second) / max(size(b), 1e-12)

    print(f"scale {args.scale:g}, {args.samples} samples; sizes are per-sample L2 norms (8x8x3 values)")
    print("| s | lambda | size D | size G | size x0 - D | roughness D | roughness G | roughness x0 - D |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|")
    for i in range(1, len(walk) - 1, args.every):
        s, lam, data, guidance, part = walk[i]
        print(f"| {s:.3g} | {lam:.2f} | {size(data):.2f} | {size(guidance):.2f} | {size(part):.2f} | "
              f"{roughness(i, 2):.1f} | {roughness(i, 3):.1f} | {roughness(i, 4):.1f} |")
    ratios = np.array([size(w[4]) / size(w[2]) for w in walk])
    print(f"largest |x0 - D| / |D|: {ratios.max():.1f} (at s = {walk[int(ratios.argmax())][0]:.3g})")


if __name__ == "__main__":
    main()
