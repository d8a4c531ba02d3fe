"""Guidance: classifier gradients, classifier-free guidance, and dynamic thresholding.

Both kinds of guidance compose: classifier-free guidance changes what the model predicts
(`GuidedModel`), classifier guidance adds a gradient through `cond_fn` (`classifier_cond_fn`), and every
sampler accepts both.
"""
from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F

from guided_diffusion.runtime.autocast import autocast, autocast_for
from guided_diffusion.runtime.errors import SettingError

__all__ = [
    "GuidedModel", "classifier_cond_fn", "dynamic_threshold", "autocast", "SteeredGuidance", "GUIDANCE_SCHEDULES",
    "check_cfg", "check_interval", "check_guidance_schedule", "GUIDANCE_SCALINGS", "check_guidance_scaling",
    "entropy_scale",
]

GUIDANCE_SCHEDULES = ("constant", "linear", "cosine")


def check_cfg(cfg_scale: float, *, class_cond: bool, null_label: int | None) -> None:
    """Classifier-free guidance (cfg_scale != 1) needs a class-conditional model with a null label;
    SettingError naming `cfg_scale` otherwise."""
    if cfg_scale != 1.0 and (not class_cond or null_label is None):
        raise SettingError("cfg_scale", f"cfg_scale {cfg_scale} needs a class-conditional model trained with label dropout "
                           "(class_dropout_prob > 0, which gives it a null label); this model has none")


def check_interval(interval: Sequence[float] | None, name: str) -> tuple[float, float] | None:
    """A guidance interval (LO, HI) with 0 <= LO <= HI as floats (None stays None); SettingError naming
    `name` (guidance_interval or cfg_interval) otherwise."""
    if interval is None:
        return None
    values = tuple(float(v) for v in interval)
    if len(values) != 2 or not 0 <= values[0] <= values[1]:
        raise SettingError(name, f"{name} must be (LO, HI) with 0 <= LO <= HI, got {values}")
    return values[0], values[1]


def check_guidance_schedule(schedule: str) -> None:
    """SettingError naming `guidance_schedule` unless it is one of GUIDANCE_SCHEDULES."""
    if schedule not in GUIDANCE_SCHEDULES:
        raise SettingError("guidance_schedule", f"guidance_schedule {schedule!r} is unknown; "
                           f"choose one of {', '.join(GUIDANCE_SCHEDULES)}")


class GuidedModel:
    """The model as samplers call it: `model(x, t, y=None, **kwargs)` returning float32 output.

    - Drops `y` for a model that is not class-conditional, so a classifier can guide an unconditional
      model with the same labels (as the original `classifier_sample.py` does).
    - Classifier-free guidance (Ho & Salimans 2022) when `cfg_scale != 1`: cond and uncond predictions
      come from one batched forward pass, the uncond half with the null label `null_label`, and
      out = out_uncond + cfg_scale * (out_cond - out_uncond) on the mean channels (eps or x0: both are
      affine in the output); learned-variance channels are taken from the conditional half.
    - `cfg_interval=(LO, HI)`: classifier-free guidance only where LO <= t <= HI (t as the model receives
      it: original timesteps unless the diffusion rescales them); outside, one conditional pass and no
      unconditional one (Kynkaanniemi et al. 2024 apply guidance in a limited interval).
    - Optional bfloat16 (`autocast_dtype`): a network prepared by `runtime.performance.prepare_for_bf16`
      runs as it is (bfloat16 torso, float32 output); any other runs under autocast.
    """

    def __init__(
        self,
        model: torch.nn.Module,
        *,
        class_cond: bool,
        cfg_scale: float = 1.0,
        null_label: int | None = None,
        autocast_dtype: torch.dtype | None = None,
        cfg_interval: tuple[float, float] | None = None,
    ):
        check_cfg(cfg_scale, class_cond=class_cond, null_label=null_label)
        self.cfg_interval = check_interval(cfg_interval, "cfg_interval")
        self.model = model
        self.class_cond = class_cond
        self.cfg_scale = float(cfg_scale)
        self.null_label = null_label
        self.autocast_dtype = autocast_dtype

    def __call__(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor | None = None, **kwargs: Any) -> torch.Tensor:
        y = y if self.class_cond else None
        with autocast_for(self.model, x.device, self.autocast_dtype):
            if self.cfg_scale == 1.0 or not self._guides_at(t):
                plain: torch.Tensor = self.model(x, t, y=y, **kwargs).float()
                return plain
            assert y is not None and self.null_label is not None  # check_cfg: guidance needs labels and a null label
            null = torch.full_like(y, self.null_label)
            doubled = {name: torch.cat([value, value]) for name, value in kwargs.items()}
            out = self.model(torch.cat([x, x]), torch.cat([t, t]), y=torch.cat([y, null]), **doubled).float()
        cond, uncond = out.chunk(2)
        channels = x.shape[1]
        mean = uncond[:, :channels] + self.cfg_scale * (cond[:, :channels] - uncond[:, :channels])
        return torch.cat([mean, cond[:, channels:]], dim=1)

    def _guides_at(self, t: torch.Tensor) -> bool:
        """Whether this step is inside `cfg_interval` (samplers give every sample the same t)."""
        if self.cfg_interval is None:
            return True
        lo, hi = self.cfg_interval
        return bool(((t >= lo) & (t <= hi)).any())


class SteeredGuidance:
    """A classifier `cond_fn` with a guidance interval and a scale schedule over the original timestep t.

    The applied gradient is w(t) * cond_fn(x, t), with w(t) = 0 outside `interval` = (LO, HI) (there the
    classifier's forward and backward pass are skipped altogether), and inside, with u = t / (T - 1):
        constant: w = 1;  linear: w = 2 (1 - u);  cosine: w = 1 + cos(pi u).
    linear and cosine average 1 over t and give more guidance at low noise, as the schedules of Wang et
    al. (2024) that improve on a constant scale; Kynkaanniemi et al. (2024) found guidance at high noise
    harmful, which the interval removes. Samplers read `weight(t)` through `diffusion.stepping.guidance_weight`.
    """

    def __init__(
        self,
        cond_fn: Callable[..., torch.Tensor],
        *,
        num_timesteps: int,
        interval: tuple[float, float] | None = None,
        schedule: str = "constant",
        model_time_scale: float = 1.0,
    ):
        check_guidance_schedule(schedule)
        self.cond_fn = cond_fn
        self.num_timesteps = int(num_timesteps)
        self.interval = check_interval(interval, "guidance_interval")
        self.schedule = schedule
        self.model_time_scale = float(model_time_scale)  # model time = original t * this (1000 / T when rescaled)

    def weight_at_model_time(self, t: torch.Tensor) -> float:
        """w(t) for the timestep tensor handed to cond_fn (every sample has the same t)."""
        return self.weight(float(t.flatten()[0]) / self.model_time_scale)

    def weight(self, t: float) -> float:
        """w(t) for an original timestep t (fractional allowed)."""
        if self.interval is not None and not self.interval[0] <= t <= self.interval[1]:
            return 0.0
        u = min(max(t / max(self.num_timesteps - 1, 1), 0.0), 1.0)
        if self.schedule == "linear":
            return 2.0 * (1.0 - u)
        if self.schedule == "cosine":
            return 1.0 + math.cos(math.pi * u)
        return 1.0

    def __call__(self, x: torch.Tensor, t: torch.Tensor, **kwargs: Any) -> torch.Tensor:
        return self.cond_fn(x, t, **kwargs)


GUIDANCE_SCALINGS = ("none", "entropy")


def check_guidance_scaling(scaling: str) -> None:
    """SettingError naming `guidance_scaling` unless it is one of GUIDANCE_SCALINGS."""
    if scaling not in GUIDANCE_SCALINGS:
        raise SettingError("guidance_scaling", f"guidance_scaling {scaling!r} is unknown; "
                           f"choose one of {', '.join(GUIDANCE_SCALINGS)}")


def entropy_scale(log_probs: torch.Tensor) -> torch.Tensor:
    """Entropy-driven scaling (EDS, Zheng et al. 2022): per sample, log(C) / H(p(. | x_t)), with H the
    entropy of the classifier's prediction in nats and C its number of classes. A confident classifier
    (low entropy) has a vanishing gradient; this factor (>= 1) brings the guidance back. Shape [N]."""
    entropy = -(log_probs.exp() * log_probs).sum(dim=-1)
    return math.log(log_probs.shape[-1]) / entropy.clamp(min=1e-6)


def classifier_cond_fn(
    classifier: torch.nn.Module, scale: float, *, autocast_dtype: torch.dtype | None = None, scaling: str = "none",
) -> Callable[..., torch.Tensor]:
    """cond_fn(x, t, y) = scale * grad_x log softmax(classifier(x, t))[y], one forward and one backward pass.

    Dhariwal & Nichol (2021), Algorithms 1 and 2; the same function the original `classifier_sample.py`
    builds. `t` is the original (unspaced) timestep, as the classifier was trained on. `scaling="entropy"`
    multiplies each sample's gradient by `entropy_scale` of the same forward pass (no extra evaluation).
    With `autocast_dtype` the forward and backward pass run in that dtype (a classifier prepared by
    `prepare_for_bf16` without autocast); the softmax and the returned gradient are float32.
    """
    check_guidance_scaling(scaling)

    def cond_fn(x: torch.Tensor, t: torch.Tensor, y: torch.Tensor | None = None, **_: Any) -> torch.Tensor:
        if y is None:
            raise ValueError("classifier guidance needs class labels y")
        with torch.enable_grad():
            x_in = x.detach().requires_grad_(True)
            with autocast_for(classifier, x.device, autocast_dtype):
                logits = classifier(x_in, t)
            log_probs = F.log_softmax(logits.float(), dim=-1)
            selected = log_probs[torch.arange(len(logits), device=logits.device), y.view(-1)]
            gradient = torch.autograd.grad(selected.sum(), x_in)[0] * scale
        if scaling == "entropy":
            gradient = gradient * entropy_scale(log_probs.detach()).view(-1, *([1] * (x.ndim - 1))).to(gradient.dtype)
        return gradient

    return cond_fn


def dynamic_threshold(percentile: float) -> Callable[[torch.Tensor], torch.Tensor]:
    """Dynamic thresholding of Imagen (Saharia et al. 2022): per sample, s = max(1, quantile(|x0|, p)),
    then x0 <- clamp(x0, -s, s) / s. Keeps large guidance scales from saturating pixels. A percentile
    outside (0, 1] raises SettingError naming `dynamic_threshold` (the setting that holds it)."""
    if not 0.0 < percentile <= 1.0:
        raise SettingError("dynamic_threshold", f"dynamic_threshold must be a percentile in (0, 1], got {percentile}")

    def threshold(x0: torch.Tensor) -> torch.Tensor:
        s = torch.quantile(x0.detach().abs().flatten(1).float(), percentile, dim=1).clamp(min=1.0)
        s = s.to(x0.dtype).view(-1, *([1] * (x0.ndim - 1)))
        return torch.maximum(torch.minimum(x0, s), -s) / s

    return threshold
