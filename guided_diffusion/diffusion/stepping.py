"""The DDPM and DDIM step loops, and the pieces every sampler's step shares.

`ddpm_steps` and `ddim_steps` are the package's one loop per algorithm: `GaussianDiffusion`'s
`p_sample_loop*` / `ddim_sample_loop*` run them, and so do `sampling.samplers.ddpm` / `ddim` and the
editing methods. The grid walk, the guided x_0 prediction, the finite check and the noise source below
are shared with the other samplers (`sampling/samplers.py`).

A loop walks a `Denoiser`'s grid from K-1 down to 0 and yields {"k", "x", "x0"} after each step.
`noise` supplies fresh noise (`randn_like`), e.g. a `runtime.rng.SampleNoise` for per-sample seeds; None
uses the global torch generator. `cond_fn(x, t, **model_kwargs)` returns the scaled classifier gradient;
one with a `weight(t)` method (`sampling.guidance.SteeredGuidance`) scales it per step, 0 skipping the
classifier. `threshold` maps a predicted x_0 to a thresholded one.
"""
from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Iterator
from typing import Any, Protocol, TypeVar

import torch
from tqdm.auto import tqdm

from guided_diffusion.diffusion.denoiser import CondFn, Denoiser, DiffusionDenoiser
from guided_diffusion.runtime.rng import GeneratorNoise

__all__ = [
    "NonFiniteSampleError", "NoiseSource", "Threshold", "progress_bar", "grid_steps", "check_finite",
    "guidance_weight", "guided_x0", "ddpm_steps", "ddim_steps",
]

Threshold = Callable[[torch.Tensor], torch.Tensor]
_Item = TypeVar("_Item")


class NonFiniteSampleError(ValueError):
    """Sampling produced NaN or infinite values; `step` is the grid index where it was first seen."""

    def __init__(self, step: int, sampler: str):
        super().__init__(
            f"{sampler} produced non-finite values at step {step} (grid index, counting down to 0): "
            "the guidance scale may be too large or the model in too low a precision"
        )
        self.step = step
        self.sampler = sampler


class NoiseSource(Protocol):
    def randn_like(self, x: torch.Tensor) -> torch.Tensor: ...


def progress_bar(items: Iterable[_Item], enabled: bool, desc: str) -> Iterable[_Item]:
    """`items`, with a progress bar when `enabled`."""
    return tqdm(items, desc=desc, leave=False, disable=not enabled)


def grid_steps(denoiser: Denoiser, progress: bool, desc: str = "steps") -> Iterable[int]:
    """The grid indices a sampler visits, K-1 down to 0."""
    return progress_bar(range(denoiser.num_steps - 1, -1, -1), progress, desc)


def check_finite(x: torch.Tensor, k: int, sampler: str) -> None:
    """Stop at the first step whose state is not finite, instead of returning black images."""
    if not bool(torch.isfinite(x).all()):
        raise NonFiniteSampleError(k, sampler)


def guidance_weight(cond_fn: Callable[..., torch.Tensor] | None, original_t: float) -> float:
    """The factor a sampler applies to cond_fn's gradient at original timestep t: 0 means skip the call."""
    if cond_fn is None:
        return 0.0
    weight = getattr(cond_fn, "weight", None)
    return float(weight(original_t)) if weight is not None else 1.0


def _weighted(cond_fn: CondFn | None, weight: float) -> CondFn | None:
    """cond_fn scaled by a steering weight, or None where the weight is 0 (no classifier call)."""
    if cond_fn is None or weight == 0.0:
        return None
    if weight == 1.0:
        return cond_fn
    return lambda x, t, **kwargs: weight * cond_fn(x, t, **kwargs)


def guided_x0(
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
    eps' = eps - w(t_k) sigma_k * grad log p(y | x_k), w = 1 for a plain cond_fn (a `SteeredGuidance`
    gives its interval and schedule; where w = 0 the classifier is not called). As in the original, the
    guided x_0 is not re-clipped.
    """
    x0, eps = denoiser.predict(x, k, model_kwargs)
    if clip_denoised:
        x0 = x0.clamp(-1, 1)
    weight = guidance_weight(cond_fn, denoiser.original_timestep(k))
    if weight != 0.0 and cond_fn is not None:
        eps = denoiser.eps_from_x0(x, k, x0)
        gradient = denoiser.cond_gradient(cond_fn, x, k, model_kwargs)
        eps = eps - denoiser.sigma(k) * (gradient if weight == 1.0 else weight * gradient)
        x0 = denoiser.x0_from_eps(x, k, eps)
    if threshold is not None:
        x0 = threshold(x0)
    return x0


def ddpm_steps(
    denoiser: DiffusionDenoiser,
    x: torch.Tensor,
    *,
    noise: NoiseSource | None = None,
    cond_fn: CondFn | None = None,
    model_kwargs: dict[str, Any] | None = None,
    clip_denoised: bool = True,
    threshold: Threshold | None = None,
    progress: bool = False,
    desc: str = "ddpm",
) -> Iterator[dict[str, Any]]:
    """Ancestral sampling (Ho et al. 2020) one step at a time, each step the original `p_sample`:
    yields {"k", "x", "x0"} after each step (x0 the unguided prediction)."""
    if not isinstance(denoiser, DiffusionDenoiser):
        raise TypeError("ddpm needs a DiffusionDenoiser: it samples with the diffusion's learned variances")
    diffusion, model = denoiser.diffusion, denoiser.model
    noise = noise or GeneratorNoise()
    model_kwargs = model_kwargs or {}
    for k in grid_steps(denoiser, progress, desc):
        t = denoiser.timesteps(k, x.shape[0], x.device)
        step_cond = _weighted(cond_fn, guidance_weight(cond_fn, denoiser.original_timestep(k)))
        with torch.no_grad():
            out = diffusion.p_sample(
                model, x, t, clip_denoised=clip_denoised, denoised_fn=threshold, cond_fn=step_cond,
                model_kwargs=model_kwargs, noise=noise.randn_like(x),  # drawn on the last step too, as the original
            )
        x = out["sample"]
        check_finite(x, k, "ddpm")
        yield {"k": k, "x": x, "x0": out["pred_xstart"]}


def ddim_steps(
    denoiser: Denoiser,
    x: torch.Tensor,
    *,
    noise: NoiseSource | None = None,
    cond_fn: CondFn | None = None,
    model_kwargs: dict[str, Any] | None = None,
    clip_denoised: bool = True,
    threshold: Threshold | None = None,
    progress: bool = False,
    eta: float = 0.0,
    desc: str = "ddim",
) -> Iterator[dict[str, Any]]:
    """DDIM (Song et al. 2021, eq. 12) one step at a time: yields {"k", "x", "x0"} after each step."""
    if eta < 0:
        raise ValueError(f"eta must be >= 0, got {eta}")
    noise = noise or GeneratorNoise()
    model_kwargs = model_kwargs or {}
    for k in grid_steps(denoiser, progress, desc):
        with torch.no_grad():
            x0 = guided_x0(denoiser, x, k, model_kwargs=model_kwargs, cond_fn=cond_fn,
                           clip_denoised=clip_denoised, threshold=threshold)
            eps = denoiser.eps_from_x0(x, k, x0)
            abar = float(denoiser.alphas_cumprod[k])
            abar_prev = float(denoiser.alphas_cumprod[k - 1]) if k > 0 else 1.0
            s = eta * math.sqrt((1 - abar_prev) / (1 - abar)) * math.sqrt(1 - abar / abar_prev)
            x = math.sqrt(abar_prev) * x0 + math.sqrt(max(1 - abar_prev - s * s, 0.0)) * eps
            if eta > 0:
                z = noise.randn_like(x)  # drawn on every step, the last one included, like the original
                if k > 0:
                    x = x + s * z
        check_finite(x, k, "ddim")
        yield {"k": k, "x": x, "x0": x0}
