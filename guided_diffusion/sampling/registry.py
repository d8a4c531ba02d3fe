"""The sampler contract: what a registered sampler declares, and the one callable every sampler is.

A sampler is a body (`body(ctx, x, **options) -> Iterator[Step]`, see `diffusion.stepping`) plus a
`SamplerSpec` that says what differs between samplers: the options it reads (with their defaults and
ranges), its model evaluations on K levels, whether it draws noise, and how classifier guidance enters
it. Everything else is shared: `Sampler.__call__` resolves the options (a value a sampler does not read,
or one out of range, raises SettingError naming it), and `stepping.drive` owns no-grad, the finite check,
the progress bar and the callback. `SamplerSettings`, the command line's `--sampler` choices, its
solver flags and their help, the editing commands and the evaluation count all read `SAMPLERS`
(`sampling/samplers.py`), so nothing else branches on a sampler's name.

    sampler(denoiser, x, *, noise=None, cond_fn=None, model_kwargs=None, clip_denoised=True,
            threshold=None, progress=False, callback=None, **options) -> x_0
"""
from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch

from guided_diffusion.diffusion.denoiser import CondFn, Denoiser
from guided_diffusion.diffusion.stepping import (
    CONTEXT_INPUTS,
    Body,
    Callback,
    NoiseSource,
    SamplerContext,
    Threshold,
    drive,
)
from guided_diffusion.runtime.errors import SettingError

__all__ = ["Option", "SamplerSpec", "Sampler", "GUIDANCE_FORMS"]

# How the classifier gradient enters a sampler's update:
#   score: at every model evaluation as the score shift eps' = eps - sigma s grad log p(y|x) (the original
#          `condition_score`), the guided x_0 then stepped with like any prediction;
#   split: the same shift, integrated on its own with weights exact for its interpolating polynomial in
#          log-SNR, beside the solver's exponential integrator for the model's own x_0 (see samplers.py);
#   mean:  DDPM's mean shift by the learned variance times the gradient (the original `condition_mean`).
GUIDANCE_FORMS = ("score", "split", "mean")


@dataclass(frozen=True)
class Option:
    """A solver-specific setting (the command line's `--NAME`): its default and its allowed values."""

    name: str
    default: float | int
    help: str
    minimum: float | None = None
    choices: tuple[int, ...] | None = None
    finite: bool = True  # False: infinity is a value (e.g. "no upper bound")

    @property
    def integral(self) -> bool:
        return isinstance(self.default, int) and not isinstance(self.default, bool)

    def check(self, value: Any) -> float | int:
        """`value` in this option's type, or SettingError naming the option."""
        try:
            number = int(value) if self.integral else float(value)
        except (TypeError, ValueError):
            raise SettingError(self.name, f"{self.name} must be a number, got {value!r}") from None
        if self.integral and number != value:
            raise SettingError(self.name, f"{self.name} must be an integer, got {value!r}")
        if self.choices is not None and number not in self.choices:
            raise SettingError(self.name, f"{self.name} must be one of {', '.join(map(str, self.choices))}, got {value}")
        bad = math.isnan(number) or (self.finite and math.isinf(number))
        if bad or (self.minimum is not None and not number >= self.minimum):
            kind = "a finite number" if self.finite else "a number"
            bound = f" >= {self.minimum:g}" if self.minimum is not None else ""
            raise SettingError(self.name, f"{self.name} must be {kind}{bound}, got {value}")
        return number


def _one_per_level(num_levels: int) -> int:
    return num_levels


@dataclass(frozen=True)
class SamplerSpec:
    """What one sampler is: its command-line name, its body and what differs between samplers.

    evaluations(K): model evaluations (each with one classifier pass where guided) on a K-level grid.
    stochastic: draws fresh noise after the start (from `noise`). guidance: one of GUIDANCE_FORMS.
    needs_diffusion: steps with the diffusion's learned variances (a `DiffusionDenoiser`).
    check(options): cross-option checks, after each option's own; raises SettingError.
    """

    name: str
    body: Body
    summary: str
    options: tuple[Option, ...] = ()
    evaluations: Callable[[int], int] = _one_per_level
    stochastic: bool = False
    guidance: str = "score"
    needs_diffusion: bool = False
    check: Callable[[Mapping[str, Any]], None] | None = None
    reference: str = ""  # the paper, for the samplers table of docs/sampling.md

    def __post_init__(self) -> None:
        if self.guidance not in GUIDANCE_FORMS:
            raise ValueError(f"guidance must be one of {GUIDANCE_FORMS}, got {self.guidance!r}")

    @property
    def option_names(self) -> tuple[str, ...]:
        return tuple(option.name for option in self.options)


@dataclass(frozen=True)
class Sampler:
    """A registered sampler, called with the shared signature (see the module docstring)."""

    spec: SamplerSpec
    _options: dict[str, Option] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_options", {option.name: option for option in self.spec.options})

    @property
    def name(self) -> str:
        return self.spec.name

    def resolve(self, options: Mapping[str, Any]) -> dict[str, Any]:
        """The options this sampler runs with: `options` checked, the rest at their defaults. An option the
        sampler does not read raises SettingError naming it."""
        for name in options:
            if name not in self._options:
                reads = f"it reads {', '.join(self._options)}" if self._options else "it has no options"
                raise SettingError(name, f"{name} does not apply to the {self.name} sampler ({reads})")
        resolved = {name: option.check(options[name]) if name in options else option.default
                    for name, option in self._options.items()}
        if self.spec.check is not None:
            self.spec.check(resolved)
        return resolved

    def steps(self, denoiser: Denoiser, x: torch.Tensor, *, progress: bool = False,
              **kwargs: Any) -> Iterator[dict[str, Any]]:
        """The run step by step, {"k", "x", "x0", "evaluations"} after each step; keywords as `__call__`'s
        (without `callback`)."""
        inputs = {name: kwargs.pop(name) for name in CONTEXT_INPUTS if name in kwargs}
        return drive(self.name, self.spec.body, SamplerContext(denoiser, **inputs), x, progress=progress,
                     **self.resolve(kwargs))

    def __call__(
        self,
        denoiser: Denoiser,
        x: torch.Tensor,
        *,
        noise: NoiseSource | None = None,
        cond_fn: CondFn | None = None,
        model_kwargs: Mapping[str, Any] | None = None,
        clip_denoised: bool = True,
        threshold: Threshold | None = None,
        progress: bool = False,
        callback: Callback | None = None,
        **options: Any,
    ) -> torch.Tensor:
        """Walk `denoiser`'s grid from `x` at its noisiest point to clean data; returns x_0."""
        ctx = SamplerContext(denoiser, noise=noise, cond_fn=cond_fn, model_kwargs=model_kwargs,
                             clip_denoised=clip_denoised, threshold=threshold)
        for info in drive(self.name, self.spec.body, ctx, x, progress=progress, **self.resolve(options)):
            x = info["x"]
            if callback is not None:
                callback(info)
        return x

    def evaluations(self, num_levels: int) -> int:
        """Model evaluations on a grid of `num_levels` levels."""
        return self.spec.evaluations(num_levels)
