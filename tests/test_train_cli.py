"""`guided-diffusion image_train` end to end: learning, exact resume after SIGKILL (also during a
save), two processes under torchrun equal to one process with twice the batch."""
from __future__ import annotations

import csv
import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from helpers import (
    assert_same_checkpoint_set,
    child_env,
    free_port,
    load_checkpoint_file,
    make_blob_dataset,
    run_cli,
)

TINY = [
    "--image_size", "8", "--num_channels", "32", "--num_res_blocks", "1", "--channel_mult", "1",
    "--attention_resolutions", "", "--diffusion_steps", "50", "--num_workers", "0", "--lr", "1e-3",
]
# The reference run: class-conditional with label dropout (classifier-free guidance), dropout so
# that the global RNG matters, two EMA rates.
REFERENCE = TINY + [
    "--batch_size", "4", "--dropout", "0.1", "--ema_rate", "0.9,0.99", "--seed", "7", "--class_cond", "True",
    "--num_classes", "2", "--class_dropout_prob", "0.2", "--log_interval", "50",
]
REFERENCE_STEPS = 300


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    return make_blob_dataset(tmp_path_factory.mktemp("blobs"), count=24, size=12)


@pytest.fixture(scope="module")
def reference_run(data_dir, tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("reference")
    result = run_cli(["image_train", "--data_dir", str(data_dir), "--log_dir", str(run), "--iterations", str(REFERENCE_STEPS),
                      "--save_interval", "10", *REFERENCE])
    assert result.returncode == 0, result.stderr[-3000:]
    return run


def _assert_no_partial_files(run: Path) -> None:
    for path in run.iterdir():
        if path.suffix == ".pt":  # temp files end in .tmp-XXXX, so every .pt must be whole
            load_checkpoint_file(path)


def test_loss_goes_down_and_run_directory_is_complete(reference_run):
    with open(reference_run / "progress.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    losses = [float(r["loss"]) for r in rows]
    assert len(losses) == REFERENCE_STEPS // 50
    assert losses[-1] < 0.5 * losses[0], losses
    for key in ("mse", "loss_q0", "loss_q3", "mse_q1", "grad_norm", "param_norm", "samples", "step"):
        assert rows[-1][key] != ""
    assert int(float(rows[-1]["samples"])) == REFERENCE_STEPS * 4
    config = json.loads((reference_run / "config.json").read_text())
    assert config["model"]["class_dropout_prob"] == 0.2 and config["model"]["num_classes"] == 2
    assert json.loads((reference_run / "classes.json").read_text())["classes"] == ["c0", "c1"]
    model = load_checkpoint_file(reference_run / f"model{REFERENCE_STEPS:06d}.pt")
    assert model["label_emb.weight"].shape == (3, 128)  # two classes + the null label (4 * 32 channels)
    assert all(v.dtype == torch.float32 for v in model.values())


def test_exact_resume_after_sigkill(reference_run, data_dir, tmp_path):
    run = tmp_path / "run"
    args = ["image_train", "--data_dir", str(data_dir), "--log_dir", str(run), "--save_interval", "5", *REFERENCE]
    proc = subprocess.Popen([sys.executable, "-m", "guided_diffusion", *args, "--iterations", "200"], env=child_env(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 120
    while not (run / "train_state000010.pt").exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=60)
    assert proc.returncode == -signal.SIGKILL, "the run ended before it could be killed"
    assert not (run / "model000200.pt").exists()
    _assert_no_partial_files(run)

    resumed = run_cli([*args, "--iterations", "40", "--resume", "auto"])
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "exact resume" in resumed.stdout
    assert_same_checkpoint_set(reference_run, run, 40)


KILL_DURING_SAVE = """
import io, os, signal, sys, torch
from guided_diffusion.runtime import atomic
from guided_diffusion.training import snapshots
real_save = snapshots.atomic_torch_save
def dying_save(obj, path):
    if os.path.basename(str(path)) == "opt000020.pt":
        buffer = io.BytesIO()
        torch.save(obj, buffer)
        data = buffer.getvalue()
        def write_half_then_die(handle):
            handle.write(data[: len(data) // 2])
            handle.flush()
            os.kill(os.getpid(), signal.SIGKILL)
        atomic.atomic_write_stream(path, write_half_then_die)
    return real_save(obj, path)
snapshots.atomic_torch_save = dying_save
from guided_diffusion.cli import main
sys.exit(main(sys.argv[1:]))
"""


def test_kill_during_save_leaves_no_half_written_file_and_resume_is_exact(reference_run, data_dir, tmp_path):
    run = tmp_path / "run"
    args = ["image_train", "--data_dir", str(data_dir), "--log_dir", str(run), "--save_interval", "5", *REFERENCE]
    killed = subprocess.run([sys.executable, "-c", KILL_DURING_SAVE, *args, "--iterations", "100"], env=child_env(),
                            capture_output=True, text=True, timeout=180)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    names = {p.name for p in run.iterdir()}
    assert "model000020.pt" in names and "opt000020.pt" not in names and "train_state000020.pt" not in names
    assert any(n.startswith("opt000020.pt.tmp-") for n in names)  # the half-written bytes never got the real name
    _assert_no_partial_files(run)

    resumed = run_cli([*args, "--iterations", "30", "--resume", "auto"])
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "checkpoint at step 20" in resumed.stdout and "incomplete or corrupt" in resumed.stdout
    assert "model000015.pt at step 15 (exact resume)" in resumed.stdout
    assert not any(".tmp-" in p.name for p in run.iterdir())
    assert_same_checkpoint_set(reference_run, run, 30)


def _flat(state: dict[str, torch.Tensor]) -> torch.Tensor:
    return torch.cat([value.reshape(-1) for _, value in sorted(state.items())])


def test_two_ranks_with_batch_b_match_one_rank_with_batch_2b(data_dir, tmp_path):
    common = ["image_train", "--data_dir", str(data_dir), *TINY, "--ema_rate", "0.9", "--seed", "11", "--iterations", "6",
              "--save_interval", "3", "--log_interval", "1", "--class_cond", "True", "--num_classes", "2"]
    launcher = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
                "--master_port", str(free_port())]
    two = subprocess.run([*launcher, "-m", "guided_diffusion", *common, "--batch_size", "2", "--log_dir", str(tmp_path / "two")],
                         env=child_env(), capture_output=True, text=True, timeout=240)
    assert two.returncode == 0, two.stderr[-3000:]
    one = run_cli([*common, "--batch_size", "4", "--log_dir", str(tmp_path / "one")])
    assert one.returncode == 0, one.stderr[-3000:]
    # Same losses and gradient norms at every step (DDP averages gradients over ranks exactly as
    # one batch of twice the size does; a summing or data bug would show here).
    logs = {}
    for name in ("one", "two"):
        with open(tmp_path / name / "progress.csv", newline="") as handle:
            logs[name] = list(csv.DictReader(handle))
    assert [r["samples"] for r in logs["one"]] == [r["samples"] for r in logs["two"]] == [str(4 * k) for k in range(1, 7)]
    for key in ("loss", "mse", "grad_norm", "param_norm"):
        torch.testing.assert_close(
            torch.tensor([float(r[key]) for r in logs["two"]]), torch.tensor([float(r[key]) for r in logs["one"]]), rtol=1e-4, atol=0, msg=key
        )
    # Same weights and EMA, up to float rounding: the gap is tiny next to how far three steps
    # moved them. (Adam turns rounding noise into full-size updates for the few biases whose
    # gradient is exactly zero in theory, e.g. per-channel biases just before a GroupNorm, so
    # an elementwise tolerance would test noise.)
    for name in ("model{:06d}.pt", "ema_0.9_{:06d}.pt"):
        a6, b6 = _flat(load_checkpoint_file(tmp_path / "one" / name.format(6))), _flat(load_checkpoint_file(tmp_path / "two" / name.format(6)))
        a3 = _flat(load_checkpoint_file(tmp_path / "one" / name.format(3)))
        gap, moved = float((a6 - b6).norm()), float((a6 - a3).norm())
        assert moved > 0 and gap < 1e-2 * moved, (name, gap, moved)
    state = torch.load(tmp_path / "two" / "train_state000006.pt", weights_only=True)
    assert state["world_size"] == 2 and len(state["rng"]) == 2
