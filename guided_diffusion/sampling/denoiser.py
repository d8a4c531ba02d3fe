"""A diffusion model seen as a denoiser on a discrete variance-preserving grid.

Step k of a (respaced) process has signal level alpha_k = sqrt(abar_k) and noise level
sigma_k = sqrt(1 - abar_k), so x_k = alpha_k * x_0 + sigma_k * eps. A denoiser predicts x_0 and eps from
x_k; the samplers in `samplers.py` need nothing else, which lets them be checked against a
distribution whose exact predictions are known in closed form.
"""
from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from guided_diffusion.gaussian_diffusion import ModelMeanType, ModelVarType

__all__ = ["Denoiser", "DiffusionDenoiser", "CondFn"]

# cond_fn(x, t, **model_kwargs) -> guidance_scale * grad_x log p(y | x_t), as in the original.
CondFn = Callable[..., torch.Tensor]


class Denoiser:
    """Base class: a grid `alphas_cumprod[k]`, k = 0..K-1 (k = K-1 is the noisiest step).

    Subclasses implement `predict`; the conversions below are the algebra of x_k = alpha x_0 + sigma eps.
    """

    def __init__(self, alphas_cumprod: np.ndarray | torch.Tensor | list[float]):
        abar = torch.as_tensor(np.asarray(alphas_cumprod, dtype=np.float64))
        if abar.ndim != 1 or not bool(((abar > 0) & (abar < 1)).all()):
            raise ValueError("alphas_cumprod must be a 1-D array with values in (0, 1)")
        self.alphas_cumprod = abar

    @property
    def num_steps(self) -> int:
        return len(self.alphas_cumprod)

    def alpha(self, k: int) -> float:
        """Signal level sqrt(abar_k); step -1 stands for clean data (alpha = 1)."""
        return 1.0 if k < 0 else math.sqrt(float(self.alphas_cumprod[k]))

    def sigma(self, k: int) -> float:
        """Noise level sqrt(1 - abar_k); 0 at step -1."""
        return 0.0 if k < 0 else math.sqrt(1.0 - float(self.alphas_cumprod[k]))

    def log_snr(self, k: int) -> float:
        """lambda_k = log(alpha_k / sigma_k), the time variable of DPM-Solver."""
        abar = float(self.alphas_cumprod[k])
        return 0.5 * (math.log(abar) - math.log1p(-abar))

    def timesteps(self, k: int, batch: int, device: torch.device) -> torch.Tensor:
        """The step index handed to the model and to `cond_fn` for step k, one per sample."""
        return torch.full((batch,), k, dtype=torch.long, device=device)

    def predict(self, x: torch.Tensor, k: int, model_kwargs: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
        """(x0, eps) predicted from x at step k, unclipped."""
        raise NotImplementedError

    def cond_gradient(self, cond_fn: CondFn, x: torch.Tensor, k: int, model_kwargs: dict[str, Any]) -> torch.Tensor:
        """Scaled guidance gradient grad_x log p(y | x_k) at step k."""
        return cond_fn(x, self.timesteps(k, x.shape[0], x.device), **model_kwargs).float()

    def x0_from_eps(self, x: torch.Tensor, k: int, eps: torch.Tensor) -> torch.Tensor:
        return (x - self.sigma(k) * eps) / self.alpha(k)

    def eps_from_x0(self, x: torch.Tensor, k: int, x0: torch.Tensor) -> torch.Tensor:
        return (x - self.alpha(k) * x0) / self.sigma(k)


class DiffusionDenoiser(Denoiser):
    """A model plus the (respaced) `GaussianDiffusion` it samples with, run exactly as the original does.

    The model sees timesteps through the diffusion's own mapping (`timestep_map`, `rescale_timesteps`),
    learned-variance channels are dropped, and eps/x0 conversions use the diffusion's helpers, so the
    arithmetic matches `p_mean_variance` / `condition_score` of the original.
    """

    def __init__(self, model: Callable[..., torch.Tensor], diffusion: Any):
        super().__init__(diffusion.alphas_cumprod)
        self.model = model
        self.diffusion = diffusion

    def _wrapped(self, fn: Callable[..., torch.Tensor]) -> Callable[..., torch.Tensor]:
        wrap = getattr(self.diffusion, "_wrap_model", None)  # SpacedDiffusion maps respaced -> original t
        return wrap(fn) if wrap is not None else fn

    def predict(self, x: torch.Tensor, k: int, model_kwargs: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
        diffusion = self.diffusion
        t = self.timesteps(k, x.shape[0], x.device)
        out = self._wrapped(self.model)(x, diffusion._scale_timesteps(t), **model_kwargs)
        if diffusion.model_var_type in (ModelVarType.LEARNED, ModelVarType.LEARNED_RANGE):
            out = out[:, : x.shape[1]]
        if diffusion.model_mean_type == ModelMeanType.EPSILON:
            return diffusion._predict_xstart_from_eps(x, t, out), out
        if diffusion.model_mean_type == ModelMeanType.START_X:
            x0 = out
        else:  # PREVIOUS_X
            x0 = diffusion._predict_xstart_from_xprev(x, t, out)
        return x0, diffusion._predict_eps_from_xstart(x, t, x0)

    def cond_gradient(self, cond_fn: CondFn, x: torch.Tensor, k: int, model_kwargs: dict[str, Any]) -> torch.Tensor:
        # As in the original condition_score, cond_fn sees the original (unspaced, possibly rescaled) t.
        t = self.diffusion._scale_timesteps(self.timesteps(k, x.shape[0], x.device))
        return self._wrapped(cond_fn)(x, t, **model_kwargs).float()

    def x0_from_eps(self, x: torch.Tensor, k: int, eps: torch.Tensor) -> torch.Tensor:
        return self.diffusion._predict_xstart_from_eps(x, self.timesteps(k, x.shape[0], x.device), eps)

    def eps_from_x0(self, x: torch.Tensor, k: int, x0: torch.Tensor) -> torch.Tensor:
        return self.diffusion._predict_eps_from_xstart(x, self.timesteps(k, x.shape[0], x.device), x0)
