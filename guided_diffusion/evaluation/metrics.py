"""FID, Inception Score and precision/recall on feature arrays, computed as OpenAI's TF evaluator does.

Every formula keeps the original's arithmetic (NumPy/SciPy dtypes, split sizes, fp16 distances in
10k blocks) so that the same features give the same numbers; departures are noted where they occur.
"""
from __future__ import annotations

import warnings

import numpy as np
import scipy.linalg
import scipy.linalg.lapack
import torch

from guided_diffusion.runtime.errors import UserError

__all__ = [
    "statistics",
    "frechet_distance",
    "softmax",
    "inception_score",
    "pairwise_squared_distances",
    "precision_recall",
    "FID_METHODS",
]

FID_METHODS = ("sqrtm", "eigh")
_DISTANCE_BLOCK = 10_000  # rows and columns per distance block, as ManifoldEstimator


def statistics(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean and covariance (`np.cov(rowvar=False)`) of `features` shaped (N, D)."""
    features = np.asarray(features)
    if features.ndim != 2 or len(features) < 2:
        raise ValueError(f"features must be shaped (N >= 2, D), got {features.shape}")
    return np.mean(features, axis=0), np.cov(features, rowvar=False)


def _sqrtm(matrix: np.ndarray) -> np.ndarray:
    with warnings.catch_warnings():  # the original passed disp=False: no singular-matrix chatter
        warnings.simplefilter("ignore")
        return scipy.linalg.sqrtm(matrix)


def _trace_sqrt_product_eigh(sigma1: np.ndarray, sigma2: np.ndarray) -> float:
    """tr sqrtm(S1 S2) for PSD S1, S2 from symmetric eigenvalues: with S1 = B B^T, S1 S2 has the
    nonzero eigenvalues of the symmetric B^T S2 B. One decomposition instead of a Schur form, never
    complex, and tiny when S1 has low rank. Eigenvalues at rounding level are dropped, since their
    square roots would only add noise."""
    factor = _psd_factor(sigma1)
    if factor.shape[1] == 0:
        return 0.0
    middle = factor.T @ np.asarray(sigma2, dtype=np.float64) @ factor
    eigenvalues = np.linalg.eigvalsh((middle + middle.T) / 2)
    floor = max(float(eigenvalues.max()), 0.0) * len(eigenvalues) * np.finfo(np.float64).eps
    return float(np.sum(np.sqrt(eigenvalues[eigenvalues > floor])))


def _psd_factor(sigma: np.ndarray) -> np.ndarray:
    """B (d x rank) with B B^T = sigma, by LAPACK's pivoted Cholesky (rank-revealing, stops at
    pivots below d * eps * max diagonal)."""
    factor, pivots, rank, info = scipy.linalg.lapack.dpstrf(np.asarray(sigma, dtype=np.float64), tol=-1.0, lower=1)
    if info < 0:
        raise ValueError(f"pivoted Cholesky failed (LAPACK info {info})")
    lower = np.tril(factor)[:, :rank]
    unpermuted = np.empty_like(lower)
    unpermuted[pivots - 1] = lower  # sigma = P L L^T P^T
    return unpermuted


def frechet_distance(
    mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray, *, eps: float = 1e-6,
    method: str = "sqrtm",
) -> float:
    """Fréchet distance `|mu1-mu2|^2 + tr S1 + tr S2 - 2 tr sqrtm(S1 S2)` between two Gaussians (a
    result below zero, rounding of equal statistics, is returned as 0).

    `method="sqrtm"` is the original's computation: scipy's sqrtm of S1 S2; if that is not finite, again
    with `eps` added to both diagonals; a complex result is accepted when its diagonal's imaginary part
    is within 1e-3, else `UserError` (a ValueError, as the original raised). `method="eigh"` computes the
    same trace from a pivoted Cholesky factor and symmetric eigenvalues: equal up to rounding for
    well-conditioned covariances, several times faster, never complex, and cleaner for singular ones.
    """
    mu1, mu2 = np.atleast_1d(mu1), np.atleast_1d(mu2)
    sigma1, sigma2 = np.atleast_2d(sigma1), np.atleast_2d(sigma2)
    if mu1.shape != mu2.shape or sigma1.shape != sigma2.shape or sigma1.shape != mu1.shape * 2:
        raise ValueError(
            f"statistics do not match: mu {mu1.shape} vs {mu2.shape}, sigma {sigma1.shape} vs {sigma2.shape}"
        )
    if method not in FID_METHODS:
        raise ValueError(f"method must be one of {FID_METHODS}, got {method!r}")
    diff = mu1 - mu2
    if method == "eigh":
        trace_covmean = _trace_sqrt_product_eigh(sigma1, sigma2)
    else:
        covmean = _sqrtm(sigma1.dot(sigma2))
        if not np.isfinite(covmean).all():
            warnings.warn(f"FID: singular covariance product; adding {eps} to the diagonals", RuntimeWarning, stacklevel=2)
            offset = np.eye(sigma1.shape[0]) * eps
            covmean = _sqrtm((sigma1 + offset).dot(sigma2 + offset))
        if np.iscomplexobj(covmean):
            if not np.allclose(np.diagonal(covmean).imag, 0, atol=1e-3):
                largest = np.max(np.abs(covmean.imag))
                raise UserError(
                    f"FID: the square root of the covariance product has an imaginary part of {largest:.3g}; the "
                    "statistics are degenerate: use more images than feature dimensions, or --fid_method eigh"
                )
            covmean = covmean.real
        trace_covmean = np.trace(covmean)
    distance = float(diff.dot(diff) + np.trace(sigma1) + np.trace(sigma2) - 2 * trace_covmean)
    # The distance is a squared norm, never negative; for (nearly) identical statistics it is a difference
    # of two large, equal traces, whose rounding can land just below zero. Report such a value as 0, the
    # true distance up to that rounding, rather than a negative FID that reads as a bug.
    return max(distance, 0.0)


def softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise softmax in the logits' dtype (float32 for the evaluator, as TF's softmax)."""
    logits = np.asarray(logits)
    shifted = np.exp(logits - np.max(logits, axis=1, keepdims=True))
    return shifted / np.sum(shifted, axis=1, keepdims=True)


def inception_score(probs: np.ndarray, split_size: int = 5000) -> float:
    """Inception Score: mean over consecutive splits of `split_size` rows (the last may be shorter) of
    exp(mean KL(p(y|x) || p(y))), in the dtype of `probs` as the original. Zero probabilities contribute
    0 (the original would return NaN)."""
    probs = np.asarray(probs)
    if not np.issubdtype(probs.dtype, np.floating):
        probs = probs.astype(np.float64)
    if probs.ndim != 2 or len(probs) == 0:
        raise ValueError(f"probs must be shaped (N >= 1, classes), got {probs.shape}")
    if split_size < 1:
        raise ValueError(f"split_size must be positive, got {split_size}")
    scores = []
    for start in range(0, len(probs), split_size):
        part = probs[start : start + split_size]
        # A column mean can underflow to 0 in float32 while a denormal entry is not: floor it at the
        # smallest normal number so such entries add ~0 instead of inf (normal data is unaffected).
        marginal = np.maximum(np.mean(part, 0), np.finfo(part.dtype).tiny)
        with np.errstate(divide="ignore", invalid="ignore"):
            kl = part * (np.log(part) - np.log(np.expand_dims(marginal, 0)))
        kl = np.where(part > 0, kl, 0).astype(part.dtype, copy=False)
        scores.append(np.exp(np.mean(np.sum(kl, 1))))
    return float(np.mean(scores))


def pairwise_squared_distances(u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Squared Euclidean distances between rows of `u` and `v` as the evaluator's DistanceBlock: in fp16
    (inputs, squares, norms, product and sums rounded to half; products accumulated in float32, as GPU
    half matmuls do), or in float32 when any fp16 value is not finite. Returns float32."""
    u16, v16 = u.half(), v.half()
    norm_u = (u16 * u16).float().sum(1).half()
    norm_v = (v16 * v16).float().sum(1).half()
    product = (u16.float() @ v16.float().t()).half()
    distances = torch.clamp_min(norm_u[:, None] - 2 * product + norm_v[None, :], 0)
    if bool(torch.isfinite(distances).all()):
        return distances.float()
    u, v = u.float(), v.float()
    norm_u, norm_v = (u * u).sum(1), (v * v).sum(1)
    return torch.clamp_min(norm_u[:, None] - 2 * (u @ v.t()) + norm_v[None, :], 0)


def _manifold_radii(features: torch.Tensor, k: int, block: int) -> torch.Tensor:
    """Per point, the squared distance to its k-th nearest neighbour in its own set (index k of the
    sorted distances; index 0 is normally the point itself)."""
    radii = torch.empty(len(features), dtype=torch.float32, device=features.device)
    for row in range(0, len(features), block):
        rows = features[row : row + block]
        nearest = None  # the k+1 smallest distances seen so far, per row
        for col in range(0, len(features), block):
            distances = pairwise_squared_distances(rows, features[col : col + block])
            if nearest is not None:
                distances = torch.cat([nearest, distances], 1)
            nearest = torch.topk(distances, min(k + 1, distances.shape[1]), dim=1, largest=False).values
        assert nearest is not None  # features is not empty
        radii[row : row + block] = torch.sort(nearest, dim=1).values[:, k]
    return radii


def precision_recall(
    real_features: np.ndarray, fake_features: np.ndarray, k: int = 3, *, block_size: int = _DISTANCE_BLOCK,
    device: str | torch.device = "cpu",
) -> tuple[float, float]:
    """Improved precision and recall (Kynkäänniemi et al. 2019) with k-NN balls on squared distances.

    Precision: share of fake points inside at least one real point's ball; recall: share of real points
    inside at least one fake point's ball. Distances follow `pairwise_squared_distances` in
    `block_size` x `block_size` blocks, each falling back to float32 on its own, as the original.
    """
    real = torch.as_tensor(np.asarray(real_features), dtype=torch.float32, device=device)
    fake = torch.as_tensor(np.asarray(fake_features), dtype=torch.float32, device=device)
    if real.ndim != 2 or fake.ndim != 2 or real.shape[1] != fake.shape[1]:
        raise ValueError(f"features must be (N, D) with equal D, got {tuple(real.shape)} and {tuple(fake.shape)}")
    if min(len(real), len(fake)) <= k:
        raise UserError(f"precision/recall with k={k} needs more than {k} images in each batch")
    real_radii = _manifold_radii(real, k, block_size)
    fake_radii = _manifold_radii(fake, k, block_size)
    real_covered = torch.zeros(len(real), dtype=torch.bool, device=real.device)
    fake_covered = torch.zeros(len(fake), dtype=torch.bool, device=real.device)
    for row in range(0, len(real), block_size):
        for col in range(0, len(fake), block_size):
            distances = pairwise_squared_distances(real[row : row + block_size], fake[col : col + block_size])
            real_covered[row : row + block_size] |= (distances <= fake_radii[None, col : col + block_size]).any(1)
            fake_covered[col : col + block_size] |= (distances <= real_radii[row : row + block_size, None]).any(0)
    precision = float(fake_covered.double().mean())
    recall = float(real_covered.double().mean())
    return precision, recall
