"""Samplers: plain functions with one shared signature.

    sampler(denoiser, x, *, noise=None, cond_fn=None, model_kwargs=None, clip_denoised=True,
            threshold=None, progress=False, callback=None, **sampler_specific) -> x_0

`x` is the starting noise x_{K-1} ~ N(0, I); the sampler walks the denoiser's grid from step K-1 down to
step 0 and returns the clean sample, using one model evaluation per step. `noise` supplies the fresh
noise of stochastic samplers (`randn_like`), e.g. a `SampleNoise` for per-sample seeds; None uses the
global torch generator. `cond_fn(x, t, **model_kwargs)` returns the scaled classifier gradient
s * grad_x log p(y | x_t). `threshold` maps a predicted x_0 to a thresholded one (e.g. dynamic
thresholding). `callback` receives a dict with the step `k`, current `x` and predicted `x0` after
every step.
"""
from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, Protocol

import torch
from tqdm.auto import tqdm

from guided_diffusion.sampling.denoiser import CondFn, Denoiser, DiffusionDenoiser

__all__ = ["ddpm", "ddim", "dpmpp_2m", "SAMPLERS", "NoiseSource"]


class NoiseSource(Protocol):
    def randn_like(self, x: torch.Tensor) -> torch.Tensor: ...


class _GlobalNoise:
    """Draws from the global torch generator, as the original samplers do."""

    @staticmethod
    def randn_like(x: torch.Tensor) -> torch.Tensor:
        return torch.randn_like(x)


Threshold = Callable[[torch.Tensor], torch.Tensor]
Callback = Callable[[dict[str, Any]], None]


def _steps(denoiser: Denoiser, progress: bool) -> Any:
    steps = range(denoiser.num_steps - 1, -1, -1)
    return tqdm(steps, desc="steps", leave=False, disable=not progress)


def _guided_x0(
    denoiser: Denoiser,
    x: torch.Tensor,
    k: int,
    *,
    model_kwargs: dict[str, Any],
    cond_fn: CondFn | None,
    clip_denoised: bool,
    threshold: Threshold | None,
) -> torch.Tensor:
    """The x_0 prediction the ODE samplers step with: clipped, then guided, then thresholded.

    Guidance is the score shift of Song et al. (the original `condition_score`):
    eps' = eps - sigma_k * grad log p(y | x_k); as in the original, the guided x_0 is not re-clipped.
    """
    x0, eps = denoiser.predict(x, k, model_kwargs)
    if clip_denoised:
        x0 = x0.clamp(-1, 1)
    if cond_fn is not None:
        eps = denoiser.eps_from_x0(x, k, x0)
        eps = eps - denoiser.sigma(k) * denoiser.cond_gradient(cond_fn, x, k, model_kwargs)
        x0 = denoiser.x0_from_eps(x, k, eps)
    if threshold is not None:
        x0 = threshold(x0)
    return x0


@torch.no_grad()
def ddpm(
    denoiser: DiffusionDenoiser,
    x: torch.Tensor,
    *,
    noise: NoiseSource | None = None,
    cond_fn: CondFn | None = None,
    model_kwargs: dict[str, Any] | None = None,
    clip_denoised: bool = True,
    threshold: Threshold | None = None,
    progress: bool = False,
    callback: Callback | None = None,
) -> torch.Tensor:
    """Ancestral sampling of Ho et al. (2020), step for step the original `p_sample`.

    x_{k-1} = mu_theta(x_k) + s * Sigma_theta(x_k) grad log p(y | x_k) + Sigma_theta^{1/2} z  (guided mean
    shift of Sohl-Dickstein et al., the original `condition_mean`); no noise on the last step. `threshold`
    is applied where the original applies `denoised_fn`, before clipping.
    """
    if not isinstance(denoiser, DiffusionDenoiser):
        raise TypeError("ddpm needs a DiffusionDenoiser: it samples with the diffusion's learned variances")
    diffusion, model = denoiser.diffusion, denoiser.model
    noise = noise or _GlobalNoise()
    model_kwargs = model_kwargs or {}
    for k in _steps(denoiser, progress):
        t = denoiser.timesteps(k, x.shape[0], x.device)
        out = diffusion.p_sample(
            model, x, t, clip_denoised=clip_denoised, denoised_fn=threshold, cond_fn=cond_fn,
            model_kwargs=model_kwargs, noise=noise.randn_like(x),  # drawn on the last step too, as the original
        )
        x = out["sample"]
        if callback is not None:
            callback({"k": k, "x": x, "x0": out["pred_xstart"]})
    return x


@torch.no_grad()
def ddim(
    denoiser: Denoiser,
    x: torch.Tensor,
    *,
    noise: NoiseSource | None = None,
    cond_fn: CondFn | None = None,
    model_kwargs: dict[str, Any] | None = None,
    clip_denoised: bool = True,
    threshold: Threshold | None = None,
    progress: bool = False,
    callback: Callback | None = None,
    eta: float = 0.0,
) -> torch.Tensor:
    """DDIM (Song et al. 2021, eq. 12), the original `ddim_sample`:

    x_{k-1} = sqrt(abar_{k-1}) x0 + sqrt(1 - abar_{k-1} - s_k^2) eps + s_k z,
    s_k = eta * sqrt((1 - abar_{k-1}) / (1 - abar_k)) * sqrt(1 - abar_k / abar_{k-1}),
    with eps re-derived from the (clipped, guided) x0 and abar_{-1} = 1. eta = 0 is deterministic.
    """
    if eta < 0:
        raise ValueError(f"eta must be >= 0, got {eta}")
    noise = noise or _GlobalNoise()
    model_kwargs = model_kwargs or {}
    for k in _steps(denoiser, progress):
        x0 = _guided_x0(
            denoiser, x, k, model_kwargs=model_kwargs, cond_fn=cond_fn, clip_denoised=clip_denoised, threshold=threshold
        )
        eps = denoiser.eps_from_x0(x, k, x0)
        abar = float(denoiser.alphas_cumprod[k])
        abar_prev = float(denoiser.alphas_cumprod[k - 1]) if k > 0 else 1.0
        s = eta * math.sqrt((1 - abar_prev) / (1 - abar)) * math.sqrt(1 - abar / abar_prev)
        x = math.sqrt(abar_prev) * x0 + math.sqrt(max(1 - abar_prev - s * s, 0.0)) * eps
        if eta > 0:
            z = noise.randn_like(x)  # drawn on every step, the last one included, like the original
            if k > 0:
                x = x + s * z
        if callback is not None:
            callback({"k": k, "x": x, "x0": x0})
    return x


@torch.no_grad()
def dpmpp_2m(
    denoiser: Denoiser,
    x: torch.Tensor,
    *,
    noise: NoiseSource | None = None,
    cond_fn: CondFn | None = None,
    model_kwargs: dict[str, Any] | None = None,
    clip_denoised: bool = True,
    threshold: Threshold | None = None,
    progress: bool = False,
    callback: Callback | None = None,
) -> torch.Tensor:
    """DPM-Solver++(2M) (Lu et al. 2022, Algorithm 2): second-order multistep, data prediction.

    In log-SNR time lambda = log(alpha / sigma), with h_i = lambda_{i} - lambda_{i-1} and r_i = h_{i-1} / h_i:
        D_i = (1 + 1 / (2 r_i)) x0_{i-1} - 1 / (2 r_i) x0_{i-2}        (D_1 = x0_0: first step is DDIM)
        x_i = (sigma_i / sigma_{i-1}) x_{i-1} - alpha_i (exp(-h_i) - 1) D_i
    The final step goes to sigma = 0 (lambda = inf), where the update is the data prediction itself.
    Deterministic: `noise` is accepted for the shared signature and not used.
    """
    model_kwargs = model_kwargs or {}
    x0_prev: torch.Tensor | None = None
    h_prev = 0.0
    for k in _steps(denoiser, progress):
        x0 = _guided_x0(
            denoiser, x, k, model_kwargs=model_kwargs, cond_fn=cond_fn, clip_denoised=clip_denoised, threshold=threshold
        )
        if k == 0:
            x = x0
        else:
            h = denoiser.log_snr(k - 1) - denoiser.log_snr(k)
            if x0_prev is None:
                d = x0
            else:
                half_inv_r = 0.5 * h / h_prev  # 1 / (2 r_i)
                d = (1 + half_inv_r) * x0 - half_inv_r * x0_prev
            x = (denoiser.sigma(k - 1) / denoiser.sigma(k)) * x - denoiser.alpha(k - 1) * math.expm1(-h) * d
            x0_prev, h_prev = x0, h
        if callback is not None:
            callback({"k": k, "x": x, "x0": x0})
    return x


# CLI names -> sampler functions.
SAMPLERS: dict[str, Callable[..., torch.Tensor]] = {"ddpm": ddpm, "ddim": ddim, "dpm++2m": dpmpp_2m}
