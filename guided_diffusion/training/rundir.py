"""A console that cannot stop a run.

`tolerant_console()` keeps `| tee log` and similar pipes from killing a run: when the reader of
stdout/stderr goes away (tee dies first on Ctrl-C), further console output is dropped instead of
raising `BrokenPipeError` in the middle of the final save. Everything still goes to the run
directory's log.txt. (One run per run directory is `runtime.locks.FolderLock`, held by `training.run`.)
"""
from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterator
from typing import Any, TextIO

__all__ = ["tolerant_console"]


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
