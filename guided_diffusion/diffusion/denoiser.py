"""A diffusion model seen as a denoiser D(x; level) over variance-preserving noise levels.

A noise level (`Level`) has signal alpha = sqrt(abar) and noise sigma = sqrt(1 - abar), so
x = alpha * x_0 + sigma * eps; its log-SNR is lambda = log(alpha / sigma) and its VE sigma (EDM's) is
s = sigma / alpha. A denoiser predicts x_0 and eps from x at any level; the samplers (`stepping.py`,
`sampling/samplers.py`) need nothing else, which lets them be checked against a distribution whose exact
predictions are known in closed form.

A denoiser also carries a grid: K levels `alphas_cumprod[k]`, k = 0 (least noisy) .. K-1 (noisiest), which
a sampler walks from K-1 down to clean data (`levels()`). The grid is a (respaced) `GaussianDiffusion`'s
own steps, or a `GridDiffusion` built from a step grid (`grids.py`), whose levels fall between the model's
trained steps. A level on the grid keeps its grid index, so a discrete model is evaluated there with the
original's own arithmetic; between trained steps a discrete ADM model runs at the fractional timestep
whose log-SNR matches (ADM's sinusoidal timestep embedding takes real t), and the classifier sees the
same t. Host-side schedule values are float64 numpy and Python floats: no float64 tensor is made on the
model's device.
"""
from __future__ import annotations

import copy
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import torch

from guided_diffusion.diffusion.grids import timestep_of_alphas_cumprod
from guided_diffusion.diffusion.types import ModelMeanType, ModelVarType

__all__ = ["Level", "CLEAN", "Denoiser", "DiffusionDenoiser", "CondFn", "DiffusionLike"]

# cond_fn(x, t, **model_kwargs) -> guidance_scale * grad_x log p(y | x_t), as in the original.
CondFn = Callable[..., torch.Tensor]
ModelKwargs = Mapping[str, Any]


@dataclass(frozen=True)
class Level:
    """A noise level abar = alpha^2 (1 = clean data); `index` is its grid point (None between points)."""

    abar: float
    index: int | None = None

    @property
    def alpha(self) -> float:
        return math.sqrt(self.abar)

    @property
    def sigma(self) -> float:
        return math.sqrt(1.0 - self.abar)

    @property
    def log_snr(self) -> float:
        """lambda = log(alpha / sigma), the time variable of DPM-Solver; +inf for clean data."""
        if self.abar >= 1.0:
            return math.inf
        return 0.5 * (math.log(self.abar) - math.log1p(-self.abar))

    @property
    def ve_sigma(self) -> float:
        """s = sigma / alpha, EDM's noise level (x / alpha = x_0 + s eps); 0 for clean data."""
        return math.sqrt((1.0 - self.abar) / self.abar)

    @property
    def is_clean(self) -> bool:
        return self.abar >= 1.0

    @staticmethod
    def from_ve_sigma(s: float) -> Level:
        return Level(1.0 / (1.0 + s * s))

    @staticmethod
    def from_log_snr(log_snr: float) -> Level:
        return Level(1.0 / (1.0 + math.exp(-2.0 * log_snr)))


CLEAN = Level(1.0, -1)


class DiffusionLike(Protocol):
    """What `DiffusionDenoiser` reads from a (respaced) `GaussianDiffusion` (its public surface)."""

    alphas_cumprod: np.ndarray
    num_timesteps: int
    rescale_timesteps: bool
    model_mean_type: ModelMeanType
    model_var_type: ModelVarType

    def predict_xstart_from_eps(self, x_t: torch.Tensor, t: torch.Tensor, eps: torch.Tensor) -> torch.Tensor: ...
    def predict_eps_from_xstart(self, x_t: torch.Tensor, t: torch.Tensor, x0: torch.Tensor) -> torch.Tensor: ...
    def predict_xstart_from_xprev(self, x_t: torch.Tensor, t: torch.Tensor, xprev: torch.Tensor) -> torch.Tensor: ...
    def timestep_table(self) -> tuple[np.ndarray, np.ndarray]: ...


class Denoiser:
    """Base class: a grid `alphas_cumprod[k]`, k = 0..K-1, and predictions at any level.

    Subclasses implement `predict` and `model_time`; the conversions below are the algebra of
    x = alpha x_0 + sigma eps.
    """

    def __init__(self, alphas_cumprod: np.ndarray | torch.Tensor | list[float]):
        values = alphas_cumprod.tolist() if isinstance(alphas_cumprod, torch.Tensor) else alphas_cumprod
        abar = np.ascontiguousarray(values, dtype=np.float64)  # host-side schedule math stays in NumPy
        if abar.ndim != 1 or not bool(((abar > 0) & (abar < 1)).all()):
            raise ValueError("alphas_cumprod must be a 1-D array with values in (0, 1)")
        self.alphas_cumprod: np.ndarray = abar

    @property
    def num_steps(self) -> int:
        return len(self.alphas_cumprod)

    # -- levels --------------------------------------------------------------------------------------

    def level(self, k: int) -> Level:
        """Grid point k as a Level; k = -1 is clean data."""
        return CLEAN if k < 0 else Level(float(self.alphas_cumprod[k]), k)

    def levels(self) -> list[Level]:
        """The walk of a sampler: grid points K-1 down to 0, then clean data."""
        return [self.level(k) for k in range(self.num_steps - 1, -2, -1)]

    def truncated(self, num_points: int) -> Denoiser:
        """The same denoiser on the first `num_points` grid points (k = 0..num_points-1), so a sampler can
        start mid-way (from x at level num_points-1, as SDEdit does)."""
        if not 1 <= num_points <= self.num_steps:
            raise ValueError(f"a sub-grid needs 1..{self.num_steps} points, got {num_points}")
        view = copy.copy(self)
        view.alphas_cumprod = self.alphas_cumprod[:num_points]
        return view

    def timestep(self, level: Level) -> float:
        """`level` in the model's original timesteps 0..T-1 (what guidance intervals are given in)."""
        return float(level.index) if level.index is not None else math.nan

    # -- predictions -----------------------------------------------------------------------------------

    def model_time(self, level: Level, batch: int, device: torch.device) -> torch.Tensor:
        """The timestep tensor handed to the model and to `cond_fn` at `level`, one per sample (here: the
        grid index; a denoiser that can evaluate between grid points overrides it)."""
        if level.index is None:
            raise NotImplementedError(f"{type(self).__name__} cannot evaluate between its grid points")
        return torch.full((batch,), level.index, dtype=torch.long, device=device)

    def predict(self, x: torch.Tensor, level: Level, model_kwargs: ModelKwargs) -> tuple[torch.Tensor, torch.Tensor]:
        """(x0, eps) predicted from x at `level`, unclipped."""
        raise NotImplementedError

    def cond_gradient(self, cond_fn: CondFn, x: torch.Tensor, level: Level, model_kwargs: ModelKwargs) -> torch.Tensor:
        """Scaled guidance gradient s * grad log p(y | x) at `level`."""
        return cond_fn(x, self.model_time(level, x.shape[0], x.device), **model_kwargs).float()

    def x0_from_eps(self, x: torch.Tensor, level: Level, eps: torch.Tensor) -> torch.Tensor:
        return (x - level.sigma * eps) / level.alpha

    def eps_from_x0(self, x: torch.Tensor, level: Level, x0: torch.Tensor) -> torch.Tensor:
        return (x - level.alpha * x0) / level.sigma


class DiffusionDenoiser(Denoiser):
    """A model plus the (respaced) `GaussianDiffusion` it samples with, run exactly as the original does.

    On the grid the model and `cond_fn` see the timestep the diffusion's own mapping gives (original
    timesteps, rescaled when the diffusion says so), learned-variance channels are dropped, and eps/x0
    conversions use the diffusion's helpers, so the arithmetic matches `p_mean_variance` /
    `condition_score` of the original. Between grid points the model runs at the fractional timestep of
    the level.
    """

    def __init__(self, model: Callable[..., torch.Tensor], diffusion: DiffusionLike):
        super().__init__(diffusion.alphas_cumprod)
        self.model = model
        self.diffusion = diffusion

    # -- where a level sits in the model's original timesteps ------------------------------------------

    def timestep(self, level: Level) -> float:
        if level.index is not None:
            timestep_map = getattr(self.diffusion, "timestep_map", None)
            return float(timestep_map[level.index]) if timestep_map is not None else float(level.index)
        steps, table = self.diffusion.timestep_table()
        return float(timestep_of_alphas_cumprod(np.array([level.abar]), steps, table)[0])

    def _index(self, level: Level, batch: int, device: torch.device) -> torch.Tensor:
        assert level.index is not None
        return torch.full((batch,), level.index, dtype=torch.long, device=device)

    def model_time(self, level: Level, batch: int, device: torch.device) -> torch.Tensor:
        diffusion = self.diffusion
        total = getattr(diffusion, "original_num_steps", diffusion.num_timesteps)
        if level.index is not None:
            # What the diffusion's own mapping hands the model for grid index k (the original timestep, long
            # where every step of the map is whole), made on the device directly: looking it up in a device
            # tensor by a device index costs a host sync per call on a GPU.
            t = torch.full((batch,), self.timestep(level), dtype=torch.long if self._integral_map() else torch.float32,
                           device=device)
            return t.float() * (1000.0 / total) if diffusion.rescale_timesteps else t
        value = self.timestep(level)
        if diffusion.rescale_timesteps:
            value = value * 1000.0 / total
        return torch.full((batch,), value, dtype=torch.float32, device=device)

    def _integral_map(self) -> bool:
        if not hasattr(self, "_integral"):
            timestep_map = getattr(self.diffusion, "timestep_map", None)
            self._integral = timestep_map is None or all(float(t).is_integer() for t in timestep_map)
        return self._integral

    # -- predictions -----------------------------------------------------------------------------------

    def predict(self, x: torch.Tensor, level: Level, model_kwargs: ModelKwargs) -> tuple[torch.Tensor, torch.Tensor]:
        diffusion = self.diffusion
        out = self.model(x, self.model_time(level, x.shape[0], x.device), **model_kwargs)
        if diffusion.model_var_type in (ModelVarType.LEARNED, ModelVarType.LEARNED_RANGE):
            out = out[:, : x.shape[1]]
        if diffusion.model_mean_type == ModelMeanType.EPSILON:
            return self.x0_from_eps(x, level, out), out
        if diffusion.model_mean_type == ModelMeanType.START_X:
            return out, self.eps_from_x0(x, level, out)
        if level.index is None:
            raise ValueError("a model that predicts x_{t-1} can only be sampled on its own steps")
        x0 = diffusion.predict_xstart_from_xprev(x, self._index(level, x.shape[0], x.device), out)
        return x0, self.eps_from_x0(x, level, x0)

    def x0_from_eps(self, x: torch.Tensor, level: Level, eps: torch.Tensor) -> torch.Tensor:
        if level.index is None:
            return super().x0_from_eps(x, level, eps)
        return self.diffusion.predict_xstart_from_eps(x, self._index(level, x.shape[0], x.device), eps)

    def eps_from_x0(self, x: torch.Tensor, level: Level, x0: torch.Tensor) -> torch.Tensor:
        if level.index is None:
            return super().eps_from_x0(x, level, x0)
        return self.diffusion.predict_eps_from_xstart(x, self._index(level, x.shape[0], x.device), x0)
