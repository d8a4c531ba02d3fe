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

from guided_diffusion.diffusion.denoiser import Denoiser
from guided_diffusion.diffusion.stepping import Callback, SamplerContext
from guided_diffusion.editing.measurement import paste_known

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
    progress: bool = False,
    callback: Callback | None = None,
    **inputs: Any,
) -> torch.Tensor:
    """Inpaint: fill the pixels where `mask` is 0 in `known` (float NCHW in [-1, 1]), starting from the
    noise `x` at the top grid point; returns clean images whose known pixels equal `known`.

    One model evaluation per downward move of `repaint_schedule` (about jump_n_sample times the grid),
    each the samplers' guided prediction (`stepping.SamplerContext.denoise`: the same score shift, guidance
    interval and schedule). `inputs` are the samplers' (noise, cond_fn, model_kwargs, clip_denoised,
    threshold: `stepping.CONTEXT_INPUTS`); `noise` (e.g. a `SampleNoise`) supplies every fresh draw, so
    result i depends on (seed, i) and input i.
    """
    if eta < 0:
        raise ValueError(f"eta must be >= 0, got {eta}")
    ctx = SamplerContext(denoiser, **inputs)
    known = known.to(x.device, x.dtype)
    mask = torch.as_tensor(mask, dtype=x.dtype, device=x.device)
    moves = list(itertools.pairwise(repaint_schedule(denoiser.num_steps, jump_length, jump_n_sample)))
    for here_k, there_k in tqdm(moves, desc="repaint", leave=False, disable=not progress):
        here, there = denoiser.level(here_k), denoiser.level(there_k)
        if there_k > here_k:  # forward: q(x_there | x_here)
            ratio = there.abar / here.abar
            x = math.sqrt(ratio) * x + math.sqrt(1 - ratio) * ctx.randn_like(x)
            continue
        x0 = ctx.denoise(x, here).x0
        eps = denoiser.eps_from_x0(x, here, x0)
        abar, abar_prev = here.abar, there.abar
        s = eta * math.sqrt((1 - abar_prev) / (1 - abar)) * math.sqrt(1 - abar / abar_prev)
        unknown = math.sqrt(abar_prev) * x0 + math.sqrt(max(1 - abar_prev - s * s, 0.0)) * eps
        if not there.is_clean:
            unknown = unknown + s * ctx.randn_like(x)
            noised_known = math.sqrt(abar_prev) * known + math.sqrt(1 - abar_prev) * ctx.randn_like(x)
        else:
            noised_known = known
        x = mask * noised_known + (1 - mask) * unknown
        if callback is not None:
            callback({"k": here_k, "x": x, "x0": x0, "evaluations": ctx.evaluations})
    return paste_known(x, known, mask)
