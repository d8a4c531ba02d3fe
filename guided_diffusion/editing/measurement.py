"""Measurement guidance: diffusion posterior sampling (DPS, Chung et al. 2023) as a `cond_fn`.

For a measurement y = A(x_0) + n with a known operator A, DPS approximates the likelihood of x_t by that of
the posterior-mean image (Tweedie's formula through the model)

    x0_hat(x_t) = (x_t - sqrt(1 - abar_t) eps_theta(x_t, t)) / sqrt(abar_t)
    grad_{x_t} log p(y | x_t) ~ -grad_{x_t} ||y - A(x0_hat(x_t))||^2 / (2 sigma_y^2)

and follows it like a classifier gradient. `measurement_cond_fn` returns that gradient, scaled, in the
form of `classifier_cond_fn` (cond_fn(x, t, **model_kwargs)), so every sampler takes it through the same
score shift as classifier guidance, and `sum_cond_fns` adds it to a classifier's.

Two step sizes: `step="dps"` is the paper's, zeta / ||y - A(x0_hat)|| times the squared-norm gradient.
`step="x0"` (the default) weights the gradient by the signal-to-noise ratio abar / (1 - abar): the
samplers' score shift moves x0_hat by sigma^2 / alpha times the cond_fn, so x0_hat then takes a step of
about -scale * grad_{x0} ||y - A(x0)||^2 at every grid point, whatever the noise level and the number of
steps (scale 1/2 projects exactly onto the measurement for a mask, factor^2 / 2 for box downsampling). On
the demo's digits it reaches the measurement where the paper's step, made for 1000-step runs, does not.
"""
from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from guided_diffusion.diffusion.denoiser import CondFn
from guided_diffusion.diffusion.gaussian import ModelMeanType, ModelVarType

__all__ = [
    "BlurOperator",
    "DownsampleOperator",
    "MaskOperator",
    "Operator",
    "X0Predictor",
    "measurement_cond_fn",
    "paste_known",
    "sum_cond_fns",
]

Operator = Callable[[torch.Tensor], torch.Tensor]


class MaskOperator:
    """A(x) = m * x: the known pixels (m = 1) of an inpainting problem."""

    def __init__(self, mask: torch.Tensor):
        self.mask = torch.as_tensor(mask, dtype=torch.float32)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return self.mask.to(x.device, x.dtype) * x


class DownsampleOperator:
    """A(x) = box-filtered downsampling by `factor`: each low-resolution pixel is the mean of a
    factor x factor block (what averaging sensor pixels does)."""

    def __init__(self, factor: int):
        if factor < 1:
            raise ValueError(f"downsampling factor must be >= 1, got {factor}")
        self.factor = int(factor)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-1] % self.factor or x.shape[-2] % self.factor:
            raise ValueError(f"image size {tuple(x.shape[-2:])} is not divisible by the factor {self.factor}")
        return F.avg_pool2d(x, self.factor)


class BlurOperator:
    """A(x) = k * x: per-channel convolution with a normalised Gaussian kernel of standard deviation
    `sigma` pixels and odd width `size`, with reflected borders."""

    def __init__(self, sigma: float, size: int | None = None):
        if sigma <= 0:
            raise ValueError(f"blur sigma must be > 0, got {sigma}")
        size = int(size) if size is not None else 2 * math.ceil(2 * sigma) + 1
        if size < 1 or size % 2 == 0:
            raise ValueError(f"blur kernel size must be odd and >= 1, got {size}")
        offsets = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
        line = torch.exp(-0.5 * (offsets / sigma) ** 2)
        kernel = torch.outer(line, line)
        self.kernel = (kernel / kernel.sum()).float()
        self.sigma, self.size = float(sigma), size

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        channels, pad = x.shape[1], self.size // 2
        weight = self.kernel.to(x.device, x.dtype).expand(channels, 1, self.size, self.size)
        if pad and min(x.shape[-2:]) <= pad:  # reflection needs the border narrower than the image
            padded = F.pad(x, (pad, pad, pad, pad), mode="replicate")
        else:
            padded = F.pad(x, (pad, pad, pad, pad), mode="reflect") if pad else x
        return F.conv2d(padded, weight, groups=channels)


class X0Predictor:
    """x0_hat(x_t, t) = (x_t - sqrt(1 - abar_t) eps_theta(x_t, t)) / sqrt(abar_t), differentiable in x_t.

    `model` is called as the samplers' cond_fn sees time: model(x, t, **model_kwargs) with the ORIGINAL
    timestep t (0..T-1, possibly fractional; scaled to 0..1000 when the diffusion rescales timesteps).
    `diffusion` is the un-respaced process the model was trained with; abar at a fractional t is
    interpolated linearly in log abar.
    """

    def __init__(self, model: Callable[..., torch.Tensor], diffusion: Any):
        timestep_map = getattr(diffusion, "timestep_map", None)
        if timestep_map is not None and len(timestep_map) != getattr(diffusion, "original_num_steps", len(timestep_map)):
            raise ValueError("X0Predictor needs the un-respaced diffusion: a respaced one no longer holds every alpha_bar")
        if diffusion.model_mean_type not in (ModelMeanType.EPSILON, ModelMeanType.START_X):
            raise ValueError("X0Predictor supports eps- and x0-predicting models")
        self.model = model
        self.mean_type = diffusion.model_mean_type
        self.learned_variance = diffusion.model_var_type in (ModelVarType.LEARNED, ModelVarType.LEARNED_RANGE)
        self.log_abar = np.log(np.asarray(diffusion.alphas_cumprod, dtype=np.float64))  # host-side, float64
        self.num_timesteps = len(self.log_abar)
        self.time_scale = self.num_timesteps / 1000.0 if diffusion.rescale_timesteps else 1.0

    def alpha_bar(self, t: torch.Tensor) -> torch.Tensor:
        """abar at original timesteps t as float32 (linear interpolation of log abar between integer steps,
        on the host: no float64 tensor on the model's device)."""
        position = np.clip(t.detach().float().cpu().numpy().astype(np.float64) * self.time_scale, 0,
                           self.num_timesteps - 1)
        low = np.floor(position).astype(np.int64)
        high = np.minimum(low + 1, self.num_timesteps - 1)
        weight = position - low
        return torch.from_numpy(np.exp((1 - weight) * self.log_abar[low] + weight * self.log_abar[high]).astype(np.float32))

    def __call__(self, x: torch.Tensor, t: torch.Tensor, **model_kwargs: Any) -> torch.Tensor:
        out = self.model(x, t, **model_kwargs).float()
        if self.learned_variance:
            out = out[:, : x.shape[1]]
        if self.mean_type == ModelMeanType.START_X:
            return out
        abar = self.alpha_bar(t).to(x.device, torch.float32).view(-1, *([1] * (x.ndim - 1)))
        return (x - torch.sqrt(1 - abar) * out) / torch.sqrt(abar)


def measurement_cond_fn(
    operator: Operator,
    y: torch.Tensor,
    scale: float,
    *,
    predict_x0: X0Predictor,
    step: str = "x0",
) -> CondFn:
    """cond_fn(x, t, **model_kwargs) = scale * grad_x log p(y | x_t) under DPS's approximation:

        step="x0":   -scale * abar_t / (1 - abar_t) * grad_x ||y - A(x0_hat(x_t))||^2
        step="dps":  -scale * grad_x ||y - A(x0_hat(x_t))||^2 / ||y - A(x0_hat(x_t))||   (DPS's zeta_t)

    per sample, one forward and one backward pass of the model through `predict_x0` (an `X0Predictor`).
    `y` is the measurement batch, A(x) of the clean images plus noise, aligned with the samples.
    """
    if step not in ("x0", "dps"):
        raise ValueError(f"step must be 'x0' or 'dps', got {step!r}")
    target = torch.as_tensor(y, dtype=torch.float32)

    def cond_fn(x: torch.Tensor, t: torch.Tensor, **model_kwargs: Any) -> torch.Tensor:
        with torch.enable_grad():
            x_in = x.detach().float().requires_grad_(True)
            x0 = predict_x0(x_in, t, **model_kwargs)
            residual = (target.to(x.device) - operator(x0)).flatten(1)
            squared = residual.pow(2).sum(1)
            grad = torch.autograd.grad(squared.sum(), x_in)[0]
        shape = (-1, *([1] * (x.ndim - 1)))
        if step == "dps":
            grad = grad / squared.detach().sqrt().clamp(min=1e-8).view(shape)
        else:
            abar = predict_x0.alpha_bar(t).to(x.device, torch.float32).view(shape)
            grad = grad * (abar / (1 - abar))
        return -scale * grad

    return cond_fn


def sum_cond_fns(*cond_fns: CondFn | None) -> CondFn | None:
    """One cond_fn adding the gradients of several (e.g. a classifier's and a measurement's): guidance
    terms are log-likelihoods, so their gradients add. None entries are skipped; None when all are. A
    `SteeredGuidance` part is weighted by its interval and schedule at each call."""
    active = [fn for fn in cond_fns if fn is not None]
    if not active:
        return None
    if len(active) == 1:
        return active[0]

    def part(fn: CondFn, x: torch.Tensor, t: torch.Tensor, model_kwargs: dict[str, Any]) -> torch.Tensor | None:
        # A steered part (guidance interval or schedule) keeps its own weight inside the sum.
        weight_at = getattr(fn, "weight_at_model_time", None)
        weight = 1.0 if weight_at is None else weight_at(t)
        if weight == 0.0:
            return None
        gradient = fn(x, t, **model_kwargs)
        return gradient if weight == 1.0 else weight * gradient

    def cond_fn(x: torch.Tensor, t: torch.Tensor, **model_kwargs: Any) -> torch.Tensor:
        terms = [g for g in (part(fn, x, t, model_kwargs) for fn in active) if g is not None]
        return sum(terms[1:], terms[0]) if terms else torch.zeros_like(x)

    return cond_fn


def paste_known(x: torch.Tensor, known: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """m * known + (1 - m) * x: the known pixels exactly as given."""
    mask = torch.as_tensor(mask, dtype=x.dtype, device=x.device)
    return torch.where(mask > 0.5, known.to(x.device, x.dtype), x)
