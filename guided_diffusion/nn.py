"""Compatibility shim: the original `guided_diffusion.nn` helpers, re-exported from guided_diffusion.models.layers."""
from torch.nn import SiLU

from guided_diffusion.models.layers import (
    GroupNorm32,
    avg_pool_nd,
    checkpoint,
    conv_nd,
    linear,
    mean_flat,
    normalization,
    scale_module,
    timestep_embedding,
    update_ema,
    zero_module,
)

__all__ = [
    "SiLU", "GroupNorm32", "avg_pool_nd", "checkpoint", "conv_nd", "linear", "mean_flat", "normalization",
    "scale_module", "timestep_embedding", "update_ema", "zero_module",
]
