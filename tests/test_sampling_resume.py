"""Sampling runs that survive: a real SIGTERM/SIGINT/SIGKILL of a sampling process after some batches, then
`--resume`, gives the arrays of an uninterrupted run; mismatching resumes are refused in one line."""
from __future__ import annotations

import os
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from helpers import COND, child_env, free_port, load_npz, make_checkpoints, run

NUM = 24
# ddpm on 20 of the 40 steps: cheap batches, many of them, so a kill lands mid-run
COMMON = f"{COND} --num_samples {NUM} --batch_size 2 --timestep_respacing 20 --seed 5"
NPZ = f"samples_{NUM}x8x8x3.npz"
PARTIAL = f"samples_{NUM}x8x8x3.partial"


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory) -> dict[str, Path]:
    return make_checkpoints(tmp_path_factory.mktemp("ckpt"))


@pytest.fixture(scope="module")
def uninterrupted(ckpt, tmp_path_factory) -> list[np.ndarray]:
    out = tmp_path_factory.mktemp("whole")
    assert run("image_sample", COMMON, out, "--model_path", str(ckpt["cond"])) == 0
    assert not (out / PARTIAL).exists()  # the partial folder goes once the npz is written
    return load_npz(out / NPZ)


def _start(argv: list[str], launcher: list[str] | None = None) -> subprocess.Popen:
    return subprocess.Popen([*(launcher or [sys.executable, "-m", "guided_diffusion"]), *argv], env=child_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)


def _kill_after_batches(proc: subprocess.Popen, partial: Path, batches: int, sig: int) -> tuple[str, str]:
    """Wait until `batches` batch files are on disk, then send `sig` to the whole process group."""
    deadline = time.monotonic() + 300  # a safety net for a hung child, not a timing assertion
    while len(list(partial.glob("batch_*.npz"))) < batches:
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, "no batches written"
        time.sleep(0.01)
    os.killpg(proc.pid, sig)
    out, err = proc.communicate(timeout=120)
    return out, err


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT, signal.SIGKILL], ids=lambda s: signal.Signals(s).name)
def test_killed_run_resumes_to_the_uninterrupted_arrays(ckpt, tmp_path, uninterrupted, sig, capsys):
    out = tmp_path / "out"
    argv = ["image_sample", *shlex.split(COMMON), "--model_path", str(ckpt["cond"]), "--out_dir", str(out)]
    proc = _start(argv)
    _, err = _kill_after_batches(proc, out / PARTIAL, 2, sig)
    assert proc.returncode == (-signal.SIGKILL if sig == signal.SIGKILL else 128 + sig), err
    kept = sorted((out / PARTIAL).glob("batch_*.npz"))
    assert not (out / NPZ).exists() and 2 <= len(kept) < NUM // 2
    assert not [p for p in (out / PARTIAL).iterdir() if ".tmp-" in p.name] or sig == signal.SIGKILL
    if sig != signal.SIGKILL:
        lines = [line for line in err.strip().splitlines() if not line.startswith("sampling: ")]  # progress lines
        assert "Traceback" not in err and len(lines) == 1, err
        assert f"kept {2 * len(kept)} of {NUM} samples" in lines[0] and "resume with: guided-diffusion image_sample" in lines[0]
        assert lines[0].endswith("--resume")

    # a rerun without --resume, or with other flags, is refused in one line and touches nothing
    assert run("image_sample", COMMON, out, "--model_path", str(ckpt["cond"])) == 2
    assert run("image_sample", COMMON, out, "--model_path", str(ckpt["cond"]), "--resume", "--seed", "6") == 2
    assert sorted((out / PARTIAL).glob("batch_*.npz")) == kept

    assert run("image_sample", COMMON, out, "--model_path", str(ckpt["cond"]), "--resume") == 0
    assert f"resuming: {2 * len(kept)} of {NUM} samples" in (out / "log.txt").read_text()
    resumed = load_npz(out / NPZ)
    assert len(resumed) == 2 and all(np.array_equal(a, b) for a, b in zip(resumed, uninterrupted))
    assert not (out / PARTIAL).exists()


def test_refusals_name_the_problem(ckpt, tmp_path, capsys):
    out = tmp_path / "out"
    partial = out / PARTIAL
    partial.mkdir(parents=True)
    (partial / "job.json").write_text('{"seed": 5, "settings": {"sampler": "ddim"}}')
    np.savez(partial / "batch_000000000.npz", np.zeros((2, 8, 8, 3), np.uint8), np.zeros(2, np.int64))
    assert run("image_sample", COMMON, out, "--model_path", str(ckpt["cond"])) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--resume" in err and "Traceback" not in err
    assert run("image_sample", COMMON, out, "--model_path", str(ckpt["cond"]), "--resume") == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "different options" in err and "settings.sampler" in err
    (partial / "batch_000000000.npz").unlink()  # nothing finished: nothing to protect, the run starts afresh
    assert run("image_sample", COMMON, out, "--model_path", str(ckpt["cond"]), "--num_samples", str(NUM)) == 0
    assert (out / NPZ).is_file() and not partial.exists()


def test_resume_without_seed_takes_the_interrupted_runs_seed(ckpt, tmp_path, uninterrupted):
    out = tmp_path / "out"
    argv = ["image_sample", *shlex.split(COMMON), "--model_path", str(ckpt["cond"]), "--out_dir", str(out)]
    proc = _start(argv)
    _kill_after_batches(proc, out / PARTIAL, 1, signal.SIGTERM)
    assert proc.returncode == 143
    assert run("image_sample", COMMON.replace("--seed 5", ""), out, "--model_path", str(ckpt["cond"]), "--resume") == 0
    assert all(np.array_equal(a, b) for a, b in zip(load_npz(out / NPZ), uninterrupted))


def test_two_ranks_stopped_by_sigterm_resume_to_the_single_process_arrays(ckpt, tmp_path, uninterrupted):
    out = tmp_path / "two"
    argv = ["image_sample", *shlex.split(COMMON), "--model_path", str(ckpt["cond"]), "--out_dir", str(out)]
    launcher = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
                "--master_port", str(free_port()), "-m", "guided_diffusion"]
    proc = _start(argv, launcher)
    _, err = _kill_after_batches(proc, out / PARTIAL, 2, signal.SIGTERM)
    assert proc.returncode != 0
    assert "[rank0]" not in err and "[rank1]" not in err, err[-3000:]
    [line] = [line for line in err.splitlines() if line.startswith("interrupted by SIGTERM")]
    assert "resume with: torchrun --nproc_per_node 2 -m guided_diffusion image_sample" in line
    assert not (out / NPZ).exists()
    result = subprocess.run([*launcher[:-6], "--master_addr", "127.0.0.1", "--master_port", str(free_port()),
                             "-m", "guided_diffusion", *argv, "--resume"],
                            env=child_env(), capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    resumed = load_npz(out / NPZ)
    assert all(np.array_equal(a, b) for a, b in zip(resumed, uninterrupted))
