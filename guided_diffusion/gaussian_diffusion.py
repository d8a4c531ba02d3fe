"""Compatibility shim: the original `guided_diffusion.gaussian_diffusion` names, from guided_diffusion.diffusion."""
from guided_diffusion.diffusion.gaussian import (
    GaussianDiffusion,
    LossType,
    ModelMeanType,
    ModelVarType,
    _extract_into_tensor,
)
from guided_diffusion.diffusion.schedules import betas_for_alpha_bar, get_named_beta_schedule

__all__ = [
    "GaussianDiffusion", "LossType", "ModelMeanType", "ModelVarType", "_extract_into_tensor",
    "betas_for_alpha_bar", "get_named_beta_schedule",
]
