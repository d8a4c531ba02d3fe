"""Drawing numbered samples: per-sample seeds, labels, guidance, and splitting the work over ranks.

Sample i is determined by (seed, i) alone, so a run can be split into batches and across processes in
any way: rank r of W takes the r-th batch of every round of W batches, and rank 0 reassembles the
rounds in sample order.
"""
from __future__ import annotations

import copy
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import torch
import torch.distributed as dist
from tqdm.auto import tqdm

from guided_diffusion.diffusion.denoiser import CondFn, DiffusionDenoiser
from guided_diffusion.diffusion.grids import StepGrid, check_grid_request, make_grid, saturated_first_step
from guided_diffusion.diffusion.respace import GridDiffusion
from guided_diffusion.diffusion.stepping import guidance_weight
from guided_diffusion.runtime import distributed
from guided_diffusion.runtime.errors import SettingError
from guided_diffusion.runtime.rng import SampleNoise, random_labels
from guided_diffusion.sampling.guidance import (
    GuidedModel,
    SteeredGuidance,
    check_guidance_scaling,
    check_guidance_schedule,
    check_interval,
    dynamic_threshold,
)
from guided_diffusion.sampling.output import to_uint8
from guided_diffusion.sampling.samplers import SAMPLERS

__all__ = [
    "SamplerSettings", "grid_denoiser", "draw", "class_labels_for", "gather_in_order", "BatchStore", "warn_if_saturated",
]


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


def warn_if_saturated(denoiser: DiffusionDenoiser, cond_fn: CondFn | None) -> float | None:
    """Warn (once per call site) when classifier guidance takes a saturated first step; return its multiplier."""
    top = denoiser.level(denoiser.num_steps - 1)
    if guidance_weight(cond_fn, denoiser.timestep(top)) == 0.0:
        return None
    multiplier = saturated_first_step(denoiser.alphas_cumprod)
    if multiplier is not None:
        warnings.warn(
            f"the first guided step starts at t={denoiser.timestep(top):g}, where one unit of classifier "
            f"gradient moves the sample by {multiplier:.3g}; use the default step grid (e.g. --steps N without "
            "--step_grid), a ddimN respacing, or a guidance interval that excludes it",
            stacklevel=3,
        )
    return multiplier


def draw(
    model: Callable[..., torch.Tensor],
    diffusion: Any,
    *,
    indices: Sequence[int],
    seed: int,
    image_shape: Sequence[int],
    device: torch.device,
    settings: SamplerSettings,
    labels: np.ndarray | None = None,
    cond_fn: CondFn | None = None,
    model_kwargs: dict[str, torch.Tensor] | None = None,
    x_init: torch.Tensor | None = None,
) -> torch.Tensor:
    """Samples `indices` of run `seed` as a float NCHW batch; sample i uses only its own noise stream.

    `model` is called as model(x, t, y=..., **model_kwargs) (see `GuidedModel`); `labels` become `y`.
    `x_init` replaces the starting noise (the sampler's later noise still comes from the per-sample streams).
    """
    noise = SampleNoise(seed, indices)
    x = noise.randn((len(indices), *image_shape), device=device)
    if x_init is not None:
        x = x_init.to(device=device, dtype=x.dtype)
    kwargs = dict(model_kwargs or {})
    if labels is not None:
        kwargs["y"] = torch.as_tensor(np.asarray(labels), dtype=torch.long, device=device)
    if settings.cfg_interval is not None and isinstance(model, GuidedModel):
        model = copy.copy(model)
        model.cfg_interval = settings.cfg_interval
    denoiser = settings.denoiser(model, diffusion)
    cond_fn = settings.steered(cond_fn, diffusion)
    if cond_fn is not None and SAMPLERS[settings.sampler].spec.guidance != "mean":  # a mean shift is bounded by the variance
        warn_if_saturated(denoiser, cond_fn)
    sampler = SAMPLERS[settings.sampler]
    return sampler(denoiser, x, noise=noise, cond_fn=cond_fn, model_kwargs=kwargs, **settings.sampler_kwargs())


def class_labels_for(
    indices: Sequence[int], seed: int, num_classes: int, fixed: Sequence[int] | None = None
) -> np.ndarray:
    """Labels of samples `indices`: `fixed` repeated in order (sample i gets fixed[i % len]), else uniform
    random labels that depend only on (seed, i)."""
    if fixed:
        return np.array([fixed[i % len(fixed)] for i in indices], dtype=np.int64)
    return random_labels(seed, indices, num_classes)


class BatchStore(Protocol):
    """Where finished batches go as they are gathered (see `runner.PartialRun`)."""

    def finished(self) -> list[int]: ...
    def write(self, start: int, images: np.ndarray, labels: np.ndarray | None) -> None: ...
    def read(self, start: int) -> tuple[np.ndarray, np.ndarray | None]: ...


def gather_in_order(
    num_samples: int,
    batch_size: int,
    make_batch: Callable[[list[int]], tuple[np.ndarray, np.ndarray | None]],
    *,
    progress: bool = False,
    start_index: int = 0,
    store: BatchStore | None = None,
    split_over_ranks: bool = True,
) -> tuple[np.ndarray, np.ndarray | None] | None:
    """Run `make_batch(indices) -> (uint8 NHWC images, labels or None)` over samples start_index ..
    start_index + num_samples - 1 in batches of `batch_size`, split over the torch.distributed ranks.
    Returns everything, in sample order, on rank 0; None elsewhere (split_over_ranks=False: this process
    does every batch and returns them).

    Round k gives rank r the (k * world + r)-th batch still to draw, so one gather per round keeps the
    order. With a `store`, batches it already holds are skipped, and rank 0 writes each gathered batch
    there at once (so a stopped run keeps them) instead of keeping it in memory.
    """
    for name, value in (("num_samples", num_samples), ("batch_size", batch_size)):
        if value < 1:
            raise SettingError(name, f"{name} must be at least 1, got {value}")
    rank, world = (distributed.get_rank(), distributed.get_world_size()) if split_over_ranks else (0, 1)
    end = start_index + num_samples
    batches = [list(range(s, min(s + batch_size, end))) for s in range(start_index, end, batch_size)]
    done = set(store.finished()) if store is not None and rank == 0 else set()
    if world > 1:
        box = [sorted(done)]
        dist.broadcast_object_list(box, src=0)
        done = set(box[0])
    todo = [b for b in batches if b[0] not in done]
    kept: dict[int, tuple[np.ndarray, np.ndarray | None]] = {}
    already = sum(len(b) for b in batches if b[0] in done)
    with tqdm(total=num_samples, initial=already, desc="samples", unit="img", disable=not progress or rank != 0) as bar:
        for round_start in range(0, len(todo), world):
            mine = todo[round_start + rank] if round_start + rank < len(todo) else None
            result = (mine[0], *make_batch(mine)) if mine else None
            parts = [result]
            if world > 1:
                parts = [None] * world
                dist.all_gather_object(parts, result)
            if rank == 0:
                for part in parts:
                    if part is None:
                        continue
                    start, images, labels = part
                    if store is not None:
                        store.write(start, images, labels)
                    else:
                        kept[start] = (images, labels)
            bar.update(sum(len(b) for b in todo[round_start:round_start + world]))
    if rank != 0:
        return None
    ordered = [kept[b[0]] if b[0] in kept else store.read(b[0]) for b in batches]  # type: ignore[union-attr]
    label_parts = [part_labels for _, part_labels in ordered if part_labels is not None]
    return np.concatenate([images for images, _ in ordered]), (np.concatenate(label_parts) if label_parts else None)


def to_numpy_uint8(x: torch.Tensor) -> np.ndarray:
    """Float NCHW samples in [-1, 1] -> uint8 NHWC numpy (truncating, as the original)."""
    return to_uint8(x).cpu().numpy()
