"""A diffusion model seen as a denoiser D(x; sigma) on a grid of variance-preserving noise levels.

Grid point k has signal level alpha_k = sqrt(abar_k) and noise level sigma_k = sqrt(1 - abar_k), so
x_k = alpha_k * x_0 + sigma_k * eps. A denoiser predicts x_0 and eps from x_k; the samplers
(`stepping.py`, `sampling/samplers.py`) need nothing else, which lets them be checked against a
distribution whose exact predictions are known in closed form.

The grid is any decreasing sequence of levels: a (respaced) `GaussianDiffusion`'s own steps, or a
`GridDiffusion` built from a step grid (`grids.py`; `sampling.generate.grid_denoiser`), whose levels fall
between the model's trained steps. A discrete ADM model is evaluated there at the fractional timestep whose log-SNR
matches (linear interpolation between the neighbouring trained steps; ADM's sinusoidal timestep
embedding takes real t), and the classifier sees the same t. `with_level(abar)` evaluates between grid
points (EDM's churn needs that).
"""
from __future__ import annotations

import copy
import math
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from guided_diffusion.diffusion.grids import timestep_of_alphas_cumprod
from guided_diffusion.diffusion.types import ModelMeanType, ModelVarType

__all__ = ["Denoiser", "DiffusionDenoiser", "CondFn"]

# cond_fn(x, t, **model_kwargs) -> guidance_scale * grad_x log p(y | x_t), as in the original.
CondFn = Callable[..., torch.Tensor]


class Denoiser:
    """Base class: a grid `alphas_cumprod[k]`, k = 0..K-1 (k = K-1 is the noisiest step).

    Subclasses implement `predict`; the conversions below are the algebra of x_k = alpha x_0 + sigma eps.
    """

    def __init__(self, alphas_cumprod: np.ndarray | torch.Tensor | list[float]):
        abar = torch.as_tensor(np.ascontiguousarray(alphas_cumprod, dtype=np.float64))
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

    def original_timestep(self, k: int) -> float:
        """Grid point k in the model's original timesteps 0..T-1 (what guidance intervals are given in)."""
        return float(k)

    def truncated(self, num_points: int) -> Denoiser:
        """The same denoiser on the first `num_points` grid points (k = 0..num_points-1), so a sampler can
        start mid-way (from x at level num_points-1, as SDEdit does)."""
        if not 1 <= num_points <= self.num_steps:
            raise ValueError(f"a sub-grid needs 1..{self.num_steps} points, got {num_points}")
        view = copy.copy(self)
        view.alphas_cumprod = self.alphas_cumprod[:num_points]
        return view

    def with_level(self, alphas_cumprod: float) -> Denoiser:
        """A one-point denoiser (k = 0) at a level between grid points. Needs `predict_level`."""
        return _LevelView(self, alphas_cumprod)

    def predict_level(self, x: torch.Tensor, abar: float, model_kwargs: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
        """(x0, eps) at an arbitrary level abar; denoisers that can evaluate off the grid override it."""
        raise NotImplementedError(f"{type(self).__name__} cannot evaluate between its grid points")

    def cond_gradient_level(self, cond_fn: CondFn, x: torch.Tensor, abar: float, model_kwargs: dict[str, Any]) -> torch.Tensor:
        raise NotImplementedError(f"{type(self).__name__} cannot evaluate between its grid points")

    def original_timestep_level(self, abar: float) -> float:
        raise NotImplementedError(f"{type(self).__name__} cannot evaluate between its grid points")

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

    # -- where the grid sits in the model's original timesteps ---------------------------------------

    def original_timestep(self, k: int) -> float:
        timestep_map = getattr(self.diffusion, "timestep_map", None)
        return float(timestep_map[k]) if timestep_map is not None else float(k)

    def _timestep_table(self) -> tuple[np.ndarray, np.ndarray]:
        """(original timesteps, alphas_cumprod) of the finest schedule known: the base process of a
        GridDiffusion (which keeps it as `base_timesteps`), else the (respaced) steps themselves."""
        diffusion = self.diffusion
        if getattr(diffusion, "base_timesteps", None) is not None:
            return diffusion.base_timesteps, diffusion.base_alphas_cumprod
        timestep_map = getattr(diffusion, "timestep_map", None)
        steps = np.asarray(timestep_map if timestep_map is not None else range(diffusion.num_timesteps), dtype=np.float64)
        return steps, np.asarray(diffusion.alphas_cumprod, dtype=np.float64)

    def original_timestep_level(self, abar: float) -> float:
        steps, table = self._timestep_table()
        return float(timestep_of_alphas_cumprod(np.array([abar]), steps, table)[0])

    def _model_time_level(self, abar: float, batch: int, device: torch.device) -> torch.Tensor:
        t = self.original_timestep_level(abar)
        if self.diffusion.rescale_timesteps:
            t = t * 1000.0 / getattr(self.diffusion, "original_num_steps", self.diffusion.num_timesteps)
        return torch.full((batch,), t, dtype=torch.float32, device=device)

    def predict_level(self, x: torch.Tensor, abar: float, model_kwargs: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
        """(x0, eps) at level abar, the model run at the fractional timestep of that level."""
        diffusion = self.diffusion
        out = self.model(x, self._model_time_level(abar, x.shape[0], x.device), **model_kwargs)
        if diffusion.model_var_type in (ModelVarType.LEARNED, ModelVarType.LEARNED_RANGE):
            out = out[:, : x.shape[1]]
        alpha, sigma = math.sqrt(abar), math.sqrt(1.0 - abar)
        if diffusion.model_mean_type == ModelMeanType.EPSILON:
            return (x - sigma * out) / alpha, out
        if diffusion.model_mean_type == ModelMeanType.START_X:
            return out, (x - alpha * out) / sigma
        raise ValueError("a model that predicts x_{t-1} can only be sampled on its own steps")

    def cond_gradient_level(self, cond_fn: CondFn, x: torch.Tensor, abar: float, model_kwargs: dict[str, Any]) -> torch.Tensor:
        return cond_fn(x, self._model_time_level(abar, x.shape[0], x.device), **model_kwargs).float()

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


class _LevelView(Denoiser):
    """One level between the grid points of `parent` (grid index 0), for steps that leave the grid."""

    def __init__(self, parent: Denoiser, alphas_cumprod: float):
        super().__init__([float(alphas_cumprod)])
        self.parent = parent
        self.level = float(alphas_cumprod)

    def original_timestep(self, k: int) -> float:
        return self.parent.original_timestep_level(self.level)

    def predict(self, x: torch.Tensor, k: int, model_kwargs: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
        return self.parent.predict_level(x, self.level, model_kwargs)

    def cond_gradient(self, cond_fn: CondFn, x: torch.Tensor, k: int, model_kwargs: dict[str, Any]) -> torch.Tensor:
        return self.parent.cond_gradient_level(cond_fn, x, self.level, model_kwargs)

