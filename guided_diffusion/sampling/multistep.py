"""Weights of multistep integrators: integrals of Lagrange interpolants against exponential weights.

A multistep solver approximates a quantity f(lambda) on the step [lambda_s, lambda_s + h] by the polynomial
through its values at earlier (and, for a corrector, the new) points, and integrates that polynomial
against the step's weight in closed form. Here every integral is written in u = (lambda - lambda_s) / h:

    w_j = h * integral_0^1 exp(rate * h * (u - 1)) L_j(u) du,     L_j(u_i) = [i == j],

which covers the plain Adams weights (rate 0), the exponential integrator of the data prediction
(rate 1 in the ODE, 2 in the SDE) and the guidance term. Gauss-Legendre quadrature with 12 points is exact
for rate 0 and accurate to rounding for the smooth exponential weights of these steps.
"""
from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch

__all__ = ["lagrange_weights", "combine", "unipc_coefficients"]

_NODES, _WEIGHTS = np.polynomial.legendre.leggauss(12)
_U = 0.5 * (_NODES + 1.0)  # Gauss-Legendre points mapped to [0, 1]
_W = 0.5 * _WEIGHTS


def lagrange_weights(offsets: Sequence[float], h: float, rate: float = 0.0) -> list[float]:
    """w_j = h * int_0^1 exp(rate h (u - 1)) L_j(u) du for interpolation points u_j = `offsets` (in units
    of h from the start of the step; earlier points are negative)."""
    u = np.asarray(offsets, dtype=np.float64)
    weight = _W * np.exp(rate * h * (_U - 1.0))
    out = []
    for j in range(len(u)):
        basis = np.ones_like(_U)
        for i in range(len(u)):
            if i != j:
                basis *= (_U - u[i]) / (u[j] - u[i])
        out.append(float(h * np.sum(weight * basis)))
    return out


def combine(weights: Sequence[float], values: Sequence[torch.Tensor]) -> torch.Tensor:
    """sum_j weights[j] * values[j]."""
    total = weights[0] * values[0]
    for w, v in zip(weights[1:], values[1:]):
        total = total + w * v
    return total


def unipc_coefficients(rks: list[float], h: float, order: int) -> tuple[float, float, np.ndarray, np.ndarray]:
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
    r = np.asarray(rks, dtype=np.float64)
    for i in range(1, order + 1):
        rows.append(r ** (i - 1))
        b.append(h_phi_k * factorial / b_h)
        factorial *= i + 1
        h_phi_k = h_phi_k / hh - 1.0 / factorial
    return h_phi_1, b_h, np.stack(rows), np.asarray(b)
