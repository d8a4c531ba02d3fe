"""Building the diffusion process from the original's settings (`create_gaussian_diffusion`, which
`guided_diffusion.script_util` re-exports and `DiffusionConfig.build()` calls)."""
from __future__ import annotations

from collections.abc import Iterable

from guided_diffusion.diffusion.gaussian import LossType, ModelMeanType, ModelVarType
from guided_diffusion.diffusion.respace import SpacedDiffusion, parse_respacing
from guided_diffusion.diffusion.schedules import NOISE_SCHEDULES, get_named_beta_schedule
from guided_diffusion.runtime.errors import SettingError


def create_gaussian_diffusion(
    *, steps: int = 1000, learn_sigma: bool = False, sigma_small: bool = False, noise_schedule: str = "linear",
    use_kl: bool = False, predict_xstart: bool = False, rescale_timesteps: bool = False,
    rescale_learned_sigmas: bool = False, timestep_respacing: str | Iterable[int] = "",
) -> SpacedDiffusion:
    """The diffusion: always a SpacedDiffusion (the identity spacing when no respacing is asked).
    `timestep_respacing` is the original's string ("250", "10,15,20", "ddim50") or the timesteps to keep."""
    if noise_schedule not in NOISE_SCHEDULES:
        raise SettingError("noise_schedule", f"noise_schedule {noise_schedule!r} is not one of {', '.join(NOISE_SCHEDULES)}")
    betas = get_named_beta_schedule(noise_schedule, steps)
    if use_kl:
        loss_type = LossType.RESCALED_KL
    elif rescale_learned_sigmas:
        loss_type = LossType.RESCALED_MSE
    else:
        loss_type = LossType.MSE
    if learn_sigma:
        var_type = ModelVarType.LEARNED_RANGE
    else:
        var_type = ModelVarType.FIXED_SMALL if sigma_small else ModelVarType.FIXED_LARGE
    use_timesteps = (parse_respacing(steps, timestep_respacing) if isinstance(timestep_respacing, str)
                     else set(timestep_respacing))
    return SpacedDiffusion(
        use_timesteps=use_timesteps,
        betas=betas,
        model_mean_type=ModelMeanType.START_X if predict_xstart else ModelMeanType.EPSILON,
        model_var_type=var_type,
        loss_type=loss_type,
        rescale_timesteps=rescale_timesteps,
    )
