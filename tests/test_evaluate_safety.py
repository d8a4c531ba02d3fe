"""`guided-diffusion evaluate` never prints a number it should not (issue 20): statistics carry their
feature space and are refused in other features (item 1); options it would ignore, or cannot use, are
refused (item 2); an output that is one of the inputs is refused before anything is written (item 9);
NaN statistics, identical sets, signals and file modes (item 18); its parser's conventions (item 19).

Classifier features of tiny random classifiers keep every run to a fraction of a second."""
from __future__ import annotations

import os
import re
import signal
import stat
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import error_of, randomise_zero_layers, run_python, write_random_weights

from guided_diffusion.cli import main
from guided_diffusion.config import ClassifierConfig, DiffusionConfig, ModelConfig
from guided_diffusion.evaluation import ClassifierFeatureExtractor, frechet_distance, statistics
from guided_diffusion.evaluation.evaluator import read_feature_space
from guided_diffusion.evaluation.features import FeatureSpace
from guided_diffusion.weights.checkpoints import save_checkpoint, save_model_with_config

TINY_CLASSIFIER = dict(image_size=8, classifier_width=32, classifier_depth=1, classifier_attention_resolutions="",
                       classifier_channel_mult="1,2", classifier_num_head_channels=32, num_classes=10)


def _classifier(path: Path, seed: int) -> Path:
    torch.manual_seed(seed)
    config = ClassifierConfig(**TINY_CLASSIFIER)
    save_model_with_config(path, randomise_zero_layers(config.build(), seed), config)
    return path


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("evaluate_safety")
    rng = np.random.default_rng(0)
    data = {
        "images": rng.integers(0, 256, (40, 8, 8, 3), dtype=np.uint8),
        "samples": np.clip(rng.integers(0, 256, (30, 8, 8, 3)) + 30, 0, 255).astype(np.uint8),
    }
    out = {name: root / f"{name}.npz" for name in data}
    for name, array in data.items():
        np.savez(out[name], array)
    out["A"] = _classifier(root / "classifier_a.safetensors", 1)
    out["B"] = _classifier(root / "classifier_b.safetensors", 2)
    out["root"] = root
    return out


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("GUIDED_DIFFUSION_CACHE", str(tmp_path / "cache"))


def _evaluate(*args: str | Path) -> int:
    return main(["evaluate", *map(str, args), "--device", "cpu", "--batch_size", "16"])


def _fid(stdout: str) -> float:
    return float(re.search(r"^FID: (\S+)$", stdout, re.M).group(1))


# -- item 1: statistics know their feature space ---------------------------------------------------------


def test_stats_saved_in_one_classifiers_features_are_refused_in_anothers(files, tmp_path, capsys):
    ref = tmp_path / "ref.npz"
    assert _evaluate(files["images"], "--save_stats", ref, "--features", f"classifier:{files['A']}") == 0
    capsys.readouterr()
    space = read_feature_space(ref)
    expected = ClassifierFeatureExtractor.from_checkpoint(files["A"], device="cpu").feature_space
    assert space == expected and space.network == "classifier" and space.dim == 64 and len(space.weights_sha256) == 64

    assert _evaluate(ref, files["samples"], "--features", f"classifier:{files['A']}") == 0
    right = _fid(capsys.readouterr().out)
    line = error_of(capsys, ["evaluate", str(ref), str(files["samples"]), "--features", f"classifier:{files['B']}",
                             "--device", "cpu"])
    assert "holds statistics in classifier features" in line and expected.weights_sha256[:8] in line
    assert "--save_stats" in line
    # The right number is the one computed in one space from the images themselves.
    assert _evaluate(files["images"], files["samples"], "--features", f"classifier:{files['A']}") == 0
    assert _fid(capsys.readouterr().out) == pytest.approx(right, rel=1e-6)


def test_unrecorded_statistics_are_taken_as_inception_and_refused_in_classifier_features(files, tmp_path, capsys):
    ref = tmp_path / "original_format.npz"
    np.savez(ref, np.zeros((4, 8, 8, 3), np.uint8), mu=np.zeros(64), sigma=np.eye(64))
    line = error_of(capsys, ["evaluate", str(ref), str(files["samples"]), "--features", f"classifier:{files['A']}",
                             "--device", "cpu"])
    assert "without a record of their features" in line


def test_feature_space_key_names_the_weights_not_the_file_format(files, tmp_path):
    pt = tmp_path / "same.pt"
    save_checkpoint(pt, ClassifierFeatureExtractor.from_checkpoint(files["A"], device="cpu").classifier.state_dict())
    (tmp_path / "config.json").write_text((files["A"].parent / "config.json").read_text()
                                          if (files["A"].parent / "config.json").is_file() else "")
    from guided_diffusion.config import config_to_dict
    from guided_diffusion.weights.checkpoints import write_config_json

    write_config_json(tmp_path, config_to_dict(ClassifierConfig(**TINY_CLASSIFIER)))
    a = ClassifierFeatureExtractor.from_checkpoint(files["A"], device="cpu").feature_space
    same = ClassifierFeatureExtractor.from_checkpoint(pt, device="cpu").feature_space
    b = ClassifierFeatureExtractor.from_checkpoint(files["B"], device="cpu").feature_space
    assert a.key == same.key and a.key != b.key
    assert a.key.startswith("classifier:") and a.key.endswith(":64")
    assert FeatureSpace.from_json(a.to_json()) == a


def test_a_diffusion_checkpoint_as_feature_classifier_is_named_as_such(files, tmp_path, capsys):
    config = ModelConfig.from_dict(dict(image_size=8, num_channels=32, num_res_blocks=1, channel_mult="1,2",
                                        attention_resolutions="", num_head_channels=8))
    model = tmp_path / "diffusion.safetensors"
    save_model_with_config(model, config.build(), config, DiffusionConfig())
    line = error_of(capsys, ["evaluate", str(files["images"]), str(files["samples"]), "--features", f"classifier:{model}",
                             "--device", "cpu"])
    assert "diffusion.safetensors is a diffusion model checkpoint, not a classifier" in line


# -- item 2: options that cannot apply ------------------------------------------------------------------


def test_inception_weights_with_classifier_features_is_refused(files, tmp_path, capsys):
    weights = write_random_weights(tmp_path / "inception.pth")
    line = error_of(capsys, ["evaluate", str(files["images"]), str(files["samples"]), "--features", f"classifier:{files['A']}",
                             "--inception_weights", str(weights)])
    assert "--inception_weights is not used with --features classifier:" in line
    line = error_of(capsys, ["evaluate", str(files["images"]), str(files["samples"]),
                             "--inception_weights", str(tmp_path / "missing.pth")])
    assert "--inception_weights" in line and "missing.pth does not exist" in line
    line = error_of(capsys, ["evaluate", str(files["images"]), str(files["samples"]),
                             "--features", f"classifier:{tmp_path / 'nope.pt'}"])
    assert "nope.pt does not exist" in line
    line = error_of(capsys, ["evaluate", str(files["images"]), str(files["samples"]), "--save_stats_images", "5"])
    assert "--save_stats_images" in line and "--save_stats" in line


# -- item 9: outputs that are inputs ----------------------------------------------------------------------


@pytest.mark.parametrize("case", ["save_stats_is_ref", "save_stats_is_sample", "json_is_ref", "other_spelling"])
def test_an_output_that_is_an_input_is_refused_before_anything_is_written(files, tmp_path, capsys, case):
    ref, sample = tmp_path / "ref.npz", tmp_path / "sample.npz"
    ref.write_bytes(files["images"].read_bytes())
    sample.write_bytes(files["samples"].read_bytes())
    before = {p.name: p.read_bytes() for p in (ref, sample)}
    args = {
        "save_stats_is_ref": [ref, "--save_stats", ref],
        "save_stats_is_sample": [ref, sample, "--save_stats", sample],
        "json_is_ref": [ref, sample, "--json", ref],
        "other_spelling": [ref, "--save_stats", tmp_path / "." / "sub" / ".." / "ref.npz"],
    }[case]
    (tmp_path / "sub").mkdir()
    line = error_of(capsys, ["evaluate", *map(str, args), "--features", f"classifier:{files['A']}", "--device", "cpu"])
    assert "it would be overwritten while it is read" in line
    assert {p.name: p.read_bytes() for p in (ref, sample)} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ref.npz", "sample.npz", "sub"]


# -- item 18: NaN statistics, identical sets, signals, file modes --------------------------------------------


def test_nan_reference_statistics_are_refused_not_printed(files, tmp_path, capsys):
    ref = tmp_path / "ref.npz"
    assert _evaluate(files["images"], "--save_stats", ref, "--features", f"classifier:{files['A']}") == 0
    with np.load(ref) as saved:
        arrays = {k: saved[k] for k in saved.files}
    arrays["mu"] = arrays["mu"].copy()
    arrays["mu"][3] = np.nan
    np.savez(ref, **arrays)
    capsys.readouterr()
    line = error_of(capsys, ["evaluate", str(ref), str(files["samples"]), "--features", f"classifier:{files['A']}",
                             "--device", "cpu"])
    assert "hold NaN or infinite values" in line and "FID" not in capsys.readouterr().out


def test_fid_of_identical_statistics_is_never_negative():
    # Rank-deficient statistics (fewer images than dimensions), where sqrtm's rounding goes below zero.
    features = np.random.default_rng(0).normal(size=(5, 256)) * 3
    mu, sigma = statistics(features)
    assert frechet_distance(mu, sigma, mu, sigma) == 0.0
    assert frechet_distance(mu, sigma, mu, sigma, method="eigh") >= 0.0


def test_evaluate_of_a_batch_against_itself_prints_no_negative_fid(files, capsys):
    assert _evaluate(files["images"], files["images"], "--features", f"classifier:{files['A']}") == 0
    fid = _fid(capsys.readouterr().out)
    assert fid >= 0.0 and fid < 1e-6


# A child process that sends itself a signal while the second batch of features is computed, as a user
# (Ctrl-C) or a scheduler (SIGTERM) would mid-run.
_SIGNALLED_RUN = """
import os, sys
from guided_diffusion.cli import main
from guided_diffusion.evaluation import features

class Signalling(features.ClassifierFeatureExtractor):
    calls = 0
    def extract(self, images):
        self.calls += 1
        if self.calls == {at_call}:
            os.kill(os.getpid(), {signum})
        return super().extract(images)

features.feature_extractor_from_spec = lambda spec, **kw: Signalling.from_checkpoint({classifier!r}, device="cpu", batch_size=8)
sys.exit(main(["evaluate", {images!r}, {samples!r}, "--save_stats", {out!r}, "--features", "classifier:" + {classifier!r},
               "--batch_size", "8", "--device", "cpu"]))
"""


@pytest.mark.parametrize(("signum", "code", "at_call"), [
    (signal.SIGINT, 130, 2), (signal.SIGTERM, 143, 2),  # while the reference is read (and --save_stats written)
    (signal.SIGTERM, 143, 7),  # while the samples are read: the finished reference statistics are not kept either
])
def test_a_signal_stops_evaluate_in_one_line_and_leaves_no_temp_file(files, tmp_path, signum, code, at_call):
    out = tmp_path / "out"
    out.mkdir()
    child = run_python(_SIGNALLED_RUN.format(signum=int(signum), classifier=str(files["A"]), images=str(files["images"]),
                                             samples=str(files["samples"]), out=str(out / "ref.npz"), at_call=at_call))
    assert child.returncode == code, child.stderr
    lines = child.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"evaluate stopped by {signal.Signals(signum).name}"), child.stderr
    assert list(out.iterdir()) == []  # neither the statistics nor a temp file


def test_stats_files_get_the_usual_mode(files, tmp_path, capsys):
    previous = os.umask(0o022)
    try:
        assert _evaluate(files["images"], "--save_stats", tmp_path / "ref.npz", "--features", f"classifier:{files['A']}") == 0
        assert _evaluate(files["images"], files["samples"], "--features", f"classifier:{files['A']}",
                         "--json", tmp_path / "m.json") == 0
    finally:
        os.umask(previous)
    assert stat.S_IMODE((tmp_path / "ref.npz").stat().st_mode) == 0o644
    assert stat.S_IMODE((tmp_path / "m.json").stat().st_mode) == 0o644


def test_a_crc_damaged_batch_is_one_line_through_the_command(files, tmp_path, capsys):
    import struct
    import zipfile

    data = bytearray(files["images"].read_bytes())
    with zipfile.ZipFile(files["images"]) as archive:
        info = archive.getinfo("arr_0.npy")
    name_len, extra_len = struct.unpack("<HH", data[info.header_offset + 26 : info.header_offset + 30])
    data[info.header_offset + 30 + name_len + extra_len + 500] ^= 0xFF
    damaged = tmp_path / "damaged.npz"
    damaged.write_bytes(bytes(data))
    line = error_of(capsys, ["evaluate", str(damaged), str(files["samples"]), "--features", f"classifier:{files['A']}",
                             "--device", "cpu"])
    assert "damaged.npz is damaged" in line


# -- item 19: the parser ----------------------------------------------------------------------------------


def test_misspelled_and_abbreviated_flags_are_one_line(files, capsys):
    line = error_of(capsys, ["evaluate", str(files["images"]), str(files["samples"]), "--batchsize", "8"])
    assert "unrecognized arguments: --batchsize" in line and "guided-diffusion evaluate --help" in line
    line = error_of(capsys, ["evaluate", str(files["images"]), str(files["samples"]), "--batch", "8"])
    assert "unrecognized arguments: --batch" in line


def test_help_shows_defaults_and_progress_is_a_bare_flag(files, capsys):
    assert main(["evaluate", "--help"]) == 0
    text = " ".join(capsys.readouterr().out.split())
    assert "(default: 64)" in text and "(default: sqrtm)" in text and "(default: inception)" in text
    assert "--progress [BOOL]" in text
    assert _evaluate(files["images"], files["samples"], "--features", f"classifier:{files['A']}", "--progress") == 0
    captured = capsys.readouterr()
    assert "computing reference batch features" in captured.err and _fid(captured.out) > 0
