"""The sampler driver, the guided prediction every sampler steps with, and the DDPM and DDIM steps.

A sampler's body is its update and nothing else: a generator `body(ctx, x, **options)` that walks
`ctx.levels` (the grid's levels, noisiest first, ending at clean data), asks `ctx.denoise(x, level)` for
the guided prediction, and yields a `Step` after each update. `drive` owns the rest, once for every
sampler: no autograd graph (the model's forward passes record nothing; the classifier gradient is taken
inside `cond_fn`), the finite check (one host sync every few steps), the progress bar, the count of
model evaluations and the per-step callback. `sampling/samplers.py` registers the bodies; the DDPM and
DDIM bodies live here because `GaussianDiffusion`'s `p_sample_loop*` / `ddim_sample_loop*` run them too
(`ddpm_steps`, `ddim_steps`), so each algorithm has one loop in the package.

`noise` supplies fresh noise (`randn_like`), e.g. a `runtime.rng.SampleNoise` for per-sample seeds; None
uses the global torch generator. `cond_fn(x, t, **model_kwargs)` returns the scaled classifier gradient;
one with a `weight(t)` method (`sampling.guidance.SteeredGuidance`) scales it per level, 0 skipping the
classifier. `threshold` maps a predicted x_0 to a thresholded one.
"""
from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

import torch
from tqdm.auto import tqdm

from guided_diffusion.diffusion.denoiser import CondFn, Denoiser, DiffusionDenoiser, Level
from guided_diffusion.runtime.rng import GeneratorNoise

__all__ = [
    "NonFiniteSampleError", "NoiseSource", "Threshold", "Callback", "Denoised", "Step", "SamplerContext",
    "Body", "CONTEXT_INPUTS", "drive", "progress_bar", "guidance_weight", "ddpm_body", "ddim_body", "ddpm_steps", "ddim_steps",
    "FINITE_CHECK_EVERY",
]

Threshold = Callable[[torch.Tensor], torch.Tensor]
Callback = Callable[[dict[str, Any]], None]
_Item = TypeVar("_Item")

# Steps between two host syncs of the finite check: each sync stalls a GPU's queue, and a NaN found a few
# steps late costs only those steps (the error still names the first non-finite step).
FINITE_CHECK_EVERY = 4


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


def progress_bar(items: Iterable[_Item], enabled: bool, desc: str, total: int | None = None) -> Iterable[_Item]:
    """`items`, with a progress bar when `enabled`."""
    bar: Iterable[_Item] = tqdm(items, desc=desc, leave=False, disable=not enabled, total=total)
    return bar


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


@dataclass(frozen=True)
class Denoised:
    """One model evaluation at a level, with guidance.

    x0: the prediction a step uses: the model's x_0, clipped, then guided (the score shift of Song et al.,
        the original `condition_score`: eps' = eps - G, x_0 not re-clipped), then thresholded.
    data: the model's own prediction before guidance (clipped); equal to x0 where no guidance ran.
    guidance: G = w(t) sigma s grad log p(y | x), the shift of the noise prediction (None where no guidance
        ran). Solvers that integrate guidance on its own (`SamplerSpec.guidance == "split"`) step with
        `data` and `guidance`; x0 = data + (sigma / alpha) G. With a `threshold` the guided prediction is
        thresholded as a whole, so there data = x0 and guidance is None.
    """

    x0: torch.Tensor
    data: torch.Tensor
    guidance: torch.Tensor | None


@dataclass(frozen=True)
class Step:
    """What a body yields after each update: the grid index stepped from, the new state, the x_0 used."""

    k: int
    x: torch.Tensor
    x0: torch.Tensor


class SamplerContext:
    """What a sampler body is given: the levels to walk, the guided prediction, the noise source."""

    def __init__(
        self,
        denoiser: Denoiser,
        *,
        noise: NoiseSource | None = None,
        cond_fn: CondFn | None = None,
        model_kwargs: Mapping[str, Any] | None = None,
        clip_denoised: bool = True,
        threshold: Threshold | None = None,
    ):
        self.denoiser = denoiser
        self.noise: NoiseSource = noise or GeneratorNoise()
        self.cond_fn = cond_fn
        self.model_kwargs = dict(model_kwargs or {})
        self.clip_denoised = clip_denoised
        self.threshold = threshold
        self.levels: list[Level] = denoiser.levels()
        self.evaluations = 0  # model evaluations made so far (the classifier runs with some of them)

    def denoise(self, x: torch.Tensor, level: Level) -> Denoised:
        """One model evaluation at `level`, clipped, guided and thresholded (see `Denoised`)."""
        denoiser = self.denoiser
        self.evaluations += 1
        x0, eps = denoiser.predict(x, level, self.model_kwargs)
        if self.clip_denoised:
            x0 = x0.clamp(-1, 1)
        data, guidance = x0, None
        weight = guidance_weight(self.cond_fn, denoiser.timestep(level))
        if weight != 0.0 and self.cond_fn is not None:
            eps = denoiser.eps_from_x0(x, level, x0)
            gradient = denoiser.cond_gradient(self.cond_fn, x, level, self.model_kwargs)
            guidance = level.sigma * (gradient if weight == 1.0 else weight * gradient)
            x0 = denoiser.x0_from_eps(x, level, eps - guidance)
        if self.threshold is not None:
            x0 = self.threshold(x0)
            data, guidance = x0, None
        return Denoised(x0, data, guidance)

    def randn_like(self, x: torch.Tensor) -> torch.Tensor:
        return self.noise.randn_like(x)


Body = Callable[..., Iterator[Step]]  # body(ctx, x, **options) -> Iterator[Step]


# The keywords a SamplerContext takes: a sampler's inputs besides the denoiser, the start and its options.
CONTEXT_INPUTS = ("noise", "cond_fn", "model_kwargs", "clip_denoised", "threshold")


@torch.no_grad()
def drive(
    name: str,
    body: Body,
    ctx: SamplerContext,
    x: torch.Tensor,
    *,
    progress: bool = False,
    check_every: int = FINITE_CHECK_EVERY,
    desc: str | None = None,
    **options: Any,
) -> Iterator[dict[str, Any]]:
    """Run sampler `body` in `ctx` from `x` at the denoiser's noisiest grid point; yield {"k", "x", "x0",
    "evaluations"} after every step (evaluations: model evaluations made so far).

    Nothing records an autograd graph. A state that is not finite stops the run with
    `NonFiniteSampleError` naming the first such step; the check syncs with the host once every
    `check_every` steps and after the last one. `desc` labels the progress bar (default: `name`).
    """
    denoiser = ctx.denoiser
    pending: list[tuple[int, torch.Tensor]] = []  # (step, all-finite flag) not yet read on the host

    def check() -> None:
        if pending and not bool(torch.stack([ok for _, ok in pending]).all()):
            raise NonFiniteSampleError(next(k for k, ok in pending if not bool(ok)), name)
        pending.clear()

    steps = body(ctx, x, **options)
    for step in progress_bar(steps, progress, desc or name, total=denoiser.num_steps):
        pending.append((step.k, torch.isfinite(step.x).all()))
        if len(pending) >= check_every:
            check()
        yield {"k": step.k, "x": step.x, "x0": step.x0, "evaluations": ctx.evaluations}
    check()


# -- DDPM and DDIM: the original's samplers ---------------------------------------------------------------


def ddpm_body(ctx: SamplerContext, x: torch.Tensor) -> Iterator[Step]:
    """Ancestral sampling of Ho et al. (2020), step for step the original `p_sample`:

    x_{k-1} = mu_theta(x_k) + s * Sigma_theta(x_k) grad log p(y | x_k) + Sigma_theta^{1/2} z  (guided mean
    shift of Sohl-Dickstein et al., the original `condition_mean`); no noise on the last step. `threshold`
    is applied where the original applies `denoised_fn`, before clipping. On a step grid the posterior and
    the learned-variance range are those of the grid's own levels. Yields the unguided x_0, as the original.
    """
    denoiser = ctx.denoiser
    if not isinstance(denoiser, DiffusionDenoiser):
        raise TypeError("ddpm needs a DiffusionDenoiser: it samples with the diffusion's learned variances")
    diffusion = denoiser.diffusion
    for level in ctx.levels[:-1]:
        assert level.index is not None
        k = level.index
        t = torch.full((x.shape[0],), k, dtype=torch.long, device=x.device)
        step_cond = _weighted(ctx.cond_fn, guidance_weight(ctx.cond_fn, denoiser.timestep(level)))
        ctx.evaluations += 1
        out = diffusion.p_sample(  # type: ignore[attr-defined]
            denoiser.model, x, t, clip_denoised=ctx.clip_denoised, denoised_fn=ctx.threshold, cond_fn=step_cond,
            model_kwargs=ctx.model_kwargs, noise=ctx.randn_like(x),  # drawn on the last step too, as the original
        )
        x = out["sample"]
        yield Step(k, x, out["pred_xstart"])


def ddim_body(ctx: SamplerContext, x: torch.Tensor, *, eta: float = 0.0) -> Iterator[Step]:
    """DDIM (Song et al. 2021, eq. 12), the original `ddim_sample`:

    x_{k-1} = sqrt(abar_{k-1}) x0 + sqrt(1 - abar_{k-1} - s_k^2) eps + s_k z,
    s_k = eta * sqrt((1 - abar_{k-1}) / (1 - abar_k)) * sqrt(1 - abar_k / abar_{k-1}),
    with eps re-derived from the (clipped, guided) x0 and abar_{-1} = 1. eta = 0 is deterministic.
    """
    if eta < 0:
        raise ValueError(f"eta must be >= 0, got {eta}")
    for here, there in zip(ctx.levels, ctx.levels[1:]):
        x0 = ctx.denoise(x, here).x0
        eps = ctx.denoiser.eps_from_x0(x, here, x0)
        abar, abar_prev = here.abar, there.abar
        s = eta * math.sqrt((1 - abar_prev) / (1 - abar)) * math.sqrt(1 - abar / abar_prev)
        x = math.sqrt(abar_prev) * x0 + math.sqrt(max(1 - abar_prev - s * s, 0.0)) * eps
        if eta > 0:
            z = ctx.randn_like(x)  # drawn on every step, the last one included, like the original
            if not there.is_clean:
                x = x + s * z
        assert here.index is not None
        yield Step(here.index, x, x0)


def ddpm_steps(denoiser: DiffusionDenoiser, x: torch.Tensor, *, progress: bool = False, desc: str | None = None,
               **inputs: Any) -> Iterator[dict[str, Any]]:
    """The DDPM loop as `GaussianDiffusion.p_sample_loop_progressive` runs it (see `ddpm_body`);
    `inputs` are SamplerContext's (CONTEXT_INPUTS)."""
    return drive("ddpm", ddpm_body, SamplerContext(denoiser, **inputs), x, progress=progress, desc=desc)


def ddim_steps(denoiser: Denoiser, x: torch.Tensor, *, eta: float = 0.0, progress: bool = False,
               desc: str | None = None, **inputs: Any) -> Iterator[dict[str, Any]]:
    """The DDIM loop as `GaussianDiffusion.ddim_sample_loop_progressive` runs it (see `ddim_body`);
    `inputs` are SamplerContext's (CONTEXT_INPUTS)."""
    return drive("ddim", ddim_body, SamplerContext(denoiser, **inputs), x, progress=progress, desc=desc, eta=eta)
