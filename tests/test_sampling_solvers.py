"""The ODE samplers against exact answers on Gaussian data, where everything is known in closed form.

Data x_0 ~ N(m, s^2 I) under the VP process x_t = alpha_t x_0 + sigma_t eps has marginals
N(alpha_t m, v_t I) with v_t = alpha_t^2 s^2 + sigma_t^2, exact noise prediction
eps(x, t) = sigma_t (x - alpha_t m) / v_t, and a probability-flow ODE whose solution keeps the
standardised coordinate (x_t - alpha_t m) / sqrt(v_t) constant.
"""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy.integrate import quad, solve_ivp

from guided_diffusion.diffusion.denoiser import Denoiser
from guided_diffusion.diffusion.stepping import NonFiniteSampleError
from guided_diffusion.runtime.errors import SettingError
from guided_diffusion.sampling.guidance import SteeredGuidance
from guided_diffusion.sampling.multistep import lagrange_weights
from guided_diffusion.sampling.samplers import (
    ADAMS_BASHFORTH,
    SAMPLERS,
    ddim,
    dpmpp_2m,
    euler,
    heun,
)

BETA_MIN, BETA_MAX = 0.1, 20.0  # continuous VP-SDE schedule of Song et al. (2021)
T_MIN, T_MAX = 1e-3, 1.0
SHAPE = (6, 1, 2, 2)


def log_abar(t: np.ndarray | float) -> np.ndarray | float:
    return -(BETA_MIN * t + 0.5 * (BETA_MAX - BETA_MIN) * t**2)


def log_snr(t: float) -> float:
    return 0.5 * (log_abar(t) - math.log(-math.expm1(log_abar(t))))


def grid_abar(num_steps: int) -> np.ndarray:
    """alphas_cumprod of a K-step grid uniform in log-SNR lambda, index 0 = T_MIN ... K-1 = T_MAX."""
    lam = np.linspace(log_snr(T_MIN), log_snr(T_MAX), num_steps)
    return 1.0 / (1.0 + np.exp(-2.0 * lam))  # abar = sigmoid(2 lambda)


def karras_abar(num_steps: int, rho: float = 7.0) -> np.ndarray:
    """The same range on Karras et al.'s grid, uniform in sigma^(1/rho) for VE sigma = exp(-lambda)."""
    s_min, s_max = math.exp(-log_snr(T_MIN)), math.exp(-log_snr(T_MAX))
    ramp = np.linspace(0.0, 1.0, num_steps)
    sigmas = (s_max ** (1 / rho) + ramp * (s_min ** (1 / rho) - s_max ** (1 / rho))) ** rho
    return (1.0 / (1.0 + sigmas**2))[::-1].copy()


GRIDS = {"logsnr": grid_abar, "karras": karras_abar}


class GaussianData:
    def __init__(self, mean: torch.Tensor, std: float):
        self.mean, self.std = mean, std

    def variance(self, abar: float) -> float:
        return abar * self.std**2 + (1 - abar)

    def score(self, x: torch.Tensor, abar: float) -> torch.Tensor:
        return -(x - math.sqrt(abar) * self.mean) / self.variance(abar)

    def flow(self, x_from: torch.Tensor, abar_from: float, abar_to: float) -> torch.Tensor:
        """Exact probability-flow ODE map between two noise levels."""
        z = (x_from - math.sqrt(abar_from) * self.mean) / math.sqrt(self.variance(abar_from))
        return math.sqrt(abar_to) * self.mean + math.sqrt(self.variance(abar_to)) * z


def vp_time(abar: float) -> float:
    """The VP-SDE time t in [T_MIN, T_MAX] of a level: the root of log_abar(t) = log(abar)."""
    spread = BETA_MAX - BETA_MIN
    return (-BETA_MIN + math.sqrt(BETA_MIN**2 - 2.0 * spread * math.log(abar))) / spread


class ExactDenoiser(Denoiser):
    """The exact denoiser of `data`. Its timestep is the VP-SDE time in thousandths (a smooth time
    variable, as a model's is); it hands guidance the level abar as its "timestep" tensor."""

    def __init__(self, abar: np.ndarray, data: GaussianData):
        super().__init__(abar)
        self.data = data

    def predict(self, x, level, model_kwargs):
        eps = -level.sigma * self.data.score(x, level.abar)
        return (x - level.sigma * eps) / level.alpha, eps

    def timestep(self, level):
        return 1000.0 * vp_time(level.abar)

    def model_time(self, level, batch, device):
        return torch.full((batch,), level.abar, dtype=torch.float64)


class IndexTimedDenoiser(ExactDenoiser):
    """The exact denoiser whose original timestep of grid point k is k (for guidance intervals)."""

    def timestep(self, level):
        assert level.index is not None
        return float(level.index)


P = GaussianData(torch.tensor([0.3, -0.5, 0.1, 0.7], dtype=torch.float64).view(1, 1, 2, 2), 0.4)
Q = GaussianData(torch.tensor([-0.6, 0.2, 0.5, -0.1], dtype=torch.float64).view(1, 1, 2, 2), 0.25)


def guidance(weight: float):
    """cond_fn = weight * (score of Q - score of P): a Bayes-consistent 'classifier' gradient that turns
    the P-model into a Q-model at weight 1. `t` is the level abar (see ExactDenoiser)."""

    def cond_fn(x, t, **_):
        abar = float(t[0])
        return weight * (Q.score(x, abar) - P.score(x, abar))

    return cond_fn


def start_noise() -> torch.Tensor:
    return torch.randn(SHAPE, generator=torch.Generator().manual_seed(0), dtype=torch.float64)


def state_at_step0(sampler, num_steps: int, cond_fn=None, grid=grid_abar, **kwargs) -> tuple[torch.Tensor, torch.Tensor]:
    """Run `sampler` on the exact P denoiser; return (x at grid step 0, final output)."""
    abar = grid(num_steps)
    denoiser = ExactDenoiser(abar, P)
    seen = {}

    def callback(info):
        if info["k"] == 1:
            seen["x"] = info["x"].clone()

    out = sampler(
        denoiser, start_noise(), cond_fn=cond_fn, clip_denoised=False, callback=callback, **kwargs,
    )
    return seen["x"], out


def exact_step0(data: GaussianData) -> torch.Tensor:
    return data.flow(start_noise(), math.exp(log_abar(T_MAX)), math.exp(log_abar(T_MIN)))


def observed_orders(errors: list[float]) -> list[float]:
    return [math.log2(a / b) for a, b in zip(errors, errors[1:])]


STEPS = [20, 40, 80, 160]


def test_dpmpp_2m_converges_at_second_order_to_the_exact_flow():
    reference = exact_step0(P)
    errors = [float((state_at_step0(dpmpp_2m, n)[0] - reference).abs().max()) for n in STEPS]
    orders = observed_orders(errors)
    assert errors[-1] < 1e-3
    assert all(1.8 < order < 2.4 for order in orders), (errors, orders)
    ddim_error = float((state_at_step0(ddim, STEPS[0])[0] - reference).abs().max())
    assert errors[0] < ddim_error / 4  # the point of a second-order solver: far better at few steps


def test_ddim_is_first_order_on_the_same_problem():
    # Shows the order measurement discriminates: DDIM (DPM-Solver-1) must come out near 1, not 2.
    reference = exact_step0(P)
    errors = [float((state_at_step0(ddim, n)[0] - reference).abs().max()) for n in STEPS]
    orders = observed_orders(errors)
    assert all(0.8 < order < 1.2 for order in orders), (errors, orders)


def test_final_step_returns_the_data_prediction_at_step0():
    x_step0, out = state_at_step0(dpmpp_2m, 20)
    abar0 = math.exp(log_abar(T_MIN))
    expected = math.sqrt(abar0) * P.std**2 * (x_step0 - math.sqrt(abar0) * P.mean) / P.variance(abar0) + P.mean
    torch.testing.assert_close(out, expected, rtol=1e-12, atol=1e-12)


def test_guided_dpmpp_2m_matches_the_closed_form_guided_flow():
    # At weight 1 the guided ODE of P is exactly the ODE of Q, whose solution is closed form.
    reference = exact_step0(Q)
    errors = [float((state_at_step0(dpmpp_2m, n, cond_fn=guidance(1.0))[0] - reference).abs().max()) for n in STEPS]
    orders = observed_orders(errors)
    assert errors[-1] < 1e-3
    assert all(1.8 < order < 2.4 for order in orders), (errors, orders)
    unguided = float((state_at_step0(dpmpp_2m, STEPS[-1])[0] - reference).abs().max())
    assert unguided > 100 * errors[-1]  # guidance really moved the solution


def guided_ode_reference(weight: float) -> torch.Tensor:
    """High-accuracy numerical solution of the guided probability-flow ODE
    dx/dt = -beta(t)/2 * (x + score_P + weight * (score_Q - score_P)) from T_MAX to T_MIN."""

    def velocity(t, flat):
        x = torch.from_numpy(flat).view(SHAPE)
        abar = math.exp(log_abar(t))
        score = P.score(x, abar) + weight * (Q.score(x, abar) - P.score(x, abar))
        beta = BETA_MIN + (BETA_MAX - BETA_MIN) * t
        return (-0.5 * beta * (x + score)).reshape(-1).numpy()

    sol = solve_ivp(velocity, (T_MAX, T_MIN), start_noise().reshape(-1).numpy(), method="DOP853", rtol=1e-12, atol=1e-12)
    return torch.from_numpy(sol.y[:, -1]).view(SHAPE)


def test_guided_dpmpp_2m_matches_the_guided_ode_at_a_large_scale():
    reference = guided_ode_reference(3.0)
    errors = [float((state_at_step0(dpmpp_2m, n, cond_fn=guidance(3.0))[0] - reference).abs().max()) for n in STEPS]
    orders = observed_orders(errors)
    assert errors[-1] < 1e-3
    assert all(1.8 < order < 2.4 for order in orders), (errors, orders)


def test_numerical_reference_agrees_with_the_closed_form():
    torch.testing.assert_close(guided_ode_reference(1.0), exact_step0(Q), rtol=0, atol=1e-9)


@pytest.mark.parametrize("sampler", [ddim, dpmpp_2m])
def test_samplers_are_deterministic_and_keep_dtype(sampler):
    a = state_at_step0(sampler, 10)[1]
    b = state_at_step0(sampler, 10)[1]
    assert a.dtype == torch.float64
    assert torch.equal(a, b)


# -- every solver at its stated order, guided and not, on two grids ---------------------------------

# ipndm: equal-step Adams-Bashforth coefficients on these unequal grids, after an Euler warm-up step, are
# second order overall (its order-4 coefficients pay off in the error constant at few steps); deis: tAB3
# in the model's time variable; dpm++3m: the exact integral of the quadratic interpolant.
ORDERS = {"euler": (0.85, 1.15), "heun": (1.8, 2.5), "dpm++2m": (1.8, 2.5), "unipc": (2.0, 5.0),
          "dpm++3m": (2.7, 4.4), "ipndm": (1.8, 2.5), "deis": (2.3, 4.3)}


@pytest.mark.parametrize("grid", sorted(GRIDS))
@pytest.mark.parametrize("guided", [False, True])
@pytest.mark.parametrize("name", sorted(ORDERS))
def test_solver_converges_at_its_stated_order(name, guided, grid):
    # Guided at weight 1 the exact answer is Q's flow; unguided it is P's. Errors at grid step 0.
    reference = exact_step0(Q if guided else P)
    cond_fn = guidance(1.0) if guided else None
    errors = [float((state_at_step0(SAMPLERS[name], n, cond_fn=cond_fn, grid=GRIDS[grid])[0] - reference).abs().max())
              for n in STEPS]
    orders = observed_orders(errors)
    low, high = ORDERS[name]
    assert all(low < order < high for order in orders), (errors, orders)
    assert errors[-1] < (3e-2 if name == "euler" else 2e-3)


def test_unipc_order_follows_its_setting():
    # UniPC-p with its corrector: predictor order p, corrected to p + 1 (Zhao et al. 2023, theorem 3.1).
    reference = exact_step0(P)
    for order, expected in [(1, 2.0), (2, 3.0), (3, 3.0)]:
        errors = [float((state_at_step0(SAMPLERS["unipc"], n, order=order)[0] - reference).abs().max()) for n in STEPS]
        assert observed_orders(errors)[-1] > expected - 0.3, (order, errors)


def test_euler_is_ddim_with_eta_zero():
    for grid in GRIDS.values():
        a = state_at_step0(euler, 12, cond_fn=guidance(2.0), grid=grid)[1]
        b = state_at_step0(ddim, 12, cond_fn=guidance(2.0), grid=grid)[1]
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)


def test_heun_without_churn_is_deterministic_and_churn_moves_it():
    a = state_at_step0(heun, 10)[1]
    assert torch.equal(a, state_at_step0(heun, 10)[1])
    torch.manual_seed(0)
    churned = state_at_step0(heun, 10, s_churn=5.0)[1]
    assert (churned - a).abs().max() > 1e-3


@pytest.mark.parametrize("name,kwargs,setting", [
    ("heun", dict(s_churn=-1.0), "s_churn"),
    ("heun", dict(s_tmin=-1.0), "s_tmin"),
    ("heun", dict(s_tmin=2.0, s_tmax=1.0), "s_tmax"),
    ("heun", dict(s_noise=-0.5), "s_noise"),
    ("dpm++2m_sde", dict(s_noise=-0.5), "s_noise"),
    ("dpm++3m_sde", dict(s_noise=-0.5), "s_noise"),
    ("unipc", dict(order=4), "order"),
])
def test_a_samplers_bad_option_is_a_setting_error_naming_it(name, kwargs, setting):
    with pytest.raises(SettingError) as info:
        state_at_step0(SAMPLERS[name], 4, **kwargs)
    assert info.value.setting == setting and str(info.value).startswith(setting)


# -- stochastic samplers converge in distribution -------------------------------------------------

class Seeded:
    def __init__(self, seed: int):
        self.generator = torch.Generator().manual_seed(seed)

    def randn_like(self, x):
        return torch.randn(x.shape, generator=self.generator, dtype=x.dtype)


# (sampler, options, levels): DDIM at eta 1 (ancestral, first order in distribution) needs more levels.
STOCHASTIC = [("dpm++2m_sde", {}, 50), ("dpm++3m_sde", {}, 50), ("heun", {"s_churn": 40.0}, 50),
              ("ddim", {"eta": 1.0}, 400)]


@pytest.mark.parametrize("name,kwargs,levels", STOCHASTIC)
@pytest.mark.parametrize("guided", [False, True])
def test_stochastic_samplers_draw_the_data_distribution(name, kwargs, levels, guided):
    """4,000 samples of a 4-dim Gaussian: per coordinate, the mean within 0.03 (the standard error is
    s / sqrt(4000) <= 0.0063, so about 5 SE, leaving room for the discretisation) and the variance
    within 12% (SE of a sample variance is sqrt(2 / 4000) = 2.2%)."""
    target = Q if guided else P
    n = 4000
    x = torch.randn((n, *SHAPE[1:]), generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    denoiser = ExactDenoiser(grid_abar(levels), P)
    out = SAMPLERS[name](denoiser, x, noise=Seeded(2), cond_fn=guidance(1.0) if guided else None,
                         clip_denoised=False, **kwargs)
    mean, var = out.mean(0), out.var(0)
    assert (mean - target.mean[0]).abs().max() < 0.03, mean
    assert ((var / target.std**2) - 1).abs().max() < 0.12, var
    # and they are stochastic: another noise stream gives other samples
    other = SAMPLERS[name](denoiser, x[:8], noise=Seeded(3), clip_denoised=False, **kwargs)
    assert not torch.allclose(other, SAMPLERS[name](denoiser, x[:8], noise=Seeded(2), clip_denoised=False, **kwargs))


# -- guidance steering and failure reporting on the closed-form problem ------------------------------

def counting(cond_fn):
    calls = []

    def wrapped(x, t, **kwargs):
        calls.append(float(t[0]))
        return cond_fn(x, t, **kwargs)

    return wrapped, calls


@pytest.mark.parametrize("name", ["euler", "heun", "dpm++2m", "dpm++2m_sde", "dpm++3m_sde", "unipc", "ddim"])
def test_guidance_interval_skips_the_classifier_outside_it(name):
    denoiser = IndexTimedDenoiser(grid_abar(10), P)  # original timestep of grid point k: k
    cond_fn, calls = counting(guidance(2.0))
    steered = SteeredGuidance(cond_fn, num_timesteps=10, interval=(0, 4))
    torch.manual_seed(0)
    out = SAMPLERS[name](denoiser, start_noise(), noise=Seeded(0), cond_fn=steered, clip_denoised=False)
    # Grid points 0..4 once each; heun also evaluates level k-1 from k = 5..1: levels 4..0 once more.
    expected_calls = {"heun": 10}.get(name, 5)
    assert len(calls) == expected_calls, calls
    # Outside the interval nothing changes; a full interval equals plain guidance.
    plain = SAMPLERS[name](denoiser, start_noise(), noise=Seeded(0), cond_fn=guidance(2.0), clip_denoised=False)
    full = SAMPLERS[name](denoiser, start_noise(), noise=Seeded(0), clip_denoised=False,
                          cond_fn=SteeredGuidance(guidance(2.0), num_timesteps=10, interval=(0, 9)))
    torch.testing.assert_close(full, plain, rtol=0, atol=0)
    assert not torch.allclose(out, plain)


def test_guidance_schedules_average_one_and_grow_towards_low_noise():
    ts = np.linspace(0, 999, 100001)
    for schedule in ("constant", "linear", "cosine"):
        steer = SteeredGuidance(guidance(1.0), num_timesteps=1000, schedule=schedule)
        weights = np.array([steer.weight(t) for t in ts[::1000]])
        assert abs(weights.mean() - 1.0) < 0.02
        assert (np.diff(weights) <= 1e-12).all()  # never more guidance at higher noise
    assert SteeredGuidance(guidance(1.0), num_timesteps=1000, schedule="linear").weight(999) == 0.0
    assert SteeredGuidance(guidance(1.0), num_timesteps=1000, interval=(100, 500)).weight(600) == 0.0
    with pytest.raises(SettingError, match="guidance_schedule 'exp' is unknown") as info:
        SteeredGuidance(guidance(1.0), num_timesteps=1000, schedule="exp")
    assert info.value.setting == "guidance_schedule"
    with pytest.raises(SettingError, match="guidance_interval must be") as info:
        SteeredGuidance(guidance(1.0), num_timesteps=1000, interval=(500, 100))
    assert info.value.setting == "guidance_interval"


@pytest.mark.parametrize("name", sorted(SAMPLERS.keys() - {"ddpm"}))
def test_non_finite_state_stops_with_the_step(name):
    class Exploding(ExactDenoiser):
        def predict(self, x, level, model_kwargs):
            x0, eps = super().predict(x, level, model_kwargs)
            return (x0 * float("nan"), eps) if level.abar > 0.5 else (x0, eps)

    denoiser = Exploding(grid_abar(10), P)
    first_bad = max(k for k in range(10) if denoiser.alphas_cumprod[k] > 0.5)
    with pytest.raises(NonFiniteSampleError) as info:
        SAMPLERS[name](denoiser, start_noise(), noise=Seeded(0), clip_denoised=False)
    assert isinstance(info.value, ValueError)
    assert info.value.step in (first_bad, first_bad + 1)  # heun meets level k-1 while stepping from k
    assert f"step {info.value.step}" in str(info.value)


def test_adams_bashforth_coefficients_have_their_order():
    # Order p with unit steps: sum_j c_j (-j)^m = 1 / (m + 1) for m < p (exact for polynomials of degree < p).
    for order, coefficients in enumerate(ADAMS_BASHFORTH, start=1):
        for m in range(order):
            assert abs(sum(c * (-j) ** m for j, c in enumerate(coefficients)) - 1 / (m + 1)) < 1e-12


@pytest.mark.parametrize("rate", [0.0, 1.0, 2.0])
def test_lagrange_weights_integrate_the_interpolant_exactly(rate):
    h, offsets = 0.7, [-2.1, -0.9, 0.0, 1.0]
    values = [0.3, -1.2, 0.5, 2.0]
    poly = np.polynomial.Polynomial.fit(offsets, values, 3).convert()
    expected = h * quad(lambda u: math.exp(rate * h * (u - 1)) * poly(u), 0.0, 1.0, epsabs=1e-13)[0]
    got = sum(w * v for w, v in zip(lagrange_weights(offsets, h, rate), values))
    assert abs(got - expected) < 1e-11


class NoDataDenoiser(IndexTimedDenoiser):
    """x0 = 0 everywhere: the flow is pure guidance, x_t = (sigma_t / sigma_s) x_s + sigma_t int G dlambda."""

    def predict(self, x, level, model_kwargs):
        return torch.zeros_like(x), x / level.sigma


@pytest.mark.parametrize("name", ["dpm++2m", "dpm++3m", "unipc"])
def test_split_guidance_integrates_a_constant_guidance_term_exactly(name):
    """The split solvers integrate the guidance term G = sigma s grad log p with its own weight: constant G is
    integrated exactly at any step size (the first-order data-prediction step, DDIM, is not: it scales the
    term by (e^h - 1) / h). Here cond_fn = c / sigma, so G = c."""
    abar = grid_abar(6)
    denoiser = NoDataDenoiser(abar, P)
    c = 0.8

    def cond_fn(x, t, **_):
        return torch.full_like(x, c / math.sqrt(1.0 - float(t[0])))

    top, bottom = denoiser.level(5), denoiser.level(0)
    x = start_noise()
    expected = (bottom.sigma / top.sigma) * x + bottom.sigma * c * (bottom.log_snr - top.log_snr)
    seen = {}
    SAMPLERS[name](denoiser, x, cond_fn=cond_fn, clip_denoised=False,
                   callback=lambda info: seen.update(x=info["x"]) if info["k"] == 1 else None)
    torch.testing.assert_close(seen["x"], expected, rtol=1e-6, atol=1e-7)  # G passes through float32
    seen.clear()
    SAMPLERS["ddim"](denoiser, x, cond_fn=cond_fn, clip_denoised=False,
                     callback=lambda info: seen.update(x=info["x"]) if info["k"] == 1 else None)
    assert (seen["x"] - expected).abs().max() > 0.1
