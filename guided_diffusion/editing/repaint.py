"""RePaint inpainting (Lugmayr et al. 2022, Algorithm 1) on a `Denoiser` grid.

Every reverse step joins the two halves of the image at the new level k - 1:

    known:    x_{k-1} = alpha_{k-1} x_0 + sigma_{k-1} z                     (the input, forward-noised)
    unknown:  x_{k-1} = alpha_{k-1} x0_hat + sqrt(1 - abar_{k-1} - s_k^2) eps_hat + s_k z'
              s_k = eta sqrt((1 - abar_{k-1}) / (1 - abar_k)) sqrt(1 - abar_k / abar_{k-1})
    x_{k-1}  = m * known + (1 - m) * unknown

(the unknown update is the DDIM(eta) step of Song et al. 2021, eq. 12; eta = 1 is DDPM's posterior
q(x_{k-1} | x_k, x0_hat), which RePaint uses). Resampling lets the two halves agree: after arriving at a
level every `jump_length` steps, the image goes back up `jump_length` levels with the forward process

    x_{j+1} = sqrt(abar_{j+1} / abar_j) x_j + sqrt(1 - abar_{j+1} / abar_j) z

and comes down again, `jump_n_sample - 1` times. Guidance (`cond_fn`) shifts x0_hat by the score, as in
the samplers, so a classifier can steer the unknown part. The final known pixels are the input exactly.
"""
from __future__ import annotations

import itertools
import math
from typing import Any

import torch
from tqdm.auto import tqdm

from guided_diffusion.diffusion.denoiser import CondFn, Denoiser
from guided_diffusion.diffusion.stepping import NoiseSource, Threshold
from guided_diffusion.editing.measurement import paste_known
from guided_diffusion.sampling.samplers import Callback

__all__ = ["repaint", "repaint_schedule"]


def repaint_schedule(num_steps: int, jump_length: int, jump_n_sample: int) -> list[int]:
    """The grid levels RePaint visits, from num_steps - 1 down to -1 (clean): one entry per move.

    After each arrival at a level k >= 0 that is a multiple of `jump_length` steps below the top, and has
    `jump_length` levels above it, the walk goes up `jump_length` levels and down again, `jump_n_sample - 1`
    times (the resampling of Lugmayr et al., Sec. 4.2)."""
    if jump_length < 1 or jump_n_sample < 1:
        raise ValueError(f"jump_length and jump_n_sample must be >= 1, got {jump_length} and {jump_n_sample}")
    top = num_steps - 1
    levels = [top]
    for k in range(top - 1, -2, -1):
        levels.append(k)
        if k >= 0 and (top - k) % jump_length == 0 and k + jump_length <= top:
            for _ in range(jump_n_sample - 1):
                levels.extend(range(k + 1, k + jump_length + 1))
                levels.extend(range(k + jump_length - 1, k - 1, -1))
    return levels


def _abar(denoiser: Denoiser, k: int) -> float:
    return 1.0 if k < 0 else float(denoiser.alphas_cumprod[k])


@torch.no_grad()
def repaint(
    denoiser: Denoiser,
    x: torch.Tensor,
    *,
    known: torch.Tensor,
    mask: torch.Tensor,
    jump_length: int = 1,
    jump_n_sample: int = 1,
    eta: float = 1.0,
    noise: NoiseSource | None = None,
    cond_fn: CondFn | None = None,
    model_kwargs: dict[str, Any] | None = None,
    clip_denoised: bool = True,
    threshold: Threshold | None = None,
    progress: bool = False,
    callback: Callback | None = None,
) -> torch.Tensor:
    """Inpaint: fill the pixels where `mask` is 0 in `known` (float NCHW in [-1, 1]), starting from the
    noise `x` at the top grid point; returns clean images whose known pixels equal `known`.

    One model evaluation per downward move of `repaint_schedule` (about jump_n_sample times the grid).
    `noise` (e.g. a `SampleNoise`) supplies every fresh draw, so result i depends on (seed, i) and input i.
    """
    if eta < 0:
        raise ValueError(f"eta must be >= 0, got {eta}")
    draw = noise.randn_like if noise is not None else torch.randn_like
    model_kwargs = model_kwargs or {}
    known = known.to(x.device, x.dtype)
    mask = torch.as_tensor(mask, dtype=x.dtype, device=x.device)
    levels = repaint_schedule(denoiser.num_steps, jump_length, jump_n_sample)
    x0 = known
    for here, there in tqdm(list(itertools.pairwise(levels)), desc="repaint", leave=False, disable=not progress):
        if there > here:  # forward: q(x_there | x_here)
            ratio = _abar(denoiser, there) / _abar(denoiser, here)
            x = math.sqrt(ratio) * x + math.sqrt(1 - ratio) * draw(x)
            continue
        k = here
        x0, eps = denoiser.predict(x, k, model_kwargs)
        if clip_denoised:
            x0 = x0.clamp(-1, 1)
        if cond_fn is not None:  # score shift eps' = eps - sigma_k grad log p(y | x_k), as the samplers do
            eps = denoiser.eps_from_x0(x, k, x0) - denoiser.sigma(k) * denoiser.cond_gradient(cond_fn, x, k, model_kwargs)
            x0 = denoiser.x0_from_eps(x, k, eps)
        if threshold is not None:
            x0 = threshold(x0)
        eps = denoiser.eps_from_x0(x, k, x0)
        abar, abar_prev = _abar(denoiser, k), _abar(denoiser, k - 1)
        s = eta * math.sqrt((1 - abar_prev) / (1 - abar)) * math.sqrt(1 - abar / abar_prev)
        unknown = math.sqrt(abar_prev) * x0 + math.sqrt(max(1 - abar_prev - s * s, 0.0)) * eps
        if k > 0:
            unknown = unknown + s * draw(x)
            noised_known = math.sqrt(abar_prev) * known + math.sqrt(1 - abar_prev) * draw(x)
        else:
            noised_known = known
        x = mask * noised_known + (1 - mask) * unknown
        if callback is not None:
            callback({"k": k, "x": x, "x0": x0})
    return paste_known(x, known, mask)
