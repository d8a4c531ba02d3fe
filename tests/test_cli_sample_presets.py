"""--preset, `presets` and `download` against a local HTTP server on 127.0.0.1 (never the internet),
serving tiny checkpoints registered as presets for the test."""
from __future__ import annotations

import http.server
import threading

import numpy as np
import pytest
from helpers import CLASSIFIER, COND, make_checkpoints, sample

from guided_diffusion.cli import main
from guided_diffusion.config import presets as presets_module
from guided_diffusion.config.presets import PRESETS, Preset
from guided_diffusion.sampling import load_pipeline

TINY_CLASSIFIER = f"--image_size 8 {CLASSIFIER} --num_classes 10"


pytestmark = pytest.mark.usefixtures("one_thread")


class _Handler(http.server.BaseHTTPRequestHandler):
    def log_message(self, *args) -> None:
        pass

    def do_GET(self) -> None:
        self.server.requests.append(self.path)
        body = self.server.files.get(self.path.rsplit("/", 1)[-1])
        if self.server.fail or body is None:
            self.send_error(500 if self.server.fail else 404)
            return
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    paths = make_checkpoints(tmp_path_factory.mktemp("served"))
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    httpd.files = {"tiny_diffusion.pt": paths["cond"].read_bytes(), "tiny_classifier.pt": paths["classifier"].read_bytes()}
    httpd.requests, httpd.fail = [], False
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
    thread.start()
    yield httpd, paths
    httpd.shutdown()
    httpd.server_close()


@pytest.fixture()
def tiny_presets(served, tmp_path, monkeypatch):
    """Two presets served locally, an empty cache, and a fresh request log."""
    httpd, paths = served
    httpd.requests.clear()
    httpd.fail = False
    monkeypatch.setattr(presets_module, "BASE_URL", f"http://127.0.0.1:{httpd.server_address[1]}/diffusion/jul-2021")
    monkeypatch.setenv("GUIDED_DIFFUSION_CACHE", str(tmp_path / "cache"))
    monkeypatch.setitem(PRESETS, "tiny_diffusion", Preset(
        "tiny_diffusion", "diffusion", 8, COND, 10**5, classifier="tiny_classifier", classifier_scale=2.0,
        timestep_respacing="3"))
    monkeypatch.setitem(PRESETS, "tiny_classifier", Preset("tiny_classifier", "classifier", 8, TINY_CLASSIFIER, 10**5))
    return httpd, paths, tmp_path / "cache"


def table_row(text: str, name: str) -> list[str]:
    [line] = [line for line in text.splitlines() if line.startswith(name + " ")]
    return line.split()


def test_presets_table_and_download(tiny_presets, capsys):
    httpd, paths, cache = tiny_presets
    assert main(["presets"]) == 0
    text = capsys.readouterr().out
    assert table_row(text, "tiny_diffusion")[1:3] == ["diffusion", "8"] and table_row(text, "tiny_diffusion")[-1] == "no"
    assert table_row(text, "64x64_diffusion")[-1] in ("yes", "no") and "lsun_horse_nodropout" in text
    (cache).mkdir()
    (cache / "tiny_classifier.pt.part").write_bytes(b"half")
    assert table_row((main(["presets"]), capsys.readouterr().out)[1], "tiny_classifier")[-1] == "partial"

    assert main(["download", "tiny_diffusion", "tiny_classifier"]) == 0
    assert (cache / "tiny_diffusion.pt").read_bytes() == paths["cond"].read_bytes()
    assert (cache / "tiny_classifier.pt").read_bytes() == paths["classifier"].read_bytes()
    main(["presets"])
    assert table_row(capsys.readouterr().out, "tiny_diffusion")[-1] == "yes"
    requests = len(httpd.requests)
    assert main(["download", "tiny_diffusion"]) == 0 and len(httpd.requests) == requests  # cached: no request


def test_classifier_sample_by_preset_uses_the_recipe_and_explicit_flags_win(tiny_presets, tmp_path):
    _, paths, cache = tiny_presets
    by_preset, labels = sample(tmp_path, "p", "classifier_sample", "--preset tiny_diffusion", "--num_samples", "2",
                               "--seed", "0")
    assert (cache / "tiny_diffusion.pt").is_file() and (cache / "tiny_classifier.pt").is_file()
    explicit, explicit_labels = sample(
        tmp_path, "e", "classifier_sample", f"{COND} {CLASSIFIER}", "--model_path", str(paths["cond"]),
        "--classifier_path", str(paths["classifier"]), "--classifier_scale", "2.0", "--timestep_respacing", "3",
        "--num_samples", "2", "--seed", "0")
    assert np.array_equal(by_preset, explicit) and np.array_equal(labels, explicit_labels)
    unguided, _ = sample(tmp_path, "u", "classifier_sample", "--preset tiny_diffusion --classifier_scale 0",
                         "--num_samples", "2", "--seed", "0")
    assert not np.array_equal(unguided, by_preset)


def test_python_api_gives_the_cli_samples(tiny_presets, tmp_path):
    cli, cli_labels = sample(tmp_path, "p", "classifier_sample", "--preset tiny_diffusion", "--num_samples", "3",
                             "--seed", "5", "--sampler", "dpm++2m", "--steps", "4")
    pipe = load_pipeline("tiny_diffusion", classifier="auto", device="cpu", progress=False)
    images, labels = pipe.sample(3, sampler="dpm++2m", steps=4, seed=5, return_labels=True)
    assert images.dtype == np.uint8 and images.shape == (3, 8, 8, 3)
    assert np.array_equal(images, cli) and np.array_equal(labels, cli_labels)
    fixed = pipe.sample(2, classes=[1, 2], sampler="ddim", steps=3, seed=5, guidance_scale=0.0)
    assert fixed.shape == (2, 8, 8, 3)


def test_failed_download_is_a_one_line_error_and_leaves_no_checkpoint(tiny_presets, tmp_path, capsys):
    httpd, _, cache = tiny_presets
    httpd.fail = True
    assert main(["download", "tiny_diffusion"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error:") and "HTTP 500" in err and "Traceback" not in err
    assert main(["image_sample", "--preset", "tiny_diffusion", "--out_dir", str(tmp_path / "o")]) == 2
    assert "HTTP 500" in capsys.readouterr().err
    assert not (cache / "tiny_diffusion.pt").exists()
    assert main(["download", "no_such_model"]) == 2
    assert "tiny_diffusion" in capsys.readouterr().err  # the error lists the choices
    assert main(["download"]) == 2


def test_explicit_model_path_overrides_the_preset_checkpoint(tiny_presets, tmp_path):
    httpd, paths, cache = tiny_presets
    images, _ = sample(tmp_path, "o", "image_sample", "--preset tiny_diffusion", "--model_path", str(paths["cond"]),
                       "--num_samples", "1", "--steps", "2")
    assert images.shape == (1, 8, 8, 3)
    assert not httpd.requests and not (cache / "tiny_diffusion.pt").exists()
