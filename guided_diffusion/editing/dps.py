"""The edits made by diffusion posterior sampling (`inpaint --method dps` and `restore`), on a job.

`measurement_images` is what a restoration starts from, `measurement_operator` the operator its task
measures with, and `dps_batch` samples one batch from fresh noise under the measurement's guidance (added
to the classifier's). The DPS primitives themselves are in `editing.measurement`.
"""
from __future__ import annotations

import numpy as np
import torch

from guided_diffusion.diffusion.denoiser import CondFn, Denoiser
from guided_diffusion.editing.inputs import blurred, downsampled
from guided_diffusion.editing.io import to_model_input
from guided_diffusion.editing.job import EditJob, Inpaint, Restore
from guided_diffusion.editing.measurement import (
    BlurOperator,
    DownsampleOperator,
    MaskOperator,
    Operator,
    X0Predictor,
    measurement_cond_fn,
    sum_cond_fns,
)
from guided_diffusion.editing.networks import EditNetworks
from guided_diffusion.runtime.rng import SampleNoise
from guided_diffusion.sampling.samplers import SAMPLERS

__all__ = ["dps_batch", "measurement_images", "measurement_operator"]


def measurement_images(job: EditJob) -> np.ndarray | None:
    """The measurement a restoration starts from (uint8 NHWC): the inputs, or with `simulate` the
    task's operator applied to them; None for the other edits."""
    task = job.task
    if not isinstance(task, Restore):
        return None
    if not task.simulate:
        return job.inputs.images
    if task.task == "super_res":
        return downsampled(job.inputs.images, task.downsampling)
    return blurred(job.inputs.images, task.sigma, task.blur_size)  # Restore refuses simulate for inpaint


def measurement_operator(job: EditJob, indices: list[int]) -> Operator:
    """The operator the job's task measures images `indices` with: their keep-mask for inpainting, else
    the task's downsampling or blur."""
    task = job.task
    if job.needs_mask:
        assert job.inputs.mask is not None  # EditJob requires one for inpainting
        return MaskOperator(torch.from_numpy(job.inputs.mask[indices]))
    assert isinstance(task, Restore)
    if task.task == "super_res":
        return DownsampleOperator(task.downsampling)
    return BlurOperator(task.sigma, task.blur_size)


def dps_batch(job: EditJob, networks: EditNetworks, denoiser: Denoiser, indices: list[int], *,
              measured: np.ndarray, classifier: CondFn | None,
              model_kwargs: dict[str, torch.Tensor]) -> torch.Tensor:
    """Images `indices` sampled by the job's sampler from the noise of (seed, i), under the DPS guidance
    towards their measurement (`measured`: uint8 NHWC, the measurement's own size, or for inpainting the
    images whose kept pixels are measured) plus `classifier`; returns the model's images in [-1, 1]
    (inpainting's kept pixels are the caller's to paste)."""
    task = job.task
    assert isinstance(task, (Inpaint, Restore)) and job.seed is not None
    operator = measurement_operator(job, indices)
    measurement = to_model_input(measured)
    target = operator(measurement) if job.needs_mask else measurement
    predict_x0 = X0Predictor(networks.model, networks.diffusion)
    cond_fn = sum_cond_fns(measurement_cond_fn(operator, target, task.scale, predict_x0=predict_x0, step="x0"),
                           classifier)
    noise = SampleNoise(job.seed, indices)
    x = noise.randn((len(indices), 3, job.image_size, job.image_size), device=networks.device)
    out: torch.Tensor = SAMPLERS[job.settings.sampler](denoiser, x, noise=noise, cond_fn=cond_fn,
                                                       model_kwargs=model_kwargs, **job.settings.sampler_kwargs())
    return out
