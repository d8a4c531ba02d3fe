"""Streaming access to arrays inside .npz files: read `arr_0` in batches, write a reference batch.

`np.load(mmap_mode=...)` cannot map members of a zip, and a 50k-image batch at 256x256 is ~10 GB, so
rows are read from the zip member directly with the .npy header parsed by `np.lib.format`.
"""
from __future__ import annotations

import os
import uuid
import zipfile
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import IO

import numpy as np

from guided_diffusion.runtime.atomic import TMP_MARKER, fsync_directory
from guided_diffusion.runtime.errors import UserError

__all__ = ["NpzArrayReader", "NpzWriter", "npz_keys", "read_npz_arrays"]


def _open_zip(path: Path) -> zipfile.ZipFile:
    try:
        return zipfile.ZipFile(path)
    except FileNotFoundError:
        raise UserError(f"{path} does not exist; pass the path of an .npz batch") from None
    except zipfile.BadZipFile:
        raise UserError(f"{path} is not a readable .npz file: it is cut short or not a zip archive at all; "
                        "re-create it with np.savez or download it again") from None
    except (IsADirectoryError, PermissionError) as exc:
        raise UserError(f"{path} is not a readable .npz file ({exc.strerror}); pass a file written by np.savez") from None


# What a damaged zip member raises while being read: bad CRC or header (BadZipFile), corrupt deflate
# data (zlib.error), a member cut short (EOFError), or the file shrinking under us (OSError).
_DAMAGE = (zipfile.BadZipFile, zlib.error, EOFError, OSError)


def _damaged(path: Path, name: str, exc: BaseException) -> UserError:
    reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    return UserError(f"{path} is damaged: reading {name} fails its integrity check ({reason}); "
                     "re-create the file or download it again")


def npz_keys(path: Path | str) -> set[str]:
    """Names of the arrays stored in an .npz file."""
    with _open_zip(Path(path)) as archive:
        return {name[: -len(".npy")] for name in archive.namelist() if name.endswith(".npy")}


def read_npz_arrays(path: Path | str, names: list[str]) -> dict[str, np.ndarray]:
    """Load the named (small) arrays fully; pickled object arrays are refused."""
    try:
        with np.load(path, allow_pickle=False) as archive:
            missing = [name for name in names if name not in archive.files]
            if missing:
                raise UserError(f"{path} has no array named {missing[0]!r}; it holds {sorted(archive.files)}")
            return {name: archive[name] for name in names}
    except UserError:
        raise
    except ValueError as exc:
        raise UserError(f"cannot read {names} from {path}: {exc}") from None
    except _DAMAGE as exc:
        raise _damaged(Path(path), ", ".join(names), exc) from None


class NpzArrayReader:
    """Reads one array of an .npz file row block by row block, without loading it whole.

    Falls back to loading the member into memory for layouts the stream cannot serve (Fortran order,
    unknown .npy versions), as the original evaluator does.
    """

    def __init__(self, path: Path | str, name: str = "arr_0") -> None:
        self.path = Path(path)
        self.name = name
        self._archive = _open_zip(self.path)
        self._member: IO[bytes] | None = None
        self._array: np.ndarray | None = None
        member_name = f"{name}.npy"
        if member_name not in self._archive.namelist():
            self._archive.close()
            raise UserError(f"{self.path} has no array named {name!r}; it holds {sorted(npz_keys(self.path))}")
        try:
            member = self._archive.open(member_name)
            version = np.lib.format.read_magic(member)
            if version in ((1, 0), (2, 0)):
                read_header = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                               else np.lib.format.read_array_header_2_0)
                shape, fortran_order, dtype = read_header(member)
            else:
                shape, fortran_order, dtype = None, True, None
        except (*_DAMAGE, ValueError) as exc:  # ValueError: not an .npy header
            self._archive.close()
            raise _damaged(self.path, name, exc) from None
        if dtype is not None and dtype.hasobject:
            member.close()
            self._archive.close()
            raise UserError(f"{self.path}:{name} holds Python objects; store a numeric array (uint8 images)")
        if fortran_order:
            member.close()
            self._array = read_npz_arrays(self.path, [name])[name]
            shape, dtype = self._array.shape, self._array.dtype
        else:
            self._member = member
        assert shape is not None  # set by the header, or by the whole-array read
        self.shape: tuple[int, ...] = tuple(shape)
        self.dtype: np.dtype = np.dtype(dtype)
        self._next_row = 0

    def __len__(self) -> int:
        return self.shape[0] if self.shape else 1

    def iter_batches(self, batch_size: int) -> Iterator[np.ndarray]:
        """Yield consecutive, writable blocks of at most `batch_size` rows (one pass only)."""
        if self._next_row:
            raise RuntimeError("NpzArrayReader streams once; open a new reader to read again")
        if batch_size < 1:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        total = len(self)
        for start in range(0, total, batch_size):
            rows = min(batch_size, total - start)
            self._next_row = start + rows
            if self._array is not None:
                yield np.array(self._array[start : start + rows])
                continue
            block = np.empty((rows, *self.shape[1:]), dtype=self.dtype)
            view = memoryview(block).cast("B")  # type: ignore[arg-type]  # ndarray is a buffer; numpy's stubs omit it
            member = self._member
            assert member is not None  # set in __init__ unless the array was read whole above
            filled = 0
            while filled < len(view):
                try:
                    count = member.readinto(view[filled:])  # type: ignore[attr-defined]  # a ZipExtFile
                except _DAMAGE as exc:
                    raise _damaged(self.path, self.name, exc) from None
                if not count:
                    raise UserError(f"{self.path}:{self.name} is truncated at row {start}; re-create the file")
                filled += count
            yield block

    def close(self) -> None:
        if self._member is not None:
            self._member.close()
        self._archive.close()

    def __enter__(self) -> NpzArrayReader:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()


class NpzWriter:
    """Writes an uncompressed .npz (the `np.savez` layout) atomically: into a temporary file in the same
    directory, fsynced and renamed over `path` only when `commit()` is reached without error."""

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # Named as runtime.atomic names its temp files (so remove_stale_temp_files knows them), and created
        # with the umask's mode like every other output (mkstemp's 0600 would survive the rename).
        self._temp = self.path.with_name(f"{self.path.name}{TMP_MARKER}{uuid.uuid4().hex[:8]}")
        handle = os.open(self._temp, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o666)
        self._file = os.fdopen(handle, "w+b")
        self._archive = zipfile.ZipFile(self._file, "w", zipfile.ZIP_STORED, allowZip64=True)
        self._stream: IO[bytes] | None = None
        self._stream_left = 0
        self._committed = False

    def write(self, name: str, array: np.ndarray) -> None:
        """Store a whole array."""
        array = np.ascontiguousarray(array)
        with self._archive.open(f"{name}.npy", "w", force_zip64=True) as member:
            np.lib.format.write_array(member, array, allow_pickle=False)

    def begin(self, name: str, shape: tuple[int, ...], dtype: np.dtype) -> None:
        """Start an array whose rows arrive through `append` (exactly `shape[0]` of them)."""
        if self._stream is not None:
            raise RuntimeError("finish the current streamed array before starting another")
        header = {"descr": np.lib.format.dtype_to_descr(np.dtype(dtype)), "fortran_order": False, "shape": tuple(shape)}
        self._stream = self._archive.open(f"{name}.npy", "w", force_zip64=True)
        np.lib.format.write_array_header_1_0(self._stream, header)
        self._stream_dtype = np.dtype(dtype)
        self._stream_row_shape = tuple(shape[1:])
        self._stream_left = shape[0]
        if not self._stream_left:
            self._finish_stream()

    def append(self, rows: np.ndarray) -> None:
        """Add rows to the array started by `begin`."""
        if self._stream is None:
            raise RuntimeError("append() needs begin() first")
        rows = np.ascontiguousarray(rows, dtype=self._stream_dtype)
        if rows.shape[1:] != self._stream_row_shape or len(rows) > self._stream_left:
            raise ValueError(f"rows shaped {rows.shape} do not fit the streamed array")
        self._stream.write(rows.tobytes())
        self._stream_left -= len(rows)
        if not self._stream_left:
            self._finish_stream()

    def _finish_stream(self) -> None:
        assert self._stream is not None
        self._stream.close()
        self._stream = None

    def commit(self) -> Path:
        """Finish the archive and move it into place."""
        if self._stream is not None:
            raise RuntimeError(f"streamed array is missing {self._stream_left} rows")
        self._archive.close()
        self._file.flush()
        os.fsync(self._file.fileno())
        self._file.close()
        os.replace(self._temp, self.path)
        fsync_directory(self.path.parent)
        self._committed = True
        return self.path

    def discard(self) -> None:
        """Abandon the archive; `path` is left untouched."""
        if not self._file.closed:
            try:
                if self._stream is not None:
                    self._stream.close()
                self._archive.close()
            except Exception:
                pass
            self._file.close()
        self._temp.unlink(missing_ok=True)

    def __enter__(self) -> NpzWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if self._committed:
            return
        if exc_type is not None:
            self.discard()
            return
        try:
            self.commit()
        except BaseException:
            self.discard()
            raise
