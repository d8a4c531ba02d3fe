"""DDIM inversion: run the deterministic DDIM ODE backwards, from an image to the noise it comes from.

DDIM (eta = 0) maps x_k to x_{k-1} = alpha_{k-1} x0(x_k) + sigma_{k-1} eps(x_k). Inverting a step asks for
the x_k whose update lands on a given x_{k-1}; the usual approximation (Song et al. 2021, Sec. 4.3; Dhariwal
& Nichol 2021, App.) evaluates eps at the point already known:

    eps   = eps_theta(x_{k-1}, k)
    x0    = (x_{k-1} - sigma_{k-1} eps) / alpha_{k-1}          (alpha_{-1} = 1, sigma_{-1} = 0)
    x_k   = alpha_k x0 + sigma_k eps

the same arithmetic as the original's `ddim_reverse_sample_loop`, written on the `Denoiser` grid so it
inverts whichever grid the samplers then walk back. Up to `refine` fixed-point iterations re-evaluate eps
at the new x_k (eps = eps_theta(x_k, k)), which makes each step the exact inverse of DDIM's at
convergence; a sample stops iterating once its x_k moves by less than `tol`, so its result does not
depend on the other samples in the batch.
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from guided_diffusion.diffusion.denoiser import Denoiser, Level
from guided_diffusion.diffusion.stepping import progress_bar
from guided_diffusion.runtime.errors import SettingError

__all__ = ["ddim_invert", "psnr"]


@torch.no_grad()
def ddim_invert(
    denoiser: Denoiser,
    x: torch.Tensor,
    *,
    model_kwargs: dict[str, Any] | None = None,
    refine: int = 0,
    tol: float = 1e-4,
    progress: bool = False,
    callback: Callable[[dict[str, Any]], None] | None = None,
    denoised_fn: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> torch.Tensor:
    """The noise x_{K-1} from which DDIM (eta = 0, unclipped) on `denoiser`'s grid returns about `x`.

    One model evaluation per grid point, plus up to `refine` more per point for the fixed-point refinement
    (fewer once every sample has moved by less than `tol`, max-abs). `callback` receives {"k", "x"} after
    each step; `denoised_fn` (e.g. clipping) maps each x0 before it is re-noised, as the original's
    `ddim_reverse_sample_loop` allows.
    """
    if refine < 0:
        raise SettingError("refine", f"refine must be >= 0, got {refine}")
    model_kwargs = model_kwargs or {}

    def step_up(eps: torch.Tensor, here: Level, there: Level) -> torch.Tensor:
        x0 = (x - here.sigma * eps) / here.alpha
        if denoised_fn is not None:
            x0 = denoised_fn(x0)
        return there.alpha * x0 + there.sigma * eps

    walk = denoiser.levels()[::-1]  # clean data, then grid points 0 .. K-1
    for here, there in progress_bar(zip(walk, walk[1:]), progress, "inversion", total=denoiser.num_steps):
        _, eps = denoiser.predict(x, there, model_kwargs)
        x_next = step_up(eps, here, there)
        active = torch.ones(x.shape[0], dtype=torch.bool, device=x.device)
        for _ in range(refine):
            _, eps = denoiser.predict(x_next, there, model_kwargs)
            candidate = step_up(eps, here, there)
            moved = (candidate - x_next).flatten(1).abs().amax(1)
            x_next = torch.where(active.view(-1, *([1] * (x.ndim - 1))), candidate, x_next)
            active = active & (moved > tol)
            if not bool(active.any()):
                break
        x = x_next
        if callback is not None:
            callback({"k": there.index, "x": x})
    return x


def psnr(images: torch.Tensor | Any, reference: torch.Tensor | Any, peak: float = 255.0) -> torch.Tensor:
    """Per-image PSNR = 10 log10(peak^2 / mean((a - b)^2)) in dB (inf for identical images)."""
    a = torch.as_tensor(images).double().flatten(1)
    b = torch.as_tensor(reference).double().flatten(1)
    mse = (a - b).pow(2).mean(1)
    return 10 * torch.log10(peak**2 / mse)
