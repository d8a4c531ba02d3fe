"""Every loader refuses a checkpoint whose bytes changed (issue 20, item 11) and tells a file of the wrong
kind, an empty file or a non-checkpoint for what it is before any flag is looked at (item 15).

The check lives in the one safe loader (`weights.checkpoints.read_tensor_file`), so sampling, editing and
training's --resume_checkpoint get it through the command line as well as from Python."""
from __future__ import annotations

import struct
import zipfile
from pathlib import Path

import pytest
import torch
from helpers import CLASSIFIER, COND, UNCOND, error_of, make_blob_dataset, make_checkpoints

from guided_diffusion.runtime.errors import UserError
from guided_diffusion.weights import checkpoints as ckpt
from guided_diffusion.weights.checkpoints import (
    inspect_checkpoint,
    load_model,
    load_state_dict,
    read_tensor_file,
    recorded_digest,
    save_checkpoint,
)

SAMPLE_ARGS = ["--timestep_respacing", "3", "--num_samples", "1", "--batch_size", "1", "--seed", "0"]


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory) -> dict[str, Path]:
    return make_checkpoints(tmp_path_factory.mktemp("ckpt"))


@pytest.fixture(autouse=True)
def fresh_memory(monkeypatch):
    """Each test starts with no file remembered as intact."""
    monkeypatch.setattr(ckpt, "_INTACT", {})


def flip_tensor_byte(path: Path, member_suffix: str = "data/0", offset: int = 16) -> None:
    """Flip one byte inside a tensor's stored bytes: the zip structure stays valid, the value changes."""
    with zipfile.ZipFile(path) as archive:
        info = next(i for i in archive.infolist() if i.filename.endswith(member_suffix))
    data = bytearray(path.read_bytes())
    name_len, extra_len = struct.unpack("<HH", data[info.header_offset + 26 : info.header_offset + 30])
    data[info.header_offset + 30 + name_len + extra_len + offset] ^= 0x40
    path.write_bytes(bytes(data))


def _run_dir_checkpoint(tmp_path: Path, source: Path) -> Path:
    """A run directory as training writes it: model, EMA and optimizer files plus the state file that
    records their sha256."""
    from guided_diffusion.training.snapshots import save_checkpoint_files

    state = torch.load(source, weights_only=True)
    run = tmp_path / "run"
    save_checkpoint_files(run, 2, model_state=state, opt_state={"state": {}, "param_groups": []},
                          ema_states={"0.9999": state}, train_state={})
    return run


# -- library ---------------------------------------------------------------------------------------------


def test_bit_rot_in_a_run_checkpoint_is_refused_by_its_recorded_sha256(checkpoints, tmp_path):
    run = _run_dir_checkpoint(tmp_path, checkpoints["cond"])
    model = run / "model000002.pt"
    assert recorded_digest(model)[1] == "train_state000002.pt"
    assert set(load_state_dict(model)) == set(torch.load(checkpoints["cond"], weights_only=True))
    ckpt._INTACT.clear()
    flip_tensor_byte(model)
    for path in (model,):
        with pytest.raises(UserError, match="does not match the sha256 recorded in train_state000002.pt") as info:
            read_tensor_file(path)
        assert "\n" not in str(info.value) and "bit rot" in str(info.value)
    flip_tensor_byte(run / "ema_0.9999_000002.pt")
    with pytest.raises(UserError, match="recorded in train_state000002.pt"):
        load_state_dict(run / "ema_0.9999_000002.pt")


def test_bit_rot_without_a_record_fails_the_zip_crc(checkpoints, tmp_path):
    copy = tmp_path / "copied.pt"
    copy.write_bytes(checkpoints["cond"].read_bytes())
    assert recorded_digest(copy) is None
    flip_tensor_byte(copy)
    with pytest.raises(UserError, match="fails its CRC check") as info:
        load_state_dict(copy)
    assert "\n" not in str(info.value)
    # torch.load alone would have returned the changed weights without a word:
    assert torch.load(copy, weights_only=True).keys() == torch.load(checkpoints["cond"], weights_only=True).keys()


def test_a_file_installed_in_the_cache_is_checked_against_its_sha256_record(checkpoints, tmp_path):
    from guided_diffusion.runtime.download import verify_installed

    path = tmp_path / "cache" / "model.safetensors"
    path.parent.mkdir()
    save_checkpoint(path, torch.load(checkpoints["cond"], weights_only=True))
    verify_installed(path)  # records NAME.sha256, as a download or first use does
    read_tensor_file(path)
    ckpt._INTACT.clear()
    data = bytearray(path.read_bytes())
    data[-5] ^= 0x01  # safetensors has no checksum of its own: only the record can tell
    path.write_bytes(bytes(data))
    with pytest.raises(UserError, match=r"recorded in model.safetensors.sha256"):
        read_tensor_file(path)


def test_an_intact_file_is_hashed_once_per_process(checkpoints, tmp_path, monkeypatch):
    run = _run_dir_checkpoint(tmp_path, checkpoints["cond"])
    calls = []
    real = ckpt.file_digest
    monkeypatch.setattr(ckpt, "file_digest", lambda p: calls.append(p) or real(p))
    inspect_checkpoint(run / "model000002.pt", "diffusion")
    load_state_dict(run / "model000002.pt")
    assert len(calls) == 1
    (run / "model000002.pt").touch()  # a modified file (new mtime) is checked again
    load_state_dict(run / "model000002.pt")
    assert len(calls) == 2


@pytest.mark.parametrize(("name", "expected", "message"), [
    ("classifier", "diffusion", "is a classifier checkpoint, not a diffusion model"),
    ("cond", "classifier", "is a diffusion model checkpoint, not a classifier"),
    ("sr", "diffusion", "is a super-resolution model checkpoint, not a diffusion model"),
    ("cond", "superres", "is a diffusion model checkpoint, not a super-resolution model"),
])
def test_inspect_names_the_kind_of_a_wrong_file(checkpoints, name, expected, message):
    with pytest.raises(UserError, match=message):
        inspect_checkpoint(checkpoints[name], expected)
    assert inspect_checkpoint(checkpoints[name]).kind == {"classifier": "classifier", "cond": "diffusion", "sr": "superres"}[name]


def test_inspect_tells_optimizer_and_state_files_empty_files_and_non_checkpoints(checkpoints, tmp_path):
    run = _run_dir_checkpoint(tmp_path, checkpoints["cond"])
    with pytest.raises(UserError, match="opt000002.pt is an optimizer state, not a diffusion model; pass the model000002.pt"):
        inspect_checkpoint(run / "opt000002.pt", "diffusion")
    with pytest.raises(UserError, match="is a training-state record, not a diffusion model"):
        inspect_checkpoint(run / "train_state000002.pt", "diffusion")
    empty = tmp_path / "empty.pt"
    empty.write_bytes(b"")
    with pytest.raises(UserError, match="is empty"):
        inspect_checkpoint(empty, "diffusion")
    text = tmp_path / "notes.pt"
    text.write_text("hello, this is not a checkpoint\n")
    with pytest.raises(UserError, match="notes.pt is not a checkpoint"):
        inspect_checkpoint(text, "diffusion")
    plain = tmp_path / "list.pt"
    torch.save([torch.zeros(2)], plain)
    with pytest.raises(UserError, match="list.pt is not a checkpoint: it holds a list"):
        inspect_checkpoint(plain, "diffusion")
    inception = tmp_path / "inception.pt"
    torch.save({"Conv2d_1a_3x3.conv.weight": torch.zeros(32, 3, 3, 3)}, inception)
    with pytest.raises(UserError, match="is a file of tensors, not a diffusion model"):
        inspect_checkpoint(inception, "diffusion")


def test_inspect_runs_no_pickled_code(tmp_path):
    marker = tmp_path / "ran"

    class Payload:
        def __reduce__(self):
            return (Path.touch, (marker,))

    evil = tmp_path / "evil.pt"
    torch.save({"weight": Payload()}, evil)
    with pytest.raises(UserError, match="could run code"):
        inspect_checkpoint(evil, "diffusion")
    assert not marker.exists()


# -- every command that loads a checkpoint ---------------------------------------------------------------


def _rotten_run(checkpoints: dict[str, Path], tmp_path: Path, name: str = "cond") -> Path:
    run = _run_dir_checkpoint(tmp_path, checkpoints[name])
    flip_tensor_byte(run / "model000002.pt")
    return run / "model000002.pt"


def test_sampling_refuses_a_rotten_model_and_classifier(checkpoints, tmp_path, capsys):
    model = _rotten_run(checkpoints, tmp_path)
    line = error_of(capsys, ["image_sample", *COND.split(), "--model_path", str(model), "--out_dir", str(tmp_path / "o"),
                             *SAMPLE_ARGS])
    assert "model000002.pt does not match the sha256 recorded in train_state000002.pt" in line
    classifier = tmp_path / "classifier_copy.pt"
    classifier.write_bytes(checkpoints["classifier"].read_bytes())
    flip_tensor_byte(classifier)
    line = error_of(capsys, ["classifier_sample", *COND.split(), *CLASSIFIER.split(), "--model_path", str(checkpoints["cond"]),
                             "--classifier_path", str(classifier), "--out_dir", str(tmp_path / "o2"), *SAMPLE_ARGS])
    assert "classifier_copy.pt is damaged" in line and "CRC" in line


def test_editing_refuses_a_rotten_model(checkpoints, tmp_path, capsys):
    import numpy as np

    from guided_diffusion.config import DiffusionConfig, ModelConfig, config_to_dict
    from guided_diffusion.config.presets import parse_flag_string
    from guided_diffusion.weights.checkpoints import write_config_json

    model = _rotten_run(checkpoints, tmp_path)
    flags = parse_flag_string(COND)
    write_config_json(model.parent, config_to_dict(ModelConfig.from_dict(flags), DiffusionConfig.from_dict(flags)))
    images = tmp_path / "in.npz"
    np.savez(images, np.zeros((1, 8, 8, 3), dtype=np.uint8), np.zeros(1, dtype=np.int64))
    line = error_of(capsys, ["invert", "--model_path", str(model), "--input", str(images), "--steps", "3",
                             "--out_dir", str(tmp_path / "o")])
    assert "does not match the sha256 recorded" in line


def test_training_resume_checkpoint_refuses_a_rotten_copy(checkpoints, tmp_path, capsys):
    data = make_blob_dataset(tmp_path / "data", count=4, size=8)
    run = _run_dir_checkpoint(tmp_path, checkpoints["uncond"])
    copy = tmp_path / "elsewhere" / "model000002.pt"  # copied away from its run: only the CRC can tell
    copy.parent.mkdir()
    copy.write_bytes((run / "model000002.pt").read_bytes())
    flip_tensor_byte(copy)
    line = error_of(capsys, ["image_train", "--data_dir", str(data), "--log_dir", str(tmp_path / "log"), *UNCOND.split(),
                             "--resume_checkpoint", str(copy), "--iterations", "1", "--num_workers", "0", "--batch_size", "2"])
    assert "model000002.pt is damaged" in line and "CRC" in line


def test_load_model_refuses_a_rotten_file_in_python(checkpoints, tmp_path):
    model = _rotten_run(checkpoints, tmp_path)
    with pytest.raises(UserError, match="does not match the sha256 recorded"):
        load_model(model)
