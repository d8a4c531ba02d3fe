"""`guided-diffusion demo` on a reduced recipe: the whole study runs, guidance raises the judge's accuracy,
a seed fixes metrics.json, and the printed classifier_sample command redraws the study's samples."""
from __future__ import annotations

import io
import json
import shlex
import sys
from contextlib import redirect_stdout
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

pytest.importorskip("sklearn")
pytest.importorskip("matplotlib")

from guided_diffusion import cli, demo
from guided_diffusion.demo.report import GRID_GAP, GRID_ZOOM, write_grid
from guided_diffusion.demo.settings import StudySettings
from guided_diffusion.demo.train import TrainSpec

# Minutes of the real recipe cut to seconds: enough for guidance to show, far too little for good digits.
REDUCED = StudySettings(
    unet_training=TrainSpec(steps=150, batch_size=64, lr=2e-3, ema_rate=0.98),
    guide_training=TrainSpec(steps=300, batch_size=64, lr=2e-3),
    judge_training=TrainSpec(steps=200, batch_size=64, lr=2e-3, weight_decay=0.05, noised=False),
    samples_per_class=6,
    sampling_steps=8,
    sample_batch_size=20,
    scales=(0.0, 2.0, 8.0),
)
# Only for checking reproducibility: every stage a handful of steps.
TINY = REDUCED.replace(
    unet_training=TrainSpec(steps=6, batch_size=16, lr=2e-3, ema_rate=0.9),
    guide_training=TrainSpec(steps=6, batch_size=16, lr=2e-3),
    judge_training=TrainSpec(steps=6, batch_size=16, lr=2e-3, noised=False),
    samples_per_class=2,
    sampling_steps=3,
    scales=(0.0, 4.0),
)
SETTING_KEYS = {"sampler", "scale", "accuracy", "fid", "precision", "recall"}


def run_demo_cli(out_dir: Path, seed: int, settings: StudySettings, *extra: str) -> int:
    """`guided-diffusion demo --quick` with the quick recipe replaced by `settings`."""
    threads = torch.get_num_threads()
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(demo, "quick_settings", lambda: settings)
        try:
            return cli.main(["demo", "--out_dir", str(out_dir), "--seed", str(seed), "--quick", "--progress", "False", *extra])
        finally:
            torch.set_num_threads(threads)  # the demo pins its own thread count


@pytest.fixture(scope="module")
def reduced_run(tmp_path_factory):
    out_dir = tmp_path_factory.mktemp("demo")
    printed = io.StringIO()
    with redirect_stdout(printed):
        assert run_demo_cli(out_dir, 0, REDUCED) == 0
    return out_dir, printed.getvalue()


def test_guidance_raises_the_judges_accuracy(reduced_run):
    out_dir, _ = reduced_run
    metrics = json.loads((out_dir / "metrics.json").read_text())
    for sampler in REDUCED.samplers:
        accuracy = {row["scale"]: row["accuracy"] for row in metrics["settings"] if row["sampler"] == sampler}
        assert list(accuracy) == list(REDUCED.scales)
        assert accuracy[0.0] <= 0.4, f"{sampler}: an unguided unconditional model should hit the class by chance only"
        assert accuracy[8.0] >= accuracy[2.0] >= accuracy[0.0], f"{sampler}: {accuracy}"
        assert accuracy[8.0] >= accuracy[0.0] + 0.2, f"{sampler}: {accuracy}"


def test_the_run_writes_checkpoints_grids_plot_metrics_and_report(reduced_run):
    out_dir, printed = reduced_run
    metrics = json.loads((out_dir / "metrics.json").read_text())
    assert set(metrics) == {"settings", "seconds"} and metrics["seconds"] > 0
    assert [(row["sampler"], row["scale"]) for row in metrics["settings"]] == [
        (sampler, scale) for sampler in REDUCED.samplers for scale in REDUCED.scales
    ]
    for row in metrics["settings"]:
        assert set(row) == SETTING_KEYS
        assert 0 <= row["accuracy"] <= 1 and 0 <= row["precision"] <= 1 and 0 <= row["recall"] <= 1 and row["fid"] >= 0

    for name in ("diffusion", "classifier", "judge"):
        run_dir = out_dir / "checkpoints" / name
        assert (run_dir / "config.json").is_file() and list(run_dir.glob("train_state*.pt")), name
    assert list((out_dir / "checkpoints" / "diffusion").glob("ema_*.pt"))

    grid_height = 10 * (8 * GRID_ZOOM + GRID_GAP) + GRID_GAP
    for sampler in ("ddim", "dpmpp2m"):
        for scale in REDUCED.scales:
            stem = f"{sampler}_scale{scale:g}"
            with Image.open(out_dir / "grids" / f"{stem}.png") as grid:
                assert grid.size[1] == grid_height  # one row per class
            with np.load(out_dir / "samples" / f"{stem}.npz") as data:
                assert data["arr_0"].shape == (REDUCED.num_samples, 8, 8, 3) and data["arr_0"].dtype == np.uint8
                assert np.bincount(data["arr_1"]).tolist() == [REDUCED.samples_per_class] * 10
    with Image.open(out_dir / "guidance_plot.png") as plot:
        assert plot.format == "PNG" and plot.size[0] > plot.size[1]

    report = (out_dir / "report.md").read_text()
    assert "guidance_plot.png" in report and "grids/ddim_scale8.png" in report and "classifier_sample" in report
    assert "| sampler | scale | accuracy | FID | precision | recall |" in printed
    assert "guided-diffusion classifier_sample " in printed


def test_the_printed_command_redraws_the_studys_samples(reduced_run):
    out_dir, printed = reduced_run
    line = next(line.strip() for line in printed.splitlines() if line.strip().startswith("guided-diffusion classifier_sample"))
    args = shlex.split(line)
    assert cli.main(args[1:]) == 0
    scale = args[args.index("--classifier_scale") + 1]
    with np.load(out_dir / "samples" / f"dpmpp2m_scale{scale}.npz") as study, \
            np.load(out_dir / "cli_samples" / f"samples_{REDUCED.num_samples}x8x8x3.npz") as redrawn:
        np.testing.assert_array_equal(redrawn["arr_1"], study["arr_1"])
        np.testing.assert_array_equal(redrawn["arr_0"], study["arr_0"])


def test_the_same_seed_gives_the_same_metrics(tmp_path, capsys):
    for name, seed in (("first", 3), ("again", 3), ("other", 4)):
        assert run_demo_cli(tmp_path / name, seed, TINY) == 0
    capsys.readouterr()
    first, again, other = (json.loads((tmp_path / name / "metrics.json").read_text()) for name in ("first", "again", "other"))
    assert first["settings"] == again["settings"]  # everything but the wall-clock seconds
    assert first["settings"] != other["settings"]
    for stem in ("ddim_scale4", "dpmpp2m_scale0"):
        with np.load(tmp_path / "first" / "samples" / f"{stem}.npz") as a, np.load(tmp_path / "again" / "samples" / f"{stem}.npz") as b:
            np.testing.assert_array_equal(a["arr_0"], b["arr_0"])


def test_grid_has_one_row_per_class(tmp_path):
    labels = np.array([3, 0, 3, 1, 0, 3], dtype=np.int64)
    images = np.stack([np.full((8, 8, 3), 40 * i, dtype=np.uint8) for i in range(len(labels))])
    path = write_grid(tmp_path / "grid.png", images, labels, num_classes=4)
    with Image.open(path) as grid:
        sheet = np.asarray(grid.convert("RGB"))
    step = 8 * GRID_ZOOM + GRID_GAP
    assert sheet.shape[:2] == (4 * step + GRID_GAP, 3 * step + GRID_GAP)

    def cell(row: int, col: int) -> int:
        top, left = GRID_GAP + row * step, GRID_GAP + col * step
        block = sheet[top : top + 8 * GRID_ZOOM, left : left + 8 * GRID_ZOOM]
        assert (block == block[0, 0]).all()
        return int(block[0, 0, 0])

    # Row c holds the samples meant for class c, in sample order.
    assert [cell(0, 0), cell(0, 1)] == [40, 160]
    assert cell(1, 0) == 120
    assert [cell(3, 0), cell(3, 1), cell(3, 2)] == [0, 80, 200]


def test_missing_scikit_learn_names_the_install_command(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "sklearn", None)
    monkeypatch.setitem(sys.modules, "sklearn.datasets", None)
    threads = torch.get_num_threads()
    try:
        assert cli.main(["demo", "--out_dir", str(tmp_path), "--quick"]) == 2
    finally:
        torch.set_num_threads(threads)
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "[demo]" in err and len(err.splitlines()) == 1


def test_negative_seed_is_a_one_line_error(tmp_path, capsys):
    assert cli.main(["demo", "--out_dir", str(tmp_path), "--seed", "-1"]) == 2
    assert capsys.readouterr().err.strip() == "error: --seed must be >= 0, got -1"


def _tree(directory: Path) -> dict[str, bytes]:
    return {str(p.relative_to(directory)): p.read_bytes() for p in sorted(directory.rglob("*")) if p.is_file()}


def test_a_rerun_into_a_previous_run_is_refused_and_keeps_every_file(tmp_path, capsys):
    out_dir = tmp_path / "study"
    assert run_demo_cli(out_dir, 0, TINY) == 0
    before = _tree(out_dir)
    assert any(name.startswith("checkpoints/diffusion/ema_") for name in before)
    capsys.readouterr()
    assert run_demo_cli(out_dir, 1, TINY) == 2
    line = capsys.readouterr().err.strip()
    assert line.startswith(f"error: --out_dir {out_dir} is not empty (") and "--overwrite" in line and "\n" not in line
    assert _tree(out_dir) == before  # nothing deleted, nothing rewritten
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(demo, "quick_settings", lambda: TINY)
        threads = torch.get_num_threads()
        try:
            assert cli.main(["demo", "--out_dir", str(out_dir), "--seed", "1", "--quick", "--progress", "False",
                             "--overwrite"]) == 0
        finally:
            torch.set_num_threads(threads)
    assert json.loads((out_dir / "metrics.json").read_text()) != json.loads(before["metrics.json"])


def test_a_stopped_run_says_how_to_run_it_again(tmp_path, capsys, monkeypatch):
    def stopped(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(demo, "run_study", stopped)
    threads = torch.get_num_threads()
    try:
        assert cli.main(["demo", "--out_dir", str(tmp_path / "x"), "--quick"]) == 130
    finally:
        torch.set_num_threads(threads)
    line = capsys.readouterr().err.strip()
    assert line.startswith("interrupted by SIGINT: files written so far are in ")
    assert line.endswith(f"run it again with: guided-diffusion demo --out_dir {tmp_path / 'x'} --quick --overwrite")


@pytest.mark.parametrize("argv, fragment", [
    (["--quik"], "unrecognized arguments: --quik (see `guided-diffusion demo --help`)"),
    (["--qui"], "unrecognized arguments: --qui"),  # no abbreviations
    (["--seed", "x"], "argument --seed: invalid int value: 'x'"),
])
def test_a_bad_flag_is_one_line(argv, fragment, tmp_path, capsys):
    assert cli.main(["demo", "--out_dir", str(tmp_path / "out"), *argv]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and fragment in err and "\n" not in err
    assert not (tmp_path / "out").exists()


def test_an_out_dir_under_a_file_is_one_line_and_writes_nothing(tmp_path, capsys):
    (tmp_path / "file").write_text("x")
    assert cli.main(["demo", "--out_dir", str(tmp_path / "file" / "out")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"error: --out_dir {tmp_path / 'file' / 'out'} cannot be used") and "\n" not in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file"]


def test_help_shows_the_defaults(capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "200")
    with pytest.raises(SystemExit) as exit_:
        cli.main(["demo", "--help"])
    assert exit_.value.code == 0
    out = capsys.readouterr().out
    assert "(default: demo_out)" in out and "(default: 0)" in out and "--overwrite" in out


def test_device_cpu_gives_the_default_run_of_a_machine_without_gpu(tmp_path, capsys):
    if torch.cuda.is_available():
        pytest.skip("the default run trains on the GPU here")
    assert run_demo_cli(tmp_path / "default", 5, TINY) == 0
    assert run_demo_cli(tmp_path / "cpu", 5, TINY, "--device", "cpu") == 0
    capsys.readouterr()
    default, cpu = (json.loads((tmp_path / name / "metrics.json").read_text()) for name in ("default", "cpu"))
    assert cpu["settings"] == default["settings"]


def test_an_unknown_device_is_one_line_and_writes_nothing(tmp_path, capsys):
    assert cli.main(["demo", "--out_dir", str(tmp_path / "none"), "--device", "quantum"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: --device 'quantum' is not a device name") and "\n" not in err
    assert not (tmp_path / "none").exists()
