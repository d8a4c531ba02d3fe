"""Compatibility shim: the original `fp16_util` module, re-exported from `guided_diffusion.training.precision`."""
from guided_diffusion.training.precision import (
    INITIAL_LOG_LOSS_SCALE,
    MixedPrecisionTrainer,
    convert_module_to_f16,
    convert_module_to_f32,
)

__all__ = ["INITIAL_LOG_LOSS_SCALE", "MixedPrecisionTrainer", "convert_module_to_f16", "convert_module_to_f32"]
