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
from scipy.integrate import solve_ivp

from guided_diffusion.sampling.denoiser import Denoiser
from guided_diffusion.sampling.samplers import ddim, dpmpp_2m

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


class ExactDenoiser(Denoiser):
    def __init__(self, abar: np.ndarray, data: GaussianData):
        super().__init__(abar)
        self.data = data

    def predict(self, x, k, model_kwargs):
        abar = float(self.alphas_cumprod[k])
        eps = -self.sigma(k) * self.data.score(x, abar)
        return self.x0_from_eps(x, k, eps), eps


P = GaussianData(torch.tensor([0.3, -0.5, 0.1, 0.7], dtype=torch.float64).view(1, 1, 2, 2), 0.4)
Q = GaussianData(torch.tensor([-0.6, 0.2, 0.5, -0.1], dtype=torch.float64).view(1, 1, 2, 2), 0.25)


def guidance(weight: float):
    """cond_fn = weight * (score of Q - score of P): a Bayes-consistent 'classifier' gradient that turns
    the P-model into a Q-model at weight 1. `t` is the grid index (the base Denoiser passes k)."""

    def cond_fn(x, t, abars):
        abar = float(abars[int(t[0])])
        return weight * (Q.score(x, abar) - P.score(x, abar))

    return cond_fn


def start_noise() -> torch.Tensor:
    return torch.randn(SHAPE, generator=torch.Generator().manual_seed(0), dtype=torch.float64)


def state_at_step0(sampler, num_steps: int, cond_fn=None, **kwargs) -> tuple[torch.Tensor, torch.Tensor]:
    """Run `sampler` on the exact P denoiser; return (x at grid step 0, final output)."""
    abar = grid_abar(num_steps)
    denoiser = ExactDenoiser(abar, P)
    seen = {}

    def callback(info):
        if info["k"] == 1:
            seen["x"] = info["x"].clone()

    out = sampler(
        denoiser, start_noise(), cond_fn=cond_fn, model_kwargs={"abars": abar} if cond_fn else None,
        clip_denoised=False, callback=callback, **kwargs,
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
