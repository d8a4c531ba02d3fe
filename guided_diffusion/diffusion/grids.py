"""Step grids: which noise levels a sampler visits, for a model trained on T discrete steps.

A grid is K noise levels, index 0 the least noisy and K-1 the noisiest (the `Denoiser` convention),
given as `alphas_cumprod` plus the matching, possibly fractional, model timestep in 0..T-1. The sampler
walks it from K-1 down to 0 and then to clean data.

- linspace, leading, trailing: integer timesteps, defined as diffusers' `timestep_spacing` (Lin et al.
  2024, table 2): linspace = round(linspace(0, T-1, K)) (this package's old `--steps K`, ends at T-1),
  leading = (0, 1, ..., K-1) * (T // K) (the original's `ddimK` when K divides T), trailing =
  round(arange(T, 0, -T/K)) - 1 (starts at T-1, ends at T/K - 1).
- karras: sigma_i = (sigma_max^(1/rho) + i/(K-1) (sigma_min^(1/rho) - sigma_max^(1/rho)))^rho, rho = 7
  (Karras et al. 2022, eq. 5), in the variance-exploding sigma = sqrt((1 - abar) / abar) of the model.
- logsnr: uniform in lambda = log(alpha / sigma) = -log(sigma_VE).
- a file `NAME.json` (written by `guided-diffusion tune_steps`): the VE sigmas of a grid tuned for one
  model, classifier, scale and sampler (`read_grid_file`).

`sigma_min` / `sigma_max` (VE sigmas) bound karras and logsnr grids; sigma_min defaults to the model's
sigma(t=0) and sigma_max to min(80, sigma(t=T-1)): 80 is EDM's sigma_max for ADM models (Karras et al.
2022, table 1), and above it a cosine schedule (sigma(T-1) = 2e4 after beta clipping) only spends steps
on pure noise.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass

import numpy as np

from guided_diffusion.runtime.errors import SettingError

__all__ = [
    "GRIDS", "DEFAULT_GRID", "StepGrid", "make_grid", "integer_timesteps", "timestep_of_alphas_cumprod",
    "guidance_multipliers", "saturated_first_step", "GRID_FILE_FORMAT", "read_grid_file", "grid_file_document",
    "is_grid_file",
]

GRIDS = ("linspace", "leading", "trailing", "karras", "logsnr")
KARRAS_RHO = 7.0
DEFAULT_SIGMA_MAX = 80.0
# The grid `--steps` uses when none is named; chosen by benchmarks/bench_samplers.py (see RESULTS.md).
DEFAULT_GRID = "leading"
# A DDIM step whose x_{k-1} moves by more than this many units per unit of classifier gradient is
# "saturated": the guidance overwhelms the sample (the old linspace grid's first step on a cosine
# schedule is far beyond it; every leading/karras-from-t=T/K grid stays below about 2).
SATURATION_MULTIPLIER = 10.0


@dataclass(frozen=True)
class StepGrid:
    """K noise levels: `alphas_cumprod[k]` and the model timestep `timesteps[k]` (float, 0..T-1)."""

    name: str
    alphas_cumprod: np.ndarray
    timesteps: np.ndarray

    def __len__(self) -> int:
        return len(self.alphas_cumprod)


def integer_timesteps(kind: str, num_steps: int, num_timesteps: int) -> np.ndarray:
    """Ascending integer timesteps of a linspace/leading/trailing grid (diffusers' `timestep_spacing`).
    A kind or step count that cannot make one raises SettingError naming `step_grid` or `steps`."""
    steps: np.ndarray
    if kind == "linspace":
        steps = np.round(np.linspace(0, num_timesteps - 1, num_steps))
    elif kind == "leading":
        steps = np.arange(num_steps) * (num_timesteps // num_steps)
    elif kind == "trailing":
        steps = np.round(np.arange(num_timesteps, 0, -num_timesteps / num_steps))[::-1] - 1
    else:
        raise SettingError("step_grid", f"step_grid {kind!r} is not an integer grid; choose linspace, leading or trailing")
    steps = np.unique(steps.astype(np.int64))
    if len(steps) != num_steps:
        raise SettingError("steps", f"steps: a {kind} grid of {num_steps} steps does not fit {num_timesteps} diffusion steps")
    return steps


def _log_snr(alphas_cumprod: np.ndarray) -> np.ndarray:
    abar = np.asarray(alphas_cumprod, dtype=np.float64)
    return 0.5 * (np.log(abar) - np.log1p(-abar))


def timestep_of_alphas_cumprod(
    alphas_cumprod: np.ndarray, table_timesteps: np.ndarray, table_alphas_cumprod: np.ndarray
) -> np.ndarray:
    """The fractional model timestep of each noise level: linear interpolation in log-SNR between the
    neighbouring steps of the model's discrete schedule (`table_*`, ascending timesteps)."""
    lam_table = _log_snr(table_alphas_cumprod)[::-1]  # ascending log-SNR
    t_table = np.asarray(table_timesteps, dtype=np.float64)[::-1]
    # Beyond the table's ends the nearest trained step is used (np.interp clamps).
    timesteps: np.ndarray = np.interp(_log_snr(alphas_cumprod), lam_table, t_table)
    return timesteps


def _ve_sigma(abar: float) -> float:
    return math.sqrt((1.0 - abar) / abar)


GRID_FILE_FORMAT = "guided-diffusion step grid"


def is_grid_file(kind: str | None) -> bool:
    """Whether a step_grid names a grid file rather than a kind."""
    return kind is not None and kind.endswith(".json")


def grid_file_document(sigmas: np.ndarray, **about: object) -> dict[str, object]:
    """The JSON document of a grid file: its VE sigmas, noisiest first, and what it was tuned for."""
    values = [float(v) for v in np.asarray(sigmas, dtype=np.float64)]
    return {"format": GRID_FILE_FORMAT, "version": 1, "steps": len(values), "sigmas": values, **about}


def read_grid_file(path: str) -> np.ndarray:
    """The VE sigmas (noisiest first) of a grid file; SettingError naming `step_grid` when it is not one."""
    try:
        with open(path, encoding="utf-8") as handle:
            document = json.load(handle)
    except FileNotFoundError:
        raise SettingError("step_grid", f"step_grid {path}: no such file (write one with `guided-diffusion "
                           "tune_steps --out FILE.json`)") from None
    except (OSError, ValueError) as exc:
        raise SettingError("step_grid", f"step_grid {path} is not a grid file ({exc})") from None
    if not isinstance(document, dict) or document.get("format") != GRID_FILE_FORMAT or not isinstance(document.get("sigmas"), list):
        raise SettingError("step_grid", f"step_grid {path} is not a grid file written by `guided-diffusion tune_steps`")
    sigmas = np.asarray(document["sigmas"], dtype=np.float64)
    if sigmas.ndim != 1 or len(sigmas) < 2 or not np.isfinite(sigmas).all() or not (sigmas > 0).all() \
            or not (np.diff(sigmas) < 0).all():
        raise SettingError("step_grid", f"step_grid {path}: its sigmas must be at least 2 positive numbers, decreasing")
    return sigmas


def check_grid_request(num_steps: int, kind: str | None = None, sigma_min: float | None = None,
                       sigma_max: float | None = None) -> None:
    """The checks a grid request must pass whatever the model (the schedule's own limits come later).
    Raises SettingError naming the setting: `step_grid` (the kind), `steps`, `sigma_min` or `sigma_max`."""
    if kind is not None and kind not in GRIDS and not is_grid_file(kind):
        raise SettingError("step_grid", f"step_grid {kind!r} is unknown; choose one of {', '.join(GRIDS)} "
                           "or a grid file NAME.json from `guided-diffusion tune_steps`")
    if num_steps < 2:
        raise SettingError("steps", f"steps must be >= 2, got {num_steps}")
    if is_grid_file(kind):
        assert kind is not None
        levels = len(read_grid_file(kind))
        if levels != num_steps:
            raise SettingError("steps", f"steps {num_steps} does not agree with the grid file {kind}, which has "
                               f"{levels} levels; pass --steps {levels}")
        for name, value in (("sigma_min", sigma_min), ("sigma_max", sigma_max)):
            if value is not None:
                raise SettingError(name, f"{name} does not apply to a grid file: its levels are fixed")
    for name, value in (("sigma_min", sigma_min), ("sigma_max", sigma_max)):
        if value is not None and not value > 0:
            raise SettingError(name, f"{name} must be > 0, got {value}")


def make_grid(
    kind: str | None,
    num_steps: int,
    alphas_cumprod: np.ndarray,
    *,
    sigma_min: float | None = None,
    sigma_max: float | None = None,
) -> StepGrid:
    """A `num_steps`-level grid of kind `kind` (None = `DEFAULT_GRID`) for a model whose discrete schedule
    is `alphas_cumprod[t]`, t = 0..T-1. `sigma_min`/`sigma_max` are VE sigmas (karras and logsnr only).
    A request the schedule cannot take raises SettingError naming `steps`, `step_grid`, `sigma_min` or `sigma_max`."""
    kind = kind or DEFAULT_GRID
    check_grid_request(num_steps, kind, sigma_min, sigma_max)
    table = np.asarray(alphas_cumprod, dtype=np.float64)
    num_timesteps = len(table)
    if num_steps > num_timesteps:
        raise SettingError("steps", f"steps must be <= the model's {num_timesteps} diffusion steps, got {num_steps}")
    if is_grid_file(kind):
        sigmas = read_grid_file(kind)
        model_min, model_max = _ve_sigma(table[0]), _ve_sigma(table[-1])
        if sigmas[-1] < model_min * (1 - 1e-9) or sigmas[0] > model_max * (1 + 1e-9):
            raise SettingError("step_grid", f"step_grid {kind}: its sigmas {sigmas[-1]:.4g}..{sigmas[0]:.4g} leave the "
                               f"model's range {model_min:.4g}..{model_max:.4g}: it was tuned for another model")
        abar = (1.0 / (1.0 + sigmas**2))[::-1]
        return StepGrid(kind, abar, timestep_of_alphas_cumprod(abar, np.arange(num_timesteps), table))
    if kind in ("linspace", "leading", "trailing"):
        for name, value in (("sigma_min", sigma_min), ("sigma_max", sigma_max)):
            if value is not None:
                raise SettingError(name, f"{name} applies to karras and logsnr grids, not {kind}")
        steps = integer_timesteps(kind, num_steps, num_timesteps)
        return StepGrid(kind, table[steps], steps.astype(np.float64))
    model_min, model_max = _ve_sigma(table[0]), _ve_sigma(table[-1])
    lo = model_min if sigma_min is None else float(sigma_min)
    hi = min(model_max, DEFAULT_SIGMA_MAX) if sigma_max is None else float(sigma_max)
    if not model_min * (1 - 1e-9) <= lo < hi <= model_max * (1 + 1e-9):
        # Blame the end outside the model's range; when both fit but cross, the one that was given.
        if lo < model_min * (1 - 1e-9):
            name = "sigma_min"
        elif hi > model_max * (1 + 1e-9):
            name = "sigma_max"
        else:
            name = "sigma_min" if sigma_min is not None else "sigma_max"
        raise SettingError(
            name, f"{name}: need {model_min:.4g} <= sigma_min < sigma_max <= {model_max:.4g} (the model's range), "
            f"got sigma_min={lo:.4g}, sigma_max={hi:.4g}"
        )
    lo, hi = max(lo, model_min), min(hi, model_max)
    ramp = np.linspace(0.0, 1.0, num_steps)  # 0 = sigma_max end
    if kind == "karras":
        inv_rho = 1.0 / KARRAS_RHO
        sigmas = (hi**inv_rho + ramp * (lo**inv_rho - hi**inv_rho)) ** KARRAS_RHO
    else:  # logsnr: lambda = -log sigma, uniform
        sigmas = np.exp(np.log(hi) + ramp * (np.log(lo) - np.log(hi)))
    abar = (1.0 / (1.0 + sigmas**2))[::-1]  # ascending noise
    t = timestep_of_alphas_cumprod(abar, np.arange(num_timesteps), table)
    return StepGrid(kind, abar, t)


def guidance_multipliers(grid_alphas_cumprod: np.ndarray) -> np.ndarray:
    """Per step k (from level k to k-1, the last to clean data): how far one unit of classifier gradient
    moves the next state of a DDIM/Euler step, |alpha_{k-1} sigma_k^2 / alpha_k - sigma_{k-1} sigma_k|.

    The guided score shift eps' = eps - sigma_k g moves x0 by sigma_k^2 / alpha_k g and eps by -sigma_k g,
    and x_{k-1} = alpha_{k-1} x0 + sigma_{k-1} eps. At alpha_k -> 0 (the top of a cosine schedule) the
    first term explodes: that is the saturated first step."""
    abar = np.asarray(grid_alphas_cumprod, dtype=np.float64)
    prev = np.concatenate([[1.0], abar[:-1]])
    alpha, sigma = np.sqrt(abar), np.sqrt(1 - abar)
    alpha_prev, sigma_prev = np.sqrt(prev), np.sqrt(1 - prev)
    multipliers: np.ndarray = np.abs(alpha_prev * sigma**2 / alpha - sigma_prev * sigma)
    return multipliers


def saturated_first_step(grid_alphas_cumprod: np.ndarray) -> float | None:
    """The first step's guidance multiplier when it exceeds `SATURATION_MULTIPLIER`, else None."""
    first = float(guidance_multipliers(grid_alphas_cumprod)[-1])
    return first if first > SATURATION_MULTIPLIER else None
