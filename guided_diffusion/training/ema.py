"""EMA warm-up: the decay of the weight average rises from 0 towards its rate, so an early EMA is not
dominated by the random initial weights.

The schedule is the power ("inverse decay") warm-up of Karras et al. as implemented in k-diffusion's
`EMAWarmup` (and EDM's training code): after k optimizer steps

    decay(k) = min(rate, max(0, 1 - (1 + k / inv_gamma) ** -power))

With inv_gamma = 1, power = 1 it is a plain running mean (decay = k / (k + 1)); power = 2/3 reaches
0.999 after about 31.6k steps and 0.9999 after 1M, power = 3/4 reaches 0.999 after 10k steps. The
fixed `rate` of the original is the cap.
"""
from __future__ import annotations

from dataclasses import dataclass

__all__ = ["EMAWarmup", "warmup_decay"]


def warmup_decay(step: int, rate: float, *, power: float = 2.0 / 3.0, inv_gamma: float = 1.0) -> float:
    """decay(k) = clamp(1 - (1 + k / inv_gamma) ** -power, 0, rate) for k = `step` updates done so far."""
    if power <= 0 or inv_gamma <= 0:
        raise ValueError(f"EMA warm-up needs power > 0 and inv_gamma > 0 (got {power}, {inv_gamma})")
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
        if self.power <= 0 or self.inv_gamma <= 0:
            raise ValueError(f"EMA warm-up needs power > 0 and inv_gamma > 0 (got {self.power}, {self.inv_gamma})")

    def decay(self, rate: float, step: int) -> float:
        return warmup_decay(step, rate, power=self.power, inv_gamma=self.inv_gamma)
