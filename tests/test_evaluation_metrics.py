"""Metric functions against independent NumPy/SciPy computations on constructed and random data."""
from __future__ import annotations

import numpy as np
import pytest
import scipy.stats
import torch

from guided_diffusion.evaluation import metrics
from guided_diffusion.evaluation.metrics import (
    frechet_distance,
    inception_score,
    pairwise_squared_distances,
    precision_recall,
    softmax,
    statistics,
)
from guided_diffusion.runtime.errors import UserError


def _random_spd(rng: np.random.Generator, dim: int) -> np.ndarray:
    a = rng.standard_normal((dim, dim))
    return a @ a.T / dim + 0.1 * np.eye(dim)


def _fid_2d_closed_form(mu1, s1, mu2, s2) -> float:
    """For 2x2 matrices with positive eigenvalues, tr sqrt(M) = sqrt(tr M + 2 sqrt(det M))."""
    product = s1 @ s2
    trace_sqrt = np.sqrt(np.trace(product) + 2 * np.sqrt(np.linalg.det(product)))
    diff = mu1 - mu2
    return float(diff @ diff + np.trace(s1) + np.trace(s2) - 2 * trace_sqrt)


# ---------------------------------------------------------------- statistics and FID


def test_statistics_is_mean_and_unbiased_covariance():
    rng = np.random.default_rng(0)
    features = rng.standard_normal((50, 4)).astype(np.float32)
    mu, sigma = statistics(features)
    centred = features.astype(np.float64) - features.astype(np.float64).mean(0)
    np.testing.assert_allclose(mu, features.mean(0), rtol=1e-6)
    np.testing.assert_allclose(sigma, centred.T @ centred / 49, rtol=1e-6)
    with pytest.raises(ValueError):
        statistics(features[:1])


@pytest.mark.parametrize("method", ["sqrtm", "eigh"])
def test_fid_of_diagonal_gaussians_matches_known_value(method):
    rng = np.random.default_rng(1)
    mu1, mu2 = rng.standard_normal(30), rng.standard_normal(30)
    var1, var2 = rng.uniform(0.2, 3, 30), rng.uniform(0.2, 3, 30)
    expected = np.sum((mu1 - mu2) ** 2) + np.sum((np.sqrt(var1) - np.sqrt(var2)) ** 2)
    got = frechet_distance(mu1, np.diag(var1), mu2, np.diag(var2), method=method)
    assert got == pytest.approx(expected, rel=1e-9)


@pytest.mark.parametrize("method", ["sqrtm", "eigh"])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_fid_of_full_2d_gaussians_matches_closed_form(method, seed):
    rng = np.random.default_rng(seed)
    mu1, mu2 = rng.standard_normal(2), rng.standard_normal(2)
    s1, s2 = _random_spd(rng, 2), _random_spd(rng, 2)
    assert frechet_distance(mu1, s1, mu2, s2, method=method) == pytest.approx(
        _fid_2d_closed_form(mu1, s1, mu2, s2), rel=1e-9)


def test_fid_from_samples_approaches_the_population_value():
    rng = np.random.default_rng(3)
    mu1, mu2 = np.array([0.0, 1.0]), np.array([1.0, -1.0])
    s1, s2 = _random_spd(rng, 2), _random_spd(rng, 2)
    x1 = rng.multivariate_normal(mu1, s1, size=40_000)
    x2 = rng.multivariate_normal(mu2, s2, size=40_000)
    got = frechet_distance(*statistics(x1), *statistics(x2))
    assert got == pytest.approx(_fid_2d_closed_form(mu1, s1, mu2, s2), rel=0.03)


def test_fid_methods_agree_on_full_rank_high_dimensional_statistics():
    rng = np.random.default_rng(4)
    s1, s2 = _random_spd(rng, 64), _random_spd(rng, 64)
    mu1, mu2 = rng.standard_normal(64), rng.standard_normal(64)
    exact = frechet_distance(mu1, s1, mu2, s2, method="sqrtm")
    assert frechet_distance(mu1, s1, mu2, s2, method="eigh") == pytest.approx(exact, rel=1e-9)
    assert frechet_distance(mu1, s1, mu1, s1) == pytest.approx(0, abs=1e-9)


def test_fid_eigh_handles_rank_deficient_covariances():
    # S1 = X^T X from 5 points in 40-d: tr sqrtm(S1 S2) = sum of square roots of the eigenvalues of
    # the 5x5 matrix X S2 X^T (computed here with a general eigensolver).
    rng = np.random.default_rng(9)
    x = rng.standard_normal((5, 40))
    s1, s2 = x.T @ x, _random_spd(rng, 40)
    mu1, mu2 = rng.standard_normal(40), rng.standard_normal(40)
    trace_sqrt = np.sum(np.sqrt(np.linalg.eigvals(x @ s2 @ x.T).real))
    expected = (mu1 - mu2) @ (mu1 - mu2) + np.trace(s1) + np.trace(s2) - 2 * trace_sqrt
    assert frechet_distance(mu1, s1, mu2, s2, method="eigh") == pytest.approx(expected, rel=1e-10)
    assert frechet_distance(mu2, s2, mu1, s1, method="eigh") == pytest.approx(expected, rel=1e-10)
    assert frechet_distance(mu1, s1, mu1, s1, method="eigh") == pytest.approx(0, abs=1e-10 * np.trace(s1))


def test_fid_retries_with_offset_when_sqrtm_is_not_finite(monkeypatch):
    rng = np.random.default_rng(5)
    mu1, mu2 = rng.standard_normal(2), rng.standard_normal(2)
    s1, s2 = _random_spd(rng, 2), _random_spd(rng, 2)
    real_sqrtm = metrics._sqrtm
    calls = []

    def flaky_sqrtm(matrix):
        calls.append(matrix)
        if len(calls) == 1:
            return np.full_like(matrix, np.nan)
        return real_sqrtm(matrix)

    monkeypatch.setattr(metrics, "_sqrtm", flaky_sqrtm)
    eps = 0.25  # large enough to move the result visibly
    with pytest.warns(RuntimeWarning, match="adding"):
        got = frechet_distance(mu1, s1, mu2, s2, eps=eps)
    offset = eps * np.eye(2)
    np.testing.assert_allclose(calls[1], (s1 + offset) @ (s2 + offset))
    trace_sqrt = np.sqrt(np.trace(calls[1]) + 2 * np.sqrt(np.linalg.det(calls[1])))
    expected = (mu1 - mu2) @ (mu1 - mu2) + np.trace(s1) + np.trace(s2) - 2 * trace_sqrt
    assert got == pytest.approx(expected, rel=1e-9)
    assert got != pytest.approx(_fid_2d_closed_form(mu1, s1, mu2, s2), rel=1e-3)


def test_fid_accepts_small_imaginary_parts_and_rejects_large_ones(monkeypatch):
    rng = np.random.default_rng(6)
    s1, s2 = _random_spd(rng, 2), _random_spd(rng, 2)
    mu = np.zeros(2)
    real_sqrtm = metrics._sqrtm
    expected = frechet_distance(mu, s1, mu, s2)

    monkeypatch.setattr(metrics, "_sqrtm", lambda m: real_sqrtm(m) + 5e-4j)
    assert frechet_distance(mu, s1, mu, s2) == pytest.approx(expected, rel=1e-12)

    monkeypatch.setattr(metrics, "_sqrtm", lambda m: real_sqrtm(m) + 1e-2j)
    with pytest.raises(ValueError, match="imaginary"):
        frechet_distance(mu, s1, mu, s2)


def test_fid_rejects_mismatched_statistics():
    with pytest.raises(ValueError, match="do not match"):
        frechet_distance(np.zeros(3), np.eye(3), np.zeros(2), np.eye(2))
    with pytest.raises(ValueError, match="method"):
        frechet_distance(np.zeros(2), np.eye(2), np.zeros(2), np.eye(2), method="fast")


# ---------------------------------------------------------------- Inception Score


def test_inception_score_of_confident_balanced_predictions_is_class_count():
    probs = np.eye(10, dtype=np.float32)[np.arange(200) % 10]
    assert inception_score(probs, split_size=50) == pytest.approx(10.0, rel=1e-5)


def test_inception_score_of_identical_predictions_is_one():
    probs = np.tile(np.array([[0.2, 0.3, 0.5]], dtype=np.float32), (40, 1))
    assert inception_score(probs) == pytest.approx(1.0, abs=1e-6)


def test_inception_score_matches_independent_kl_computation_with_uneven_splits():
    rng = np.random.default_rng(7)
    probs = rng.dirichlet(np.full(6, 0.3), size=30)
    expected_splits = []
    for start in range(0, 30, 7):  # splits of 7, 7, 7, 7, 2
        part = probs[start : start + 7]
        marginal = part.mean(0)
        expected_splits.append(np.exp(np.mean([scipy.stats.entropy(row, marginal) for row in part])))
    assert inception_score(probs, split_size=7) == pytest.approx(np.mean(expected_splits), rel=1e-10)
    assert inception_score(probs, split_size=7) != pytest.approx(inception_score(probs, split_size=30), rel=1e-3)


def test_inception_score_uses_softmax_of_logits_in_float32():
    rng = np.random.default_rng(8)
    logits = (rng.standard_normal((12, 5)) * 3).astype(np.float32)
    probs = softmax(logits)
    assert probs.dtype == np.float32
    expected = np.exp(logits - logits.max(1, keepdims=True))
    np.testing.assert_allclose(probs, expected / expected.sum(1, keepdims=True), rtol=1e-6)
    # Extreme logits underflow to exact zeros and denormals; the score stays finite.
    extreme = np.array([[0.0, -200.0, -104.0]] * 3 + [[-104.0, 0.0, -200.0]] * 3, dtype=np.float32)
    assert np.isfinite(inception_score(softmax(extreme)))
    assert inception_score(softmax(extreme)) == pytest.approx(2.0, rel=1e-5)


# ---------------------------------------------------------------- precision and recall


def _brute_force_precision_recall(real: np.ndarray, fake: np.ndarray, k: int) -> tuple[float, float]:
    """Kynkäänniemi et al. in float64 with explicit distance matrices."""
    def sq_dist(a, b):
        return ((a[:, None, :] - b[None, :, :]) ** 2).sum(-1)

    real_radii = np.sort(sq_dist(real, real), axis=1)[:, k]
    fake_radii = np.sort(sq_dist(fake, fake), axis=1)[:, k]
    cross = sq_dist(real, fake)
    precision = np.mean([(cross[:, j] <= real_radii).any() for j in range(len(fake))])
    recall = np.mean([(cross[i, :] <= fake_radii).any() for i in range(len(real))])
    return float(precision), float(recall)


def _fp16_distances_numpy(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """The TF evaluator's fp16 distance formula in NumPy half arithmetic (float32 accumulation)."""
    u16, v16 = u.astype(np.float16), v.astype(np.float16)
    norm_u = (u16 * u16).astype(np.float32).sum(1).astype(np.float16)
    norm_v = (v16 * v16).astype(np.float32).sum(1).astype(np.float16)
    product = (u16.astype(np.float32) @ v16.astype(np.float32).T).astype(np.float16)
    return np.maximum(norm_u[:, None] - np.float16(2) * product + norm_v[None, :], np.float16(0)).astype(np.float32)


def _integer_clouds(seed: int, n_real: int = 40, n_fake: int = 35, dim: int = 8):
    # Small integers: every squared distance is an exact fp16 value, so fp16 and float64 agree exactly.
    rng = np.random.default_rng(seed)
    real = rng.integers(-4, 5, size=(n_real, dim)).astype(np.float32)
    fake = (rng.integers(-4, 5, size=(n_fake, dim)) + (rng.random((n_fake, 1)) < 0.5)).astype(np.float32)
    return real, fake


@pytest.mark.parametrize("seed", [0, 1])
def test_precision_recall_matches_brute_force(seed):
    real, fake = _integer_clouds(seed)
    expected = _brute_force_precision_recall(real.astype(np.float64), fake.astype(np.float64), k=3)
    assert precision_recall(real, fake, k=3) == expected
    assert 0 < expected[0] < 1 and 0 < expected[1] < 1  # the data exercises both outcomes


def test_precision_recall_blocks_give_the_same_answer():
    real, fake = _integer_clouds(2)
    assert precision_recall(real, fake, block_size=6) == precision_recall(real, fake)


def test_precision_recall_extremes():
    rng = np.random.default_rng(3)
    points = rng.standard_normal((30, 5)).astype(np.float32)
    assert precision_recall(points, points) == (1.0, 1.0)
    assert precision_recall(points, points + 100) == (0.0, 0.0)
    with pytest.raises(UserError, match="more than 3"):
        precision_recall(points, points[:3])


def _sixteenths(seed: int, rows: int, dim: int = 48) -> np.ndarray:
    # Multiples of 1/16 below 3: inputs and their squares are exact in fp16 and every float32 sum is
    # exact, so the only roundings are the fp16 ones under test (identical in any summation order).
    return (np.random.default_rng(seed).integers(-45, 46, size=(rows, dim)) / 16).astype(np.float32)


def test_distances_are_computed_in_fp16_like_the_original():
    u, v = _sixteenths(0, 30), _sixteenths(1, 25)
    got = pairwise_squared_distances(torch.from_numpy(u), torch.from_numpy(v)).numpy()
    np.testing.assert_array_equal(got, _fp16_distances_numpy(u, v))
    np.testing.assert_array_equal(got, got.astype(np.float16).astype(np.float32))  # fp16 values
    exact = ((u[:, None, :].astype(np.float64) - v[None, :, :]) ** 2).sum(-1)
    assert np.any(got != exact)  # the rounding is real
    np.testing.assert_allclose(got, exact, rtol=2e-2, atol=0.5)


@pytest.mark.parametrize("seed", [0, 3])
def test_precision_recall_uses_the_fp16_distances(seed):
    # Integer points near 100 in 2-D: |u|^2 - 2uv + |v|^2 cancels badly in fp16 (ulp 8 at 10^4), which
    # changes ball membership; inputs, squares and sums stay exact in float32, so the emulation is exact.
    rng = np.random.default_rng(seed)
    real = (100 + rng.integers(0, 12, (30, 2))).astype(np.float32)
    fake = (101 + rng.integers(0, 12, (30, 2))).astype(np.float32)
    d_rr, d_ff, d_rf = (_fp16_distances_numpy(a, b) for a, b in ((real, real), (fake, fake), (real, fake)))
    real_radii, fake_radii = np.sort(d_rr, 1)[:, 3], np.sort(d_ff, 1)[:, 3]
    expected = (float(np.mean((d_rf <= real_radii[:, None]).any(0))),
                float(np.mean((d_rf <= fake_radii[None, :]).any(1))))
    got = precision_recall(real, fake)
    assert got == expected
    assert got != _brute_force_precision_recall(real.astype(np.float64), fake.astype(np.float64), k=3)


def test_distances_fall_back_to_float32_when_fp16_overflows():
    rng = np.random.default_rng(4)
    u = (rng.standard_normal((20, 16)) * 300).astype(np.float32)  # squared norms far above fp16's 65504
    v = (rng.standard_normal((15, 16)) * 300).astype(np.float32)
    got = pairwise_squared_distances(torch.from_numpy(u), torch.from_numpy(v)).numpy()
    exact = ((u[:, None, :].astype(np.float64) - v[None, :, :]) ** 2).sum(-1)
    assert np.isfinite(got).all()
    np.testing.assert_allclose(got, exact, rtol=1e-4)
    real, fake = _integer_clouds(5)
    big_real, big_fake = real * 1000, fake * 1000
    assert precision_recall(big_real, big_fake) == _brute_force_precision_recall(
        big_real.astype(np.float64), big_fake.astype(np.float64), k=3)
