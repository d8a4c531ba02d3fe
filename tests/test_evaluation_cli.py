"""`guided-diffusion evaluate` end to end on small generated npz files with random Inception weights."""
from __future__ import annotations

import json
import re

import numpy as np
import pytest
from helpers import write_random_weights

from guided_diffusion.cli import main as cli_main
from guided_diffusion.evaluation import (
    InceptionFeatureExtractor,
    inception_score,
    precision_recall,
    softmax,
    statistics,
)

METRIC_LINE = re.compile(r"^(Inception Score|FID|sFID|Precision|Recall): (-?[0-9.e+-]+)$")


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
    """No test may download into (or read from) the user's real cache."""
    monkeypatch.setenv("GUIDED_DIFFUSION_CACHE", str(tmp_path / "cache"))


@pytest.fixture(scope="module")
def batches(tmp_path_factory):
    """Tiny reference/sample batches, random weights, and the samples' features from the Python API."""
    root = tmp_path_factory.mktemp("evaluate")
    rng = np.random.default_rng(0)
    ref = rng.integers(0, 256, size=(5, 16, 16, 3), dtype=np.uint8)
    # Two samples repeat reference images, so some balls overlap and precision/recall are not 0.
    sample = np.concatenate([ref[:2], rng.integers(0, 256, size=(2, 24, 24, 3), dtype=np.uint8)[:, 4:20, 4:20]])
    np.savez_compressed(root / "sample.npz", sample)
    weights = write_random_weights(root / "random_inception.pth")
    extractor = InceptionFeatureExtractor.from_weights(weights, device="cpu", progress=False)
    return root, ref, sample, weights, extractor.extract(ref), extractor.extract(sample)


def _metrics(stdout: str) -> dict[str, float]:
    lines = [line for line in stdout.splitlines() if METRIC_LINE.match(line)]
    assert [METRIC_LINE.match(line).group(1) for line in lines] == [
        "Inception Score", "FID", "sFID", "Precision", "Recall"]
    return {METRIC_LINE.match(line).group(1): float(METRIC_LINE.match(line).group(2)) for line in lines}


def test_evaluate_end_to_end_with_precomputed_reference_statistics(batches, capsys):
    root, ref, sample, weights, ref_features, sample_features = batches
    # The reference file holds the *samples'* statistics, so FID and sFID are ~0 only if the CLI uses
    # them instead of statistics of the reference images; precision/recall still use its images.
    mu, sigma = statistics(sample_features.pool)
    mu_s, sigma_s = statistics(sample_features.spatial)
    np.savez(root / "ref_with_stats.npz", ref, mu=mu, sigma=sigma, mu_s=mu_s, sigma_s=sigma_s)
    code = cli_main(["evaluate", str(root / "ref_with_stats.npz"), str(root / "sample.npz"),
                     "--json", str(root / "metrics.json"), "--inception_weights", str(weights),
                     "--fid_method", "eigh", "--batch_size", "3", "--device", "cpu", "--no_progress"])
    assert code == 0
    printed = _metrics(capsys.readouterr().out)

    # ~0 relative to the traces: square roots of a rank-3 product's rounding noise add up.
    assert abs(printed["FID"]) < 1e-6 * np.trace(sigma)
    assert abs(printed["sFID"]) < 1e-6 * np.trace(sigma_s)
    assert np.trace(sigma) > 1 and np.trace(sigma_s) > 1
    assert printed["Inception Score"] == pytest.approx(inception_score(softmax(sample_features.logits)), rel=1e-5)
    precision, recall = precision_recall(ref_features.pool, sample_features.pool)
    assert (printed["Precision"], printed["Recall"]) == (precision, recall)
    assert precision >= 0.5 and recall >= 0.4  # the repeated images are covered
    saved = json.loads((root / "metrics.json").read_text())
    assert saved["fid"] == printed["FID"] and saved["precision"] == printed["Precision"]
    assert saved["inception_score"] == printed["Inception Score"]


def test_reference_only_mode_writes_statistics_of_the_images(batches, capsys, tmp_path):
    root, _, sample, weights, _, sample_features = batches
    out = tmp_path / "own_reference.npz"
    code = cli_main(["evaluate", str(root / "sample.npz"), "--save_stats", str(out), "--save_stats_images", "3",
                     "--inception_weights", str(weights), "--device", "cpu", "--no_progress"])
    assert code == 0
    capsys.readouterr()
    with np.load(out) as saved:
        assert set(saved.files) == {"arr_0", "mu", "sigma", "mu_s", "sigma_s", "feature_space"}
        rows = np.sort(np.random.default_rng(0).choice(4, size=3, replace=False))
        np.testing.assert_array_equal(saved["arr_0"], sample[rows])
        mu, sigma = statistics(sample_features.pool)
        np.testing.assert_allclose(saved["mu"], mu, rtol=1e-4, atol=1e-6 * np.abs(mu).max())
        np.testing.assert_allclose(saved["sigma"], sigma, rtol=1e-3, atol=1e-5 * np.abs(sigma).max())
        assert saved["mu_s"].shape == (2023,) and saved["sigma_s"].shape == (2023, 2023)


def test_user_errors_exit_2_with_one_line(batches, capsys, tmp_path):
    root, _, _, weights, _, _ = batches
    sample = str(root / "sample.npz")
    assert cli_main(["evaluate", sample, "--inception_weights", str(weights)]) == 2
    assert capsys.readouterr().err.startswith("error: give a SAMPLE.npz")
    assert cli_main(["evaluate", sample, str(tmp_path / "nope.npz"), "--inception_weights", str(weights)]) == 2
    assert "nope.npz not found" in capsys.readouterr().err
    assert cli_main(["evaluate", sample, sample, "--inception_weights", str(tmp_path / "none.pth")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --inception_weights") and "does not exist" in err and err.count("\n") == 1
    assert cli_main(["evaluate", sample, sample, "--device", "tpu9", "--inception_weights", str(weights)]) == 2
    assert "unknown device" in capsys.readouterr().err
    assert cli_main(["evaluate", "--help"]) == 0
    assert "--inception_weights" in capsys.readouterr().out


@pytest.mark.slow
def test_evaluate_with_the_original_sqrtm(batches, capsys):
    root, ref, _, weights, _, _ = batches
    np.savez(root / "ref.npz", ref)
    code = cli_main(["evaluate", str(root / "ref.npz"), str(root / "sample.npz"), "--inception_weights",
                     str(weights), "--device", "cpu", "--no_progress"])
    assert code == 0
    assert _metrics(capsys.readouterr().out)["FID"] > 0
