"""Where an edit starts on the step grid, and the labels it is conditioned on."""
from __future__ import annotations

from typing import Any

import numpy as np
import torch

__all__ = ["model_kwargs_of", "start_points"]


def start_points(strength: float, num_steps: int) -> int:
    """Grid points an edit of `strength` in (0, 1] walks: round(strength * num_steps), at least one.
    The edit starts at grid point start_points - 1 (`denoiser.truncated(start_points)`'s top)."""
    if not 0.0 < strength <= 1.0:
        raise ValueError(f"strength must be in (0, 1], got {strength}")
    return max(1, int(np.rint(strength * num_steps)))


def model_kwargs_of(labels: Any, device: torch.device) -> dict[str, torch.Tensor]:
    """{"y": labels} on `device`, or {} without labels."""
    if labels is None:
        return {}
    return {"y": torch.as_tensor(np.asarray(labels), dtype=torch.long, device=device)}
