"""The end-to-end evaluator with a small pluggable feature extractor (fast; no Inception)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from guided_diffusion.evaluation import (
    FeatureExtractor,
    Features,
    evaluate,
    frechet_distance,
    inception_score,
    precision_recall,
    save_reference_batch,
    softmax,
    statistics,
    summarize_batch,
)
from guided_diffusion.runtime.errors import UserError


class ColourFeatures(FeatureExtractor):
    """Per-image features from 2x2 average pooling: pool = 12 mean colours, spatial = 3 channel means,
    logits = a fixed linear map; records the batch sizes it was called with."""

    def __init__(self, batch_size: int = 4) -> None:
        self.batch_size = batch_size
        self.device = torch.device("cpu")
        self.calls: list[int] = []
        self.projection = np.random.default_rng(0).standard_normal((12, 5)).astype(np.float32) * 0.05

    def extract(self, images: np.ndarray) -> Features:
        self.calls.append(len(images))
        return self.features_of(images)

    def features_of(self, images: np.ndarray) -> Features:
        n, h, w, _ = images.shape
        quads = images.astype(np.float32).reshape(n, 2, h // 2, 2, w // 2, 3).mean(axis=(2, 4)).reshape(n, 12)
        return Features(pool=quads, spatial=images.astype(np.float32).mean(axis=(1, 2)), logits=quads @ self.projection)


def _images(seed: int, count: int, shift: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.clip(rng.integers(0, 200, size=(count, 8, 8, 3)) + shift, 0, 255).astype(np.uint8)


def test_evaluate_equals_metrics_on_independently_computed_features(tmp_path):
    ref_images, sample_images = _images(0, 30), _images(1, 22, shift=20)
    np.savez(tmp_path / "ref.npz", ref_images)
    np.savez(tmp_path / "sample.npz", sample_images)
    extractor = ColourFeatures(batch_size=4)
    result = evaluate(tmp_path / "ref.npz", tmp_path / "sample.npz", extractor, progress=False)

    assert extractor.calls == [4] * 7 + [2] + [4] * 5 + [2]  # streamed in batches of batch_size
    ref, sample = extractor.features_of(ref_images), extractor.features_of(sample_images)
    assert result.inception_score == pytest.approx(inception_score(softmax(sample.logits)), rel=1e-6)
    assert result.fid == pytest.approx(frechet_distance(*statistics(sample.pool), *statistics(ref.pool)), rel=1e-9)
    assert result.sfid == pytest.approx(frechet_distance(*statistics(sample.spatial), *statistics(ref.spatial)),
                                        rel=1e-9)
    assert (result.precision, result.recall) == precision_recall(ref.pool, sample.pool)
    assert result.fid > 1 and 1 < result.inception_score
    assert [line.split(":")[0] for line in result.lines()] == ["Inception Score", "FID", "sFID", "Precision", "Recall"]


def test_precomputed_statistics_replace_those_of_the_images(tmp_path):
    ref_images, sample_images = _images(2, 12), _images(3, 10)
    extractor = ColourFeatures()
    sample = extractor.features_of(sample_images)
    mu, sigma = statistics(sample.pool)
    mu_s, sigma_s = statistics(sample.spatial)
    # The reference holds the sample's own statistics: FID and sFID must be ~0 if they are used.
    np.savez(tmp_path / "ref.npz", ref_images, mu=mu, sigma=sigma, mu_s=mu_s, sigma_s=sigma_s)
    np.savez(tmp_path / "sample.npz", sample_images)
    summary = summarize_batch(tmp_path / "ref.npz", extractor, progress=False)
    assert summary.precomputed == ("mu", "sigma", "mu_s", "sigma_s")
    result = evaluate(tmp_path / "ref.npz", tmp_path / "sample.npz", extractor, progress=False)
    # ~0 relative to the traces (~3e4 here): sqrtm of a singular product carries rounding noise.
    assert result.fid == pytest.approx(0, abs=1e-3)
    assert result.sfid == pytest.approx(0, abs=1e-3)
    assert np.trace(sigma) > 1e3
    # Precision/recall still use the reference images.
    ref = extractor.features_of(ref_images)
    assert (result.precision, result.recall) == precision_recall(ref.pool, sample.pool)


def test_precomputed_statistics_of_another_feature_space_are_rejected(tmp_path):
    np.savez(tmp_path / "ref.npz", _images(4, 6), mu=np.zeros(2048), sigma=np.eye(2048))
    with pytest.raises(UserError, match="another feature extractor"):
        summarize_batch(tmp_path / "ref.npz", ColourFeatures(), progress=False)


def test_save_reference_batch_keeps_a_seeded_subset_and_statistics_of_all(tmp_path):
    images = _images(5, 25)
    np.savez(tmp_path / "data.npz", images)
    extractor = ColourFeatures(batch_size=6)
    save_reference_batch(tmp_path / "data.npz", tmp_path / "ref.npz", extractor, max_images=9, progress=False)
    everything = extractor.features_of(images)
    with np.load(tmp_path / "ref.npz") as saved:
        assert set(saved.files) == {"arr_0", "mu", "sigma", "mu_s", "sigma_s", "feature_space"}
        kept = saved["arr_0"]
        np.testing.assert_allclose(saved["mu"], everything.pool.mean(0), rtol=1e-6)
        np.testing.assert_allclose(saved["sigma"], np.cov(everything.pool, rowvar=False), rtol=1e-6)
        np.testing.assert_allclose(saved["sigma_s"], np.cov(everything.spatial, rowvar=False), rtol=1e-6)
    rows = np.sort(np.random.default_rng(0).choice(25, size=9, replace=False))
    np.testing.assert_array_equal(kept, images[rows])
    assert not np.array_equal(rows, np.arange(9))  # a spread subset, not the first rows


def test_bad_sample_arrays_are_user_errors(tmp_path):
    np.savez(tmp_path / "float.npz", np.zeros((4, 8, 8, 3), dtype=np.float32))
    with pytest.raises(UserError, match="uint8 RGB"):
        summarize_batch(tmp_path / "float.npz", ColourFeatures(), progress=False)
    np.savez(tmp_path / "gray.npz", np.zeros((4, 8, 8), dtype=np.uint8))
    with pytest.raises(UserError, match=r"\(N, H, W, 3\)"):
        summarize_batch(tmp_path / "gray.npz", ColourFeatures(), progress=False)
    np.savez(tmp_path / "one.npz", _images(6, 1))
    with pytest.raises(UserError, match="at least 2 images"):
        summarize_batch(tmp_path / "one.npz", ColourFeatures(), progress=False)


def test_extractor_failure_stops_the_reading_thread(tmp_path):
    np.savez(tmp_path / "ref.npz", _images(7, 40))

    class Failing(ColourFeatures):
        def extract(self, images):
            if self.calls:
                raise RuntimeError("extractor broke")
            return super().extract(images)

    with pytest.raises(RuntimeError, match="extractor broke"):
        summarize_batch(tmp_path / "ref.npz", Failing(batch_size=2), progress=False)
