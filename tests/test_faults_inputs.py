"""Fault injection for the files and paths the CLI reads and writes: empty, cut-short, garbage and
mislabelled checkpoints, NaN weights, broken config.json, damaged npz files, unwritable outputs of the
evaluator, pickles that would run code (a marker file proves none did), and stopping the demo."""
from __future__ import annotations

import json
import os
import pickle
import re
import signal
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import CLASSIFIER, COND, child_env, make_checkpoints, refused

from guided_diffusion.cli import main
from guided_diffusion.evaluation.npz import NpzArrayReader, read_npz_arrays
from guided_diffusion.runtime.errors import UserError
from guided_diffusion.weights.checkpoints import load_model, load_state_dict, read_config_json, save_checkpoint

SAMPLE_ARGS = ["--timestep_respacing", "3", "--num_samples", "1", "--batch_size", "1", "--seed", "0"]


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory) -> dict[str, Path]:
    return make_checkpoints(tmp_path_factory.mktemp("ckpt"))


def _sample(tmp_path: Path, model: Path, *extra: str) -> int:
    return main(["image_sample", *COND.split(), "--model_path", str(model), "--out_dir", str(tmp_path / "out"),
                 *SAMPLE_ARGS, *extra])


def _nothing_written(tmp_path: Path) -> None:
    """No sample array or image came out (sampling's own log and resume record may exist)."""
    out = tmp_path / "out"
    assert not out.exists() or not [p for p in out.rglob("*") if p.suffix in (".npz", ".png", ".npy")]


# -- checkpoints ------------------------------------------------------------------------------------------


def _damaged_copies(good: Path, directory: Path) -> dict[str, tuple[Path, str]]:
    """name -> (file, what the error must say)."""
    directory.mkdir()
    data = good.read_bytes()
    cases = {
        "empty": (b"", "is empty (0 bytes)"),
        "truncated": (data[: len(data) // 2], "is cut short"),
        "garbage": (b"<html>503 Service Unavailable</html>" * 20, "is not a checkpoint"),
    }
    out = {}
    for name, (content, message) in cases.items():
        path = directory / f"{name}.pt"
        path.write_bytes(content)
        out[name] = (path, message)
    fake = directory / "fake.safetensors"
    fake.write_bytes(data)  # a .pt under the wrong name
    out["not_safetensors"] = (fake, "is named .safetensors but is not")
    return out


@pytest.mark.parametrize("case", ["empty", "truncated", "garbage", "not_safetensors"])
def test_unreadable_checkpoint_is_described_in_plain_words(case, checkpoints, tmp_path, capsys):
    path, message = _damaged_copies(checkpoints["cond"], tmp_path / "bad")[case]
    with pytest.raises(UserError, match=re.escape(message)):
        load_state_dict(path)
    err = refused(capsys, _sample(tmp_path, path), message, path.name)
    assert "PytorchStreamReader" not in err and "Error while deserializing" not in err
    _nothing_written(tmp_path)


@pytest.mark.parametrize("role", ["model", "classifier"])
def test_weights_holding_nan_or_inf_are_refused_at_load(role, checkpoints, tmp_path, capsys):
    good = checkpoints["cond" if role == "model" else "classifier"]
    state = torch.load(good, weights_only=True)
    key = sorted(state)[3]
    state[key] = state[key].clone()
    state[key].view(-1)[0] = float("nan") if role == "model" else float("inf")
    bad = save_checkpoint(tmp_path / f"{role}_nan.pt", state)
    if role == "model":
        code = _sample(tmp_path, bad)
    else:
        code = main(["classifier_sample", *COND.split(), *CLASSIFIER.split(), "--model_path", str(checkpoints["cond"]),
                     "--classifier_path", str(bad), "--out_dir", str(tmp_path / "out"), *SAMPLE_ARGS])
    refused(capsys, code, "NaN or infinite", bad.name, key)
    _nothing_written(tmp_path)


CONFIGS = {
    "not_json": ("{'model': oops", "is not valid JSON"),
    "not_object": ("[1, 2, 3]", "not an object"),
    "wrong_type": (json.dumps({"kind": "unet", "model": {"image_size": "eight"}}), "model.image_size"),
    "section_not_object": (json.dumps({"kind": "unet", "model": 7}), '"model" must be an object'),
    "pickle_bytes": (None, "config.json"),
}


@pytest.mark.parametrize("case", list(CONFIGS))
def test_broken_config_json_is_one_line(case, checkpoints, tmp_path, capsys):
    text, message = CONFIGS[case]
    folder = tmp_path / "run"
    folder.mkdir()
    model = folder / "model.pt"
    model.write_bytes(checkpoints["cond"].read_bytes())
    marker = tmp_path / "code-ran"
    if text is None:  # a pickle where JSON belongs: must be read as text, never unpickled
        (folder / "config.json").write_bytes(pickle.dumps(_Marker(marker)))
    else:
        (folder / "config.json").write_text(text)
    with pytest.raises(UserError, match="config.json"):
        read_config_json(model)
    with pytest.raises(UserError):
        load_model(model)
    err = refused(capsys, main(["image_sample", "--model_path", str(model), "--out_dir", str(tmp_path / "out"),
                                  *SAMPLE_ARGS]), "config.json")
    assert message in err or text is None
    assert not marker.exists()


# -- pickles that would run code, wherever the CLI loads a file -------------------------------------------


class _Marker:
    """Unpickling this creates the file it names: proof that code ran."""

    def __init__(self, path: Path):
        self.path = path

    def __reduce__(self):
        return (Path.touch, (self.path,))


def test_malicious_pickles_as_sampling_checkpoints_run_nothing(checkpoints, tmp_path, capsys):
    marker = tmp_path / "code-ran"
    evil = tmp_path / "evil.pt"
    torch.save({"w": _Marker(marker)}, evil)
    refused(capsys, _sample(tmp_path, evil), "pickled Python objects", "evil.pt")
    code = main(["classifier_sample", *COND.split(), *CLASSIFIER.split(), "--model_path", str(checkpoints["cond"]),
                 "--classifier_path", str(evil), "--out_dir", str(tmp_path / "out2"), *SAMPLE_ARGS])
    refused(capsys, code, "pickled Python objects")
    assert not marker.exists()


def _object_npz(path: Path, marker: Path) -> Path:
    np.savez(path, arr_0=np.array([_Marker(marker)], dtype=object))
    return path


def test_malicious_pickles_in_npz_files_run_nothing(checkpoints, tmp_path, capsys):
    marker = tmp_path / "code-ran"
    evil = _object_npz(tmp_path / "evil.npz", marker)
    refused(capsys, main(["evaluate", str(evil), str(evil), "--inception_weights", str(tmp_path / "none.pth")]),
              "Python objects")
    code = main(["super_res_sample", "--large_size", "8", "--small_size", "4", "--class_cond", "True",
                 *COND.split()[4:], "--model_path", str(checkpoints["sr"]), "--base_samples", str(evil),
                 "--out_dir", str(tmp_path / "out"), *SAMPLE_ARGS])
    assert code == 2 and "Traceback" not in capsys.readouterr().err
    assert not marker.exists()


def test_malicious_pickles_as_evaluator_and_fine_tuning_weights_run_nothing(tmp_path, capsys):
    marker = tmp_path / "code-ran"
    evil = tmp_path / "evil.pth"
    torch.save({"w": _Marker(marker)}, evil)
    ref = _images_npz(tmp_path / "ref.npz")
    code = main(["evaluate", str(ref), str(ref), "--inception_weights", str(evil)])
    assert code == 2 and "Traceback" not in capsys.readouterr().err
    code = main(["evaluate", str(ref), str(ref), "--features", f"classifier:{evil}"])
    assert code == 2 and "Traceback" not in capsys.readouterr().err
    data = tmp_path / "data"
    data.mkdir()
    for i in range(4):
        from PIL import Image

        Image.fromarray(np.full((8, 8, 3), 40 * i, dtype=np.uint8)).save(data / f"{i}.png")
    code = main(["image_train", "--data_dir", str(data), "--log_dir", str(tmp_path / "run"), "--init_from", str(evil),
                 "--iterations", "1", "--num_workers", "0"])
    refused(capsys, code, "pickled Python objects")
    assert not marker.exists()


# -- the evaluator: damaged inputs, unusable outputs, checked before any work ----------------------------


def _images_npz(path: Path, count: int = 4) -> Path:
    np.savez(path, arr_0=np.random.default_rng(0).integers(0, 256, (count, 8, 8, 3), dtype=np.uint8))
    return path


def test_truncated_and_crc_corrupt_npz_are_one_line(tmp_path, capsys):
    good = _images_npz(tmp_path / "good.npz", count=64)
    data = good.read_bytes()
    cut = tmp_path / "cut.npz"
    cut.write_bytes(data[: len(data) // 2])
    refused(capsys, main(["evaluate", str(cut), str(good), "--inception_weights", str(tmp_path / "none.pth")]),
              "cut short or not a zip archive")
    # Flip one byte inside the array data: the zip is intact, its CRC no longer matches.
    corrupt = tmp_path / "crc.npz"
    with zipfile.ZipFile(good) as archive:
        info = archive.getinfo("arr_0.npy")
    flipped = bytearray(data)
    flipped[info.header_offset + 200 + 30 + len(info.filename)] ^= 0xFF
    corrupt.write_bytes(bytes(flipped))
    with pytest.raises(UserError, match="fails its integrity check") as stream_error:
        with NpzArrayReader(corrupt) as reader:
            for _ in reader.iter_batches(16):
                pass
    assert "\n" not in str(stream_error.value)
    with pytest.raises(UserError, match="fails its integrity check"):
        read_npz_arrays(corrupt, ["arr_0"])


@pytest.mark.parametrize("case", ["json_is_dir", "json_under_file", "stats_under_file", "cache_is_file"])
def test_evaluator_outputs_are_checked_before_any_work(case, tmp_path, capsys, monkeypatch):
    ref, sample = _images_npz(tmp_path / "ref.npz"), _images_npz(tmp_path / "sample.npz")
    blocker = tmp_path / "blocker"
    blocker.write_text("x")
    (tmp_path / "adir").mkdir()
    # Weights that do not exist: had the outputs not been checked first, the error would be about them.
    args = ["evaluate", str(ref), str(sample), "--inception_weights", str(tmp_path / "none.pth")]
    flag = {"json_is_dir": ["--json", str(tmp_path / "adir")], "json_under_file": ["--json", str(blocker / "m.json")],
            "stats_under_file": ["--save_stats", str(blocker / "s.npz")], "cache_is_file": []}[case]
    if case == "cache_is_file":
        monkeypatch.setenv("GUIDED_DIFFUSION_CACHE", str(blocker))
        args = args[:3]
    named = {"json_is_dir": "--json", "json_under_file": "--json", "stats_under_file": "--save_stats",
             "cache_is_file": "GUIDED_DIFFUSION_CACHE"}[case]
    refused(capsys, main([*args, *flag]), named)
    assert blocker.read_text() == "x"


def test_evaluator_refuses_abbreviated_flags(tmp_path, capsys):
    ref = _images_npz(tmp_path / "ref.npz")
    code = main(["evaluate", str(ref), str(ref), "--js", str(tmp_path / "m.json")])
    assert code == 2 and "unrecognized arguments: --js" in capsys.readouterr().err


# -- the demo stopped by a signal -------------------------------------------------------------------------


@pytest.mark.parametrize(("sig", "code"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_demo_stopped_by_a_signal_prints_one_line(sig, code, tmp_path):
    proc = subprocess.Popen([sys.executable, "-m", "guided_diffusion", "demo", "--quick", "--out_dir", str(tmp_path / "d"),
                             "--progress", "False"], env=child_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, start_new_session=True)
    first = proc.stdout.readline()  # the demo has started working
    assert first, proc.stderr.read()
    time.sleep(1.0)
    os.killpg(proc.pid, sig)
    _, err = proc.communicate(timeout=120)
    lines = err.strip().splitlines()
    assert proc.returncode == code, err
    assert len(lines) == 1 and lines[0].startswith(f"interrupted by {sig.name}: ") and "Traceback" not in err, err
