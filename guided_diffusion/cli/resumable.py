"""Running a job in its claimed output folder, the way every resumable command does.

`run_claimed` takes the folder's lock and decides on rank 0 (a second run on a live folder is refused
naming its pid; a finished run of the same job is "nothing to do"; an interrupted one continues with
--resume), runs the command's work, and turns every stop into one line on rank 0 with the command that
continues the run: SIGINT/SIGTERM (exit 130/143), a full disk (exit 1), a collective broken because a
peer stopped. The folder's lock is released however the work ends.
"""
from __future__ import annotations

import argparse
import errno
import os
import shlex
import signal
import sys
import tempfile
from collections.abc import Callable

from guided_diffusion.runtime import distributed, logs
from guided_diffusion.runtime.atomic import directory_write_problem
from guided_diffusion.runtime.errors import UserError
from guided_diffusion.sampling.resume import SampleFolder, SamplingInterrupted, stop_on_signals

__all__ = ["DISK_FULL", "add_resume_flags", "check_out_dir", "default_out_dir", "resume_command", "run_claimed", "stopped"]

DISK_FULL = (errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC))


def add_resume_flags(parser: argparse.ArgumentParser | argparse._ArgumentGroup, *, verb: str) -> None:
    """`--resume` and `--overwrite`, the choices `run_claimed` takes; `verb` is what the command does to an
    image ("drawn", "edited")."""
    parser.add_argument("--resume", action="store_true",
                        help="continue an interrupted run in --out_dir (same flags): finished batches are kept in "
                             f"<output>.partial/ as they complete and only the rest is {verb}")
    parser.add_argument("--overwrite", action="store_true",
                        help="start again when --out_dir holds this run's finished output (else: nothing to do) or "
                             "another run's, finished or interrupted")


def check_out_dir(out_dir: str | None) -> None:
    """Refuse, before anything is written, an output folder (--out_dir, else $OPENAI_LOGDIR) that cannot be used."""
    target = out_dir or os.environ.get("OPENAI_LOGDIR")
    problem = directory_write_problem(target) if target else None
    if problem is not None:
        flag = "--out_dir" if out_dir else "OPENAI_LOGDIR"
        raise UserError(f"{flag} {target}: {problem}; choose another output directory")


def default_out_dir() -> str:
    """The output folder when --out_dir is not given: $OPENAI_LOGDIR, else a new temporary folder (rank 0's)."""
    return os.environ.get("OPENAI_LOGDIR") or distributed.decide_on_rank0(
        lambda: tempfile.mkdtemp(prefix="guided-diffusion-"))


def resume_command(command: str, argv: list[str], seed: int | None) -> str:
    """The command line that continues this run: its own flags, its seed (when it has one) and --resume."""
    words = [w for w in argv if w != "--overwrite"]
    if seed is not None and "--seed" not in words and not any(w.startswith("--seed=") for w in words):
        words += ["--seed", str(seed)]
    if "--resume" not in words:
        words.append("--resume")
    world = distributed.get_world_size()
    launcher = ["guided-diffusion"] if world == 1 else ["torchrun", "--nproc_per_node", str(world), "-m", "guided_diffusion"]
    return shlex.join([*launcher, command, *words])


def stopped(command: str, argv: list[str], folder: SampleFolder, seed: int | None, what: str, code: int, *,
            unit: str = "samples", free_space: bool = False) -> int:
    """One line on rank 0 (what stopped the run, what was kept, the command that continues), and `code`."""
    if distributed.is_main_process():
        store = folder.store
        if store is None:
            text = f"{what} before the run started; nothing to keep"
        else:
            then = "free some space, then resume" if free_space else "resume"
            text = (f"{what}: kept {store.count()} of {folder.job.num_samples} {unit} in {store.directory}; "
                    f"{then} with: {resume_command(command, argv, seed)}")
        print(text, file=sys.stderr)
        logs.log_to_files(text)
    sys.stderr.flush()
    return code


def run_claimed(command: str, argv: list[str], folder: SampleFolder, work: Callable[[], int], *, seed: int | None,
                resume: bool, overwrite: bool, unit: str = "samples") -> int:
    """Claim `folder` (rank 0 decides for all), then `work()`; every stop is one line with the resume command."""
    claimed = False
    with stop_on_signals() as received:
        try:
            nothing_to_do = distributed.decide_on_rank0(lambda: folder.claim(resume=resume, overwrite=overwrite))
            claimed = True
            if nothing_to_do is not None:
                if distributed.is_main_process():
                    print(nothing_to_do)
                return 0
            return work()
        except SamplingInterrupted as stop:
            return stopped(command, argv, folder, seed, f"interrupted by {signal.Signals(stop.signum).name}",
                           128 + stop.signum, unit=unit)
        except OSError as exc:
            if exc.errno not in DISK_FULL:
                raise
            where = f" writing {exc.filename}" if exc.filename else ""
            return stopped(command, argv, folder, seed, f"error: disk full{where} ({exc.strerror})", 1, unit=unit,
                           free_space=True)
        except Exception:
            signum = received()
            if signum is None:
                raise
            # a collective broken by a stopped peer
            return stopped(command, argv, folder, seed, f"interrupted by {signal.Signals(signum).name}", 128 + signum,
                           unit=unit)
        finally:
            if claimed and distributed.is_main_process():
                folder.release()
