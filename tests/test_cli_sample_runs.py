"""A sampling run's output folder through the command line: a finished run is "nothing to do" and overwriting
needs --overwrite, it records its settings beside the npz and in the PNG, a live run's folder is locked,
a full disk stops in one line with the command that resumes (issue 20 items 6, 7, 12, 18)."""
from __future__ import annotations

import errno
import json
import os
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from helpers import COND, child_env, load_npz, make_checkpoints, one_line_error, run
from PIL import Image

NPZ = "samples_6x8x8x3.npz"
FLAGS = f"{COND} --num_samples 6 --batch_size 2 --steps 3 --sampler ddim --seed 4 --progress false"

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory) -> dict[str, Path]:
    return make_checkpoints(tmp_path_factory.mktemp("ckpt"))


@pytest.fixture()
def finished(ckpt, tmp_path) -> Path:
    out = tmp_path / "out"
    assert run("image_sample", FLAGS, out, "--model_path", str(ckpt["cond"])) == 0
    return out


def _state(out: Path) -> dict[str, tuple[int, bytes]]:
    return {p.name: (p.stat().st_mtime_ns, p.read_bytes()) for p in sorted(out.iterdir()) if p.is_file()
            and p.name not in ("log.txt", ".run.lock")}


def test_a_rerun_or_resume_of_a_finished_run_is_nothing_to_do(ckpt, finished, capsys):
    before = _state(finished)
    capsys.readouterr()
    for extra in ((), ("--resume",)):
        assert run("image_sample", FLAGS, finished, "--model_path", str(ckpt["cond"]), *extra) == 0
        out = capsys.readouterr().out
        assert "nothing to do" in out and "--overwrite" in out, out
        assert _state(finished) == before  # nothing redrawn, nothing rewritten


def test_overwrite_draws_again_and_other_settings_are_refused_without_it(ckpt, finished, capsys):
    npz = finished / NPZ
    first = load_npz(npz)
    assert run("image_sample", FLAGS, finished, "--model_path", str(ckpt["cond"]), "--seed", "5") == 2
    line = one_line_error(capsys, "other settings", "seed", "--overwrite")
    assert "Traceback" not in line and np.array_equal(load_npz(npz)[0], first[0])
    assert run("image_sample", FLAGS, finished, "--model_path", str(ckpt["cond"]), "--seed", "5", "--overwrite") == 0
    assert not np.array_equal(load_npz(npz)[0], first[0])
    assert json.loads((finished / "samples_6x8x8x3.json").read_text())["seed"] == 5
    assert run("image_sample", FLAGS, finished, "--model_path", str(ckpt["cond"]), "--resume", "--overwrite") == 2
    one_line_error(capsys, "--resume", "--overwrite")


def test_a_finished_run_records_its_settings_beside_the_npz_and_in_the_png(ckpt, finished, tmp_path):
    record = json.loads((finished / "samples_6x8x8x3.json").read_text())
    assert record["command"].startswith("guided-diffusion image_sample ") and "--seed 4" in record["command"]
    assert (record["sampler"], record["steps"], record["step_grid"], record["seed"], record["bf16"]) == ("ddim", 3, None, 4, False)
    assert record["classifier_scale"] == 0.0 and record["cfg_scale"] == 1.0 and record["num_samples"] == 6
    assert record["job"]["settings"]["sampler"] == "ddim"  # the full fingerprint, for an exact comparison
    text = Image.open(finished / "samples_6x8x8x3.png").text
    assert text["Comment"] == record["command"]
    assert json.loads(text["guided-diffusion settings"])["seed"] == 4
    # the recorded command draws the same samples again
    argv = shlex.split(record["command"])[1:]
    out = tmp_path / "again"
    argv[argv.index("--out_dir") + 1] = str(out)
    from guided_diffusion.cli import main

    assert main(argv) == 0
    assert all(np.array_equal(a, b) for a, b in zip(load_npz(out / NPZ), load_npz(finished / NPZ)))


def _start_slow_run(ckpt, out: Path) -> subprocess.Popen:
    """A real sampling process with many cheap batches, stopped by the caller."""
    argv = ["image_sample", *shlex.split(COND), "--num_samples", "400", "--batch_size", "1", "--timestep_respacing", "20",
            "--seed", "1", "--progress", "false", "--model_path", str(ckpt["cond"]), "--out_dir", str(out)]
    proc = subprocess.Popen([sys.executable, "-m", "guided_diffusion", *argv], env=child_env(), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    deadline = time.monotonic() + 120
    while not list((out / "samples_400x8x8x3.partial").glob("batch_*.npz")):
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, "the run wrote no batch"
        time.sleep(0.02)
    return proc


def test_a_live_runs_folder_is_refused_naming_its_pid_and_resume_needs_the_same_size(ckpt, tmp_path, capsys):
    out = tmp_path / "live"
    proc = _start_slow_run(ckpt, out)
    try:
        same = f"{COND} --num_samples 400 --batch_size 1 --timestep_respacing 20 --seed 1 --progress false"
        assert run("image_sample", same, out, "--model_path", str(ckpt["cond"]), "--resume") == 2
        one_line_error(capsys, "in use by another sampling run", f"pid {proc.pid}")
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.communicate(timeout=60)
    assert proc.returncode == 143
    kept = sorted(p.name for p in (out / "samples_400x8x8x3.partial").iterdir())
    # --resume with another --num_samples: refused, the interrupted run's batches untouched
    assert run("image_sample", FLAGS.replace("--num_samples 6", "--num_samples 8"), out, "--model_path",
               str(ckpt["cond"]), "--resume") == 2
    one_line_error(capsys, "--resume", "400 samples, not 8", "--num_samples 400")
    assert sorted(p.name for p in (out / "samples_400x8x8x3.partial").iterdir()) == kept
    assert not (out / "samples_8x8x8x3.partial").exists()


def test_the_lock_belongs_to_the_sampler_not_to_its_children(tmp_path):
    """A forked child of a killed run must not keep the folder locked (as training's run directory)."""
    folder = tmp_path / "folder"
    code = f"""
import os, signal, time
from guided_diffusion.runtime.locks import FolderLock
FolderLock({str(folder)!r}).acquire()
if os.fork() == 0:
    time.sleep(30)  # a worker outliving its parent
    os._exit(0)
os.kill(os.getpid(), signal.SIGKILL)
"""
    subprocess.run([sys.executable, "-c", code], env=child_env(), timeout=60)
    from guided_diffusion.runtime.locks import FolderLock

    lock = FolderLock(folder).acquire()  # at once: neither the dead parent nor its live child holds it
    assert lock.previous_holder is not None and "pid" in lock.previous_holder
    lock.release()


def test_a_full_disk_stops_in_one_line_with_the_command_that_resumes(ckpt, tmp_path, capsys, monkeypatch):
    from guided_diffusion.sampling import resume

    real_write = resume.PartialRun.write

    def full_after_one_batch(self, start, images, labels):
        if start >= 2:
            raise OSError(errno.ENOSPC, "No space left on device", str(self.directory / f"batch_{start}.npz"))
        return real_write(self, start, images, labels)

    monkeypatch.setattr(resume.PartialRun, "write", full_after_one_batch)
    out = tmp_path / "full"
    assert run("image_sample", FLAGS, out, "--model_path", str(ckpt["cond"])) == 1
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in err, err
    assert lines[0].startswith("error: disk full writing") and "kept 2 of 6 samples" in lines[0]
    command = shlex.split(lines[0].split("resume with: ", 1)[1])
    assert command[:2] == ["guided-diffusion", "image_sample"] and command[-1] == "--resume"
    monkeypatch.setattr(resume.PartialRun, "write", real_write)
    from guided_diffusion.cli import main

    assert main(command[1:]) == 0
    reference = tmp_path / "reference"
    assert run("image_sample", FLAGS, reference, "--model_path", str(ckpt["cond"])) == 0
    assert all(np.array_equal(a, b) for a, b in zip(load_npz(out / NPZ), load_npz(reference / NPZ)))
