"""Former home of the sampler settings, batch drawing and rank gathering; kept only so importers that
have not switched yet keep working. New code imports from the modules named below.

- `SamplerSettings`, `grid_denoiser`: `sampling.settings`
- `draw`, `class_labels_for`, `to_numpy_uint8`, `warn_if_saturated`: `sampling.draw`
- `gather_in_order`, `BatchStore`: `sampling.ranks`
"""
from __future__ import annotations

from guided_diffusion.sampling.draw import class_labels_for, draw, to_numpy_uint8, warn_if_saturated
from guided_diffusion.sampling.ranks import BatchStore, gather_in_order
from guided_diffusion.sampling.settings import SamplerSettings, grid_denoiser

__all__ = [
    "SamplerSettings", "grid_denoiser", "draw", "class_labels_for", "gather_in_order", "BatchStore", "warn_if_saturated",
    "to_numpy_uint8",
]
