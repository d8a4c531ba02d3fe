"""Compatibility shim: the original `guided_diffusion.respace` names, from guided_diffusion.diffusion.respace."""
from guided_diffusion.diffusion.respace import SpacedDiffusion, _WrappedModel, space_timesteps

__all__ = ["SpacedDiffusion", "_WrappedModel", "space_timesteps"]
