"""Resumable, verified downloads into the local cache (checkpoints, Inception weights).

A file only ever appears at its destination after it is complete and verified: bytes stream into
`NAME.part` beside it, an interrupted transfer resumes from that part file with an HTTP Range request,
and the part file is fsynced and renamed into place once its size and sha256 check out.
"""
from __future__ import annotations

import http.client
import os
import re
import urllib.error
import urllib.request
from pathlib import Path

from tqdm.auto import tqdm

from guided_diffusion.atomic import file_digest, fsync_directory
from guided_diffusion.errors import UserError

__all__ = ["cache_dir", "download"]

_CHUNK_BYTES = 1 << 20
_ATTEMPTS = 5  # connection cuts tolerated within one call; each retry resumes where the last stopped
_CONTENT_RANGE = re.compile(r"bytes\s+(\d+)-(\d+)/(\d+|\*)")
_USER_AGENT = "guided-diffusion-downloader"


def cache_dir() -> Path:
    """Directory for downloaded files: `$GUIDED_DIFFUSION_CACHE`, else `~/.cache/guided-diffusion`."""
    override = os.environ.get("GUIDED_DIFFUSION_CACHE")
    return Path(override).expanduser() if override else Path.home() / ".cache" / "guided-diffusion"


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
) -> Path:
    """Download `url` to `dest` and return `dest`.

    An existing `dest` is returned as is (only complete, verified files are ever moved there; a file
    placed there by hand is trusted). `sha256` is the expected hex digest, or a prefix of it of at
    least 8 digits (as carried in file names like `...-6726825d.pth`). `expected_size` must be exact.
    Raises `UserError` when the server fails, the connection keeps dropping (the part file is kept, so
    running again resumes), or the result has the wrong size or hash (the part file is deleted).
    """
    dest = Path(dest)
    if sha256 is not None:
        sha256 = sha256.lower()
        if len(sha256) < 8 or not re.fullmatch(r"[0-9a-f]+", sha256):
            raise ValueError(f"sha256 must be a hex digest or a prefix of at least 8 hex digits, got {sha256!r}")
    if dest.exists():
        if expected_size is not None and dest.stat().st_size != expected_size:
            raise UserError(
                f"{dest} has {dest.stat().st_size} bytes but {expected_size} are expected; delete it and run again"
            )
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")

    restarted = False
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
        except _RestartNeeded:
            part.unlink(missing_ok=True)
            if restarted:
                raise UserError(f"server for {url} rejected the download range twice; try again later") from None
            restarted = True

    _verify_and_install(url, part, dest, total=total, sha256=sha256, expected_size=expected_size)
    return dest


def _fetch_into(url: str, part: Path, *, timeout: float, progress: bool, label: str) -> int | None:
    """One HTTP request appending to `part` (resuming if it exists); returns the full size if known.

    Raises `_Interrupted` on a short body, `_RestartNeeded` when the resume range is unusable, and
    `UserError` on HTTP/network errors.
    """
    offset = part.stat().st_size if part.exists() else 0
    headers = {"User-Agent": _USER_AGENT}
    if offset:
        headers["Range"] = f"bytes={offset}-"
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
            match = _CONTENT_RANGE.match(response.headers.get("Content-Range", ""))
            if match is None or int(match.group(1)) != offset:
                raise _RestartNeeded()
            total = int(match.group(3)) if match.group(3) != "*" else None
            mode = "ab"
        else:  # 200: a fresh body (the server may have ignored our Range header)
            offset = 0
            total = body_length
            mode = "wb"
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
    url: str, part: Path, dest: Path, *, total: int | None, sha256: str | None, expected_size: int | None
) -> None:
    """Check size and hash of the finished part file and atomically rename it to `dest`."""
    size = part.stat().st_size
    for wanted, source in ((total, "the server announced"), (expected_size, "expected")):
        if wanted is not None and size != wanted:
            part.unlink(missing_ok=True)
            raise UserError(
                f"download of {url} is corrupt: got {size} bytes but {wanted} were {source}; run again to retry"
            )
    if sha256 is not None:
        digest = file_digest(part)[1]
        if not digest.startswith(sha256):
            part.unlink(missing_ok=True)
            raise UserError(
                f"download of {url} is corrupt: sha256 {digest[:16]}... does not match the expected "
                f"{sha256[:16]}...; run again to retry, or check that the URL is right"
            )
    os.replace(part, dest)
    fsync_directory(dest.parent)
