"""Noise schedules (beta_t for t = 0..T-1), computed in float64 as the released models were trained."""
from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np

from guided_diffusion.runtime.errors import SettingError

NOISE_SCHEDULES = ("linear", "cosine")


def get_named_beta_schedule(schedule_name: str, num_diffusion_timesteps: int) -> np.ndarray:
    """The betas of a named schedule: "linear" (Ho et al., rescaled to T steps) or "cosine" (Nichol &
    Dhariwal). Existing schedules never change: checkpoints depend on them."""
    if schedule_name == "linear":
        # Scaled so any T keeps the shape of the 1000-step schedule; beta_end reaches 1 at T = 20.
        scale = 1000 / num_diffusion_timesteps
        if 0.02 * scale > 1.0:
            raise SettingError(
                "diffusion_steps",
                f"the linear schedule needs diffusion_steps >= 20 (got {num_diffusion_timesteps}, which makes "
                "beta_T > 1); use more diffusion steps or the cosine noise_schedule",
            )
        return np.linspace(scale * 0.0001, scale * 0.02, num_diffusion_timesteps, dtype=np.float64)
    if schedule_name == "cosine":
        return betas_for_alpha_bar(
            num_diffusion_timesteps, lambda t: math.cos((t + 0.008) / 1.008 * math.pi / 2) ** 2
        )
    raise NotImplementedError(f"unknown beta schedule: {schedule_name}")


def betas_for_alpha_bar(num_diffusion_timesteps: int, alpha_bar: Callable[[float], float], max_beta: float = 0.999) -> np.ndarray:
    """Betas that make prod(1 - beta) follow alpha_bar(t) on t in [0, 1]; each clipped at max_beta
    (only the last one is, for the cosine schedule; the 64x64 checkpoint was trained that way)."""
    betas = []
    for i in range(num_diffusion_timesteps):
        t1 = i / num_diffusion_timesteps
        t2 = (i + 1) / num_diffusion_timesteps
        betas.append(min(1 - alpha_bar(t2) / alpha_bar(t1), max_beta))
    return np.array(betas)
