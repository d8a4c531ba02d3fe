"""Scoring one set of samples in the judge's feature space: FID, precision, recall, and the judge's
accuracy on the intended classes."""
from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from guided_diffusion.demo.judge import JudgeFeatures
from guided_diffusion.evaluation import Features, frechet_distance, precision_recall, statistics

__all__ = ["SettingMetrics", "Reference", "score_samples"]


@dataclass
class SettingMetrics:
    """One row of metrics.json."""

    sampler: str
    scale: float
    accuracy: float
    fid: float
    precision: float
    recall: float

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class Reference:
    """Judge features of the real images samples are compared with, and their statistics."""

    features: np.ndarray
    mu: np.ndarray
    sigma: np.ndarray

    @classmethod
    def of(cls, features: Features) -> Reference:
        mu, sigma = statistics(features.pool)
        return cls(features=features.pool, mu=mu, sigma=sigma)


def _rounded(value: float) -> float:
    # Six significant digits: what the report shows, and no float noise in metrics.json.
    return float(f"{value:.6g}")


def score_samples(judge: JudgeFeatures, reference: Reference, images: np.ndarray, labels: np.ndarray, *,
                  sampler: str, scale: float) -> SettingMetrics:
    """Metrics of uint8 NHWC `images` meant to show classes `labels`."""
    features = judge.extract(images)
    assert features.logits is not None  # JudgeFeatures.extract always fills them
    accuracy = float(np.mean(features.logits.argmax(axis=1) == labels))
    mu, sigma = statistics(features.pool)
    # eigh: the same trace as sqrtm for these PSD matrices, and always real when guidance collapses samples.
    fid = frechet_distance(reference.mu, reference.sigma, mu, sigma, method="eigh")
    precision, recall = precision_recall(reference.features, features.pool, k=3)
    return SettingMetrics(sampler=sampler, scale=float(scale), accuracy=_rounded(accuracy), fid=_rounded(fid),
                          precision=_rounded(precision), recall=_rounded(recall))
