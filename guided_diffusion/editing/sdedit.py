"""SDEdit (Meng et al. 2022): noise an image part of the way up the diffusion, then sample back down.

With strength s in (0, 1] on a K-point grid, the edit starts at grid point m - 1, m = round(s K):

    x_{m-1} = alpha_{m-1} x_0 + sigma_{m-1} z,      z ~ N(0, I)

and any sampler walks the remaining m points to a clean image. Small s keeps the layout and colours of
the input; s = 1 keeps almost nothing. With `from_inversion` the start is the DDIM inversion of x_0 to
point m - 1 instead of a noised copy, so the unguided deterministic path returns the input itself and
only guidance (e.g. a classifier towards another class) changes it.
"""
from __future__ import annotations

from typing import Any

import torch

from guided_diffusion.diffusion.denoiser import Denoiser
from guided_diffusion.diffusion.inversion import ddim_invert
from guided_diffusion.diffusion.stepping import NoiseSource
from guided_diffusion.editing.grid import start_points
from guided_diffusion.sampling.samplers import SAMPLERS

__all__ = ["sdedit"]


def sdedit(
    denoiser: Denoiser,
    x: torch.Tensor,
    *,
    strength: float,
    sampler: str = "ddim",
    from_inversion: bool = False,
    inversion_refine: int = 6,
    noise: NoiseSource | None = None,
    progress: bool = False,
    **sampler_kwargs: Any,
) -> torch.Tensor:
    """Edit clean images `x` (float NCHW in [-1, 1]) with `SAMPLERS[sampler]` from strength `strength`.

    `noise` supplies the forward noise z (its first draw) and then the sampler's own noise, so with a
    `SampleNoise` edit i depends only on (seed, i) and input i. `sampler_kwargs` (cond_fn, model_kwargs,
    clip_denoised, threshold, callback and the sampler's options) go to the sampler unchanged; the
    inversion (when asked for) uses the same `model_kwargs` and `inversion_refine` fixed-point passes per
    step (see `ddim_invert`).
    """
    if sampler not in SAMPLERS:
        raise ValueError(f"unknown sampler {sampler!r}; choose one of {', '.join(SAMPLERS)}")
    points = start_points(strength, denoiser.num_steps)
    sub = denoiser.truncated(points)
    if from_inversion:
        start = ddim_invert(sub, x, model_kwargs=sampler_kwargs.get("model_kwargs"), refine=inversion_refine,
                            progress=progress)
    else:
        z = noise.randn_like(x) if noise is not None else torch.randn_like(x)
        top = sub.level(points - 1)
        start = top.alpha * x + top.sigma * z
    return SAMPLERS[sampler](sub, start, noise=noise, progress=progress, **sampler_kwargs)
