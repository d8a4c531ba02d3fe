"""Exponential moving averages of the weights: the update, the `ema_rate` setting, and the warm-up.

`update_ema` is the original's `nn.update_ema` (re-exported there) and what the trainer calls for every
rate. The warm-up lets the decay of the average rise from 0 towards its rate, so an early EMA is not
dominated by the random initial weights. The schedule is the power ("inverse decay") warm-up of Karras
et al. as implemented in k-diffusion's `EMAWarmup` (and EDM's training code): after k optimizer steps

    decay(k) = min(rate, max(0, 1 - (1 + k / inv_gamma) ** -power))

With inv_gamma = 1, power = 1 it is a plain running mean (decay = k / (k + 1)); power = 2/3 reaches
0.999 after about 31.6k steps and 0.9999 after 1M, power = 3/4 reaches 0.999 after 10k steps. The
fixed `rate` of the original is the cap.
"""
from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import torch

from guided_diffusion.runtime.errors import SettingError

__all__ = ["EMAWarmup", "parse_ema_rates", "update_ema", "warmup_decay"]


def update_ema(target_params: Iterable[torch.Tensor], source_params: Iterable[torch.Tensor], rate: float = 0.99) -> None:
    """target <- rate * target + (1 - rate) * source, in place, with the original's arithmetic (multiply,
    then add), so EMA checkpoints match it bit for bit."""
    targets, sources = list(target_params), list(source_params)
    with torch.no_grad():
        if targets and all(t.dtype == s.dtype and t.device == s.device for t, s in zip(targets, sources)):
            torch._foreach_mul_(targets, rate)  # two fused kernels instead of two per tensor
            torch._foreach_add_(targets, sources, alpha=1.0 - rate)
            return
        for target, source in zip(targets, sources):
            target.mul_(rate).add_(source.to(target), alpha=1.0 - rate)


def parse_ema_rates(ema_rate: str | float) -> list[float]:
    """The rates of an `ema_rate` setting: a number or a comma list ("0.9999,0.999"); "" keeps no EMA.
    Every rate lies strictly between 0 and 1."""
    if isinstance(ema_rate, (int, float)):
        parts = [str(ema_rate)]
    else:
        text = str(ema_rate).strip()
        parts = text.split(",") if text else []
    try:
        rates = [float(part) for part in parts]
    except ValueError:
        raise SettingError("ema_rate", f"ema_rate {ema_rate!r} is not a comma list of numbers: use e.g. 0.9999 or 0.9999,0.999") from None
    for rate in rates:
        if not 0.0 < rate < 1.0:
            raise SettingError("ema_rate", f"ema_rate {ema_rate}: every rate must lie strictly between 0 and 1 (e.g. 0.9999), got {rate}")
    return rates


def _check_warmup(power: float, inv_gamma: float) -> None:
    if power <= 0:
        raise SettingError("ema_warmup_power", f"ema_warmup_power must be positive (got {power})")
    if inv_gamma <= 0:
        raise ValueError(f"EMA warm-up needs inv_gamma > 0 (got {inv_gamma})")


def warmup_decay(step: int, rate: float, *, power: float = 2.0 / 3.0, inv_gamma: float = 1.0) -> float:
    """decay(k) = clamp(1 - (1 + k / inv_gamma) ** -power, 0, rate) for k = `step` updates done so far."""
    _check_warmup(power, inv_gamma)
    if step < 0:
        return 0.0
    value = 1.0 - (1.0 + step / inv_gamma) ** -power
    return min(rate, max(0.0, value))


@dataclass(frozen=True)
class EMAWarmup:
    """The warm-up settings of a run; `decay(rate, step)` is what the trainer multiplies the EMA by."""

    power: float = 2.0 / 3.0
    inv_gamma: float = 1.0

    def __post_init__(self) -> None:
        _check_warmup(self.power, self.inv_gamma)

    def decay(self, rate: float, step: int) -> float:
        return warmup_decay(step, rate, power=self.power, inv_gamma=self.inv_gamma)
