"""Resumable, verified downloads into the local cache (checkpoints, Inception weights).

A file only ever appears at its destination after it is complete and verified:

* bytes stream into `NAME.part` beside it; `NAME.part.json` records the URL and the validator (strong
  ETag or Last-Modified) of the response that started it. An interrupted transfer resumes from the part
  file only with that validator (`Range` plus `If-Range`), so a server whose file changed answers with
  the whole new file instead of a tail that would be glued onto old bytes. A part file without a
  record (left by an older version, or by another file) is discarded.
* the finished part must have exactly the size the server announced (Content-Length or the total of a
  Content-Range) or the caller's expected size; a response without a length is accepted only when the
  caller supplies the size or the sha256, since a cut-short body cannot otherwise be told from a whole one.
* an optional `validate(path)` (for checkpoints: load without unpickling and compare keys and shapes
  with the architecture) runs before the part is renamed into place; a failing file is deleted.
* the sha256 of the installed file is written beside it as `NAME.sha256` (sha256sum format) and
  checked on every later use (`verify_installed`).
* a lock file `NAME.lock` (flock-based, released by the kernel if its holder dies) serialises
  processes fetching the same file: the second waits, then finds the file installed and reuses it;
  the holder removes the lock file on release.
"""
from __future__ import annotations

import contextlib
import http.client
import json
import os
import re
import sys
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

from tqdm.auto import tqdm

try:
    import fcntl
except ImportError:  # Windows
    fcntl = None  # type: ignore[assignment]

from guided_diffusion.runtime.atomic import atomic_write_bytes, file_digest, fsync_directory
from guided_diffusion.runtime.errors import UserError

__all__ = ["cache_dir", "check_cache_dir", "download", "recorded_sha256", "sidecar_path", "verify_installed"]

_CHUNK_BYTES = 1 << 20
_ATTEMPTS = 5  # connection cuts tolerated within one call; each retry resumes where the last stopped
_CONTENT_RANGE = re.compile(r"bytes\s+(\d+)-(\d+)/(\d+|\*)")
_USER_AGENT = "guided-diffusion-downloader"
CACHE_ENV = "GUIDED_DIFFUSION_CACHE"


def cache_dir() -> Path:
    """Directory for downloaded files: `$GUIDED_DIFFUSION_CACHE`, else `~/.cache/guided-diffusion`."""
    override = os.environ.get(CACHE_ENV)
    return Path(override).expanduser() if override else Path.home() / ".cache" / "guided-diffusion"


def check_cache_dir(directory: Path | None = None) -> Path:
    """Create the cache directory if needed and make sure files can be written in it; a one-line
    `UserError` naming GUIDED_DIFFUSION_CACHE otherwise (a file in the way, a parent that is a file,
    no permission)."""
    directory = cache_dir() if directory is None else Path(directory)
    fix = f"set {CACHE_ENV} to a writable folder"
    if directory.exists() and not directory.is_dir():
        raise UserError(f"cache directory {directory} is a file, not a folder: {fix}")
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(f"cannot create cache directory {directory} ({exc.strerror or exc}): {fix}") from None
    probe = directory / f".write-test-{os.getpid()}"
    try:
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        raise UserError(f"cache directory {directory} is not writable ({exc.strerror or exc}): {fix}") from None
    return directory


def sidecar_path(path: Path | str) -> Path:
    """Where the sha256 recorded at install time is kept: `NAME.sha256` beside the file."""
    path = Path(path)
    return path.with_name(path.name + ".sha256")


def _part_record_path(part: Path) -> Path:
    return part.with_name(part.name + ".json")


def recorded_sha256(path: Path | str) -> str | None:
    """The sha256 written beside `path` when it was installed, or None."""
    side = sidecar_path(path)
    try:
        text = side.read_text().split()
    except OSError:
        return None
    if text and re.fullmatch(r"[0-9a-f]{64}", text[0]):
        return text[0]
    return None


def _record_sha256(path: Path, digest: str) -> None:
    atomic_write_bytes(sidecar_path(path), f"{digest}  {path.name}\n".encode())


def verify_installed(path: Path | str, sha256: str | None = None, *, record: bool = True) -> str:
    """Hash an installed file and check it against `sha256` (the table's digest, which wins) or the
    digest recorded at install; returns the digest. With neither (a file placed by hand), the digest
    is recorded now when `record`, so later changes are caught. Raises `UserError` on a mismatch."""
    path = Path(path)
    digest = file_digest(path)[1]
    expected, origin = (sha256.lower(), "the published") if sha256 else (recorded_sha256(path), "the recorded")
    if expected is None:
        if record:
            try:
                _record_sha256(path, digest)
            except OSError:  # a read-only cache still works, just without the record
                pass
        return digest
    if not digest.startswith(expected):
        raise UserError(
            f"{path} does not match {origin} sha256 (file {digest[:16]}..., expected {expected[:16]}...): "
            "it changed or is damaged; delete it and download it again"
        )
    return digest


class _Interrupted(Exception):
    """The connection ended before the announced body was complete; the part file is kept for resuming."""


class _RestartNeeded(Exception):
    """The part file cannot be resumed (server refused the range); start again from byte 0."""


def download(
    url: str,
    dest: Path | str,
    *,
    sha256: str | None = None,
    expected_size: int | None = None,
    progress: bool = True,
    timeout: float = 60,
    validate: Callable[[Path], None] | None = None,
) -> Path:
    """Download `url` to `dest` and return `dest`.

    An existing `dest` is checked against `sha256` or the digest recorded at its install and returned.
    `sha256` is the expected hex digest, or a prefix of it of at least 8 digits (as carried in file
    names like `...-6726825d.pth`). `expected_size` must be exact. `validate(part)` may raise
    `UserError`/`ValueError` to reject the content (the file is then deleted).
    Raises `UserError` when the server fails, the connection keeps dropping (the part file is kept, so
    running again resumes), or the result has the wrong size, hash or content (the part file is deleted).
    """
    dest = Path(dest)
    if sha256 is not None:
        sha256 = sha256.lower()
        if len(sha256) < 8 or not re.fullmatch(r"[0-9a-f]+", sha256):
            raise ValueError(f"sha256 must be a hex digest or a prefix of at least 8 hex digits, got {sha256!r}")
    check_cache_dir(dest.parent)
    with _download_lock(dest.with_name(dest.name + ".lock")):
        if dest.exists():  # installed earlier, or by the process we waited for
            if expected_size is not None and dest.stat().st_size != expected_size:
                raise UserError(
                    f"{dest} has {dest.stat().st_size} bytes but {expected_size} are expected; delete it and run again"
                )
            verify_installed(dest, sha256)
            return dest
        part = dest.with_name(dest.name + ".part")
        _discard_unresumable_part(part, url)
        restarted = False
        total = None
        for attempt in range(_ATTEMPTS):
            try:
                total = _fetch_into(url, part, timeout=timeout, progress=progress, label=dest.name)
                break
            except _Interrupted:
                if attempt == _ATTEMPTS - 1:
                    done = part.stat().st_size if part.exists() else 0
                    raise UserError(
                        f"download of {url} kept being interrupted ({done} bytes saved in {part}); "
                        "check your network and run the same command again to resume"
                    ) from None
                _discard_unresumable_part(part, url)
            except _RestartNeeded:
                _remove_part(part)
                if restarted:
                    raise UserError(f"server for {url} rejected the download range twice; try again later") from None
                restarted = True
        _verify_and_install(url, part, dest, total=total, sha256=sha256, expected_size=expected_size, validate=validate)
        return dest


@contextlib.contextmanager
def _download_lock(path: Path) -> Iterator[None]:
    """Hold an exclusive lock on `path` (created if needed) for the block, waiting for another holder
    with a message. The lock file is removed on release, safely: a waiter that then gets the lock on
    the removed file notices that the path no longer names it and locks the new file instead."""
    if fcntl is None:  # Windows: the filelock package, whose lock file stays behind
        from filelock import FileLock

        with FileLock(str(path)):
            yield
        return
    announced = False
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            if not announced:
                print(f"waiting for another process that is downloading {path.name.removesuffix('.lock')} ...",
                      file=sys.stderr, flush=True)
                announced = True
            fcntl.flock(fd, fcntl.LOCK_EX)
        try:
            same = os.fstat(fd).st_ino == os.stat(path).st_ino
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)  # we locked a file its holder had already removed: try the current one
    try:
        yield
    finally:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()  # while still holding the lock, so no one can lock this file afterwards and believe it current
        os.close(fd)


def _remove_part(part: Path) -> None:
    part.unlink(missing_ok=True)
    _part_record_path(part).unlink(missing_ok=True)


def _read_part_record(part: Path) -> dict | None:
    try:
        record = json.loads(_part_record_path(part).read_text())
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) else None


def _discard_unresumable_part(part: Path, url: str) -> None:
    """Keep a part file only if it was started from `url` by a response that had a validator."""
    if not part.exists():
        _part_record_path(part).unlink(missing_ok=True)
        return
    record = _read_part_record(part)
    if record is None or record.get("url") != url or not record.get("validator"):
        _remove_part(part)


def _validator(headers) -> str | None:
    """The response's If-Range validator: a strong ETag, else Last-Modified (weak ETags may not be used)."""
    etag = headers.get("ETag")
    if etag and not etag.startswith("W/"):
        return etag
    return headers.get("Last-Modified")


def _fetch_into(url: str, part: Path, *, timeout: float, progress: bool, label: str) -> int | None:
    """One HTTP request writing `part` (resuming it when it has a validator); returns the full size if
    known.

    Raises `_Interrupted` on a short body, `_RestartNeeded` when the resume range is unusable, and
    `UserError` on HTTP/network errors.
    """
    record = _read_part_record(part) if part.exists() else None
    offset = part.stat().st_size if record is not None else 0
    headers = {"User-Agent": _USER_AGENT}
    if offset:
        assert record is not None  # a part is resumed only with its record
        headers["Range"] = f"bytes={offset}-"
        headers["If-Range"] = record["validator"]
    request = urllib.request.Request(url, headers=headers)
    try:
        response = urllib.request.urlopen(request, timeout=timeout)
    except urllib.error.HTTPError as exc:
        if exc.code == 416 and offset:  # our part is already as long as (or longer than) the file
            raise _RestartNeeded() from None
        raise UserError(
            f"download of {url} failed: HTTP {exc.code} {exc.reason}; check the URL, or fetch the file by hand "
            f"and place it at {part.with_name(label)}"
        ) from None
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise UserError(
            f"cannot reach {url} ({reason}); check your network, or fetch the file by hand and place it at "
            f"{part.with_name(label)}"
        ) from None

    with response:
        status = response.status
        length_header = response.headers.get("Content-Length")
        body_length = int(length_header) if length_header is not None else None
        if offset and status == 206:
            assert record is not None
            match = _CONTENT_RANGE.match(response.headers.get("Content-Range", ""))
            if match is None or int(match.group(1)) != offset:
                raise _RestartNeeded()
            total = int(match.group(3)) if match.group(3) != "*" else record.get("total")
            if record.get("total") is not None and total != record["total"]:
                raise _RestartNeeded()
            mode = "ab"
        else:  # 200: a fresh body (no resume, validator changed, or the server ignored Range)
            offset = 0
            total = body_length
            mode = "wb"
            new_record = {"url": url, "validator": _validator(response.headers), "total": total}
            atomic_write_bytes(_part_record_path(part), json.dumps(new_record).encode())
        received = 0
        with open(part, mode) as sink, tqdm(
            total=total, initial=offset, unit="B", unit_scale=True, unit_divisor=1024,
            desc=label, disable=not progress, leave=False,
        ) as bar:
            try:
                while True:
                    try:
                        chunk = response.read(_CHUNK_BYTES)
                    except (OSError, http.client.HTTPException) as exc:  # reset, timeout, IncompleteRead
                        raise _Interrupted() from exc
                    if not chunk:
                        break
                    sink.write(chunk)
                    received += len(chunk)
                    bar.update(len(chunk))
            finally:  # keep what arrived so the next attempt resumes from it
                sink.flush()
                os.fsync(sink.fileno())
        if body_length is not None and received < body_length:
            raise _Interrupted()
    return total


def _verify_and_install(
    url: str,
    part: Path,
    dest: Path,
    *,
    total: int | None,
    sha256: str | None,
    expected_size: int | None,
    validate: Callable[[Path], None] | None,
) -> None:
    """Check size, hash and content of the finished part file, atomically rename it to `dest` and
    record its sha256 beside it."""
    size = part.stat().st_size
    for wanted, source in ((total, "the server announced"), (expected_size, "expected")):
        if wanted is not None and size != wanted:
            _remove_part(part)
            raise UserError(
                f"download of {url} is corrupt: got {size} bytes but {wanted} were {source}; deleted it, run again to retry"
            )
    if total is None and expected_size is None and sha256 is None:
        _remove_part(part)
        raise UserError(
            f"download of {url} cannot be verified: the server sent no Content-Length and no size or sha256 is "
            f"known for the file, so a cut-short transfer cannot be told from a whole one; deleted the {size} bytes "
            f"received. Fetch the file by hand and place it at {dest}"
        )
    digest = file_digest(part)[1]
    if sha256 is not None and not digest.startswith(sha256):
        _remove_part(part)
        raise UserError(
            f"download of {url} is corrupt: sha256 {digest[:16]}... does not match the expected "
            f"{sha256[:16]}...; deleted it, run again to retry, or check that the URL is right"
        )
    if validate is not None:
        try:
            validate(part)
        except (UserError, ValueError) as exc:
            _remove_part(part)
            raise UserError(f"download of {url} is not the expected file and was deleted: {exc}") from None
    os.replace(part, dest)
    _part_record_path(part).unlink(missing_ok=True)
    fsync_directory(dest.parent)
    _record_sha256(dest, digest)
