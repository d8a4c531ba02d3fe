"""How to run the reverse process: `SamplerSettings` (the sampler, its options, the step grid and the
guidance steering), checked once when they are made, and the denoiser they give a model on a grid."""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from guided_diffusion.diffusion.denoiser import CondFn, DiffusionDenoiser
from guided_diffusion.diffusion.grids import StepGrid, check_grid_request, make_grid
from guided_diffusion.diffusion.respace import GridDiffusion
from guided_diffusion.runtime.errors import SettingError
from guided_diffusion.sampling.guidance import (
    SteeredGuidance,
    check_guidance_scaling,
    check_guidance_schedule,
    check_interval,
    dynamic_threshold,
)
from guided_diffusion.sampling.samplers import SAMPLERS

__all__ = ["SamplerSettings", "grid_denoiser"]


def grid_denoiser(model: Callable[..., torch.Tensor], diffusion: Any, grid: StepGrid) -> DiffusionDenoiser:
    """The continuous-noise engine: `model` (trained with `diffusion`, un-respaced or respaced) on `grid`.

    The grid's levels become a `GridDiffusion`, so every sampler, ddpm with learned variances included,
    runs on it through the same code as on a respaced process.
    """
    base_steps, base_abar = diffusion.timestep_table()
    grid_diffusion = GridDiffusion(
        grid.timesteps, grid.alphas_cumprod, base_timesteps=base_steps, base_alphas_cumprod=base_abar,
        original_num_steps=getattr(diffusion, "original_num_steps", diffusion.num_timesteps),
        model_mean_type=diffusion.model_mean_type, model_var_type=diffusion.model_var_type,
        loss_type=diffusion.loss_type, rescale_timesteps=diffusion.rescale_timesteps,
    )
    return DiffusionDenoiser(model, grid_diffusion)


@dataclass(frozen=True, init=False)
class SamplerSettings:
    """How to run the reverse process (the choices that do not change the model).

    `sampler` names a registered sampler (`samplers.SAMPLERS`); its own options (eta, s_churn, order, ...:
    whatever its `SamplerSpec` declares) are given as keywords and kept in `options`; an option the sampler
    does not read, or a value out of its range, raises SettingError naming it, and None means "not given".
    `steps` None walks the given diffusion's own (possibly respaced) steps exactly as the original does;
    an int samples on a `step_grid` of that many levels built from the diffusion's schedule (None = the
    measured default, `grids.DEFAULT_GRID`), through the continuous-noise engine. `sigma_min`/`sigma_max`
    (VE sigmas) bound karras/logsnr grids. `guidance_interval` (LO, HI, in original timesteps),
    `guidance_schedule` and `guidance_scaling` steer classifier guidance, `cfg_interval` classifier-free
    guidance. Defaults keep the original behaviour. A value it cannot use raises SettingError naming the
    field (`exc.setting`).
    """

    sampler: str = "ddpm"
    clip_denoised: bool = True
    dynamic_threshold: float | None = None  # percentile, e.g. 0.995; None = off
    progress: bool = False
    steps: int | None = None
    step_grid: str | None = None
    sigma_min: float | None = None
    sigma_max: float | None = None
    guidance_interval: tuple[float, float] | None = None
    guidance_schedule: str = "constant"
    guidance_scaling: str = "none"
    cfg_interval: tuple[float, float] | None = None
    options: tuple[tuple[str, Any], ...] = ()  # the sampler's own options that were given, by name

    def __init__(
        self,
        sampler: str = "ddpm",
        *,
        clip_denoised: bool = True,
        dynamic_threshold: float | None = None,
        progress: bool = False,
        steps: int | None = None,
        step_grid: str | None = None,
        sigma_min: float | None = None,
        sigma_max: float | None = None,
        guidance_interval: tuple[float, float] | None = None,
        guidance_schedule: str = "constant",
        guidance_scaling: str = "none",
        cfg_interval: tuple[float, float] | None = None,
        options: Any = (),
        **solver_options: Any,
    ):
        given = {**dict(options), **{name: value for name, value in solver_options.items() if value is not None}}
        values = dict(sampler=sampler, clip_denoised=clip_denoised, dynamic_threshold=dynamic_threshold,
                      progress=progress, steps=steps, step_grid=step_grid, sigma_min=sigma_min, sigma_max=sigma_max,
                      guidance_interval=guidance_interval, guidance_schedule=guidance_schedule,
                      guidance_scaling=guidance_scaling, cfg_interval=cfg_interval,
                      options=tuple(sorted(given.items())))
        for name, value in values.items():
            object.__setattr__(self, name, value)
        self._check()

    def _check(self) -> None:
        if self.sampler not in SAMPLERS:
            raise SettingError("sampler", f"sampler {self.sampler!r} is unknown; choose one of {', '.join(SAMPLERS)}")
        reads = SAMPLERS[self.sampler].spec.option_names
        for name, _ in self.options:
            if name not in reads:
                readers = [other for other, sampler in SAMPLERS.items() if name in sampler.spec.option_names]
                own = f" (it reads {', '.join(reads)})" if reads else " (it has no options)"
                raise SettingError(name, f"{name} applies to the {', '.join(readers) or 'no'} sampler"
                                   f"{'s' if len(readers) > 1 else ''}, not {self.sampler}{own}")
        resolved = SAMPLERS[self.sampler].resolve(dict(self.options))  # each option checked
        object.__setattr__(self, "options", tuple(sorted((k, resolved[k]) for k, _ in self.options)))
        if self.steps is not None:
            check_grid_request(self.steps, self.step_grid, self.sigma_min, self.sigma_max)
        else:
            for name in ("step_grid", "sigma_min", "sigma_max"):
                if getattr(self, name) is not None:
                    raise SettingError(name, f"{name} needs steps (it describes a grid of `steps` levels)")
        if self.dynamic_threshold is not None:
            dynamic_threshold(self.dynamic_threshold)  # checks the percentile
        check_guidance_schedule(self.guidance_schedule)
        check_guidance_scaling(self.guidance_scaling)
        for name in ("guidance_interval", "cfg_interval"):
            check_interval(getattr(self, name), name)

    @property
    def solver_options(self) -> dict[str, Any]:
        """The sampler's own options that were given (the rest run at the sampler's defaults)."""
        return dict(self.options)

    def sampler_kwargs(self) -> dict[str, Any]:
        """Keywords for `SAMPLERS[self.sampler](denoiser, x, ...)` besides noise, guidance and model_kwargs."""
        return {
            "clip_denoised": self.clip_denoised,
            "threshold": dynamic_threshold(self.dynamic_threshold) if self.dynamic_threshold else None,
            "progress": self.progress,
            **self.solver_options,
        }

    def evaluations(self, num_levels: int) -> int:
        """Model evaluations of this sampler on `num_levels` levels."""
        return SAMPLERS[self.sampler].evaluations(num_levels)

    def denoiser(self, model: Callable[..., torch.Tensor], diffusion: Any) -> DiffusionDenoiser:
        """The model on the grid these settings sample: the diffusion's own steps, or a `steps`-level grid."""
        grid = self.grid(diffusion)
        return DiffusionDenoiser(model, diffusion) if grid is None else grid_denoiser(model, diffusion, grid)

    def grid(self, diffusion: Any) -> StepGrid | None:
        """The `steps`-level grid these settings sample on `diffusion` (None: its own steps). A grid the
        schedule cannot take raises SettingError (steps, sigma_min or sigma_max), so a job checks it early."""
        if self.steps is None:
            return None
        steps, table = diffusion.timestep_table()
        grid = make_grid(self.step_grid, self.steps, table, sigma_min=self.sigma_min, sigma_max=self.sigma_max)
        # Grid timesteps count the table's rows; a respaced diffusion's rows map to original timesteps.
        return type(grid)(grid.name, grid.alphas_cumprod, np.interp(grid.timesteps, np.arange(len(steps)), steps))

    def steered(self, cond_fn: CondFn | None, diffusion: Any) -> CondFn | None:
        """cond_fn with this run's guidance interval and schedule (unchanged when both are at defaults)."""
        if cond_fn is None or (self.guidance_interval is None and self.guidance_schedule == "constant"):
            return cond_fn
        num_timesteps = getattr(diffusion, "original_num_steps", diffusion.num_timesteps)
        return SteeredGuidance(cond_fn, num_timesteps=num_timesteps, interval=self.guidance_interval,
                               schedule=self.guidance_schedule,
                               model_time_scale=1000.0 / num_timesteps if diffusion.rescale_timesteps else 1.0)
