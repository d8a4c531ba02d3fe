"""Atomic file writes: temp file in the same folder, flush, fsync, rename, fsync the folder.

A reader (or a process restarted after a crash) therefore sees either the old file or the complete
new one, never a partial write. Temp files carry a recognisable suffix so leftovers from a killed
writer can be removed at the next start.
"""
from __future__ import annotations

import hashlib
import os
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO

import torch

TMP_MARKER = ".tmp-"


def fsync_directory(directory: Path) -> None:
    """Make a rename in `directory` durable (skipped where directories cannot be opened)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:  # e.g. directories cannot be opened on Windows
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write_stream(path: str | os.PathLike, write: Callable[[BinaryIO], object]) -> tuple[int, str]:
    """Write `path` atomically with `write(file)`; returns (size in bytes, sha256 hex digest)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}{TMP_MARKER}{uuid.uuid4().hex[:8]}")
    try:
        with open(tmp, "wb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        size, digest = file_digest(tmp)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_directory(path.parent)
    return size, digest


def atomic_write_path(path: str | os.PathLike, write: Callable[[Path], object]) -> Path:
    """Like atomic_write_stream, for writers that want a file name (safetensors, PIL): `write(tmp)` fills a
    temporary path in the same folder, which is then fsynced and renamed over `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}{TMP_MARKER}{uuid.uuid4().hex[:8]}")
    try:
        write(tmp)
        with open(tmp, "rb+") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_directory(path.parent)
    return path


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> tuple[int, str]:
    """Write `data` to `path` atomically."""
    return atomic_write_stream(path, lambda handle: handle.write(data))


def atomic_torch_save(obj: Any, path: str | os.PathLike) -> tuple[int, str]:
    """`torch.save(obj)` to `path` atomically; returns (size, sha256)."""
    return atomic_write_stream(path, lambda handle: torch.save(obj, handle))


def file_digest(path: str | os.PathLike, chunk_bytes: int = 1 << 22) -> tuple[int, str]:
    """(size in bytes, sha256 hex digest) of a file."""
    digest = hashlib.sha256()
    size = 0
    with open(path, "rb") as handle:
        while chunk := handle.read(chunk_bytes):
            digest.update(chunk)
            size += len(chunk)
    return size, digest.hexdigest()


def remove_stale_temp_files(directory: str | os.PathLike) -> list[str]:
    """Delete temp files left in `directory` by writers that were killed; returns their names."""
    directory = Path(directory)
    removed: list[str] = []
    if not directory.is_dir():
        return removed
    for entry in directory.iterdir():
        if TMP_MARKER in entry.name and entry.is_file():
            entry.unlink(missing_ok=True)
            removed.append(entry.name)
    return sorted(removed)


def directory_write_problem(directory: str | os.PathLike) -> str | None:
    """Why files cannot be written into `directory` (creating it if needed), or None when they can.

    Checked before any work starts: the path must not be a file or sit under a file, and the directory
    (or, when it does not exist yet, its nearest existing parent) must be writable.
    """
    path = Path(directory)
    if path.exists() and not path.is_dir():
        return f"{path} is a file, not a directory"
    probe = path
    while not probe.exists():
        if probe.parent == probe:
            break
        probe = probe.parent
    if probe.exists() and not probe.is_dir():
        return f"{path} sits under {probe}, which is a file"
    if not probe.exists():
        return f"{path} cannot be created"
    test_file = probe / f".write-test{TMP_MARKER}{uuid.uuid4().hex[:8]}"
    try:  # try it: permission bits say nothing for root or on read-only mounts
        test_file.touch()
        test_file.unlink()
    except OSError as exc:
        return f"{probe} is not writable ({exc.strerror or exc})"
    return None
