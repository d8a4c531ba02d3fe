"""Pinned outputs of the ddpm/ddim sampling paths, recorded before the continuous-noise engine landed.

The cases: two tiny random-weight ADM models (cosine and linear schedule, learned sigma, 50 steps; the
cosine one class-conditional), a tiny random-weight noisy classifier (scale 2 guidance), samplers `ddpm`
on the full grid and on a 10-step respacing, `ddim` on `ddim25` with eta 0 and 0.7, each guided and
unguided, each drawn through `sampling.draw.draw` (per-sample seeds) and through the compatibility
loops `GaussianDiffusion.p_sample_loop` / `ddim_sample_loop` (global generator).

Regenerate (only when an intended change of the samples is agreed; the file is the regression baseline):

    python tests/sampling_regression.py        # writes tests/fixtures/sampling_regression.npz

`tests/test_sampling_regression.py` compares today's code against the file.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from helpers import randomise_zero_layers

from guided_diffusion.sampling.draw import draw
from guided_diffusion.sampling.guidance import GuidedModel, classifier_cond_fn
from guided_diffusion.sampling.settings import SamplerSettings
from guided_diffusion.script_util import (
    create_classifier,
    create_model_and_diffusion,
    model_and_diffusion_defaults,
)

FIXTURE = Path(__file__).parent / "fixtures" / "sampling_regression.npz"
ARCH = dict(image_size=8, num_channels=32, num_res_blocks=1, channel_mult="1,1", attention_resolutions="4",
            num_head_channels=8, resblock_updown=True, diffusion_steps=50, learn_sigma=True)
MODELS = {
    "cosine": dict(noise_schedule="cosine", class_cond=True, num_classes=5),
    "linear": dict(noise_schedule="linear", class_cond=False),
}
# (sampler, timestep_respacing, eta)
RUNS = [("ddpm", "", 0.0), ("ddpm", "10", 0.0), ("ddim", "ddim25", 0.0), ("ddim", "ddim25", 0.7)]
LABELS = np.array([0, 3, 4])
SEED = 17


def build_model(name: str, respacing: str):
    flags = {**model_and_diffusion_defaults(), **ARCH, **MODELS[name], "timestep_respacing": respacing}
    torch.manual_seed(1234)
    model, diffusion = create_model_and_diffusion(**flags)
    return randomise_zero_layers(model, 5).eval(), diffusion


def build_classifier() -> torch.nn.Module:
    torch.manual_seed(4321)
    classifier = create_classifier(8, False, 32, 1, "4", True, True, "attention", classifier_channel_mult="1,1",
                                   classifier_num_head_channels=8, num_classes=5).eval()
    return randomise_zero_layers(classifier, 6)


def compute() -> dict[str, np.ndarray]:
    """Every case's float32 samples, keyed `model/sampler/respacing/eta/guided/path`."""
    torch.set_num_threads(1)
    classifier = build_classifier()
    results: dict[str, np.ndarray] = {}
    for name in MODELS:
        for sampler, respacing, eta in RUNS:
            model, diffusion = build_model(name, respacing)
            class_cond = MODELS[name]["class_cond"]
            model_fn = GuidedModel(model, class_cond=class_cond)
            for guided in (False, True):
                cond_fn = classifier_cond_fn(classifier, 2.0) if guided else None
                key = f"{name}/{sampler}/{respacing or 'full'}/{eta}/{'guided' if guided else 'plain'}"
                settings = SamplerSettings(sampler=sampler, eta=eta if sampler == "ddim" else None)  # eta is ddim's alone
                with torch.no_grad():
                    x = draw(model_fn, diffusion, indices=[0, 1, 2], seed=SEED, image_shape=(3, 8, 8),
                             device=torch.device("cpu"), settings=settings, labels=LABELS, cond_fn=cond_fn)
                results[f"{key}/draw"] = x.numpy().astype(np.float32)
                kwargs = {"y": torch.as_tensor(LABELS)}
                torch.manual_seed(99)
                noise = torch.randn(3, 3, 8, 8)
                if sampler == "ddpm":
                    x = diffusion.p_sample_loop(model_fn, (3, 3, 8, 8), noise=noise, cond_fn=cond_fn,
                                                model_kwargs=kwargs, device=torch.device("cpu"))
                else:
                    x = diffusion.ddim_sample_loop(model_fn, (3, 3, 8, 8), noise=noise, cond_fn=cond_fn,
                                                   model_kwargs=kwargs, device=torch.device("cpu"), eta=eta)
                results[f"{key}/loop"] = x.numpy().astype(np.float32)
    return results


if __name__ == "__main__":
    arrays = compute()
    np.savez_compressed(FIXTURE, **arrays)
    print(f"wrote {len(arrays)} cases to {FIXTURE} ({FIXTURE.stat().st_size} bytes)")
