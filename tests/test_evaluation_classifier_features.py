"""`--features classifier:PATH`: FID/precision/recall in a classifier checkpoint's penultimate features,
for users without the Inception weights."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import run_cli

from guided_diffusion.config import ClassifierConfig, config_to_dict
from guided_diffusion.evaluation.features import (
    ClassifierFeatureExtractor,
    feature_extractor_from_spec,
    parse_feature_spec,
)
from guided_diffusion.runtime.errors import UserError
from guided_diffusion.weights.checkpoints import save_checkpoint, write_config_json


def _classifier(root: Path, pool: str) -> Path:
    torch.manual_seed(1)
    config = ClassifierConfig(image_size=8, classifier_width=32, classifier_depth=1, classifier_attention_resolutions="",
                              classifier_channel_mult="1,2", classifier_pool=pool, classifier_num_head_channels=32,
                              num_classes=3)
    network = config.build()
    with torch.no_grad():  # the released heads start at zero; make logits informative
        for p in network.out.parameters():
            p.normal_(0, 0.1)
    root.mkdir(parents=True, exist_ok=True)
    save_checkpoint(root / "classifier.pt", network.state_dict())
    write_config_json(root, config_to_dict(config))
    return root / "classifier.pt"


def _images(seed: int, n: int = 24, size: int = 8, shift: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.clip(rng.integers(0, 200, size=(n, size, size, 3)) + shift, 0, 255).astype(np.uint8)


@pytest.mark.parametrize("pool", ["adaptive", "attention", "spatial"])
def test_penultimate_features_per_pool(tmp_path, pool):
    extractor = ClassifierFeatureExtractor.from_checkpoint(_classifier(tmp_path, pool), device="cpu", batch_size=5)
    features = extractor.extract(_images(0, n=4))
    # adaptive/attention: the last level's 64 channels averaged over positions; spatial: the pooled
    # means of every level the head concatenates (32 + 32 + 32 + 64 + 64 = 224).
    width = {"adaptive": 64, "attention": 64, "spatial": 224}[pool]
    assert features.logits.shape == (4, 3)
    assert features.pool.shape == (4, width)
    assert features.spatial is None
    # Same image, same features, whatever else is in the batch.
    again = extractor.extract(_images(0, n=4)[:2])
    np.testing.assert_allclose(again.pool, features.pool[:2], rtol=1e-5, atol=1e-6)


def test_larger_images_are_resized_to_the_classifier(tmp_path):
    extractor = ClassifierFeatureExtractor.from_checkpoint(_classifier(tmp_path, "adaptive"), device="cpu")
    assert extractor.extract(_images(0, n=2, size=16)).pool.shape[0] == 2


def test_spec_parsing(tmp_path):
    assert parse_feature_spec("inception") == ("inception", None)
    assert parse_feature_spec("classifier:/a/b.pt") == ("classifier", "/a/b.pt")
    for bad in ("classifier:", "clip", ""):
        with pytest.raises(ValueError):
            parse_feature_spec(bad)
    with pytest.raises(UserError, match="does not exist"):
        feature_extractor_from_spec(f"classifier:{tmp_path / 'missing.pt'}")


def test_evaluate_cli_with_classifier_features(tmp_path):
    checkpoint = _classifier(tmp_path / "clf", "adaptive")
    ref, same, other = tmp_path / "ref.npz", tmp_path / "same.npz", tmp_path / "other.npz"
    np.savez(ref, _images(0))
    np.savez(same, _images(0))
    np.savez(other, _images(7, shift=60))
    result = run_cli(["evaluate", str(ref), str(same), "--features", f"classifier:{checkpoint}", "--no_progress",
                      "--json", str(tmp_path / "same.json")])
    assert result.returncode == 0, result.stderr[-2000:]
    same_metrics = json.loads((tmp_path / "same.json").read_text())
    assert same_metrics["fid"] == pytest.approx(0.0, abs=1e-6)
    assert same_metrics["precision"] == 1.0 and same_metrics["recall"] == 1.0
    assert same_metrics["sfid"] is None and same_metrics["features"] == f"classifier:{checkpoint}"
    assert "FID: " in result.stdout
    result = run_cli(["evaluate", str(ref), str(other), "--features", f"classifier:{checkpoint}", "--no_progress",
                      "--json", str(tmp_path / "other.json")])
    assert result.returncode == 0, result.stderr[-2000:]
    assert json.loads((tmp_path / "other.json").read_text())["fid"] > 1e-3


def test_evaluate_cli_rejects_unknown_features(tmp_path):
    ref = tmp_path / "ref.npz"
    np.savez(ref, _images(0))
    result = run_cli(["evaluate", str(ref), str(ref), "--features", "clip"])
    assert result.returncode == 2 and "--features" in result.stderr and "Traceback" not in result.stderr
