"""The samplers: one body per sampler, and the registry `SAMPLERS` (command-line name -> `Sampler`).

Every sampler is called the same way (`registry.Sampler`):

    SAMPLERS[name](denoiser, x, *, noise=None, cond_fn=None, model_kwargs=None, clip_denoised=True,
                   threshold=None, progress=False, callback=None, **options) -> x_0

`x` is the starting state at the denoiser's noisiest grid point (noise x ~ N(0, I) for a full run); the
sampler walks the levels down to clean data. A body below is only the update: `ctx.levels` are the
levels (noisiest first, the last is clean data), `ctx.denoise(x, level)` the guided prediction
(`stepping.Denoised`), and the shared driver does the rest (`stepping.drive`).

Notation (variance preserving): x = alpha x0 + sigma eps at a level, lambda = log(alpha / sigma), EDM's
s = sigma / alpha and x^ = x / alpha, in which the probability-flow ODE reads dx^/ds = (x^ - D(x^; s)) / s
= eps (Karras et al. 2022, eq. 4 without the VP scaling). Classifier guidance shifts the noise prediction,
eps' = eps - G with G = sigma s grad log p(y | x), so the guided ODE is dx^/ds = eps - G.

Why guidance needs care in the data-prediction solvers: their exact solution in lambda is

    x_t = (sigma_t / sigma_s) x_s + sigma_t int e^lambda D dlambda + sigma_t int G dlambda,

because the guided data prediction is D + (sigma / alpha) G and e^lambda sigma / alpha = 1. DPM-Solver++
interpolates the guided prediction as a whole in lambda, but its guidance part grows like e^-lambda
towards high noise (sigma / alpha = 80 at EDM's sigma_max): extrapolating it linearly from the level
before undoes most of it (by e^h, h the step in lambda: at h ~ 1, the 2M extrapolation keeps 15% of
the first-order term, and at larger h it flips its sign, which is why guided dpm++2m fell apart at 8
steps). The "split" solvers below extrapolate D and G separately, each a smooth function of lambda, and
integrate G with its own exact weight (`multistep.lagrange_weights`). The EDM-coordinate solvers (euler,
heun, ipndm, deis) step with eps - G, which stays bounded, and need no split.
"""
from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Mapping
from functools import partial
from typing import Any

import numpy as np
import torch

from guided_diffusion.diffusion.denoiser import Level
from guided_diffusion.diffusion.stepping import Denoised, SamplerContext, Step, ddim_body, ddpm_body
from guided_diffusion.runtime.errors import SettingError
from guided_diffusion.sampling.multistep import combine, lagrange_weights, unipc_coefficients
from guided_diffusion.sampling.registry import Option, Sampler, SamplerSpec

__all__ = [
    "SAMPLERS", "ddpm", "ddim", "euler", "heun", "dpmpp_2m", "dpmpp_3m", "dpmpp_2m_sde", "dpmpp_3m_sde", "unipc",
    "ipndm", "deis", "model_evaluations",
]


def _pairs(ctx: SamplerContext) -> Iterator[tuple[Level, Level]]:
    """(level stepped from, level stepped to), noisiest first; the last `to` is clean data."""
    return zip(ctx.levels, ctx.levels[1:])


def _index(level: Level) -> int:
    assert level.index is not None
    return level.index


def _guidance_term(points: list[tuple[float, torch.Tensor | None]], h: float, rate: float) -> torch.Tensor | None:
    """h int_0^1 e^{rate h (u - 1)} P(u) du for the polynomial P through the guidance values at offsets u
    (None where no guidance ran, i.e. G = 0 there); None when guidance ran at none of them."""
    present = [g for _, g in points if g is not None]
    if not present:
        return None
    values = [g if g is not None else torch.zeros_like(present[0]) for _, g in points]
    return combine(lagrange_weights([u for u, _ in points], h, rate), values)


def _walk_to_clean(ctx: SamplerContext, x: torch.Tensor,
                   update: Callable[[torch.Tensor, Level, Level, Denoised, float], torch.Tensor]) -> Iterator[Step]:
    """The walk of the data-prediction solvers: one evaluation per level, `update(x, here, there, d, h)`
    to the next level (h = lambda' - lambda), and at the last level the guided x0 itself (lambda' = inf)."""
    for here, there in _pairs(ctx):
        d = ctx.denoise(x, here)
        x = d.x0 if there.is_clean else update(x, here, there, d, there.log_snr - here.log_snr)
        yield Step(_index(here), x, d.x0)


# -- first order ------------------------------------------------------------------------------------------


def euler_body(ctx: SamplerContext, x: torch.Tensor) -> Iterator[Step]:
    """Euler's method on the probability-flow ODE in EDM coordinates (first order):

    d = (x^ - D) / s,   x^' = x^ + (s' - s) d,   x' = alpha' x^',

    with D the (clipped, guided) x0 prediction and s = 0 at clean data. Algebraically DDIM with eta = 0
    (Karras et al. 2022, sec. 3). Deterministic.
    """
    for here, there in _pairs(ctx):
        x0 = ctx.denoise(x, here).x0
        x_hat = x / here.alpha
        slope = (x_hat - x0) / here.ve_sigma
        x = there.alpha * (x_hat + (there.ve_sigma - here.ve_sigma) * slope)
        yield Step(_index(here), x, x0)


# -- EDM's Heun --------------------------------------------------------------------------------------------


def heun_body(ctx: SamplerContext, x: torch.Tensor, *, s_churn: float, s_tmin: float, s_tmax: float,
              s_noise: float) -> Iterator[Step]:
    """EDM's stochastic sampler (Karras et al. 2022, Algorithm 2) in EDM coordinates x^ = x / alpha:

        gamma = min(S_churn / K, sqrt(2) - 1) if S_tmin <= s <= S_tmax else 0
        s^ = s (1 + gamma),   x^ <- x^ + sqrt(s^^2 - s^2) S_noise z
        d = (x^ - D(x^; s^)) / s^,   x^' = x^ + (s' - s^) d
        if s' > 0:  d' = (x^' - D(x^'; s')) / s',   x^' = x^ + (s' - s^) (d + d') / 2

    churn 0 is the deterministic Heun method (Algorithm 1), second order, 2K - 1 model evaluations on K
    levels. The churned level s^ lies between grid points. `noise` gives the churn draws.
    """
    gamma_max = min(s_churn / ctx.denoiser.num_steps, math.sqrt(2.0) - 1.0)
    for here, there in _pairs(ctx):
        s, s_next = here.ve_sigma, there.ve_sigma
        x_hat = x / here.alpha
        gamma = gamma_max if s_tmin <= s <= s_tmax else 0.0
        if gamma > 0:
            s_hat = s * (1.0 + gamma)
            x_hat = x_hat + math.sqrt(s_hat**2 - s**2) * s_noise * ctx.randn_like(x_hat)
            churned = Level.from_ve_sigma(s_hat)
            x0 = ctx.denoise(churned.alpha * x_hat, churned).x0
        else:
            s_hat = s
            x0 = ctx.denoise(x, here).x0
        slope = (x_hat - x0) / s_hat
        x_hat_next = x_hat + (s_next - s_hat) * slope
        if not there.is_clean:
            x0_next = ctx.denoise(there.alpha * x_hat_next, there).x0
            slope_next = (x_hat_next - x0_next) / s_next
            x_hat_next = x_hat + (s_next - s_hat) * 0.5 * (slope + slope_next)
        x = there.alpha * x_hat_next
        yield Step(_index(here), x, x0)


def _check_heun(options: Mapping[str, Any]) -> None:
    if not options["s_tmax"] >= options["s_tmin"]:
        raise SettingError("s_tmax", f"s_tmax must be >= s_tmin ({options['s_tmin']}), got {options['s_tmax']}")


# -- EDM-coordinate multistep: iPNDM and DEIS --------------------------------------------------------------

# Adams-Bashforth coefficients for equal steps, newest slope first (orders 1 to 4).
ADAMS_BASHFORTH = ((1.0,), (3 / 2, -1 / 2), (23 / 12, -16 / 12, 5 / 12), (55 / 24, -59 / 24, 37 / 24, -9 / 24))


def ipndm_body(ctx: SamplerContext, x: torch.Tensor, *, order: int) -> Iterator[Step]:
    """Improved PNDM (Zhang & Chen 2022): Adams-Bashforth on the probability-flow ODE in EDM coordinates,

        d_i = (x^_i - D_i) / s_i,   x^_{i+1} = x^_i + (s_{i+1} - s_i) sum_j c_j d_{i-j},

    with the equal-step coefficients c of order min(i + 1, `order`) (1; 3/2, -1/2; 23/12, -16/12, 5/12;
    55/24, -59/24, 37/24, -9/24): a lower-order warm start, one model evaluation per level. The guided
    slope is eps - G (bounded), so guidance needs no special form. Deterministic.
    """
    slopes: list[torch.Tensor] = []  # newest last
    for here, there in _pairs(ctx):
        x0 = ctx.denoise(x, here).x0
        x_hat = x / here.alpha
        slopes = (slopes + [(x_hat - x0) / here.ve_sigma])[-order:]
        slope = combine(ADAMS_BASHFORTH[len(slopes) - 1], slopes[::-1])
        x = there.alpha * (x_hat + (there.ve_sigma - here.ve_sigma) * slope)
        yield Step(_index(here), x, x0)


def _tab_weights(ctx: SamplerContext, times: list[float], here: Level, there: Level) -> list[float]:
    """int_{s}^{s'} L_j(tau(s)) ds: Lagrange basis in the model's time tau over `times`, integrated in s
    (Gauss-Legendre in s; tau(s) from the denoiser's schedule)."""
    nodes, weights = np.polynomial.legendre.leggauss(12)
    s0, s1 = here.ve_sigma, there.ve_sigma
    taus = np.array([ctx.denoiser.timestep(Level.from_ve_sigma(s0 + (s1 - s0) * 0.5 * (u + 1))) for u in nodes])
    if not np.isfinite(taus).all() or not np.isfinite(times).all():
        raise SettingError("sampler", "deis needs a denoiser that knows its model timesteps")
    out = []
    for j, tau_j in enumerate(times):
        basis = np.ones_like(taus)
        for i, tau_i in enumerate(times):
            if i != j:
                basis *= (taus - tau_i) / (tau_j - tau_i)
        out.append(float(0.5 * (s1 - s0) * np.sum(weights * basis)))
    return out


def deis_body(ctx: SamplerContext, x: torch.Tensor, *, order: int) -> Iterator[Step]:
    """DEIS, tAB variant (Zhang & Chen 2023): the noise prediction extrapolated as a polynomial in the
    model's time tau through the last `order` levels, integrated exactly in EDM coordinates:

        x^_{i+1} = x^_i + sum_j eps_{i-j} int_{s_i}^{s_{i+1}} L_j(tau(s)) ds,

    L_j the Lagrange basis over tau_{i}, ..., tau_{i-order+1} (lower orders while the history fills).
    eps here is the guided slope (x^ - D) / s = eps - G. Deterministic, one evaluation per level.
    """
    history: list[tuple[float, torch.Tensor]] = []  # (tau, slope), newest last
    for here, there in _pairs(ctx):
        x0 = ctx.denoise(x, here).x0
        x_hat = x / here.alpha
        history = (history + [(ctx.denoiser.timestep(here), (x_hat - x0) / here.ve_sigma)])[-order:]
        weights = _tab_weights(ctx, [tau for tau, _ in history], here, there)
        x = there.alpha * (x_hat + combine(weights, [slope for _, slope in history]))
        yield Step(_index(here), x, x0)


# -- DPM-Solver++ ------------------------------------------------------------------------------------------


def dpmpp_2m_body(ctx: SamplerContext, x: torch.Tensor) -> Iterator[Step]:
    """DPM-Solver++(2M) (Lu et al. 2022, Algorithm 2): second-order multistep, data prediction, with the
    guidance integrated on its own. With h = lambda' - lambda, r = h_prev / h, c = 1 / (2 r):

        D = (1 + c) D_i - c D_{i-1},   G = (1 + c) G_i - c G_{i-1}      (D_0, G_0 alone on the first step)
        x' = (sigma' / sigma) x - alpha' (e^{-h} - 1) D + sigma' h G

    D is the model's clipped x0 and G the guidance's shift of eps (`stepping.Denoised`); the G term is the
    exact integral of its linear extrapolation (see the module docstring for why it is not folded into D).
    Unguided this is the published update. The step to clean data returns the guided x0. Deterministic.
    """
    previous: tuple[Denoised, float] | None = None  # (prediction, h) of the level before

    def update(x: torch.Tensor, here: Level, there: Level, d: Denoised, h: float) -> torch.Tensor:
        nonlocal previous
        c = 0.0 if previous is None else 0.5 * h / previous[1]
        data = d.data if previous is None else (1 + c) * d.data - c * previous[0].data
        x = (there.sigma / here.sigma) * x - there.alpha * math.expm1(-h) * data
        if d.guidance is not None or (previous is not None and previous[0].guidance is not None):
            points = [(0.0, d.guidance)] if previous is None else [(-previous[1] / h, previous[0].guidance),
                                                                      (0.0, d.guidance)]
            term = _guidance_term(points, h, rate=0.0)
            if term is not None:
                x = x + there.sigma * term
        previous = (d, h)
        return x

    yield from _walk_to_clean(ctx, x, update)


def dpmpp_3m_body(ctx: SamplerContext, x: torch.Tensor) -> Iterator[Step]:
    """Third-order multistep DPM-Solver++ (data prediction), guidance integrated on its own:

        x' = (sigma' / sigma) x + alpha' sum_j a_j D_j + sigma' sum_j b_j G_j,
        a_j = int_0^h e^{-(h - v)} L_j(v) dv,    b_j = int_0^h L_j(v) dv,

    L_j the Lagrange basis in lambda (v = lambda - lambda_i) over the last three levels (one, then two, while
    they fill): the exact integral of the quadratic interpolant of D against the exponential integrator's
    weight, and of G. The step to clean data returns the guided x0. Deterministic.
    """
    history: list[tuple[float, Denoised]] = []  # (lambda, prediction), newest last

    def update(x: torch.Tensor, here: Level, there: Level, d: Denoised, h: float) -> torch.Tensor:
        nonlocal history
        history = (history + [(here.log_snr, d)])[-3:]
        offsets = [(lam - here.log_snr) / h for lam, _ in history]
        a = lagrange_weights(offsets, h, rate=1.0)
        x = (there.sigma / here.sigma) * x + there.alpha * combine(a, [p.data for _, p in history])
        term = _guidance_term([(u, p.guidance) for u, (_, p) in zip(offsets, history)], h, rate=0.0)
        return x if term is None else x + there.sigma * term

    yield from _walk_to_clean(ctx, x, update)


def sde_multistep_body(ctx: SamplerContext, x: torch.Tensor, *, order: int, s_noise: float) -> Iterator[Step]:
    """SDE-DPM-Solver++ (Lu et al. 2022, sec. 5 and appendix), multistep up to `order` (2M, 3M), the
    stochastic counterpart of dpm++2m / dpm++3m. With h = lambda' - lambda, D the data prediction, G the
    guidance and z ~ N(0, I):

        x' = (sigma' / sigma) e^{-h} x + alpha' (1 - e^{-2h}) D_i + [higher-order D terms]
             + 2 sigma' int e^{-(lambda' - l)} G(l) dl + sigma' sqrt(1 - e^{-2h}) S_noise z,
        2M: + alpha' phi_2(2h) (D_i - D_{i-1}) h / h_prev,       phi_2(u) = (e^{-u} - 1) / u + 1;
        3M: r0 = h_1 / h, r1 = h_2 / h,  d1_0 = (D_i - D_{i-1}) / r0,  d1_1 = (D_{i-1} - D_{i-2}) / r1,
            d1 = d1_0 + (d1_0 - d1_1) r0 / (r0 + r1),  d2 = (d1_0 - d1_1) / (r0 + r1),
            + alpha' (phi_2 d1 - phi_3 d2),  phi_3 = phi_2 / (2h) - 1/2,

    G interpolated through the same levels. Warm-up steps are lower order; the last step returns the
    guided x0. Per-sample seeds come from `noise`.
    """
    history: list[tuple[Denoised, float]] = []  # (prediction, h) of earlier levels, newest last

    def update(x: torch.Tensor, here: Level, there: Level, d: Denoised, h: float) -> torch.Tensor:
        nonlocal history
        alpha_next, sigma_next = there.alpha, there.sigma
        one_minus = -math.expm1(-2.0 * h)  # 1 - e^{-2h}
        x = (sigma_next / here.sigma) * math.exp(-h) * x + alpha_next * one_minus * d.data
        phi_2 = math.expm1(-2.0 * h) / (2.0 * h) + 1.0
        if order >= 3 and len(history) >= 2:
            (d_1, h_1), (d_2, h_2) = history[-1], history[-2]
            r0, r1 = h_1 / h, h_2 / h
            d1_0 = (d.data - d_1.data) / r0
            d1_1 = (d_1.data - d_2.data) / r1
            d1 = d1_0 + (d1_0 - d1_1) * r0 / (r0 + r1)
            d2 = (d1_0 - d1_1) / (r0 + r1)
            phi_3 = phi_2 / (2.0 * h) - 0.5
            x = x + alpha_next * (phi_2 * d1 - phi_3 * d2)
        elif history:
            d_1, h_1 = history[-1]
            x = x + alpha_next * phi_2 * (d.data - d_1.data) * (h / h_1)
        points: list[tuple[float, torch.Tensor | None]] = [(0.0, d.guidance)]
        offset = 0.0
        for past, h_past in reversed(history[-(order - 1):] if order > 1 else []):
            offset -= h_past / h
            points.insert(0, (offset, past.guidance))
        term = _guidance_term(points, h, rate=1.0)
        if term is not None:
            x = x + 2.0 * sigma_next * term
        x = x + sigma_next * math.sqrt(one_minus) * s_noise * ctx.randn_like(x)
        history = (history + [(d, h)])[-2:]
        return x

    yield from _walk_to_clean(ctx, x, update)


# -- UniPC -------------------------------------------------------------------------------------------------


def unipc_body(ctx: SamplerContext, x: torch.Tensor, *, order: int) -> Iterator[Step]:
    """UniPC (Zhao et al. 2023), bh2 variant, data prediction, predictor UniP-p and corrector UniC-p.

    From level s (lambda_s, prediction m_0) to t, h = lambda_t - lambda_s, with earlier predictions m_i at
    lambda_i, r_i = (lambda_i - lambda_s) / h and D_i = (m_i - m_0) / r_i:
        UniP: x_t = (sigma_t / sigma_s) x_s - alpha_t (e^{-h} - 1) m_0 - alpha_t B(h) sum_i a_i D_i
        UniC: x_t^c = (sigma_t / sigma_s) x_s - alpha_t (e^{-h} - 1) m_0
                      - alpha_t B(h) (sum_i c_i D_i + c_p (m_t - m_0)),
    where R a = b on the first p-1 rows (a = 1/2 at p = 2) and R c = b (c = 1/2 at p = 1)
    (`multistep.unipc_coefficients`). Guidance is integrated on its own, sigma_t int G dlambda over the same
    points (the predictor's, plus lambda_t in the corrector). The corrector reuses the model evaluation
    m_t at the predicted x_t, so the cost stays one evaluation per level; the order warms up from 1 and
    the last step returns the guided x0. Deterministic.
    """
    history: list[tuple[float, Denoised]] = []  # (lambda, prediction) of evaluated levels, newest last
    last: tuple[torch.Tensor, Level, int] | None = None  # (x at the level stepped from, that level, order)

    def update(x_s: torch.Tensor, here: Level, there: Level, p: int, fresh: Denoised | None) -> torch.Tensor:
        """UniP (fresh None) or UniC (fresh: the evaluation at `there`) from `here` to `there`."""
        done = history if fresh is None else history[:-1]
        lam_s, current = done[-1]
        past = done[:-1][::-1][: p - 1]  # newest first
        h = there.log_snr - lam_s
        rks = [(lam_i - lam_s) / h for lam_i, _ in past] + [1.0]
        d1s = [(m_i.data - current.data) / rk for (_, m_i), rk in zip(past, rks)]
        h_phi_1, b_h, big_r, b = unipc_coefficients(rks, h, p)
        x_t = (there.sigma / here.sigma) * x_s - there.alpha * h_phi_1 * current.data
        if fresh is None:
            coeffs = [0.5] if p == 2 else np.linalg.solve(big_r[:-1, :-1], b[:-1]).tolist() if d1s else []
            residual = combine(coeffs, d1s) if d1s else None
        else:
            coeffs = [0.5] if p == 1 else np.linalg.solve(big_r, b).tolist()
            corrections = [*d1s, fresh.data - current.data]
            residual = combine(coeffs[-len(corrections):] if p == 1 else coeffs, corrections)
        if residual is not None:
            x_t = x_t - there.alpha * b_h * residual
        points = [((lam_i - lam_s) / h, m_i.guidance) for lam_i, m_i in past[::-1]] + [(0.0, current.guidance)]
        if fresh is not None:
            points.append((1.0, fresh.guidance))
        term = _guidance_term(points, h, rate=0.0)
        return x_t if term is None else x_t + there.sigma * term

    for here, there in _pairs(ctx):
        d = ctx.denoise(x, here)
        history.append((here.log_snr, d))
        if last is not None and not there.is_clean:  # correct the state at this level with the fresh evaluation
            x = update(last[0], last[1], here, last[2], d)
        if there.is_clean:
            x = d.x0
        else:
            p = min(order, len(history))
            last = (x, here, p)
            x = update(x, here, there, p, None)
        history = history[-order - 1:]
        yield Step(_index(here), x, d.x0)


# -- the registry ------------------------------------------------------------------------------------------

_S_NOISE = Option("s_noise", 1.0, "scale of the fresh noise (1 = the SDE's own)", minimum=0.0)


def _two_per_level_but_last(num_levels: int) -> int:
    return 2 * num_levels - 1


_SPECS = (
    SamplerSpec("ddpm", ddpm_body, "ancestral sampling with the learned variances, the original p_sample (the default)",
                stochastic=True, guidance="mean", needs_diffusion=True, reference="Ho et al. 2020"),
    SamplerSpec("ddim", ddim_body, "DDIM, the original ddim_sample (--use_ddim True)",
                options=(Option("eta", 0.0, "DDIM's noise scale: 0 is deterministic, 1 adds DDPM-like noise",
                                minimum=0.0),), reference="Song et al. 2021"),
    SamplerSpec("euler", euler_body, "Euler on the probability-flow ODE (equals DDIM at eta 0)",
                reference="Karras et al. 2022"),
    SamplerSpec("heun", heun_body, "EDM's Heun, second order, 2 evaluations per level (optional churn)",
                options=(Option("s_churn", 0.0, "EDM's S_churn (0 = the deterministic Algorithm 1)", minimum=0.0),
                         Option("s_tmin", 0.0, "churn only at noise levels (VE sigma) >= this", minimum=0.0),
                         Option("s_tmax", math.inf, "churn only at noise levels <= this", minimum=0.0, finite=False),
                         _S_NOISE),
                evaluations=_two_per_level_but_last, check=_check_heun, reference="Karras et al. 2022"),
    SamplerSpec("dpm++2m", dpmpp_2m_body, "DPM-Solver++(2M), second-order multistep", guidance="split",
                reference="Lu et al. 2022"),
    SamplerSpec("dpm++3m", dpmpp_3m_body, "third-order multistep DPM-Solver++", guidance="split",
                reference="Lu et al. 2022"),
    SamplerSpec("dpm++2m_sde", partial(sde_multistep_body, order=2), "SDE-DPM-Solver++(2M), stochastic",
                options=(_S_NOISE,),
                stochastic=True, guidance="split", reference="Lu et al. 2022"),
    SamplerSpec("dpm++3m_sde", partial(sde_multistep_body, order=3), "third-order multistep SDE-DPM-Solver++, stochastic",
                options=(_S_NOISE,), stochastic=True, guidance="split", reference="Lu et al. 2022"),
    SamplerSpec("unipc", unipc_body, "UniPC (bh2) predictor-corrector, order 1-3",
                options=(Option("order", 3, "unipc: order 1, 2 or 3", choices=(1, 2, 3)),), guidance="split",
                reference="Zhao et al. 2023"),
    SamplerSpec("ipndm", ipndm_body, "improved PNDM: Adams-Bashforth in EDM coordinates, order 1-4",
                options=(Option("order", 4, "ipndm: Adams-Bashforth order 1 to 4", choices=(1, 2, 3, 4)),),
                reference="Zhang & Chen 2022"),
    SamplerSpec("deis", deis_body, "DEIS tAB: noise prediction extrapolated in the model's time, order 1-3",
                options=(Option("order", 3, "deis: order 1, 2 or 3", choices=(1, 2, 3)),),
                reference="Zhang & Chen 2023"),
)

# Command-line names -> samplers. Adding a sampler: its body above, one SamplerSpec, and its own test.
SAMPLERS: dict[str, Sampler] = {spec.name: Sampler(spec) for spec in _SPECS}

ddpm = SAMPLERS["ddpm"]
ddim = SAMPLERS["ddim"]
euler = SAMPLERS["euler"]
heun = SAMPLERS["heun"]
dpmpp_2m = SAMPLERS["dpm++2m"]
dpmpp_3m = SAMPLERS["dpm++3m"]
dpmpp_2m_sde = SAMPLERS["dpm++2m_sde"]
dpmpp_3m_sde = SAMPLERS["dpm++3m_sde"]
unipc = SAMPLERS["unipc"]
ipndm = SAMPLERS["ipndm"]
deis = SAMPLERS["deis"]


def model_evaluations(sampler: str, num_levels: int) -> int:
    """Model (and classifier) evaluations `sampler` makes on a grid of `num_levels` levels."""
    return SAMPLERS[sampler].evaluations(num_levels)
