"""guided_diffusion.download against a local HTTP server on 127.0.0.1 that serves bytes made here."""
from __future__ import annotations

import hashlib
import http.server
import threading
from pathlib import Path

import pytest

from guided_diffusion.download import cache_dir, download
from guided_diffusion.errors import UserError

PAYLOAD = bytes(range(256)) * 4096 + b"tail"  # 1 MiB + 4 bytes: spans several read chunks
PAYLOAD_SHA256 = hashlib.sha256(PAYLOAD).hexdigest()


class _Handler(http.server.BaseHTTPRequestHandler):
    """Serves PAYLOAD at any path. Behaviour comes from the server's `mode`; every request is logged."""

    def log_message(self, *args) -> None:  # keep pytest output clean
        pass

    def do_GET(self) -> None:  # noqa: N802 (http.server naming)
        server = self.server
        server.requests.append(dict(self.headers))
        mode = server.mode
        if mode == "error500":
            self.send_error(500, "boom")
            return
        body, start = PAYLOAD, 0
        range_header = self.headers.get("Range")
        honour_range = mode in ("complete", "cut_once") and range_header is not None
        if honour_range:
            start = int(range_header.removeprefix("bytes=").split("-")[0])
            body = PAYLOAD[start:]
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(PAYLOAD) - 1}/{len(PAYLOAD)}")
        else:
            self.send_response(200)
        if mode == "wrong_bytes":
            body = b"x" * len(body)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        cut = (mode == "cut_once" and len(server.requests) == 1) or mode == "cut_always"
        if cut:  # announce the full body, send a third of it, drop the connection
            self.wfile.write(body[: len(body) // 3])
            self.wfile.flush()
            self.close_connection = True
            return
        self.wfile.write(body)


@pytest.fixture()
def server():
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    httpd.mode = "complete"
    httpd.requests = []
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
    thread.start()
    try:
        yield httpd
    finally:
        httpd.shutdown()
        httpd.server_close()


def _url(httpd) -> str:
    return f"http://127.0.0.1:{httpd.server_address[1]}/weights.bin"


def _part(dest: Path) -> Path:
    return dest.with_name(dest.name + ".part")


def test_cache_dir_honours_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("GUIDED_DIFFUSION_CACHE", str(tmp_path / "c"))
    assert cache_dir() == tmp_path / "c"
    monkeypatch.delenv("GUIDED_DIFFUSION_CACHE")
    assert cache_dir() == Path.home() / ".cache" / "guided-diffusion"


def test_complete_download_is_verified_and_installed(server, tmp_path):
    dest = tmp_path / "sub" / "weights.bin"
    result = download(_url(server), dest, sha256=PAYLOAD_SHA256, expected_size=len(PAYLOAD), progress=False)
    assert result == dest
    assert dest.read_bytes() == PAYLOAD
    assert not _part(dest).exists()
    # A second call finds the installed file and makes no request.
    download(_url(server), dest, sha256=PAYLOAD_SHA256, progress=False)
    assert len(server.requests) == 1


def test_sha256_prefix_is_accepted(server, tmp_path):
    dest = tmp_path / "weights.bin"
    download(_url(server), dest, sha256=PAYLOAD_SHA256[:8], progress=False)
    assert dest.read_bytes() == PAYLOAD


def test_resume_after_cut_connection_uses_range(server, tmp_path):
    server.mode = "cut_once"
    dest = tmp_path / "weights.bin"
    download(_url(server), dest, sha256=PAYLOAD_SHA256, progress=False)
    assert dest.read_bytes() == PAYLOAD
    assert len(server.requests) == 2
    assert "Range" not in server.requests[0]
    assert server.requests[1]["Range"] == f"bytes={len(PAYLOAD) // 3}-"


def test_resume_from_part_file_left_by_an_earlier_run(server, tmp_path):
    dest = tmp_path / "weights.bin"
    _part(dest).write_bytes(PAYLOAD[:1000])
    download(_url(server), dest, sha256=PAYLOAD_SHA256, progress=False)
    assert dest.read_bytes() == PAYLOAD
    assert server.requests[0]["Range"] == "bytes=1000-"


def test_server_ignoring_range_restarts_from_zero(server, tmp_path):
    server.mode = "ignore_range"
    dest = tmp_path / "weights.bin"
    _part(dest).write_bytes(b"\0" * 1000)  # stale bytes that must not end up in the result
    download(_url(server), dest, sha256=PAYLOAD_SHA256, progress=False)
    assert server.requests[0]["Range"] == "bytes=1000-"
    assert dest.read_bytes() == PAYLOAD


def test_connection_that_keeps_dropping_keeps_part_for_later(server, tmp_path):
    server.mode = "cut_always"
    dest = tmp_path / "weights.bin"
    with pytest.raises(UserError, match="run the same command again to resume"):
        download(_url(server), dest, progress=False)
    assert not dest.exists()
    assert 0 < _part(dest).stat().st_size < len(PAYLOAD)
    server.mode = "complete"
    download(_url(server), dest, sha256=PAYLOAD_SHA256, progress=False)
    assert dest.read_bytes() == PAYLOAD


def test_size_mismatch_leaves_no_file(server, tmp_path):
    dest = tmp_path / "weights.bin"
    with pytest.raises(UserError, match="corrupt.*bytes"):
        download(_url(server), dest, expected_size=len(PAYLOAD) + 1, progress=False)
    assert not dest.exists()
    assert not _part(dest).exists()


def test_sha256_mismatch_leaves_no_file(server, tmp_path):
    server.mode = "wrong_bytes"
    dest = tmp_path / "weights.bin"
    with pytest.raises(UserError, match="sha256"):
        download(_url(server), dest, sha256=PAYLOAD_SHA256, progress=False)
    assert not dest.exists()
    assert not _part(dest).exists()


def test_http_error_is_one_line_user_error(server, tmp_path):
    server.mode = "error500"
    dest = tmp_path / "weights.bin"
    with pytest.raises(UserError, match="HTTP 500") as info:
        download(_url(server), dest, progress=False)
    assert "\n" not in str(info.value)
    assert not dest.exists()
    assert not _part(dest).exists()


def test_unreachable_server_is_user_error(tmp_path):
    probe = http.server.HTTPServer(("127.0.0.1", 0), _Handler)
    port = probe.server_address[1]
    probe.server_close()  # nothing listens on this port now
    dest = tmp_path / "weights.bin"
    with pytest.raises(UserError, match="cannot reach"):
        download(f"http://127.0.0.1:{port}/x", dest, progress=False, timeout=5)
    assert not dest.exists()


def test_bad_sha256_argument_is_rejected(tmp_path):
    with pytest.raises(ValueError):
        download("http://127.0.0.1:1/x", tmp_path / "x", sha256="abc")
