"""One process per output folder: an exclusive lock that names the live process holding it.

`FolderLock` holds an exclusive `flock` on `FOLDER/.run.lock` from `acquire()` to `release()`. The kernel
drops it when its holder dies however it dies (SIGKILL included), so a lock left by a killed run is
simply taken over; the file only carries the holder's pid, host and start time for the message the next
process gets. The lock belongs to the process that took it: a forked child (a data-loader worker, a
sampling helper) closes its copy of the descriptor at once, else a child outliving a killed parent would
keep the folder locked and refuse the immediate rerun with the dead parent's pid.
"""
from __future__ import annotations

import contextlib
import datetime
import errno
import json
import os
import socket
from pathlib import Path
from typing import Any

from guided_diffusion.runtime.errors import UserError

__all__ = ["LOCK_NAME", "FolderLock"]

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


class FolderLock:
    """An exclusive lock on `folder`, held from `acquire()` to `release()` (or the process's end).

    `purpose` names what holds such a lock in the refusal ("sampling run") and `advice` says what to do
    instead ("choose another --out_dir"); `previous_holder` is a dead holder's record, when one was
    taken over."""

    def __init__(self, folder: str | os.PathLike[str], *, purpose: str = "run", advice: str = "use another folder"):
        self.folder = Path(folder)
        self.path = self.folder / LOCK_NAME
        self.purpose = purpose
        self.advice = advice
        self._fd: int | None = None
        self._fallback: Any = None
        self.previous_holder: dict[str, Any] | None = None

    @property
    def held(self) -> bool:
        return self._fd is not None or self._fallback is not None

    def acquire(self) -> FolderLock:
        """Take the lock (creating the folder), or raise a one-line `UserError` naming the live holder."""
        self.folder.mkdir(parents=True, exist_ok=True)
        if fcntl is None:
            from filelock import FileLock, Timeout

            self._fallback = FileLock(str(self.path))
            try:
                self._fallback.acquire(timeout=0)
            except Timeout:
                self._fallback = None
                raise UserError(self.busy_message(None)) from None
            return self
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            os.close(fd)
            if exc.errno in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
                raise UserError(self.busy_message(self._read_holder())) from None
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

    def busy_message(self, holder: dict[str, Any] | None) -> str:
        """The refusal a second process gets while `holder` (the lock file's record) runs."""
        who = "another process"
        if holder:
            who = f"pid {holder.get('pid')} on {holder.get('host')} (started {holder.get('started')})"
        return f"{self.folder} is in use by another {self.purpose}, {who}: wait for it to finish or stop it, or {self.advice}"

    def release(self) -> None:
        """Drop the lock; the file stays, emptied (a killed holder leaves its record for the message)."""
        if self._fd is not None:
            _HELD_FDS.discard(self._fd)
            with contextlib.suppress(OSError):
                os.ftruncate(self._fd, 0)
            os.close(self._fd)
            self._fd = None
        if self._fallback is not None:
            self._fallback.release()
            self._fallback = None

    def __enter__(self) -> FolderLock:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()
