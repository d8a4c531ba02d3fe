"""Compatibility shim: the original `guided_diffusion.unet` names, re-exported from guided_diffusion.models."""
from guided_diffusion.models.attention import (  # noqa: F401
    AttentionBlock,
    AttentionPool2d,
    QKVAttention,
    QKVAttentionLegacy,
)
from guided_diffusion.models.layers import convert_module_to_f16, convert_module_to_f32  # noqa: F401
from guided_diffusion.models.unet import (  # noqa: F401
    Downsample,
    EncoderUNetModel,
    ResBlock,
    SuperResModel,
    TimestepBlock,
    TimestepEmbedSequential,
    UNetModel,
    Upsample,
)
