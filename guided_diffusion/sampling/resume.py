"""Resumable sampling runs: the output folder's lock, the finished batches kept as they complete, the
settings record of a finished run, and stopping on a signal.

A run writes `samples_{N}x{H}x{W}x3.npz` into its output folder. While it draws, `SampleFolder` holds
the folder's lock (`runtime.locks.FolderLock`, naming the live pid to a second run) and keeps every
finished batch in `samples_...partial/` (`PartialRun`), so a stopped run keeps what it drew and a rerun
with `--resume` draws only the rest (sample i depends only on (seed, i), so the resumed arrays equal an
uninterrupted run's). A finished run leaves the npz, a PNG grid whose text chunks hold the settings, and
`samples_...json`, the settings record (command line, sampler, grid, scales, seed, bf16 and the job's
full fingerprint), so any output can be traced and drawn again; rerunning it is "nothing to do".
"""
from __future__ import annotations

import contextlib
import datetime
import json
import re
import shutil
import signal
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from guided_diffusion.runtime.atomic import atomic_write_bytes, remove_stale_temp_files
from guided_diffusion.runtime.distributed import decide_on_rank0
from guided_diffusion.runtime.errors import UserError
from guided_diffusion.runtime.locks import FolderLock
from guided_diffusion.runtime.rng import choose_seed
from guided_diffusion.sampling.job import DiffusionJob
from guided_diffusion.sampling.output import save_grid, save_npz, save_record, save_samples

__all__ = [
    "ResumableJob", "PartialRun", "ResumeError", "SampleFolder", "choose_run_seed", "SamplingInterrupted", "stop_on_signals", "settings_record",
    "differences",
]

Batch = tuple[np.ndarray, np.ndarray | None]


class ResumableJob(Protocol):
    """What the resume machinery needs of a job (a `SamplingJob`, or an editing job): the output's file
    name, its size, and a JSON-able fingerprint of everything that decides its arrays."""

    @property
    def output_name(self) -> str: ...
    @property
    def num_samples(self) -> int: ...
    def fingerprint(self) -> dict[str, Any]: ...


class ResumeError(UserError):
    """A partial or finished run that cannot be continued with these options (or was not asked to be)."""


class PartialRun:
    """Finished batches of one job in `<output>.partial/` beside the output npz.

    `job.json` holds the job's fingerprint; `batch_{start}.npz` holds the batch starting at sample
    `start`, written atomically, so after any kill every file there is complete.
    """

    FINGERPRINT = "job.json"

    def __init__(self, directory: Path):
        self.directory = directory

    @staticmethod
    def directory_for(out_dir: str | Path, job: ResumableJob) -> Path:
        return Path(out_dir) / (job.output_name.removesuffix(".npz") + ".partial")

    @classmethod
    def stored_fingerprint(cls, directory: Path) -> dict[str, Any] | None:
        """The fingerprint of the job whose batches `directory` holds, or None when there are none."""
        path = directory / cls.FINGERPRINT
        if not path.is_file():
            return None
        try:
            stored = json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            raise ResumeError(f"{path} is unreadable ({exc}); delete {directory} to start over") from None
        return stored if isinstance(stored, dict) else None

    @classmethod
    def open(cls, out_dir: str | Path, job: ResumableJob, *, resume: bool, overwrite: bool = False) -> PartialRun:
        """The store for `job` in `out_dir`: continued when `resume` and the fingerprints agree, new when
        there is none (or it holds no finished batch, or `overwrite` discards it); a different or
        un-asked-for partial run is refused (ResumeError), never overwritten."""
        directory = cls.directory_for(out_dir, job)
        stored = cls.stored_fingerprint(directory)
        fingerprint = job.fingerprint()
        if stored is not None and cls(directory).finished() and not overwrite:  # no finished batch: nothing to keep
            store = cls(directory)
            count = store.count()
            if not resume:
                raise ResumeError(f"{directory} holds {count} of {job.num_samples} samples of an interrupted run: "
                                  "continue it with --resume, or delete it (or pass --overwrite) to start over")
            if stored != fingerprint:
                differ = ", ".join(differences(stored, fingerprint)) or "the format"
                raise ResumeError(f"cannot resume {directory}: it was drawn with different options ({differ}); "
                                  "rerun with the same flags and seed, or delete it to start over")
            remove_stale_temp_files(directory)
            return store
        if directory.exists():
            shutil.rmtree(directory)
        directory.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(directory / cls.FINGERPRINT, json.dumps(fingerprint, indent=1, sort_keys=True).encode())
        return cls(directory)

    def _path(self, start: int) -> Path:
        return self.directory / f"batch_{start:09d}.npz"

    def finished(self) -> list[int]:
        """Start indices of the batches on disk."""
        return sorted(int(p.stem.split("_")[1]) for p in self.directory.glob("batch_*.npz"))

    def count(self) -> int:
        """Samples on disk."""
        total = 0
        for start in self.finished():
            with np.load(self._path(start)) as data:
                total += len(data["arr_0"])
        return total

    def write(self, start: int, images: np.ndarray, labels: np.ndarray | None) -> None:
        arrays = (images,) if labels is None else (images, labels)
        save_npz(self._path(start), *arrays)

    def read(self, start: int) -> Batch:
        with np.load(self._path(start)) as data:
            return data["arr_0"], (data["arr_1"] if "arr_1" in data.files else None)

    def discard(self) -> None:
        """Remove the folder (once the complete npz is written)."""
        shutil.rmtree(self.directory, ignore_errors=True)


def differences(old: Any, new: Any, prefix: str = "") -> list[str]:
    """The dotted keys at which two JSON-like values differ."""
    if isinstance(old, dict) and isinstance(new, dict):
        out: list[str] = []
        for key in sorted(set(old) | set(new)):
            out += differences(old.get(key), new.get(key), f"{prefix}{key}.")
        return out
    return [] if old == new else [prefix.rstrip(".")]


def settings_record(job: DiffusionJob, command: str = "") -> dict[str, Any]:
    """What a finished run (sampling or editing) records beside its output: the command line, the settings
    a person reads first (sampler, grid, scales, seed, precision, labels, checkpoints, and what is particular
    to the job: `job.record_fields()`) and the job's full fingerprint, which a rerun compares to tell
    "nothing to do" from "other settings"."""
    from guided_diffusion import __version__

    settings = job.settings
    return {
        "command": command,
        "version": __version__,
        "finished": datetime.datetime.now().isoformat(timespec="seconds"),
        "sampler": settings.sampler,
        "steps": settings.steps,
        "step_grid": settings.step_grid,
        "solver_options": settings.solver_options,
        "classifier_scale": job.classifier_scale,
        "cfg_scale": job.cfg_scale,
        "seed": job.seed,
        "class_labels": list(job.class_labels) if job.class_labels is not None else None,
        "bf16": job.bf16,
        "use_fp16": job.model.use_fp16,
        "model_path": job.model_path,
        "classifier_path": job.classifier_path,
        **job.record_fields(),
        "job": job.fingerprint(),
    }


class SampleFolder:
    """A sampling run's output folder: its lock, the finished npz (with grid and settings record) and the
    partial batches of an unfinished run.

    `claim()` (rank 0) takes the lock and decides what the run does; `store` then receives the batches;
    `finish()` writes the outputs; `release()` drops the lock. `command` is recorded with the settings.
    """

    def __init__(self, directory: str | Path, job: ResumableJob, *, command: str = ""):
        self.directory = Path(directory)
        self.job = job
        self.command = command
        self.npz_path = self.directory / job.output_name
        self.grid_path = self.npz_path.with_suffix(".png")
        self.record_path = self.npz_path.with_suffix(".json")
        self.lock = FolderLock(self.directory, purpose="sampling run", advice="choose another --out_dir")
        self.store: PartialRun | None = None

    @staticmethod
    def interrupted_seed(directory: str | Path, job: ResumableJob) -> int | None:
        """The seed of the interrupted run of this job's size in `directory`, if one is there (read only)."""
        stored = PartialRun.stored_fingerprint(PartialRun.directory_for(directory, job))
        return int(stored["seed"]) if stored is not None and "seed" in stored else None

    def _finished_record(self) -> dict[str, Any] | None:
        try:
            record = json.loads(self.record_path.read_text())
        except (OSError, ValueError):
            return None
        return record if isinstance(record, dict) else None

    def _other_interrupted_runs(self) -> list[int]:
        """Sizes (num_samples) of interrupted runs of other sizes in the folder."""
        shape = self.job.output_name.split("x", 1)[1].removesuffix(".npz")  # e.g. "8x8x3"
        sizes = []
        for path in self.directory.glob(f"samples_*x{shape}.partial"):
            match = re.fullmatch(rf"samples_(\d+)x{re.escape(shape)}\.partial", path.name)
            if match and int(match.group(1)) != self.job.num_samples and PartialRun(path).finished():
                sizes.append(int(match.group(1)))
        return sorted(sizes)

    def claim(self, *, resume: bool, overwrite: bool = False) -> str | None:
        """Lock the folder (a one-line UserError naming the live holder when another run has it) and
        decide: returns the "nothing to do" message when this run's output is already there, else None
        with `store` open (continued with `resume`, replaced with `overwrite`). A finished run with
        other settings, an interrupted one not asked to be resumed, or `resume` with another number of
        samples than the interrupted run's is refused (ResumeError); nothing is changed then."""
        self.lock.acquire()
        try:
            return self._decide(resume=resume, overwrite=overwrite)
        except BaseException:
            self.lock.release()
            raise

    def _decide(self, *, resume: bool, overwrite: bool) -> str | None:
        if self.npz_path.is_file() and not overwrite:
            record = self._finished_record()
            if record is not None and record.get("job") != self.job.fingerprint():
                differ = ", ".join(differences(record.get("job"), self.job.fingerprint())) or "the format"
                raise ResumeError(f"{self.npz_path} holds a finished run with other settings ({differ}): pass "
                                  "--overwrite to replace it, or choose another --out_dir")
            where = f" (settings in {self.record_path.name})" if record is not None else ""
            return (f"nothing to do: {self.npz_path} already holds the {self.job.num_samples} samples of this run"
                    f"{where}; pass --overwrite to draw them again")
        if resume and not PartialRun.directory_for(self.directory, self.job).is_dir():
            others = self._other_interrupted_runs()
            if others:
                raise ResumeError(f"--resume: {self.directory} holds an interrupted run of {others[0]} samples, not "
                                  f"{self.job.num_samples}: resume it with --num_samples {others[0]}, or drop --resume "
                                  "to start a new run")
        self.store = PartialRun.open(self.directory, self.job, resume=resume, overwrite=overwrite)
        return None

    def resumed_count(self) -> int:
        """Samples already drawn by the interrupted run being continued (0 for a new run)."""
        return self.store.count() if self.store is not None else 0

    def finish(self, images: np.ndarray, labels: np.ndarray | None) -> Path:
        """Write a sampling run's outputs (`complete`): the grid with the settings in its text chunks, then
        the npz; returns the npz path."""
        def write(text: dict[str, str]) -> list[Path]:
            save_grid(self.grid_path, images, labels, text=text)
            return [self.grid_path, save_samples(self.directory, images, labels)]

        return self.complete(write)[-1]

    def complete(self, write_outputs: Callable[[dict[str, str]], list[Path]]) -> list[Path]:
        """Finish the run: write the settings record (`settings_record`), then the outputs with
        `write_outputs(text)` (`text`: PNG text chunks that carry the settings; the outputs' npz last, as
        its presence means "finished"), then drop the partial batches. Returns the record's and the
        outputs' paths."""
        if not isinstance(self.job, DiffusionJob):
            raise TypeError("a finished run records a DiffusionJob's settings (SamplingJob, EditJob)")
        record = settings_record(self.job, self.command)
        summary = {k: v for k, v in record.items() if k != "job"}
        save_record(self.record_path, record)
        written = write_outputs({
            "Software": f"guided-diffusion {record['version']}", "Comment": self.command,
            "guided-diffusion settings": json.dumps(summary, sort_keys=True, default=str),
        })
        if self.store is not None:
            self.store.discard()
        return [self.record_path, *written]

    def release(self) -> None:
        self.lock.release()


def choose_run_seed(given: int | None, *, resume: bool, directory: str | Path, job: ResumableJob) -> tuple[int, bool]:
    """The run's base seed and whether it was chosen here (`runtime.rng.choose_seed`): `given`, else, when
    resuming, the interrupted run's in `directory` (rank 0 reads it), else a fresh one."""
    if given is None and resume:
        given = decide_on_rank0(lambda: SampleFolder.interrupted_seed(directory, job))
    return choose_seed(given)


class SamplingInterrupted(BaseException):
    """SIGINT or SIGTERM arrived; `signum` says which (a BaseException, so `except Exception` lets it by)."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


@contextlib.contextmanager
def stop_on_signals() -> Iterator[Callable[[], int | None]]:
    """Turn SIGINT and SIGTERM into `SamplingInterrupted` in the main thread while the block runs.

    Yields a function returning the signal received so far (None if none): a signal that arrives while
    this rank waits in a collective surfaces as the collective's error once a peer has stopped, and the
    caller uses it to tell that error from a real one.
    """
    if threading.current_thread() is not threading.main_thread():
        yield lambda: None
        return
    received: list[int] = []

    def handler(signum: int, _frame: Any) -> None:
        first = not received
        received.append(signum)
        if first:  # later signals (a launcher repeating itself) must not interrupt the clean-up
            raise SamplingInterrupted(signum)

    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield lambda: received[0] if received else None
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)
