"""One training run per run directory, and a console that cannot stop a run.

`RunDirLock` holds an exclusive `flock` on `RUN_DIR/.run.lock` for the run's life. The kernel drops
the lock when its holder dies however it dies (SIGKILL, power loss of a local disk), so a lock left by
a killed run is simply taken over; the file only carries the holder's pid, host and start time for
the message a second trainer gets. The lock belongs to the trainer alone: a forked child (a data-loader
worker) closes its copy of the descriptor at once, else a worker outliving a `kill -9`ed trainer by
seconds would keep the lock and refuse the scheduler's immediate `--resume auto`.

`tolerant_console()` keeps `| tee log` and similar pipes from killing a run: when the reader of
stdout/stderr goes away (tee dies first on Ctrl-C), further console output is dropped instead of
raising `BrokenPipeError` in the middle of the final save. Everything still goes to the run
directory's log.txt.
"""
from __future__ import annotations

import contextlib
import datetime
import errno
import json
import os
import socket
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any, TextIO

from guided_diffusion.runtime.errors import UserError

LOCK_NAME = ".run.lock"

try:
    import fcntl
except ImportError:  # Windows: fall back to the filelock package (no holder details)
    fcntl = None  # type: ignore[assignment]


# Descriptors of the locks this process holds; a forked child closes its copies (see the docstring).
_HELD_FDS: set[int] = set()


def _close_held_locks_in_child() -> None:
    for fd in _HELD_FDS:
        with contextlib.suppress(OSError):
            os.close(fd)  # the child's reference only: the parent's descriptor keeps the lock
    _HELD_FDS.clear()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_close_held_locks_in_child)


class RunDirLock:
    """An exclusive lock on a run directory, held from `acquire()` to `release()` (or process exit)."""

    def __init__(self, directory: str | os.PathLike):
        self.directory = Path(directory)
        self.path = self.directory / LOCK_NAME
        self._fd: int | None = None
        self._fallback: Any = None
        self.previous_holder: dict[str, Any] | None = None  # a dead run whose lock was taken over

    def acquire(self) -> RunDirLock:
        """Take the lock, or raise a one-line `UserError` naming the live process that holds it."""
        self.directory.mkdir(parents=True, exist_ok=True)
        if fcntl is None:
            from filelock import FileLock, Timeout

            self._fallback = FileLock(str(self.path))
            try:
                self._fallback.acquire(timeout=0)
            except Timeout:
                raise UserError(self._busy_message(None)) from None
            return self
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            os.close(fd)
            if exc.errno in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
                raise UserError(self._busy_message(self._read_holder())) from None
            raise
        self.previous_holder = self._read_holder()
        record = {"pid": os.getpid(), "host": socket.gethostname(),
                  "started": datetime.datetime.now().isoformat(timespec="seconds")}
        os.ftruncate(fd, 0)
        os.pwrite(fd, (json.dumps(record) + "\n").encode(), 0)
        self._fd = fd
        _HELD_FDS.add(fd)
        return self

    def _read_holder(self) -> dict[str, Any] | None:
        try:
            holder = json.loads(self.path.read_text() or "null")
        except (OSError, ValueError):
            return None
        return holder if isinstance(holder, dict) else None

    def _busy_message(self, holder: dict[str, Any] | None) -> str:
        who = "another process"
        if holder:
            who = f"pid {holder.get('pid')} on {holder.get('host')} (started {holder.get('started')})"
        return (f"run directory {self.directory} is in use by another training run, {who}: wait for it to "
                "finish or stop it, or use another log_dir")

    def release(self) -> None:
        if self._fd is not None:
            _HELD_FDS.discard(self._fd)
            os.ftruncate(self._fd, 0)  # an empty file: ended cleanly (a killed run leaves its pid for the log)
            os.close(self._fd)  # closing drops the flock; the file stays, harmless and reusable
            self._fd = None
        if self._fallback is not None:
            self._fallback.release()
            self._fallback = None


class _TolerantStream:
    """Wraps a console stream; once its reader is gone, writes are dropped instead of raising."""

    def __init__(self, stream: TextIO):
        self._stream = stream
        self.broken = False

    def write(self, text: str) -> int:
        if not self.broken:
            try:
                return self._stream.write(text)
            except (BrokenPipeError, ConnectionResetError, ValueError):  # ValueError: closed file
                self.broken = True
        return len(text)

    def flush(self) -> None:
        if not self.broken:
            try:
                self._stream.flush()
            except (BrokenPipeError, ConnectionResetError, ValueError):
                self.broken = True

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stream, name)


@contextlib.contextmanager
def tolerant_console() -> Iterator[None]:
    """Within the block, stdout/stderr whose reader went away (a dead `tee`) are silently dropped."""
    originals = sys.stdout, sys.stderr
    wrapped = _TolerantStream(sys.stdout), _TolerantStream(sys.stderr)
    sys.stdout, sys.stderr = wrapped
    try:
        yield
    finally:
        sys.stdout, sys.stderr = originals
        for stream, wrapper in zip(originals, wrapped):
            if wrapper.broken:  # point the descriptor at /dev/null so the interpreter's last flush succeeds
                with contextlib.suppress(OSError, ValueError, AttributeError):
                    devnull = os.open(os.devnull, os.O_WRONLY)
                    os.dup2(devnull, stream.fileno())
                    os.close(devnull)
