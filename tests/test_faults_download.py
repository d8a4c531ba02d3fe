"""Fault injection for `guided-diffusion download`/`presets` and --preset: a local HTTP server on
127.0.0.1 that serves the wrong file, cuts files short without a Content-Length, or sits behind
GUIDED_DIFFUSION_MIRROR; later corruption of an installed file; an unusable cache directory."""
from __future__ import annotations

import http.server
import pickle
import threading
from pathlib import Path

import pytest
from helpers import CLASSIFIER, make_checkpoints, one_line_error

from guided_diffusion.cli import main
from guided_diffusion.config.presets import PRESETS, Preset

TINY_CLASSIFIER = f"--image_size 8 {CLASSIFIER} --num_classes 10"


class _Handler(http.server.BaseHTTPRequestHandler):
    def log_message(self, *args) -> None:
        pass

    def do_GET(self) -> None:
        self.server.requests.append(self.path)
        body = self.server.files.get(self.path)
        if body is None:
            self.send_error(404)
            return
        self.send_response(200)
        if self.server.truncate_without_length:
            self.close_connection = True
            self.end_headers()
            self.wfile.write(body[: len(body) // 2])
            return
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory) -> dict[str, Path]:
    return make_checkpoints(tmp_path_factory.mktemp("ckpt"))


@pytest.fixture()
def mirror(checkpoints, tmp_path, monkeypatch):
    """A mirror on 127.0.0.1 (GUIDED_DIFFUSION_MIRROR) with a tiny classifier preset, and an empty cache."""
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    httpd.requests, httpd.truncate_without_length = [], False
    httpd.files = {"/mirror/tiny_classifier.pt": checkpoints["classifier"].read_bytes()}
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
    thread.start()
    monkeypatch.setenv("GUIDED_DIFFUSION_MIRROR", f"http://127.0.0.1:{httpd.server_address[1]}/mirror/")
    monkeypatch.setenv("GUIDED_DIFFUSION_CACHE", str(tmp_path / "cache"))
    monkeypatch.setitem(PRESETS, "tiny_classifier", Preset("tiny_classifier", "classifier", 8, TINY_CLASSIFIER, 10**5))
    yield httpd, tmp_path / "cache"
    httpd.shutdown()
    httpd.server_close()


def _cache_files(cache: Path) -> list[str]:
    return sorted(p.name for p in cache.iterdir() if not p.name.endswith(".lock")) if cache.is_dir() else []


def test_mirror_serves_a_good_file_which_installs_with_its_sha256_verified_later(mirror, checkpoints, capsys):
    httpd, cache = mirror
    assert main(["download", "tiny_classifier"]) == 0
    assert httpd.requests == ["/mirror/tiny_classifier.pt"]
    assert _cache_files(cache) == ["tiny_classifier.pt", "tiny_classifier.pt.sha256"]
    assert (cache / "tiny_classifier.pt").read_bytes() == checkpoints["classifier"].read_bytes()
    assert main(["presets", "--verify"]) == 0
    line = next(row for row in capsys.readouterr().out.splitlines() if row.startswith("tiny_classifier "))
    assert line.split()[-1] == "verified"
    # Damage one byte: every later use notices, and --verify reports it.
    data = bytearray((cache / "tiny_classifier.pt").read_bytes())
    data[len(data) // 2] ^= 0xFF
    (cache / "tiny_classifier.pt").write_bytes(bytes(data))
    assert main(["download", "tiny_classifier"]) == 2
    one_line_error(capsys, "does not match the recorded sha256")
    assert main(["presets", "--verify"]) == 2
    one_line_error(capsys, "failed verification", "tiny_classifier")
    assert len(httpd.requests) == 1


def test_wrong_file_served_for_a_released_name_is_deleted(mirror, checkpoints, capsys):
    httpd, cache = mirror
    httpd.files["/mirror/64x64_classifier.pt"] = checkpoints["classifier"].read_bytes()  # a real, but wrong, net
    assert main(["download", "64x64_classifier"]) == 2
    one_line_error(capsys, "not the expected file and was deleted", "layout of the released 64x64_classifier")
    assert _cache_files(cache) == []


def test_truncated_file_without_content_length_is_refused(mirror, capsys):
    httpd, cache = mirror
    httpd.truncate_without_length = True
    assert main(["download", "tiny_classifier"]) == 2
    one_line_error(capsys, "no Content-Length")
    assert _cache_files(cache) == []


def test_stale_part_of_another_file_is_not_installed(mirror, checkpoints, capsys):
    _, cache = mirror
    cache.mkdir()
    (cache / "tiny_classifier.pt.part").write_bytes(checkpoints["cond"].read_bytes()[:4000])
    assert main(["download", "tiny_classifier"]) == 0
    assert (cache / "tiny_classifier.pt").read_bytes() == checkpoints["classifier"].read_bytes()
    assert _cache_files(cache) == ["tiny_classifier.pt", "tiny_classifier.pt.sha256"]


class _Marker:
    """Unpickling this runs code: it creates the file named in its argument."""

    def __init__(self, path: str):
        self.path = path

    def __reduce__(self):
        return (Path.touch, (Path(self.path),))


def test_malicious_pickle_served_as_a_checkpoint_runs_nothing(mirror, tmp_path, capsys):
    httpd, cache = mirror
    marker = tmp_path / "pwned"
    httpd.files["/mirror/tiny_classifier.pt"] = pickle.dumps({"w": _Marker(str(marker))})
    assert main(["download", "tiny_classifier"]) == 2
    one_line_error(capsys, "deleted")
    assert not marker.exists() and _cache_files(cache) == []


@pytest.mark.parametrize("layout", ["file", "under_file"])
def test_cache_directory_that_is_a_file_is_one_line_naming_the_variable(layout, mirror, tmp_path, monkeypatch, capsys):
    blocker = tmp_path / "blocker"
    blocker.write_text("x")
    monkeypatch.setenv("GUIDED_DIFFUSION_CACHE", str(blocker if layout == "file" else blocker / "sub"))
    assert main(["download", "tiny_classifier"]) == 2
    one_line_error(capsys, "GUIDED_DIFFUSION_CACHE")


COMPAT = Path(__file__).parent / "compat"


@pytest.mark.parametrize("name", sorted(p.stem for p in COMPAT.glob("*.json")))
def test_layout_check_accepts_each_released_layout_and_nothing_else(name, tmp_path):
    """The released files' keys and shapes (recorded from the original's networks, tests/compat) pass the
    check that guards installs; one missing key or one other shape fails it. Meta tensors keep the files tiny."""
    import json

    import torch

    from guided_diffusion.runtime.errors import UserError
    from guided_diffusion.weights.checkpoints import check_preset_file

    layout = json.loads((COMPAT / f"{name}.json").read_text())["keys"]
    state = {key: torch.empty(shape, device="meta") for key, shape in layout}
    torch.save(state, tmp_path / "exact.pt")
    check_preset_file(PRESETS[name], tmp_path / "exact.pt")
    first = layout[0][0]
    torch.save({k: v for k, v in state.items() if k != first}, tmp_path / "missing.pt")
    with pytest.raises(UserError, match="1 missing keys"):
        check_preset_file(PRESETS[name], tmp_path / "missing.pt")
    torch.save({**state, first: torch.empty(3, device="meta")}, tmp_path / "reshaped.pt")
    with pytest.raises(UserError, match="1 tensors of another shape"):
        check_preset_file(PRESETS[name], tmp_path / "reshaped.pt")
