"""Sampling: the samplers (`SAMPLERS`: ddpm, ddim, euler, heun, DPM-Solver++ 2M / 3M and their SDE forms,
UniPC, iPNDM, DEIS), guidance, and running a job, cut by thing:

- `settings`: `SamplerSettings` (sampler, options, step grid, guidance steering), checked once;
- `job`: `SamplingJob`, what a run draws, resolved once and frozen (`sampling_job` builds one);
- `draw`: drawing one batch (per-sample noise and labels); `ranks`: batches over the processes;
- `networks`: a job's networks, checked against their files, loaded and wrapped for guidance;
- `resume`: the output folder (lock, partial batches, settings record, "nothing to do"), signals;
- `run`: `run.run(job, ...)`, the one function the command line, the Python API and the demo call;
- `api`: `Pipeline` / `load_pipeline`; `failures`: settings measured to fail; `output`: files.

The step grids, the denoiser view and the DDPM/DDIM loops the samplers share live in
`guided_diffusion.diffusion`; per-sample noise in `guided_diffusion.runtime.rng`.

    from guided_diffusion.sampling import load_pipeline
    images = load_pipeline("64x64_diffusion", classifier="auto").sample(4, classes=1, sampler="dpm++2m", steps=20)
"""
from guided_diffusion.diffusion.denoiser import Denoiser, DiffusionDenoiser
from guided_diffusion.runtime.rng import SampleNoise
from guided_diffusion.sampling.api import Pipeline, load_pipeline
from guided_diffusion.sampling.guidance import GuidedModel, classifier_cond_fn, dynamic_threshold
from guided_diffusion.sampling.job import SamplingJob, sampling_job
from guided_diffusion.sampling.networks import Networks
from guided_diffusion.sampling.samplers import SAMPLERS, ddim, ddpm, dpmpp_2m
from guided_diffusion.sampling.settings import SamplerSettings

__all__ = [
    "Pipeline", "load_pipeline", "Networks", "SamplingJob", "sampling_job", "SamplerSettings", "Denoiser",
    "DiffusionDenoiser", "GuidedModel", "classifier_cond_fn", "dynamic_threshold", "SampleNoise", "SAMPLERS", "ddpm",
    "ddim", "dpmpp_2m",
]
