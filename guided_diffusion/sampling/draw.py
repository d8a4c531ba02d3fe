"""Drawing a batch: samples `indices` of a run, each from its own noise stream and label.

Sample i is determined by (seed, i) alone (`runtime.rng.SampleNoise`, `class_labels_for`), so a run can be
cut into batches and spread over processes in any way (`sampling.ranks.gather_in_order`).
"""
from __future__ import annotations

import copy
import warnings
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch

from guided_diffusion.diffusion.denoiser import CondFn, DiffusionDenoiser
from guided_diffusion.diffusion.grids import saturated_first_step
from guided_diffusion.diffusion.stepping import guidance_weight
from guided_diffusion.runtime.rng import SampleNoise, random_labels
from guided_diffusion.sampling.guidance import GuidedModel
from guided_diffusion.sampling.job import SamplingJob, low_res_input
from guided_diffusion.sampling.output import to_uint8
from guided_diffusion.sampling.samplers import SAMPLERS
from guided_diffusion.sampling.settings import SamplerSettings

__all__ = ["Batch", "draw", "draw_batch", "class_labels_for", "to_numpy_uint8", "warn_if_saturated"]

# A drawn batch: uint8 NHWC images and int64 labels (None for a model without classes).
Batch = tuple[np.ndarray, np.ndarray | None]


def warn_if_saturated(denoiser: DiffusionDenoiser, cond_fn: CondFn | None) -> float | None:
    """Warn (once per call site) when classifier guidance takes a saturated first step; return its multiplier."""
    top = denoiser.level(denoiser.num_steps - 1)
    if guidance_weight(cond_fn, denoiser.timestep(top)) == 0.0:
        return None
    multiplier = saturated_first_step(denoiser.alphas_cumprod)
    if multiplier is not None:
        warnings.warn(
            f"the first guided step starts at t={denoiser.timestep(top):g}, where one unit of classifier "
            f"gradient moves the sample by {multiplier:.3g}; use the default step grid (e.g. --steps N without "
            "--step_grid), a ddimN respacing, or a guidance interval that excludes it",
            stacklevel=3,
        )
    return multiplier


def draw(
    model: Callable[..., torch.Tensor],
    diffusion: Any,
    *,
    indices: Sequence[int],
    seed: int,
    image_shape: Sequence[int],
    device: torch.device,
    settings: SamplerSettings,
    labels: np.ndarray | None = None,
    cond_fn: CondFn | None = None,
    model_kwargs: dict[str, torch.Tensor] | None = None,
    x_init: torch.Tensor | None = None,
) -> torch.Tensor:
    """Samples `indices` of run `seed` as a float NCHW batch; sample i uses only its own noise stream.

    `model` is called as model(x, t, y=..., **model_kwargs) (see `GuidedModel`); `labels` become `y`.
    `x_init` replaces the starting noise (the sampler's later noise still comes from the per-sample streams).
    """
    noise = SampleNoise(seed, indices)
    x = noise.randn((len(indices), *image_shape), device=device)
    if x_init is not None:
        x = x_init.to(device=device, dtype=x.dtype)
    kwargs = dict(model_kwargs or {})
    if labels is not None:
        kwargs["y"] = torch.as_tensor(np.asarray(labels), dtype=torch.long, device=device)
    if settings.cfg_interval is not None and isinstance(model, GuidedModel):
        model = copy.copy(model)
        model.cfg_interval = settings.cfg_interval
    denoiser = settings.denoiser(model, diffusion)
    cond_fn = settings.steered(cond_fn, diffusion)
    if cond_fn is not None and SAMPLERS[settings.sampler].spec.guidance != "mean":  # a mean shift is bounded by the variance
        warn_if_saturated(denoiser, cond_fn)
    sampler = SAMPLERS[settings.sampler]
    return sampler(denoiser, x, noise=noise, cond_fn=cond_fn, model_kwargs=kwargs, **settings.sampler_kwargs())


def class_labels_for(
    indices: Sequence[int], seed: int, num_classes: int, fixed: Sequence[int] | None = None
) -> np.ndarray:
    """Labels of samples `indices`: `fixed` repeated in order (sample i gets fixed[i % len]), else uniform
    random labels that depend only on (seed, i)."""
    if fixed:
        return np.array([fixed[i % len(fixed)] for i in indices], dtype=np.int64)
    return random_labels(seed, indices, num_classes)


def to_numpy_uint8(x: torch.Tensor) -> np.ndarray:
    """Float NCHW samples in [-1, 1] -> uint8 NHWC numpy (truncating, as the original)."""
    return to_uint8(x).cpu().numpy()


def draw_batch(job: SamplingJob, model_fn: GuidedModel, cond_fn: CondFn | None, diffusion: Any, indices: list[int],
               device: torch.device, low_res: np.ndarray | None = None,
               init_noise: np.ndarray | None = None) -> Batch:
    """Samples `indices` of the job as (uint8 NHWC images, int64 labels or None); sample i starts from
    `init_noise[i]` when given (float N x C x H x W), else from its own seeded noise."""
    labels = class_labels_for(indices, job.seed, job.model.num_classes, job.class_labels) if job.with_labels else None
    model_kwargs = {"low_res": low_res_input(low_res, indices, device)} if low_res is not None else {}
    x_init = torch.from_numpy(np.asarray(init_noise[indices], dtype=np.float32)) if init_noise is not None else None
    x = draw(model_fn, diffusion, indices=indices, seed=job.seed, image_shape=job.image_shape, device=device,
             settings=job.settings, labels=labels, cond_fn=cond_fn, model_kwargs=model_kwargs, x_init=x_init)
    return to_numpy_uint8(x), labels
