"""Compatibility shim: the original `guided_diffusion.unet` names, re-exported from guided_diffusion.models."""
from guided_diffusion.models.attention import (
    AttentionBlock,
    AttentionPool2d,
    QKVAttention,
    QKVAttentionLegacy,
)
from guided_diffusion.models.layers import convert_module_to_f16, convert_module_to_f32
from guided_diffusion.models.unet import (
    Downsample,
    EncoderUNetModel,
    ResBlock,
    SuperResModel,
    TimestepBlock,
    TimestepEmbedSequential,
    UNetModel,
    Upsample,
)

__all__ = [
    "AttentionBlock", "AttentionPool2d", "QKVAttention", "QKVAttentionLegacy", "convert_module_to_f16",
    "convert_module_to_f32", "Downsample", "EncoderUNetModel", "ResBlock", "SuperResModel", "TimestepBlock",
    "TimestepEmbedSequential", "UNetModel", "Upsample",
]
