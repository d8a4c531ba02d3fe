"""Samplers: plain functions with one shared signature.

    sampler(denoiser, x, *, noise=None, cond_fn=None, model_kwargs=None, clip_denoised=True,
            threshold=None, progress=False, callback=None, **sampler_specific) -> x_0

`x` is the starting state at the denoiser's noisiest grid point K-1 (noise x ~ N(0, I) for a full
run); the sampler walks the grid from K-1 down to 0 and returns the clean sample. `noise` supplies the
fresh noise of stochastic samplers (`randn_like`), e.g. a `runtime.rng.SampleNoise` for per-sample seeds; None uses
the global torch generator. `cond_fn(x, t, **model_kwargs)` returns the scaled classifier gradient
s * grad_x log p(y | x_t); a `SteeredGuidance` adds an interval and a schedule over t. `threshold` maps a
predicted x_0 to a thresholded one (e.g. dynamic thresholding). `callback` receives a dict with the step
`k`, current `x` and predicted `x0` after every step.

Notation (variance preserving): x_k = alpha_k x0 + sigma_k eps, lambda_k = log(alpha_k / sigma_k); the
"EDM" coordinates x^ = x / alpha, s_k = sigma_k / alpha_k turn the probability-flow ODE into
dx^/ds = (x^ - D(x^; s)) / s = eps (Karras et al. 2022, eq. 4 with the VP scaling removed). Guidance is
the score shift eps' = eps - sigma_k * grad log p(y | x_k) at every model evaluation, so it works the
same with every solver. Every sampler stops with `NonFiniteSampleError` at the first step whose state
is not finite (a per-step `isfinite` check) instead of returning black images.
"""
from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from typing import Any

import torch

from guided_diffusion.diffusion.denoiser import CondFn, Denoiser, DiffusionDenoiser
from guided_diffusion.diffusion.stepping import (
    NoiseSource,
    Threshold,
    check_finite,
    ddim_steps,
    ddpm_steps,
    grid_steps,
    guided_x0,
)
from guided_diffusion.runtime.errors import SettingError
from guided_diffusion.runtime.rng import GeneratorNoise

__all__ = [
    "ddpm", "ddim", "euler", "heun", "dpmpp_2m", "dpmpp_2m_sde", "dpmpp_3m_sde", "unipc", "SAMPLERS",
    "model_evaluations", "check_solver_options",
]


def check_solver_options(*, s_churn: float = 0.0, s_tmin: float = 0.0, s_tmax: float = math.inf, s_noise: float = 1.0,
                         order: int = 3) -> None:
    """The solver-specific options' own ranges (heun's churn, the noise scale, UniPC's order); the
    defaults pass, so a sampler checks only its own. Raises SettingError naming the option."""
    for name, value in (("s_churn", s_churn), ("s_tmin", s_tmin), ("s_noise", s_noise)):
        if not value >= 0:
            raise SettingError(name, f"{name} must be >= 0, got {value}")
    if not s_tmax >= s_tmin:
        raise SettingError("s_tmax", f"s_tmax must be >= s_tmin ({s_tmin}), got {s_tmax}")
    if order not in (1, 2, 3):
        raise SettingError("order", f"order must be 1, 2 or 3, got {order}")


Callback = Callable[[dict[str, Any]], None]


def _run(steps: Iterator[dict[str, Any]], x: torch.Tensor, callback: Callback | None) -> torch.Tensor:
    for info in steps:
        x = info["x"]
        if callback is not None:
            callback(info)
    return x


def ddpm(
    denoiser: DiffusionDenoiser,
    x: torch.Tensor,
    *,
    noise: NoiseSource | None = None,
    cond_fn: CondFn | None = None,
    model_kwargs: dict[str, Any] | None = None,
    clip_denoised: bool = True,
    threshold: Threshold | None = None,
    progress: bool = False,
    callback: Callback | None = None,
) -> torch.Tensor:
    """Ancestral sampling of Ho et al. (2020), step for step the original `p_sample`.

    x_{k-1} = mu_theta(x_k) + s * Sigma_theta(x_k) grad log p(y | x_k) + Sigma_theta^{1/2} z  (guided mean
    shift of Sohl-Dickstein et al., the original `condition_mean`); no noise on the last step. `threshold`
    is applied where the original applies `denoised_fn`, before clipping. On a step grid (`grid_denoiser`)
    the posterior and the learned-variance range are those of the grid's own levels.
    """
    return _run(ddpm_steps(denoiser, x, noise=noise, cond_fn=cond_fn, model_kwargs=model_kwargs,
                           clip_denoised=clip_denoised, threshold=threshold, progress=progress), x, callback)


def ddim(
    denoiser: Denoiser,
    x: torch.Tensor,
    *,
    noise: NoiseSource | None = None,
    cond_fn: CondFn | None = None,
    model_kwargs: dict[str, Any] | None = None,
    clip_denoised: bool = True,
    threshold: Threshold | None = None,
    progress: bool = False,
    callback: Callback | None = None,
    eta: float = 0.0,
) -> torch.Tensor:
    """DDIM (Song et al. 2021, eq. 12), the original `ddim_sample`:

    x_{k-1} = sqrt(abar_{k-1}) x0 + sqrt(1 - abar_{k-1} - s_k^2) eps + s_k z,
    s_k = eta * sqrt((1 - abar_{k-1}) / (1 - abar_k)) * sqrt(1 - abar_k / abar_{k-1}),
    with eps re-derived from the (clipped, guided) x0 and abar_{-1} = 1. eta = 0 is deterministic.
    """
    return _run(ddim_steps(denoiser, x, noise=noise, cond_fn=cond_fn, model_kwargs=model_kwargs,
                           clip_denoised=clip_denoised, threshold=threshold, progress=progress, eta=eta), x, callback)


@torch.no_grad()
def euler(
    denoiser: Denoiser,
    x: torch.Tensor,
    *,
    noise: NoiseSource | None = None,
    cond_fn: CondFn | None = None,
    model_kwargs: dict[str, Any] | None = None,
    clip_denoised: bool = True,
    threshold: Threshold | None = None,
    progress: bool = False,
    callback: Callback | None = None,
) -> torch.Tensor:
    """Euler's method on the probability-flow ODE in EDM coordinates (first order):

    d_k = (x^_k - D_k) / s_k,   x^_{k-1} = x^_k + (s_{k-1} - s_k) d_k,   x_{k-1} = alpha_{k-1} x^_{k-1},

    with D_k the (clipped, guided) x0 prediction and s_{-1} = 0. Algebraically this is DDIM with eta = 0
    (Karras et al. 2022, sec. 3). Deterministic: `noise` is accepted for the shared signature.
    """
    model_kwargs = model_kwargs or {}
    for k in grid_steps(denoiser, progress, "euler"):
        x0 = guided_x0(denoiser, x, k, model_kwargs=model_kwargs, cond_fn=cond_fn, clip_denoised=clip_denoised,
                        threshold=threshold)
        s_k = denoiser.sigma(k) / denoiser.alpha(k)
        s_next = denoiser.sigma(k - 1) / denoiser.alpha(k - 1)
        x_hat = x / denoiser.alpha(k)
        d = (x_hat - x0) / s_k
        x = denoiser.alpha(k - 1) * (x_hat + (s_next - s_k) * d)
        check_finite(x, k, "euler")
        if callback is not None:
            callback({"k": k, "x": x, "x0": x0})
    return x


@torch.no_grad()
def heun(
    denoiser: Denoiser,
    x: torch.Tensor,
    *,
    noise: NoiseSource | None = None,
    cond_fn: CondFn | None = None,
    model_kwargs: dict[str, Any] | None = None,
    clip_denoised: bool = True,
    threshold: Threshold | None = None,
    progress: bool = False,
    callback: Callback | None = None,
    s_churn: float = 0.0,
    s_tmin: float = 0.0,
    s_tmax: float = math.inf,
    s_noise: float = 1.0,
) -> torch.Tensor:
    """EDM's stochastic sampler (Karras et al. 2022, Algorithm 2) in EDM coordinates x^ = x / alpha:

        gamma_k = min(S_churn / K, sqrt(2) - 1) if S_tmin <= s_k <= S_tmax else 0
        s^_k = s_k (1 + gamma_k),   x^ <- x^ + sqrt(s^_k^2 - s_k^2) S_noise z
        d = (x^ - D(x^; s^_k)) / s^_k,   x^_{k-1} = x^ + (s_{k-1} - s^_k) d
        if s_{k-1} > 0:  d' = (x^_{k-1} - D(x^_{k-1}; s_{k-1})) / s_{k-1},
                         x^_{k-1} = x^ + (s_{k-1} - s^_k) (d + d') / 2

    s are VE sigmas sqrt(1 - abar) / sqrt(abar); churn 0 is the deterministic Heun method (Algorithm 1),
    second order, 2K - 1 model evaluations on K levels. The churned level s^_k lies between grid points
    (`denoiser.with_level`). `noise` gives the churn draws.
    """
    check_solver_options(s_churn=s_churn, s_tmin=s_tmin, s_tmax=s_tmax, s_noise=s_noise)
    noise = noise or GeneratorNoise()
    model_kwargs = model_kwargs or {}
    guide: dict[str, Any] = dict(model_kwargs=model_kwargs, cond_fn=cond_fn, clip_denoised=clip_denoised,
                                 threshold=threshold)
    gamma_max = min(s_churn / denoiser.num_steps, math.sqrt(2.0) - 1.0)
    for k in grid_steps(denoiser, progress, "heun"):
        s_k = denoiser.sigma(k) / denoiser.alpha(k)
        s_next = denoiser.sigma(k - 1) / denoiser.alpha(k - 1)
        x_hat = x / denoiser.alpha(k)
        gamma = gamma_max if s_tmin <= s_k <= s_tmax else 0.0
        if gamma > 0:
            s_hat = s_k * (1.0 + gamma)
            x_hat = x_hat + math.sqrt(s_hat**2 - s_k**2) * s_noise * noise.randn_like(x_hat)
            level = denoiser.with_level(1.0 / (1.0 + s_hat**2))
            x0 = guided_x0(level, x_hat * level.alpha(0), 0, **guide)
        else:
            s_hat = s_k
            x0 = guided_x0(denoiser, x, k, **guide)
        d = (x_hat - x0) / s_hat
        x_hat_next = x_hat + (s_next - s_hat) * d
        if k > 0:
            x0_next = guided_x0(denoiser, denoiser.alpha(k - 1) * x_hat_next, k - 1, **guide)
            d_next = (x_hat_next - x0_next) / s_next
            x_hat_next = x_hat + (s_next - s_hat) * 0.5 * (d + d_next)
        x = denoiser.alpha(k - 1) * x_hat_next
        check_finite(x, k, "heun")
        if callback is not None:
            callback({"k": k, "x": x, "x0": x0})
    return x


@torch.no_grad()
def dpmpp_2m(
    denoiser: Denoiser,
    x: torch.Tensor,
    *,
    noise: NoiseSource | None = None,
    cond_fn: CondFn | None = None,
    model_kwargs: dict[str, Any] | None = None,
    clip_denoised: bool = True,
    threshold: Threshold | None = None,
    progress: bool = False,
    callback: Callback | None = None,
) -> torch.Tensor:
    """DPM-Solver++(2M) (Lu et al. 2022, Algorithm 2): second-order multistep, data prediction.

    In log-SNR time lambda = log(alpha / sigma), with h_i = lambda_{i} - lambda_{i-1} and r_i = h_{i-1} / h_i:
        D_i = (1 + 1 / (2 r_i)) x0_{i-1} - 1 / (2 r_i) x0_{i-2}        (D_1 = x0_0: first step is DDIM)
        x_i = (sigma_i / sigma_{i-1}) x_{i-1} - alpha_i (exp(-h_i) - 1) D_i
    The final step goes to sigma = 0 (lambda = inf), where the update is the data prediction itself.
    Works on any grid (the h_i need not be equal). Deterministic: `noise` is accepted and not used.
    """
    model_kwargs = model_kwargs or {}
    x0_prev: torch.Tensor | None = None
    h_prev = 0.0
    for k in grid_steps(denoiser, progress, "dpm++2m"):
        x0 = guided_x0(
            denoiser, x, k, model_kwargs=model_kwargs, cond_fn=cond_fn, clip_denoised=clip_denoised, threshold=threshold
        )
        if k == 0:
            x = x0
        else:
            h = denoiser.log_snr(k - 1) - denoiser.log_snr(k)
            if x0_prev is None:
                d = x0
            else:
                half_inv_r = 0.5 * h / h_prev  # 1 / (2 r_i)
                d = (1 + half_inv_r) * x0 - half_inv_r * x0_prev
            x = (denoiser.sigma(k - 1) / denoiser.sigma(k)) * x - denoiser.alpha(k - 1) * math.expm1(-h) * d
            x0_prev, h_prev = x0, h
        check_finite(x, k, "dpm++2m")
        if callback is not None:
            callback({"k": k, "x": x, "x0": x0})
    return x


def _sde_multistep(
    name: str,
    order: int,
    denoiser: Denoiser,
    x: torch.Tensor,
    *,
    noise: NoiseSource | None,
    cond_fn: CondFn | None,
    model_kwargs: dict[str, Any] | None,
    clip_denoised: bool,
    threshold: Threshold | None,
    progress: bool,
    callback: Callback | None,
    s_noise: float,
) -> torch.Tensor:
    """The DPM-Solver++ SDE multistep update (see `dpmpp_2m_sde` / `dpmpp_3m_sde`) up to `order`."""
    check_solver_options(s_noise=s_noise)
    noise = noise or GeneratorNoise()
    model_kwargs = model_kwargs or {}
    history: list[tuple[torch.Tensor, float]] = []  # (x0, h) of earlier steps, newest last
    for k in grid_steps(denoiser, progress, name):
        x0 = guided_x0(
            denoiser, x, k, model_kwargs=model_kwargs, cond_fn=cond_fn, clip_denoised=clip_denoised, threshold=threshold
        )
        if k == 0:
            x = x0
        else:
            h = denoiser.log_snr(k - 1) - denoiser.log_snr(k)
            alpha_next, sigma_next = denoiser.alpha(k - 1), denoiser.sigma(k - 1)
            one_minus = -math.expm1(-2.0 * h)  # 1 - e^{-2h}
            x = (sigma_next / denoiser.sigma(k)) * math.exp(-h) * x + alpha_next * one_minus * x0
            phi_2 = math.expm1(-2.0 * h) / (2.0 * h) + 1.0
            if order >= 3 and len(history) >= 2:
                (x0_1, h_1), (x0_2, h_2) = history[-1], history[-2]
                r0, r1 = h_1 / h, h_2 / h
                d1_0 = (x0 - x0_1) / r0
                d1_1 = (x0_1 - x0_2) / r1
                d1 = d1_0 + (d1_0 - d1_1) * r0 / (r0 + r1)
                d2 = (d1_0 - d1_1) / (r0 + r1)
                phi_3 = phi_2 / (2.0 * h) - 0.5
                x = x + alpha_next * (phi_2 * d1 - phi_3 * d2)
            elif history:
                x0_1, h_1 = history[-1]
                x = x + alpha_next * phi_2 * (x0 - x0_1) * (h / h_1)
            x = x + sigma_next * math.sqrt(one_minus) * s_noise * noise.randn_like(x)
            history = (history + [(x0, h)])[-2:]
        check_finite(x, k, name)
        if callback is not None:
            callback({"k": k, "x": x, "x0": x0})
    return x


def dpmpp_2m_sde(
    denoiser: Denoiser,
    x: torch.Tensor,
    *,
    noise: NoiseSource | None = None,
    cond_fn: CondFn | None = None,
    model_kwargs: dict[str, Any] | None = None,
    clip_denoised: bool = True,
    threshold: Threshold | None = None,
    progress: bool = False,
    callback: Callback | None = None,
    s_noise: float = 1.0,
) -> torch.Tensor:
    """SDE-DPM-Solver++(2M) (Lu et al. 2022, sec. 5 and appendix), the stochastic counterpart of dpm++2m.

    With h = lambda_{k-1} - lambda_k, D = the data prediction and z ~ N(0, I):
        x_{k-1} = (sigma_{k-1} / sigma_k) e^{-h} x_k + alpha_{k-1} (1 - e^{-2h}) D_k
                  + alpha_{k-1} phi_2(2h) (D_k - D_{k+1}) h / h_prev + sigma_{k-1} sqrt(1 - e^{-2h}) S_noise z,
    phi_2(u) = (e^{-u} - 1) / u + 1 (exact integration of the linear-in-lambda data prediction); the first
    step is first order, the last returns D_0. Per-sample seeds come from `noise`.
    """
    return _sde_multistep("dpm++2m_sde", 2, denoiser, x, noise=noise, cond_fn=cond_fn, model_kwargs=model_kwargs,
                          clip_denoised=clip_denoised, threshold=threshold, progress=progress, callback=callback,
                          s_noise=s_noise)


def dpmpp_3m_sde(
    denoiser: Denoiser,
    x: torch.Tensor,
    *,
    noise: NoiseSource | None = None,
    cond_fn: CondFn | None = None,
    model_kwargs: dict[str, Any] | None = None,
    clip_denoised: bool = True,
    threshold: Threshold | None = None,
    progress: bool = False,
    callback: Callback | None = None,
    s_noise: float = 1.0,
) -> torch.Tensor:
    """Third-order multistep SDE-DPM-Solver++ (3M): as `dpmpp_2m_sde` with the data prediction
    extrapolated quadratically in lambda from the last three evaluations:

        r0 = h_1 / h, r1 = h_2 / h,  d1_0 = (D_k - D_{k+1}) / r0,  d1_1 = (D_{k+1} - D_{k+2}) / r1,
        d1 = d1_0 + (d1_0 - d1_1) r0 / (r0 + r1),  d2 = (d1_0 - d1_1) / (r0 + r1),
        x_{k-1} = [first-order SDE step] + alpha_{k-1} (phi_2 d1 - phi_3 d2),  phi_3 = phi_2 / (2h) - 1/2,

    the same third-order multistep form as DPM-Solver-3M (Lu et al. 2022) with the SDE's 2h. Warm-up steps
    are first and second order; the last step returns D_0.
    """
    return _sde_multistep("dpm++3m_sde", 3, denoiser, x, noise=noise, cond_fn=cond_fn, model_kwargs=model_kwargs,
                          clip_denoised=clip_denoised, threshold=threshold, progress=progress, callback=callback,
                          s_noise=s_noise)


def _unipc_coefficients(rks: list[float], h: float, order: int) -> tuple[float, float, torch.Tensor, torch.Tensor]:
    """(h_phi_1, B(h), R, b) of UniPC's order-`order` update (bh2, data prediction).

    With hh = -h: h_phi_1 = e^{hh} - 1, B(h) = e^{hh} - 1 (the bh2 choice), R[i, j] = rks[j]^i and
    b[i] = i! phi_{i+1}(hh) / B(h), phi_{k+1} from phi_1 by phi_{k+1} = phi_k / hh - 1 / k! (Zhao et al.
    2023, eq. 7-9 and appendix).
    """
    hh = -h
    h_phi_1 = math.expm1(hh)
    b_h = math.expm1(hh)
    h_phi_k = h_phi_1 / hh - 1.0
    factorial = 1.0
    rows, b = [], []
    r = torch.tensor(rks, dtype=torch.float64)
    for i in range(1, order + 1):
        rows.append(r ** (i - 1))
        b.append(h_phi_k * factorial / b_h)
        factorial *= i + 1
        h_phi_k = h_phi_k / hh - 1.0 / factorial
    return h_phi_1, b_h, torch.stack(rows), torch.tensor(b, dtype=torch.float64)


@torch.no_grad()
def unipc(
    denoiser: Denoiser,
    x: torch.Tensor,
    *,
    noise: NoiseSource | None = None,
    cond_fn: CondFn | None = None,
    model_kwargs: dict[str, Any] | None = None,
    clip_denoised: bool = True,
    threshold: Threshold | None = None,
    progress: bool = False,
    callback: Callback | None = None,
    order: int = 3,
) -> torch.Tensor:
    """UniPC (Zhao et al. 2023), bh2 variant, data prediction, predictor UniP-p and corrector UniC-p.

    From level s (lambda_s, prediction m_0) to t, h = lambda_t - lambda_s, with earlier predictions m_i at
    lambda_i, r_i = (lambda_i - lambda_s) / h and D_i = (m_i - m_0) / r_i:
        UniP: x_t = (sigma_t / sigma_s) x_s - alpha_t (e^{-h} - 1) m_0 - alpha_t B(h) sum_i a_i D_i
        UniC: x_t^c = (sigma_t / sigma_s) x_s - alpha_t (e^{-h} - 1) m_0
                      - alpha_t B(h) (sum_i c_i D_i + c_p (m_t - m_0)),
    where R a = b on the first p-1 rows (a = 1/2 at p = 2) and R c = b (c = 1/2 at p = 1)
    (`_unipc_coefficients`). The corrector reuses the model evaluation m_t at the predicted x_t, so the
    cost stays one evaluation per level; the order warms up from 1 as predictions accumulate and the
    last step returns the data prediction at level 0. Deterministic.
    """
    check_solver_options(order=order)
    model_kwargs = model_kwargs or {}
    history: list[tuple[torch.Tensor, float]] = []  # (m, lambda) of evaluated levels, newest last
    last: tuple[torch.Tensor, int] | None = None  # (x at the level stepped from, order of that step)

    def update(x_s: torch.Tensor, lam_t: float, k_t: int, p: int, m_t: torch.Tensor | None) -> torch.Tensor:
        m0, lam_s = history[-1] if m_t is None else history[-2]
        past = (history[:-1] if m_t is None else history[:-2])[::-1][: p - 1]
        h = lam_t - lam_s
        rks = [(lam_i - lam_s) / h for _, lam_i in past] + [1.0]
        d1s = [(m_i - m0) / rk for (m_i, _), rk in zip(past, rks)]
        h_phi_1, b_h, big_r, b = _unipc_coefficients(rks, h, p)
        k_s = k_t + 1
        x_t = (denoiser.sigma(k_t) / denoiser.sigma(k_s)) * x_s - denoiser.alpha(k_t) * h_phi_1 * m0
        if m_t is None:  # predictor
            if not d1s:
                return x_t
            coeffs = [0.5] if p == 2 else torch.linalg.solve(big_r[:-1, :-1], b[:-1]).tolist()
            residual = sum(c * d for c, d in zip(coeffs, d1s))
        else:  # corrector
            coeffs = [0.5] if p == 1 else torch.linalg.solve(big_r, b).tolist()
            residual = sum(c * d for c, d in zip(coeffs[:-1], d1s)) + coeffs[-1] * (m_t - m0)
        return x_t - denoiser.alpha(k_t) * b_h * residual

    for k in grid_steps(denoiser, progress, "unipc"):
        m = guided_x0(denoiser, x, k, model_kwargs=model_kwargs, cond_fn=cond_fn, clip_denoised=clip_denoised,
                       threshold=threshold)
        history.append((m, denoiser.log_snr(k)))
        if last is not None and k > 0:  # correct the state at this level with the fresh evaluation
            x = update(last[0], denoiser.log_snr(k), k, last[1], m)
        if k == 0:
            x = m
        else:
            p = min(order, len(history))
            last = (x, p)
            x = update(x, denoiser.log_snr(k - 1), k - 1, p, None)
        history = history[-order:]
        check_finite(x, k, "unipc")
        if callback is not None:
            callback({"k": k, "x": x, "x0": m})
    return x


def model_evaluations(sampler: str, num_levels: int) -> int:
    """Model (and classifier) evaluations a sampler makes on a grid of `num_levels` levels."""
    return 2 * num_levels - 1 if sampler == "heun" else num_levels


# CLI names -> sampler functions.
SAMPLERS: dict[str, Callable[..., torch.Tensor]] = {
    "ddpm": ddpm, "ddim": ddim, "euler": euler, "heun": heun, "dpm++2m": dpmpp_2m, "dpm++2m_sde": dpmpp_2m_sde,
    "dpm++3m_sde": dpmpp_3m_sde, "unipc": unipc,
}
