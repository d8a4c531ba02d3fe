"""Compatibility shim: the original `guided_diffusion.nn` helpers, re-exported from guided_diffusion.models.layers."""
from guided_diffusion.models.layers import (  # noqa: F401
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
from torch.nn import SiLU  # noqa: F401
