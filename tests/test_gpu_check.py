"""benchmarks/gpu_check.py in its tiny mode (CPU, tiny networks of the released layouts): every path of the
GPU check runs, the JSON holds what was measured, the table is printed, and a budget that runs out stops
the check with what it had. So the script the GPU day depends on cannot rot unnoticed."""
from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu_check.py"

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def gpu_check():
    spec = importlib.util.spec_from_file_location("gpu_check", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules["gpu_check"] = module
    spec.loader.exec_module(module)
    return module


def test_tiny_check_measures_every_path(gpu_check, tmp_path, capsys):
    out = tmp_path / "gpu_check.json"
    assert gpu_check.main(["--tiny", "--repeats", "1", "--out", str(out)]) == 0
    data = json.loads(out.read_text())
    assert data["finished"] and list(data["paths"]) == list(gpu_check.PATHS)
    for name, entry in data["paths"].items():
        assert "error" not in entry and "skipped" not in entry, (name, entry)
        assert entry["images_per_s"] > 0 and len(entry["runs"]) == 1
        # The finite check does not stop the device at every step (2 steps here).
        assert entry["host_syncs_per_step"] < 1, name
    paths = data["paths"]
    assert paths["original fp16"]["psnr_vs_original_db"] == float("inf")
    assert paths["fp16"]["psnr_vs_original_db"] > 40 and paths["bf16"]["psnr_vs_original_db"] > 30
    # Tiny mode compiles with the tracing-only backend: the same numbers as the bf16 path.
    assert paths["bf16 + compile"]["psnr_vs_original_db"] == pytest.approx(paths["bf16"]["psnr_vs_original_db"], abs=0.5)
    for name in ("original fp16", "fp16", "bf16"):
        assert paths[name]["largest_batch"]["fits"] == 2 and paths[name]["largest_batch"]["capped"]
    sections = set(data["sections_s"])
    assert {"build networks", "speed", "host syncs", "largest batch"} <= sections
    assert any(name.startswith("compile") for name in sections)
    printed = capsys.readouterr().out
    assert "| path | images/s |" in printed and all(f"| {name} |" in printed for name in gpu_check.PATHS)


def test_a_spent_budget_stops_the_check_and_keeps_what_it_measured(gpu_check, tmp_path, capsys):
    out = tmp_path / "gpu_check.json"
    assert gpu_check.main(["--tiny", "--budget", "0.3", "--out", str(out)]) == 0
    data = json.loads(out.read_text())
    assert not data["finished"] and any("budget of 0.3 s exhausted" in note for note in data["notes"])
    assert "| path | images/s |" in capsys.readouterr().out
