"""Editing runs that survive (issue 20 items 7, 13, 18): a real SIGTERM/SIGINT of an editing process after some
batches gives one line with the command that resumes (exit 143/130), `--resume` makes the output of an
uninterrupted run, a finished run is "nothing to do" (unless --overwrite) and records its settings beside the
npz and in the sheet's text chunk, a live folder is refused naming its process, and a full disk is one line
with the resume command."""
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
from helpers import child_env
from PIL import Image
from test_editing import _run, checkpoints  # noqa: F401  (the tiny saved networks and inputs)

from guided_diffusion.runtime.locks import FolderLock
from guided_diffusion.sampling.output import save_npz
from guided_diffusion.sampling.resume import PartialRun

pytestmark = pytest.mark.usefixtures("one_thread")

NUM = 16
NPZ = f"samples_{NUM}x8x8x3.npz"


@pytest.fixture(scope="module")
def many(checkpoints, tmp_path_factory):  # noqa: F811
    root = tmp_path_factory.mktemp("many")
    images = np.random.default_rng(3).integers(0, 256, (NUM, 8, 8, 3), dtype=np.uint8)
    save_npz(root / "images.npz", images)
    return {"input": str(root / "images.npz"), "unet": checkpoints["unet"], "mask": str(checkpoints["root"] / "mask.png")}


def _argv(many, command, out):
    extra = {"img2img": ["--strength", "1", "--seed", "5"], "invert": ["--refine", "2"],
             "inpaint": ["--mask", many["mask"], "--seed", "5"]}[command]
    return [command, "--model_path", many["unet"], "--input", many["input"], "--steps", "12", "--batch_size", "2",
            "--out_dir", str(out), "--progress", "False", *extra]


def _npz(path):
    with np.load(path) as data:
        return [data[name] for name in sorted(data.files)]


def _stop_after_batches(argv, partial: Path, batches: int, sig: int) -> tuple[subprocess.Popen, str]:
    proc = subprocess.Popen([sys.executable, "-m", "guided_diffusion", *argv], env=child_env(), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    deadline = time.monotonic() + 300  # a safety net for a hung child, not a timing assertion
    while len(list(partial.glob("batch_*.npz"))) < batches:
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, "no batches written"
        time.sleep(0.01)
    os.killpg(proc.pid, sig)
    _, err = proc.communicate(timeout=120)
    return proc, err


@pytest.mark.parametrize(("command", "sig", "output"), [
    ("img2img", signal.SIGTERM, NPZ), ("invert", signal.SIGINT, "latents.npz"), ("inpaint", signal.SIGTERM, NPZ)])
def test_a_stopped_edit_says_how_to_resume_and_resumes_to_the_uninterrupted_output(many, tmp_path, command, sig, output):
    whole = tmp_path / "whole"
    assert _run(_argv(many, command, whole)) == 0
    out = tmp_path / "out"
    partial = out / output.replace(".npz", ".partial")
    proc, err = _stop_after_batches(_argv(many, command, out), partial, 2, sig)
    assert proc.returncode == 128 + sig, err
    kept = sorted(partial.glob("batch_*.npz"))
    assert not (out / output).exists() and 2 <= len(kept) < NUM // 2
    [line] = err.strip().splitlines()
    assert "Traceback" not in err and line.startswith(f"interrupted by {signal.Signals(sig).name}: kept "), err
    assert f"of {NUM} images in {partial}; resume with: guided-diffusion {command} " in line and line.endswith("--resume")
    assert ("--seed" in line) == (command != "invert")  # invert has no seed to repeat

    assert _run(_argv(many, command, out)) == 2  # without --resume: refused, nothing touched
    assert sorted(partial.glob("batch_*.npz")) == kept
    resume = shlex.split(line.split("resume with: ", 1)[1])
    assert _run(resume[1:]) == 0
    assert "resuming: " in (out / "log.txt").read_text()
    assert all(np.array_equal(a, b) for a, b in zip(_npz(out / output), _npz(whole / output)))
    assert not partial.exists()


def test_a_finished_edit_is_nothing_to_do_records_its_settings_and_overwrites_only_when_asked(many, tmp_path, capsys):
    out = tmp_path / "out"
    argv = _argv(many, "img2img", out)
    assert _run(argv) == 0
    record = json.loads((out / NPZ.replace(".npz", ".json")).read_text())
    assert record["command"] == shlex.join(["guided-diffusion", *argv]) and record["seed"] == 5
    assert record["task"] == {"name": "img2img", "strength": 1.0, "from_inversion": False} and record["steps"] == 12
    with Image.open(out / NPZ.replace(".npz", ".png")) as sheet:
        settings = json.loads(sheet.text["guided-diffusion settings"])
    assert settings["seed"] == 5 and settings["sampler"] == "ddim" and sheet.text["Comment"] == record["command"]
    before = (out / NPZ).stat().st_mtime_ns
    capsys.readouterr()
    assert _run(argv) == 0
    assert capsys.readouterr().out.startswith(f"nothing to do: {out / NPZ} already holds")
    assert (out / NPZ).stat().st_mtime_ns == before
    assert _run([*argv, "--seed", "6"]) == 2
    assert "holds a finished run with other settings (seed)" in capsys.readouterr().err
    assert _run([*argv, "--seed", "6", "--overwrite"]) == 0
    assert json.loads((out / NPZ.replace(".npz", ".json")).read_text())["seed"] == 6


def test_a_folder_in_use_is_refused_naming_the_live_process(many, tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    lock = FolderLock(out)
    lock.acquire()
    try:
        assert _run(_argv(many, "img2img", out)) == 2
    finally:
        lock.release()
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and f"pid {os.getpid()}" in err, err
    assert not (out / NPZ).exists() and not (out / "log.txt").exists()


def test_a_full_disk_is_one_line_with_the_resume_command(many, tmp_path, capsys, monkeypatch):
    out = tmp_path / "out"
    write = PartialRun.write

    def fill_up(self, start, images, labels):
        if start >= 4:
            raise OSError(errno.ENOSPC, "No space left on device", str(self.directory / "batch.npz"))
        write(self, start, images, labels)

    monkeypatch.setattr(PartialRun, "write", fill_up)
    assert _run(_argv(many, "img2img", out)) == 1
    [line] = capsys.readouterr().err.strip().splitlines()
    assert line.startswith("error: disk full writing ") and "kept 4 of 16 images" in line, line
    assert "free some space, then resume with: guided-diffusion img2img" in line and line.endswith("--resume")
    monkeypatch.undo()
    assert _run([*_argv(many, "img2img", out), "--resume"]) == 0 and (out / NPZ).is_file()
