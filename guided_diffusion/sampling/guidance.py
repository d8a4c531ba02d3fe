"""Guidance: classifier gradients, classifier-free guidance, and dynamic thresholding.

Both kinds of guidance compose: classifier-free guidance changes what the model predicts
(`GuidedModel`), classifier guidance adds a gradient through `cond_fn` (`classifier_cond_fn`), and every
sampler accepts both.
"""
from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F

__all__ = ["GuidedModel", "classifier_cond_fn", "dynamic_threshold", "autocast"]


def autocast(device: torch.device, dtype: torch.dtype | None) -> contextlib.AbstractContextManager:
    """`torch.autocast` to `dtype` on `device`, or a no-op when dtype is None."""
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


class GuidedModel:
    """The model as samplers call it: `model(x, t, y=None, **kwargs)` returning float32 output.

    - Drops `y` for a model that is not class-conditional, so a classifier can guide an unconditional
      model with the same labels (as the original `classifier_sample.py` does).
    - Classifier-free guidance (Ho & Salimans 2022) when `cfg_scale != 1`: cond and uncond predictions
      come from one batched forward pass, the uncond half with the null label `null_label`, and
      out = out_uncond + cfg_scale * (out_cond - out_uncond) on the mean channels (eps or x0: both are
      affine in the output); learned-variance channels are taken from the conditional half.
    - Optional autocast (bf16 on GPU).
    """

    def __init__(
        self,
        model: torch.nn.Module,
        *,
        class_cond: bool,
        cfg_scale: float = 1.0,
        null_label: int | None = None,
        autocast_dtype: torch.dtype | None = None,
    ):
        if cfg_scale != 1.0 and (not class_cond or null_label is None):
            raise ValueError("classifier-free guidance needs a class-conditional model with a null label")
        self.model = model
        self.class_cond = class_cond
        self.cfg_scale = float(cfg_scale)
        self.null_label = null_label
        self.autocast_dtype = autocast_dtype

    def __call__(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor | None = None, **kwargs: Any) -> torch.Tensor:
        y = y if self.class_cond else None
        with autocast(x.device, self.autocast_dtype):
            if self.cfg_scale == 1.0:
                return self.model(x, t, y=y, **kwargs).float()
            null = torch.full_like(y, self.null_label)
            doubled = {name: torch.cat([value, value]) for name, value in kwargs.items()}
            out = self.model(torch.cat([x, x]), torch.cat([t, t]), y=torch.cat([y, null]), **doubled).float()
        cond, uncond = out.chunk(2)
        channels = x.shape[1]
        mean = uncond[:, :channels] + self.cfg_scale * (cond[:, :channels] - uncond[:, :channels])
        return torch.cat([mean, cond[:, channels:]], dim=1)


def classifier_cond_fn(
    classifier: torch.nn.Module, scale: float, *, autocast_dtype: torch.dtype | None = None
) -> Callable[..., torch.Tensor]:
    """cond_fn(x, t, y) = scale * grad_x log softmax(classifier(x, t))[y], one forward and one backward pass.

    Dhariwal & Nichol (2021), Algorithms 1 and 2; the same function the original `classifier_sample.py`
    builds. `t` is the original (unspaced) timestep, as the classifier was trained on.
    """

    def cond_fn(x: torch.Tensor, t: torch.Tensor, y: torch.Tensor | None = None, **_: Any) -> torch.Tensor:
        if y is None:
            raise ValueError("classifier guidance needs class labels y")
        with torch.enable_grad():
            x_in = x.detach().requires_grad_(True)
            with autocast(x.device, autocast_dtype):
                logits = classifier(x_in, t)
            log_probs = F.log_softmax(logits.float(), dim=-1)
            selected = log_probs[torch.arange(len(logits), device=logits.device), y.view(-1)]
            return torch.autograd.grad(selected.sum(), x_in)[0] * scale

    return cond_fn


def dynamic_threshold(percentile: float) -> Callable[[torch.Tensor], torch.Tensor]:
    """Dynamic thresholding of Imagen (Saharia et al. 2022): per sample, s = max(1, quantile(|x0|, p)),
    then x0 <- clamp(x0, -s, s) / s. Keeps large guidance scales from saturating pixels."""
    if not 0.0 < percentile <= 1.0:
        raise ValueError(f"dynamic threshold percentile must be in (0, 1], got {percentile}")

    def threshold(x0: torch.Tensor) -> torch.Tensor:
        s = torch.quantile(x0.detach().abs().flatten(1).float(), percentile, dim=1).clamp(min=1.0)
        s = s.to(x0.dtype).view(-1, *([1] * (x0.ndim - 1)))
        return torch.maximum(torch.minimum(x0, s), -s) / s

    return threshold
