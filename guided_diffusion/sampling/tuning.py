"""Step grids tuned for one model, classifier, guidance scale and sampler.

A sampler given K levels lands some distance from the solution of the same guided ODE; where the levels
sit decides much of that distance, and under guidance the best placement is not any closed-form grid.
`tune_grid` finds K levels that bring the sampler close to a fine reference trajectory:

1. the reference: DDIM on a fine grid (`reference_levels` karras levels from the grid's sigma_max) from
   warm-up noise, keeping every fine state x_i and guided prediction at each level;
2. a first grid by dynamic programming over the fine levels (GITS, Chen et al. 2024): the cost of a
   step from fine level i to j is the RMS distance of one DDIM step from the reference state x_i (its
   prediction there is already known, so this costs no model evaluation) to the reference state x_j;
   the path from the top level with K levels and the least total cost, the last level free;
3. refinement on the sampler itself: each level but the top moves along the fine grid (strides 8, 4, 2, 1)
   while the sampler's final distance to the reference on the warm-up batch falls by more than
   `min_gain` (relative), within `max_trials` trial runs.

The warm-up noise comes from its own seed stream, so a tuned grid never sees the samples a user draws.
Distances are RMS in 0..255 pixel units of the final images (clipped to [-1, 1]).
"""
from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from guided_diffusion.diffusion.denoiser import CondFn
from guided_diffusion.diffusion.grids import StepGrid, make_grid, timestep_of_alphas_cumprod
from guided_diffusion.runtime.errors import SettingError
from guided_diffusion.runtime.rng import SampleNoise, mix_seed
from guided_diffusion.sampling.samplers import SAMPLERS
from guided_diffusion.sampling.settings import SamplerSettings, grid_denoiser

__all__ = ["TuningResult", "TuningReference", "tuning_reference", "tune_grid", "WARMUP_STREAM", "pixel_rms"]

WARMUP_STREAM = 0x7475_6E65  # mixed into the seed of warm-up noise ("tune"), apart from every sampling stream


def pixel_rms(a: torch.Tensor, b: torch.Tensor) -> float:
    """RMS distance of two image batches in [-1, 1] (clipped), in 0..255 pixel units."""
    return float(((a.clamp(-1, 1) - b.clamp(-1, 1)) * 127.5).pow(2).mean().sqrt())


@dataclass(frozen=True)
class TuningResult:
    """A tuned grid: `sigmas` (VE, noisiest first) and its warm-up distance, with the starting grid's."""

    sigmas: np.ndarray
    distance: float
    start_sigmas: np.ndarray
    start_distance: float
    trials: int
    evaluations: int  # model evaluations spent, reference included
    history: list[float] = field(default_factory=list)


def _grid(sigmas: np.ndarray, table_steps: np.ndarray, table: np.ndarray) -> StepGrid:
    abar = 1.0 / (1.0 + np.sort(np.asarray(sigmas, dtype=np.float64)) ** 2)  # ascending noise
    return StepGrid("tuned", abar, timestep_of_alphas_cumprod(abar, table_steps, table))


def _dynamic_programme(cost: np.ndarray, final_cost: np.ndarray, levels: int) -> list[int]:
    """Fine indices (descending) of the K-level path from the top index with the least total cost:
    cost[i, j] for a step i -> j (i > j), final_cost[j] for the last level j's jump to clean data."""
    n = len(final_cost)
    best = np.full((levels, n), np.inf)
    back = np.zeros((levels, n), dtype=np.int64)
    best[0, n - 1] = 0.0
    for m in range(1, levels):
        for j in range(n - 1):
            candidates = best[m - 1, j + 1:] + cost[j + 1:, j]
            pick = int(np.argmin(candidates))
            best[m, j], back[m, j] = candidates[pick], j + 1 + pick
    last = int(np.argmin(best[levels - 1] + final_cost))
    path = [last]
    for m in range(levels - 1, 0, -1):
        path.append(int(back[m, path[-1]]))
    return path[::-1]


@dataclass
class TuningReference:
    """The fine reference a grid is tuned against: warm-up noise, the reference's final images, and the
    cost of one DDIM step between any two fine levels (shared by every sampler and step count tuned for
    the same model, guidance and settings)."""

    fine_sigmas: np.ndarray  # ascending
    batches: list[list[int]]
    starts: list[torch.Tensor]
    targets: list[torch.Tensor]
    model_kwargs: list[dict[str, torch.Tensor]]
    warm_seed: int
    cost: np.ndarray
    final_cost: np.ndarray
    settings: SamplerSettings
    cond_fn: CondFn | None
    evaluations: int

    @property
    def warmup(self) -> int:
        return sum(len(batch) for batch in self.batches)


def tuning_reference(
    model: Callable[..., torch.Tensor],
    diffusion: Any,
    *,
    image_shape: tuple[int, ...],
    cond_fn: CondFn | None = None,
    labels: Callable[[list[int]], np.ndarray | None] = lambda indices: None,
    settings: SamplerSettings | None = None,
    warmup: int = 256,
    seed: int = 0,
    reference_levels: int = 250,
    batch_size: int = 256,
    device: torch.device | str = "cpu",
    log: Callable[[str], None] = lambda text: None,
) -> TuningReference:
    """Steps 1 and 2 of the module docstring: the reference trajectory and the one-step costs.

    `settings` carries the sampling choices besides the sampler (clipping, threshold, guidance interval
    and schedule, sigma_max of the grid's top); `labels(indices)` gives the classes of warm-up samples.
    Raises SettingError naming `warmup` or `steps` (the reference levels) for a request it cannot take."""
    if reference_levels < 3:
        raise SettingError("steps", f"the reference needs at least 3 levels, got {reference_levels}")
    if warmup < 1:
        raise SettingError("warmup", f"warmup must be at least 1, got {warmup}")
    base = settings or SamplerSettings()
    device = torch.device(device)
    table_steps, table = diffusion.timestep_table()
    fine = make_grid("karras", reference_levels, table, sigma_max=base.sigma_max)
    fine_denoiser = grid_denoiser(model, diffusion, fine)
    cond = base.steered(cond_fn, diffusion)
    common = dict(clip_denoised=base.clip_denoised, threshold=base.sampler_kwargs()["threshold"])
    indices = list(range(warmup))
    warm_seed = mix_seed(seed, WARMUP_STREAM)
    batches = [indices[s:s + batch_size] for s in range(0, warmup, batch_size)]
    model_kwargs = []
    for batch in batches:
        found = labels(batch)
        model_kwargs.append({} if found is None else
                            {"y": torch.as_tensor(np.asarray(found), dtype=torch.long, device=device)})

    log(f"reference: ddim on {reference_levels} karras levels, {warmup} warm-up samples")
    states: list[list[torch.Tensor]] = []
    predictions: list[list[torch.Tensor]] = []
    starts: list[torch.Tensor] = []
    for batch, kwargs in zip(batches, model_kwargs):
        noise = SampleNoise(warm_seed, batch)
        x = noise.randn((len(batch), *image_shape), device=device)
        starts.append(x)
        walk, preds = [x], []
        for info in SAMPLERS["ddim"].steps(fine_denoiser, x, noise=noise, cond_fn=cond, model_kwargs=kwargs, **common):
            preds.append(info["x0"])
            walk.append(info["x"])
        states.append(walk)  # walk[m]: the state at fine level n-1-m; the last is the clean image
        predictions.append(preds)
    n = reference_levels
    targets = [walk[-1] for walk in states]

    # GITS: one DDIM step from each reference state to every lower level, against the reference there
    level = [fine_denoiser.level(k) for k in range(n)]
    alphas = torch.tensor([lv.alpha for lv in level], dtype=torch.float32, device=device)
    sigmas = torch.tensor([lv.sigma for lv in level], dtype=torch.float32, device=device)
    sums = np.zeros((n, n))
    final = np.zeros(n)
    for b in range(len(batches)):
        by_level = torch.stack(states[b][n - 1::-1])  # [j]: the reference state at fine level j
        for i in range(1, n):
            m = n - 1 - i
            x0 = predictions[b][m]
            eps = fine_denoiser.eps_from_x0(states[b][m], level[i], x0)
            shape = (i, *([1] * x0.ndim))
            steps = alphas[:i].view(shape) * x0 + sigmas[:i].view(shape) * eps  # one DDIM step to each j < i
            sums[i, :i] += (steps - by_level[:i]).pow(2).flatten(1).sum(1).double().cpu().numpy()
        for i in range(n):
            x0 = predictions[b][n - 1 - i]
            final[i] += float((x0.clamp(-1, 1) - targets[b].clamp(-1, 1)).pow(2).sum())
    scale = 127.5**2 / (warmup * int(np.prod(image_shape)))
    lower = np.tril(np.ones((n, n), dtype=bool), k=-1)
    cost = np.full((n, n), np.inf)
    cost[lower] = np.sqrt(sums[lower] * scale)
    return TuningReference(
        fine_sigmas=np.sqrt((1.0 - fine.alphas_cumprod) / fine.alphas_cumprod), batches=batches, starts=starts,
        targets=targets, model_kwargs=model_kwargs, warm_seed=warm_seed, cost=cost, final_cost=np.sqrt(final * scale),
        settings=base, cond_fn=cond, evaluations=reference_levels * warmup)


def tune_grid(
    model: Callable[..., torch.Tensor],
    diffusion: Any,
    reference: TuningReference,
    *,
    sampler: str,
    levels: int,
    max_trials: int = 200,
    min_gain: float = 0.005,
    log: Callable[[str], None] = lambda text: None,
) -> TuningResult:
    """Tune a `levels`-level grid for `sampler` on `model` (trained with `diffusion`) against `reference`
    (`tuning_reference` with the same model, guidance and settings; one reference serves every sampler and
    step count). Raises SettingError naming `steps` or `sampler` for requests it cannot tune."""
    if sampler not in SAMPLERS:
        raise SettingError("sampler", f"sampler {sampler!r} is unknown; choose one of {', '.join(SAMPLERS)}")
    if SAMPLERS[sampler].spec.stochastic:
        raise SettingError("sampler", f"{sampler} draws noise: a grid is tuned against the ODE's solution, "
                           "so tune a deterministic sampler")
    if not 2 <= levels < len(reference.fine_sigmas):
        raise SettingError("steps", f"steps must be in 2..{len(reference.fine_sigmas) - 1} to tune, got {levels}")
    base = reference.settings
    options: Mapping[str, Any] = base.solver_options if base.sampler == sampler else {}
    common = dict(clip_denoised=base.clip_denoised, threshold=base.sampler_kwargs()["threshold"])
    table_steps, table = diffusion.timestep_table()
    fine_sigmas = reference.fine_sigmas
    log("dynamic programming over the fine levels")
    programme = _dynamic_programme(reference.cost, reference.final_cost, levels)

    # 3. refinement on the sampler itself
    trials = 0

    def distance(fine_indices: list[int]) -> float:
        nonlocal trials
        trials += 1
        denoiser = grid_denoiser(model, diffusion, _grid(fine_sigmas[fine_indices], table_steps, table))
        total = 0.0
        for batch, start, target, kwargs in zip(reference.batches, reference.starts, reference.targets,
                                                reference.model_kwargs):
            out = SAMPLERS[sampler](denoiser, start, noise=SampleNoise(reference.warm_seed, batch),
                                    cond_fn=reference.cond_fn, model_kwargs=kwargs, **common, **options)
            total += pixel_rms(out, target) ** 2 * len(batch)
        return float(np.sqrt(total / reference.warmup))

    current = sorted(programme, reverse=True)
    start_sigmas = fine_sigmas[current]
    best = first = distance(current)
    history = [best]
    log(f"dynamic programme's grid: RMS {best:.2f} on the warm-up samples; refining")
    for stride in (8, 4, 2, 1):
        improved = True
        while improved and trials < max_trials:
            improved = False
            for p in range(1, levels):  # the top level stays: the noise starts there
                for move in (-stride, stride):
                    candidate = list(current)
                    candidate[p] += move
                    above = candidate[p - 1]
                    below = candidate[p + 1] if p + 1 < levels else -1
                    if not below < candidate[p] < above or trials >= max_trials:
                        continue
                    value = distance(candidate)
                    if value < best * (1.0 - min_gain):
                        best, current, improved = value, candidate, True
                        history.append(best)
        log(f"stride {stride}: RMS {best:.2f} after {trials} trial runs")
    per_trial = SAMPLERS[sampler].evaluations(levels) * reference.warmup
    return TuningResult(sigmas=fine_sigmas[current], distance=best, start_sigmas=start_sigmas, start_distance=first,
                        trials=trials, evaluations=reference.evaluations + trials * per_trial, history=history)
