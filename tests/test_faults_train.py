"""Fault injection for training: SIGTERM to the whole process group with data-loader workers, Ctrl-C
under a dead `| tee`, two trainers on one run directory, stale locks, pruning cut short by a kill,
bad numbers and paths, 16-bit images, and pickles that would run code passed as resume files."""
from __future__ import annotations

import contextlib
import os
import pickle
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import child_env, error_of, make_blob_dataset, write_image

from guided_diffusion import logger
from guided_diffusion.cli import main
from guided_diffusion.training import snapshots as ck

TINY = ["--image_size", "8", "--num_channels", "32", "--num_res_blocks", "1", "--channel_mult", "1",
        "--attention_resolutions", "", "--diffusion_steps", "50", "--lr", "1e-3", "--batch_size", "4",
        "--dropout", "0.1", "--ema_rate", "0.9", "--seed", "3", "--log_interval", "5"]


@pytest.fixture(autouse=True)
def _one_thread_and_fresh_logger(one_thread):
    yield
    logger.reset()


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    return make_blob_dataset(tmp_path_factory.mktemp("blobs"), count=24, size=12)


def _start(args: list[str], **popen) -> subprocess.Popen:
    """A training process in its own process group (as under `timeout`, SLURM or Kubernetes)."""
    return subprocess.Popen([sys.executable, "-m", "guided_diffusion", *args], env=child_env(),
                            start_new_session=True, text=True, **popen)


def _wait_for(path: Path, proc: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.time() + timeout
    while not path.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    assert path.exists() and proc.poll() is None, f"{path.name} never appeared while the run was alive"


def _same_weights(a: Path, b: Path) -> None:
    for name in (a.name,):
        left = torch.load(a, map_location="cpu", weights_only=True)
        right = torch.load(b, map_location="cpu", weights_only=True)
        assert left.keys() == right.keys(), name
        for key in left:
            assert torch.equal(left[key], right[key]), f"{name}:{key} differs"


def _complete_sets(run: Path) -> list[int]:
    steps = sorted(int(p.name[len("train_state"):-3]) for p in run.glob("train_state*.pt"))
    return [s for s in steps if ck.verify_checkpoint(run, s)[0] is not None]


def test_sigterm_to_the_process_group_with_workers_saves_and_resume_is_exact(data_dir, tmp_path, capsys):
    common = ["image_train", "--data_dir", str(data_dir), *TINY]
    reference = tmp_path / "reference"
    assert main([*common, "--log_dir", str(reference), "--iterations", "30", "--save_interval", "30", "--num_workers", "0"]) == 0

    run = tmp_path / "run"
    proc = _start([*common, "--log_dir", str(run), "--iterations", "100000", "--save_interval", "4", "--num_workers", "2"],
                  stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _wait_for(run / ck.state_name(8), proc)
    os.killpg(proc.pid, signal.SIGTERM)  # the scheduler's way: every process of the job, workers included
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err[-3000:]
    assert "Traceback" not in err
    complete = _complete_sets(run)
    last = max(int(p.name[5:11]) for p in run.glob("model*.pt"))
    assert complete and complete[-1] == last >= 8  # the final save is a whole set
    assert last < 30, "the run was not stopped early enough to test resuming"
    # The last line reads as sampling's does and holds the command that continues the run.
    final = err.strip().splitlines()[-1]
    assert final.startswith(f"interrupted by SIGTERM: saved a checkpoint at step {last} in {run}; resume with: "), final
    command = shlex.split(final.split("resume with: ", 1)[1])
    assert command[:2] == ["guided-diffusion", "image_train"] and command[-2:] == ["--resume", "auto"]
    assert final in (run / "log.txt").read_text()

    capsys.readouterr()
    resumed = [*command[1:], "--iterations", "30", "--save_interval", "30"]  # the printed command, run to step 30
    assert main(resumed) == 0
    assert f"at step {last} (exact resume)" in capsys.readouterr().out
    for name in (ck.model_name(30), ck.ema_name("0.9", 30)):
        _same_weights(reference / name, run / name)


def test_ctrl_c_under_a_dead_tee_still_saves(data_dir, tmp_path):
    run = tmp_path / "run"
    proc = _start(["image_train", "--data_dir", str(data_dir), "--log_dir", str(run), *TINY, "--iterations", "100000",
                   "--save_interval", "1000", "--num_workers", "0", "--progress", "False"],
                  stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    for line in proc.stdout:  # read like tee until training runs, then die as tee does on Ctrl-C
        if line.startswith("training"):
            break
    time.sleep(0.5)
    proc.stdout.close()
    os.killpg(proc.pid, signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err[-3000:]
    assert "BrokenPipeError" not in err and "Traceback" not in err
    assert len(_complete_sets(run)) == 1
    log = (run / "log.txt").read_text()
    assert "received SIGINT" in log and "saved checkpoint" in log  # the run directory has the whole story
    assert "interrupted by SIGINT: saved a checkpoint at step" in log and "--resume auto" in log


def test_second_trainer_on_a_live_run_directory_is_refused_and_the_first_is_unharmed(data_dir, tmp_path, capsys):
    run = tmp_path / "run"
    args = ["image_train", "--data_dir", str(data_dir), "--log_dir", str(run), *TINY, "--num_workers", "0"]
    first = _start([*args, "--iterations", "100000", "--save_interval", "5"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _wait_for(run / ck.state_name(5), first)
    log_before = (run / "log.txt").read_text()
    message = error_of(capsys, [*args, "--iterations", "3", "--save_interval", "1", "--resume", "auto"])
    assert "is in use by another training run" in message and f"pid {first.pid}" in message
    assert first.poll() is None  # still training
    assert (run / "log.txt").read_text().startswith(log_before)
    assert not (run / ck.model_name(1)).exists()  # the second run wrote no checkpoint
    os.killpg(first.pid, signal.SIGTERM)
    _, first_err = first.communicate(timeout=120)
    assert first.returncode == 0, first_err[-2000:]
    steps = sorted(int(p.name[5:11]) for p in run.glob("model*.pt"))
    assert steps and _complete_sets(run) == [s for s in steps]  # every set the first run wrote is whole
    assert not list(run.glob("*.tmp-*"))


def test_stale_lock_of_a_killed_run_is_taken_over(data_dir, tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    (run / ".run.lock").write_text('{"pid": 999999, "host": "h", "started": "2026-01-01T00:00:00"}\n')
    assert main(["image_train", "--data_dir", str(data_dir), "--log_dir", str(run), *TINY, "--num_workers", "0",
                 "--iterations", "2", "--save_interval", "2"]) == 0
    assert "took over the lock" in capsys.readouterr().out
    assert _complete_sets(run) == [2]
    assert (run / ".run.lock").read_text() == ""  # released cleanly: nothing to take over next time


def test_sigkill_of_the_trainer_alone_frees_the_lock_at_once_despite_live_workers(data_dir, tmp_path, capsys):
    """A scheduler's requeue after `kill -9` of the trainer: its data-loader workers outlive it for seconds,
    and must not hold the run directory's lock (issue 20 item 8)."""
    run = tmp_path / "run"
    args = ["image_train", "--data_dir", str(data_dir), "--log_dir", str(run), *TINY, "--num_workers", "2"]
    proc = _start([*args, "--iterations", "100000", "--save_interval", "4"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        _wait_for(run / ck.state_name(4), proc)
        workers = _children(proc.pid)
        assert workers, "the trainer has no data-loader workers to test with"
        os.kill(proc.pid, signal.SIGKILL)  # the trainer alone, as `kill -9 PID`
        proc.wait(timeout=30)
        assert any(_alive(pid) for pid in workers), "the workers died with the trainer: nothing was tested"
        capsys.readouterr()
        assert main([*args, "--iterations", "6", "--save_interval", "6", "--resume", "auto"]) == 0, capsys.readouterr().err
        assert "took over the lock" in capsys.readouterr().out
        assert _complete_sets(run)[-1] == 6
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate(timeout=30)


def _children(pid: int) -> list[int]:
    """The child pids of `pid` (Linux /proc)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
                if int(fields[1]) == pid:
                    found.append(int(entry.name))
    return found


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def test_pruning_cut_short_by_a_kill_leaves_no_orphan(tmp_path, monkeypatch):
    for step in (1, 2, 3):
        ck.save_checkpoint_files(tmp_path, step, model_state={"w": torch.zeros(2)}, opt_state={"state": {}, "param_groups": []},
                                 ema_states={"0.9": {"w": torch.zeros(2)}}, train_state={})
    real_unlink = Path.unlink
    calls = []

    def dying_unlink(self, missing_ok=False):
        calls.append(self.name)
        if len(calls) == 2:
            raise KeyboardInterrupt  # the process dies after deleting one file of the set
        return real_unlink(self, missing_ok=missing_ok)

    monkeypatch.setattr(Path, "unlink", dying_unlink)
    with pytest.raises(KeyboardInterrupt):
        ck.prune_checkpoints(tmp_path, keep_last=2)
    monkeypatch.setattr(Path, "unlink", real_unlink)
    assert (tmp_path / ck.state_name(1)).exists()  # the state file goes last: the set stays counted
    assert ck.find_latest_checkpoint(tmp_path).step == 3
    ck.save_checkpoint_files(tmp_path, 4, model_state={"w": torch.zeros(2)}, opt_state={"state": {}, "param_groups": []},
                             ema_states={"0.9": {"w": torch.zeros(2)}}, train_state={})
    assert ck.prune_checkpoints(tmp_path, keep_last=2) == [2, 1]
    assert sorted({ck.parse_resume_step_from_filename(p.name) for p in tmp_path.iterdir()}) == [3, 4]


# -- bad input: one line, exit 2, nothing written -------------------------------------------------------


BAD_FLAGS = [
    (["--iterations", "-1"], "--iterations"),
    (["--lr", "-0.1"], "--lr"),
    (["--lr", "nan"], "--lr"),
    (["--ema_rate", "1.5"], "--ema_rate"),
    (["--ema_rate", "0.9,0"], "--ema_rate"),
    (["--image_size", "10", "--channel_mult", "1,2,2"], "--image_size 10 cannot be halved 2 times"),
    (["--iteration", "5"], "unrecognized arguments: --iteration"),  # no prefix matching
]


@pytest.mark.parametrize(("flags", "named"), BAD_FLAGS, ids=[" ".join(f) for f, _ in BAD_FLAGS])
def test_bad_numbers_are_one_line_and_write_nothing(flags, named, data_dir, tmp_path, capsys):
    run = tmp_path / "run"
    args = ["image_train", "--data_dir", str(data_dir), "--log_dir", str(run), *TINY, "--num_workers", "0",
            "--iterations", "2", *flags]
    assert named in error_of(capsys, args)
    assert not run.exists()


@pytest.mark.parametrize("layout", ["file", "under_file"])
def test_log_dir_that_is_a_file_is_one_line(layout, data_dir, tmp_path, capsys):
    blocker = tmp_path / "blocker"
    blocker.write_text("x")
    log_dir = blocker if layout == "file" else blocker / "run"
    message = error_of(capsys, ["image_train", "--data_dir", str(data_dir), "--log_dir", str(log_dir), *TINY,
                                 "--num_workers", "0", "--iterations", "2"])
    assert "--log_dir" in message and str(log_dir) in message
    assert blocker.read_text() == "x"


def test_wrong_image_size_for_a_checkpoint_names_image_size(tmp_path, capsys):
    data = make_blob_dataset(tmp_path / "d", count=8, size=16)
    arch = ["--num_channels", "32", "--num_res_blocks", "1", "--channel_mult", "1,2", "--attention_resolutions", "8",
            "--diffusion_steps", "50", "--num_workers", "0", "--batch_size", "2", "--iterations", "1", "--save_interval", "1"]
    assert main(["image_train", "--data_dir", str(data), "--log_dir", str(tmp_path / "a"), "--image_size", "16", *arch]) == 0
    capsys.readouterr()
    message = error_of(capsys, ["image_train", "--data_dir", str(data), "--log_dir", str(tmp_path / "b"), "--image_size", "8",
                                 "--resume_checkpoint", str(tmp_path / "a" / ck.model_name(1)), *arch])
    assert "use --image_size 16" in message and "--attention_resolutions" not in message


def test_16_bit_images_are_scaled_not_clipped(tmp_path):
    from guided_diffusion.data.transforms import load_rgb

    ramp = (np.arange(64, dtype=np.uint16).reshape(8, 8) * 1040)  # 0 .. 65520
    write_image(tmp_path / "deep.png", ramp)
    rgb = np.asarray(load_rgb(str(tmp_path / "deep.png")))
    assert rgb.shape == (8, 8, 3) and rgb.dtype == np.uint8
    expected = np.rint(ramp / 257.0).astype(np.uint8)
    assert np.array_equal(rgb[..., 0], expected) and np.array_equal(rgb[..., 2], expected)
    assert (rgb == 255).mean() < 0.05  # clipping would have made almost all of it white


# -- resume files that would run code ---------------------------------------------------------------------


class _Marker:
    """Unpickling this creates the file it names: proof that code ran."""

    def __init__(self, path: Path):
        self.path = path

    def __reduce__(self):
        return (Path.touch, (self.path,))


@pytest.mark.parametrize("victim", ["model", "opt", "ema", "state"])
def test_malicious_pickle_as_a_resume_file_runs_nothing(victim, tmp_path, capsys):
    data = make_blob_dataset(tmp_path / "d", count=4, size=8)
    run = tmp_path / "run"
    args = ["image_train", "--data_dir", str(data), *TINY, "--batch_size", "2", "--num_workers", "0", "--save_interval", "2"]
    assert main([*args, "--log_dir", str(run), "--iterations", "2"]) == 0
    capsys.readouterr()
    marker = tmp_path / "code-ran"
    evil = {"w": _Marker(marker)}
    if victim == "state":  # a run directory whose training-state file was replaced
        with open(run / ck.state_name(2), "wb") as handle:
            pickle.dump(evil, handle)
        code = main([*args, "--log_dir", str(run), "--iterations", "4", "--resume", "auto"])
    else:  # bare files, as the original code leaves them: no manifest, so each file is loaded as is
        legacy = tmp_path / "legacy"
        legacy.mkdir()
        for name in (ck.model_name(2), ck.opt_name(2), ck.ema_name("0.9", 2)):
            (legacy / name).write_bytes((run / name).read_bytes())
        target = {"model": ck.model_name(2), "opt": ck.opt_name(2), "ema": ck.ema_name("0.9", 2)}[victim]
        with open(legacy / target, "wb") as handle:
            pickle.dump(evil, handle)
        code = main([*args, "--log_dir", str(tmp_path / "other"), "--iterations", "4",
                     "--resume_checkpoint", str(legacy / ck.model_name(2))])
    out = capsys.readouterr()
    assert not marker.exists()
    assert "Traceback" not in out.err
    if victim == "state":  # the damaged set is passed over: nothing complete is left, so the run starts fresh
        assert code == 0 and "incomplete or corrupt" in out.out
    else:
        assert code == 2 and "pickled Python objects" in out.err and out.err.count("\n") == 1, out.err


def test_second_ctrl_c_aborts_in_one_line_with_130(monkeypatch, capsys):
    from guided_diffusion.training import loop, run

    stop = loop._StopRequest(enabled=True)
    try:
        os.kill(os.getpid(), signal.SIGINT)  # the first asks for a save and a stop
        time.sleep(0.05)
        assert stop.requested
        with pytest.raises(KeyboardInterrupt):  # the second, while that save is pending, aborts
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(0.5)
    finally:
        stop.restore()

    def interrupted(job, *, outcome, **kwargs):
        outcome.run_dir = Path(job.options.log_dir) if job.options.log_dir else None
        raise KeyboardInterrupt

    monkeypatch.setattr(run, "run_training", interrupted)
    assert main(["image_train", "--data_dir", "unused", "--log_dir", "the run"]) == 130
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "without a final save" in err[0], err
    assert err[0].endswith("resume with: guided-diffusion image_train --data_dir unused --log_dir 'the run' --resume auto")
    assert main(["image_train", "--data_dir", "unused"]) == 130  # before a run directory was chosen
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["training stopped by Ctrl-C before it started; nothing was saved"]
