"""Compatibility shim: the original `guided_diffusion.nn` helpers, re-exported from guided_diffusion.models.layers
(`update_ema` from guided_diffusion.training.ema)."""
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
    zero_module,
)
from guided_diffusion.training.ema import update_ema

__all__ = [
    "SiLU", "GroupNorm32", "avg_pool_nd", "checkpoint", "conv_nd", "linear", "mean_flat", "normalization",
    "scale_module", "timestep_embedding", "update_ema", "zero_module",
]
