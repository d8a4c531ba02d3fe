"""Step grids: diffusers' timestep spacings, Karras and log-SNR grids, fractional timesteps, and the
guidance multiplier of the default grid on a cosine schedule."""
from __future__ import annotations

import math
import warnings

import numpy as np
import pytest

from guided_diffusion.diffusion.grids import (
    DEFAULT_GRID,
    GRIDS,
    SATURATION_MULTIPLIER,
    guidance_multipliers,
    integer_timesteps,
    make_grid,
    saturated_first_step,
    timestep_of_alphas_cumprod,
)
from guided_diffusion.diffusion.respace import space_timesteps
from guided_diffusion.diffusion.schedules import get_named_beta_schedule
from guided_diffusion.runtime.errors import SettingError


def schedule(name: str, steps: int = 1000) -> np.ndarray:
    return np.cumprod(1.0 - get_named_beta_schedule(name, steps))


def test_integer_grids_follow_diffusers_timestep_spacing():
    assert integer_timesteps("linspace", 10, 1000).tolist() == [0, 111, 222, 333, 444, 555, 666, 777, 888, 999]
    assert integer_timesteps("leading", 10, 1000).tolist() == list(range(0, 1000, 100))
    assert integer_timesteps("trailing", 10, 1000).tolist() == list(range(99, 1000, 100))
    assert integer_timesteps("trailing", 3, 1000).tolist() == [332, 666, 999]
    # leading is the original's ddimN; linspace is the old `--steps N` (respacing "N")
    for n in (4, 10, 25, 50):
        assert integer_timesteps("leading", n, 1000).tolist() == sorted(space_timesteps(1000, f"ddim{n}"))
    for n in (4, 7, 10, 25, 250):
        assert integer_timesteps("linspace", n, 1000).tolist() == sorted(space_timesteps(1000, str(n)))


@pytest.mark.parametrize("kind", ["linspace", "leading", "trailing"])
def test_integer_grids_take_the_schedule_at_their_steps(kind):
    abar = schedule("cosine")
    grid = make_grid(kind, 8, abar)
    steps = integer_timesteps(kind, 8, 1000)
    np.testing.assert_array_equal(grid.timesteps, steps)
    np.testing.assert_array_equal(grid.alphas_cumprod, abar[steps])


def test_karras_grid():
    abar = schedule("linear")
    grid = make_grid("karras", 12, abar, sigma_min=0.02, sigma_max=50.0)
    sigmas = np.sqrt((1 - grid.alphas_cumprod) / grid.alphas_cumprod)[::-1]
    assert sigmas[0] == pytest.approx(50.0) and sigmas[-1] == pytest.approx(0.02)
    # uniform in sigma^(1/7)
    np.testing.assert_allclose(np.diff(sigmas ** (1 / 7)), np.diff(sigmas ** (1 / 7))[0], rtol=1e-9)
    # defaults: the model's sigma at t = 0 and min(80, sigma at T-1)
    default = make_grid("karras", 12, abar)
    assert default.timesteps[0] == pytest.approx(0.0, abs=1e-9)
    assert math.sqrt((1 - default.alphas_cumprod[-1]) / default.alphas_cumprod[-1]) == pytest.approx(
        min(80.0, math.sqrt((1 - abar[-1]) / abar[-1])))


def test_logsnr_grid_is_uniform_in_log_snr_and_timesteps_interpolate():
    abar = schedule("cosine")
    grid = make_grid("logsnr", 9, abar)
    lam = 0.5 * np.log(grid.alphas_cumprod / (1 - grid.alphas_cumprod))
    np.testing.assert_allclose(np.diff(lam), np.diff(lam)[0], rtol=1e-9)
    assert (np.diff(grid.timesteps) > 0).all() and not np.allclose(grid.timesteps, np.round(grid.timesteps))
    # a trained level maps to its integer step; a level between two steps lands between them
    t = timestep_of_alphas_cumprod(abar[[10, 500, 990]], np.arange(1000), abar)
    np.testing.assert_allclose(t, [10, 500, 990], atol=1e-9)
    mid = math.exp(0.5 * (math.log(abar[500]) + math.log(abar[501])))
    assert 500 < timestep_of_alphas_cumprod(np.array([mid]), np.arange(1000), abar)[0] < 501


def test_bad_grids_are_setting_errors_naming_the_setting():
    abar = schedule("cosine", 50)
    for kwargs, setting, message in [
        (dict(kind="fibonacci", num_steps=5), "step_grid", "step_grid 'fibonacci' is unknown"),
        (dict(kind="karras", num_steps=1), "steps", "steps must be >= 2"),
        (dict(kind="leading", num_steps=60), "steps", "steps must be <="),
        (dict(kind="leading", num_steps=5, sigma_max=3.0), "sigma_max", "sigma_max applies to karras and logsnr grids"),
        (dict(kind="karras", num_steps=5, sigma_min=5.0, sigma_max=1.0), "sigma_min", "sigma_min < sigma_max"),
    ]:
        with pytest.raises(SettingError, match=message) as info:
            make_grid(alphas_cumprod=abar, **kwargs)
        assert info.value.setting == setting
    with pytest.raises(SettingError, match="not an integer grid") as info:
        integer_timesteps("karras", 5, 50)
    assert info.value.setting == "step_grid"
    with pytest.raises(SettingError, match="does not fit") as info:
        integer_timesteps("linspace", 60, 50)  # more steps than timesteps: rounding repeats some
    assert info.value.setting == "steps"


def test_default_grid_never_takes_a_saturated_guided_step_on_a_cosine_schedule():
    """The default grid's largest guidance multiplier over every step count from 2 to 250 stays below 1.6
    (measured worst: 1.33, at 250 steps).

    Why: a DDIM step from level k to k-1 moves x by alpha_{k-1} sigma_k^2 / alpha_k - sigma_{k-1} sigma_k
    per unit of classifier gradient. At t = T-1 a cosine schedule has alpha_bar = 2.4e-9 (beta clipped to
    0.999 there), so a grid that starts at T-1 divides by alpha = 5e-5. The default (leading) grid starts
    at T - T/N, never at T-1, and the levels it steps between keep the two terms of the multiplier close
    (about 1, like the original's ddim20). The old linspace grid's first step takes thousands."""
    abar = schedule("cosine")
    worst = max(guidance_multipliers(make_grid(None, n, abar).alphas_cumprod).max() for n in range(2, 251))
    assert worst < 1.6
    assert DEFAULT_GRID in GRIDS
    assert saturated_first_step(make_grid("linspace", 25, abar).alphas_cumprod) > 1000
    assert saturated_first_step(make_grid(None, 25, abar).alphas_cumprod) is None
    assert SATURATION_MULTIPLIER < 1000


def test_original_ddim20_grid_multiplier_is_about_one():
    # The figure quoted in the issue: the ddim20 grid's first guided step has a multiplier of about 1.
    abar = schedule("cosine")
    first = guidance_multipliers(abar[sorted(space_timesteps(1000, "ddim20"))])[-1]
    assert 0.8 < first < 1.2
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert saturated_first_step(abar[sorted(space_timesteps(1000, "ddim20"))]) is None
