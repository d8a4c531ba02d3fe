"""Compatibility shim: the original `resample` module, re-exported from `guided_diffusion.training.timestep_sampling`."""
from guided_diffusion.training.timestep_sampling import (
    LossAwareSampler,
    LossSecondMomentResampler,
    ScheduleSampler,
    UniformSampler,
    create_named_schedule_sampler,
)

__all__ = [
    "create_named_schedule_sampler", "ScheduleSampler", "UniformSampler", "LossAwareSampler",
    "LossSecondMomentResampler",
]
