"""Peak memory of every registered sampler against its number of steps: flat when no autograd graph is kept.

    python benchmarks/bench_sampler_memory.py [--models DEMO_DIR] [--samples 100] [--steps 4,32]

Each (sampler, steps) runs in a fresh process (peak RSS cannot be reset within one), which builds the
networks (the digits demo's from --models, else random ones of the same size), draws `--samples` guided
8x8 samples and reports its peak resident memory (ru_maxrss). A sampler that kept the graph of every
step (as dpm++2m_sde and dpm++3m_sde did before the sampler contract: 0.46 GB at 4 steps, 2.8 GB at 64)
grows with the steps; the acceptance bound is peak(32 steps) <= 1.25 x peak(4 steps).
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys

CHILD = r"""
import json, resource, sys
import numpy as np, torch
from guided_diffusion.sampling.samplers import SAMPLERS
from guided_diffusion.sampling.settings import SamplerSettings
from guided_diffusion.sampling.guidance import GuidedModel, classifier_cond_fn
from guided_diffusion.runtime.rng import SampleNoise
name, steps, samples, models = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
torch.set_num_threads(1)
if models:
    from pathlib import Path
    from guided_diffusion.config import DiffusionConfig
    from guided_diffusion.weights.checkpoints import load_model, read_config_json
    root = Path(models) / "checkpoints"
    unet_path = sorted((root / "diffusion").glob("ema_*.pt"))[-1]
    unet = load_model(unet_path).eval()
    guide = load_model(sorted((root / "classifier").glob("model*.pt"))[-1]).eval()
    diffusion = DiffusionConfig.from_dict(read_config_json(unet_path)["diffusion"]).replace(timestep_respacing="").build()
else:
    from guided_diffusion.config import ClassifierConfig, DiffusionConfig, ModelConfig
    unet = ModelConfig(image_size=8, num_channels=64, num_res_blocks=2, attention_resolutions="4", num_head_channels=32,
                       channel_mult="1,2", learn_sigma=True).build().eval()
    guide = ClassifierConfig(image_size=8, classifier_width=64, classifier_depth=2, classifier_attention_resolutions="4",
                             classifier_channel_mult="1,2", classifier_num_head_channels=32, num_classes=10).build().eval()
    diffusion = DiffusionConfig(learn_sigma=True, diffusion_steps=1000, noise_schedule="cosine").build()
# Weights that require grad, as built: the contract must hold even so.
denoiser = SamplerSettings(sampler=name, steps=steps, step_grid="karras").denoiser(GuidedModel(unet, class_cond=False), diffusion)
noise = SampleNoise(0, range(samples))
x = noise.randn((samples, 3, 8, 8), device=torch.device("cpu"))
out = SAMPLERS[name](denoiser, x, noise=noise, cond_fn=classifier_cond_fn(guide, 4.0),
                     model_kwargs={"y": torch.arange(samples) % 10})
print(json.dumps({"peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, "finite": bool(torch.isfinite(out).all())}))
"""


def peak(name: str, steps: int, samples: int, models: str) -> dict:
    result = subprocess.run([sys.executable, "-c", CHILD, name, str(steps), str(samples), models],
                            capture_output=True, text=True, check=True)
    return json.loads(result.stdout.strip().splitlines()[-1])


def main() -> None:
    from guided_diffusion.sampling.samplers import SAMPLERS

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default="", help="a `guided-diffusion demo` folder (default: random networks)")
    parser.add_argument("--samples", type=int, default=100)
    parser.add_argument("--steps", default="4,32")
    parser.add_argument("--samplers", default=",".join(SAMPLERS))
    args = parser.parse_args()
    steps = [int(v) for v in args.steps.split(",")]
    print(f"peak resident memory (MB) of {args.samples} guided 8x8 samples, one process per cell; "
          f"load {os.getloadavg()[0]:.1f}")
    print("| sampler | " + " | ".join(f"{s} steps" for s in steps) + f" | ratio {steps[-1]}/{steps[0]} |")
    print("|---|" + "---:|" * (len(steps) + 1))
    worst = 0.0
    for name in args.samplers.split(","):
        cells = [peak(name, s, args.samples, args.models) for s in steps]
        ratio = cells[-1]["peak_mb"] / cells[0]["peak_mb"]
        worst = max(worst, ratio)
        print(f"| {name} | " + " | ".join(f"{c['peak_mb']:.0f}" for c in cells) + f" | {ratio:.2f} |", flush=True)
    print(f"largest ratio {worst:.2f} (bound 1.25); this process {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MB")


if __name__ == "__main__":
    main()
