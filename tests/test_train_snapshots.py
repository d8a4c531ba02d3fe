"""Checkpoint sets: names, atomic writes, completeness and corruption checks, resume points, pruning."""
from __future__ import annotations

import pytest
import torch

from guided_diffusion.runtime.atomic import atomic_torch_save, remove_stale_temp_files
from guided_diffusion.runtime.errors import UserError
from guided_diffusion.training import snapshots as ck


def _save(directory, step, rates=("0.9999",)):
    value = torch.full((3,), float(step))
    return ck.save_checkpoint_files(
        directory,
        step,
        model_state={"w": value},
        opt_state={"state": {}, "param_groups": []},
        ema_states={rate: {"w": value + 0.5} for rate in rates},
        train_state={"seed": 1},
    )


def test_step_is_parsed_from_the_base_name_only():
    assert ck.parse_resume_step_from_filename("/runs/my_model_dir/model000120.pt") == 120
    assert ck.parse_resume_step_from_filename("ema_0.9999_000050.pt") == 50
    assert ck.parse_resume_step_from_filename("opt000007.pt") == 7
    assert ck.parse_resume_step_from_filename("/models/modelzoo/256x256_diffusion.pt") == 0
    assert (ck.model_name(5), ck.ema_name(0.9999, 5), ck.opt_name(5)) == ("model000005.pt", "ema_0.9999_000005.pt", "opt000005.pt")


def test_atomic_write_leaves_old_file_when_writer_dies(tmp_path):
    target = tmp_path / "model000001.pt"
    atomic_torch_save({"w": torch.ones(2)}, target)

    class Boom:
        def __reduce__(self):
            raise RuntimeError("disk on fire")

    with pytest.raises(RuntimeError):
        atomic_torch_save({"w": Boom()}, target)
    assert torch.equal(torch.load(target, weights_only=True)["w"], torch.ones(2))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model000001.pt"]
    (tmp_path / "model000002.pt.tmp-deadbeef").write_bytes(b"half")
    assert remove_stale_temp_files(tmp_path) == ["model000002.pt.tmp-deadbeef"]


def test_latest_complete_set_is_found_and_damaged_ones_skipped(tmp_path):
    for step in (10, 20, 30, 40):
        _save(tmp_path, step, rates=("0.9", "0.99"))
    (tmp_path / ck.state_name(40)).unlink()  # killed before the state file: incomplete
    with open(tmp_path / ck.opt_name(30), "r+b") as handle:  # flipped byte: corrupt
        handle.seek(10)
        byte = handle.read(1)
        handle.seek(10)
        handle.write(bytes([byte[0] ^ 0xFF]))
    with open(tmp_path / ck.ema_name("0.99", 20), "ab") as handle:  # grown file
        handle.write(b"x")
    messages = []
    point = ck.find_latest_checkpoint(tmp_path, log=messages.append)
    assert point.step == 10 and point.state["seed"] == 1
    assert set(point.emas) == {"0.9", "0.99"}
    assert "step 40" in messages[0] and "train_state000040.pt is missing" in messages[0]
    assert "step 30" in messages[1] and "sha256" in messages[1]
    assert "step 20" in messages[2] and "bytes" in messages[2]
    # Naming a damaged set explicitly is an error, not a silent fallback.
    with pytest.raises(UserError, match="incomplete or corrupt"):
        ck.resolve_resume_point(str(tmp_path / ck.model_name(30)), None, log=messages.append)


def test_resume_arguments(tmp_path):
    with pytest.raises(UserError, match=r"resume checkpoint .*missing\.pt does not exist") as info:
        ck.resolve_resume_point(str(tmp_path / "missing.pt"), tmp_path)
    assert "\n" not in str(info.value)
    with pytest.raises(UserError, match="log_dir"):
        ck.resolve_resume_point("auto", None)
    messages = []
    assert ck.resolve_resume_point("auto", tmp_path / "fresh", log=messages.append) is None
    assert "starting from scratch" in messages[0]
    _save(tmp_path, 5)
    assert ck.resolve_resume_point(str(tmp_path), None).step == 5  # a directory means its latest
    assert ck.resolve_resume_point(str(tmp_path / ck.model_name(5)), None).state is not None


def test_directories_of_the_original_code_resume_from_bare_files(tmp_path):
    for step in (100, 200):
        torch.save({"w": torch.zeros(1)}, tmp_path / ck.model_name(step))
        torch.save({"w": torch.zeros(1)}, tmp_path / ck.ema_name("0.9999", step))
    torch.save({"state": {}, "param_groups": []}, tmp_path / ck.opt_name(100))
    (tmp_path / ck.model_name(300)).write_bytes(b"truncated")
    messages = []
    point = ck.find_latest_checkpoint(tmp_path, log=messages.append)
    assert point.step == 200 and point.state is None and point.opt is None
    assert set(point.emas) == {"0.9999"}
    assert "model000300.pt" in messages[0]
    legacy = ck.resolve_resume_point(str(tmp_path / ck.model_name(100)), None)
    assert legacy.step == 100 and legacy.opt == tmp_path / ck.opt_name(100)


def test_keep_last_prunes_whole_old_sets(tmp_path):
    for step in (1, 2, 3, 4):
        _save(tmp_path, step)
    (tmp_path / "log.txt").write_text("keep me")
    assert ck.prune_checkpoints(tmp_path, keep_last=2) == [2, 1]
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == sorted(["log.txt"] + [n for s in (3, 4) for n in (ck.model_name(s), ck.opt_name(s), ck.ema_name("0.9999", s), ck.state_name(s))])
    assert ck.prune_checkpoints(tmp_path, keep_last=0) == []
