"""What a diffusion model's output means and how it is trained: the three choices that fix a
`GaussianDiffusion` besides its schedule (the original's enums, same members and values)."""
from __future__ import annotations

import enum

__all__ = ["ModelMeanType", "ModelVarType", "LossType"]


class ModelMeanType(enum.Enum):
    """What the model's (first C) output channels predict."""

    PREVIOUS_X = enum.auto()  # x_{t-1}
    START_X = enum.auto()  # x_0
    EPSILON = enum.auto()  # the noise


class ModelVarType(enum.Enum):
    """How the reverse-process variance is chosen."""

    LEARNED = enum.auto()  # the model outputs log-variance
    FIXED_SMALL = enum.auto()  # posterior variance beta~_t
    FIXED_LARGE = enum.auto()  # beta_t (beta~_1 at t = 0)
    LEARNED_RANGE = enum.auto()  # the model interpolates between log beta~_t and log beta_t


class LossType(enum.Enum):
    MSE = enum.auto()  # raw MSE (+ the unscaled VB term when the variance is learned)
    RESCALED_MSE = enum.auto()  # the VB term scaled by T/1000
    KL = enum.auto()  # the variational bound
    RESCALED_KL = enum.auto()  # the bound times T

    def is_vb(self) -> bool:
        return self in (LossType.KL, LossType.RESCALED_KL)
