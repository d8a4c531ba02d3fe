"""Sampling: the samplers (`SAMPLERS`: ddpm, ddim, euler, heun, DPM-Solver++ 2M / 2M SDE / 3M SDE, UniPC),
guidance, sampling jobs with resume, outputs, and a Python API. The step grids, the denoiser view and the
DDPM/DDIM loops the samplers share live in `guided_diffusion.diffusion`; per-sample noise in
`guided_diffusion.runtime.rng`.

    from guided_diffusion.sampling import load_pipeline
    images = load_pipeline("64x64_diffusion", classifier="auto").sample(4, classes=1, sampler="dpm++2m", steps=20)
"""
from guided_diffusion.diffusion.denoiser import Denoiser, DiffusionDenoiser
from guided_diffusion.runtime.rng import SampleNoise
from guided_diffusion.sampling.api import Pipeline, load_pipeline
from guided_diffusion.sampling.guidance import GuidedModel, classifier_cond_fn, dynamic_threshold
from guided_diffusion.sampling.samplers import SAMPLERS, ddim, ddpm, dpmpp_2m

__all__ = [
    "Pipeline", "load_pipeline", "Denoiser", "DiffusionDenoiser", "GuidedModel", "classifier_cond_fn",
    "dynamic_threshold", "SampleNoise", "SAMPLERS", "ddpm", "ddim", "dpmpp_2m",
]
