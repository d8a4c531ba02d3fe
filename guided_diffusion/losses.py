"""Compatibility shim: the original `guided_diffusion.losses` names, from guided_diffusion.diffusion.losses."""
from guided_diffusion.diffusion.losses import (
    approx_standard_normal_cdf,
    discretized_gaussian_log_likelihood,
    normal_kl,
)

__all__ = ["approx_standard_normal_cdf", "discretized_gaussian_log_likelihood", "normal_kl"]
