"""Samples and metrics during training (`--sample_interval`, `--eval_interval`), the run report, and
the guarantee that watching a run does not change it: weights, optimizer state and losses are
bit-identical to a run without grids or metrics, also across `--resume auto`."""
from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import assert_same_checkpoint_set, load_checkpoint_file, make_blob_dataset, run_cli

from guided_diffusion.config import ClassifierConfig, config_to_dict
from guided_diffusion.weights.checkpoints import save_checkpoint, write_config_json

TINY = [
    "--image_size", "8", "--num_channels", "32", "--num_res_blocks", "1", "--channel_mult", "1",
    "--attention_resolutions", "", "--diffusion_steps", "50", "--num_workers", "0", "--lr", "1e-3",
    "--batch_size", "4", "--dropout", "0.1", "--ema_rate", "0.9,0.99", "--seed", "3", "--class_cond", "True",
    "--num_classes", "2", "--learn_sigma", "True", "--log_interval", "5", "--save_interval", "10", "--progress", "False",
]
STEPS = 20
TAGS = ("ema_0.9", "ema_0.99", "raw")


def _classifier_dir(root: Path) -> Path:
    """An untrained but fixed classifier checkpoint with its config.json: enough for a feature space."""
    torch.manual_seed(0)
    config = ClassifierConfig(image_size=8, classifier_width=32, classifier_depth=1, classifier_attention_resolutions="",
                              classifier_channel_mult="1", classifier_pool="adaptive", classifier_num_head_channels=32,
                              num_classes=2)
    root.mkdir(parents=True, exist_ok=True)
    save_checkpoint(root / "model000000.pt", config.build().state_dict())
    write_config_json(root, config_to_dict(config))
    return root / "model000000.pt"


@pytest.fixture(scope="module")
def setup(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("watch")
    return {
        "data": make_blob_dataset(root / "data", count=16, size=8),
        "heldout": make_blob_dataset(root / "heldout", count=12, size=8, seed=5),
        "classifier": _classifier_dir(root / "clf"),
        "root": root,
    }


def _watch_flags(setup: dict[str, Path]) -> list[str]:
    return ["--sample_interval", "5", "--sample_num", "6", "--sample_steps", "8", "--eval_interval", "10",
            "--eval_data_dir", str(setup["heldout"]), "--eval_num_samples", "12", "--eval_batch_size", "8",
            "--eval_features", f"classifier:{setup['classifier']}"]


def _train(setup: dict[str, Path], name: str, extra: list[str], iterations: int = STEPS) -> Path:
    run = setup["root"] / name
    result = run_cli(["image_train", "--data_dir", str(setup["data"]), "--log_dir", str(run), "--iterations", str(iterations),
                      *TINY, *extra])
    assert result.returncode == 0, result.stderr[-3000:] + result.stdout[-2000:]
    (run / "stdout.txt").write_text(result.stdout + result.stderr)
    return run


@pytest.fixture(scope="module")
def plain_run(setup) -> Path:
    return _train(setup, "plain", [])


@pytest.fixture(scope="module")
def watched_run(setup) -> Path:
    return _train(setup, "watched", _watch_flags(setup))


def _progress(run: Path) -> list[dict[str, str]]:
    with open(run / "progress.csv", newline="") as handle:
        return list(csv.DictReader(handle))


def test_watching_does_not_change_the_trajectory(plain_run, watched_run):
    for step in (10, 20):
        assert_same_checkpoint_set(plain_run, watched_run, step)
    plain, watched = _progress(plain_run), _progress(watched_run)
    assert [r["step"] for r in plain] == [r["step"] for r in watched] == ["5", "10", "15", "20"]
    for a, b in zip(plain, watched):
        for key in ("loss", "loss_q0", "loss_q3", "mse", "vb", "grad_norm"):
            assert a[key] == b[key], (key, a["step"])


def test_grids_for_every_rate_and_the_raw_weights(watched_run):
    for step in (5, 10, 15, 20):
        for tag in TAGS:
            png = watched_run / "samples" / f"{step:06d}_{tag}.png"
            assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
            with np.load(watched_run / "samples" / f"{step:06d}_{tag}.npz") as stored:
                assert stored["images"].shape == (6, 8, 8, 3) and stored["images"].dtype == np.uint8
                assert stored["labels"].tolist() == [0, 1, 0, 1, 0, 1]  # sample i shows class i mod 2
    assert not list((watched_run / "samples").glob("*.tmp-*"))
    # Different weights give different images from the same seeds.
    with np.load(watched_run / "samples" / "000020_raw.npz") as raw, np.load(watched_run / "samples" / "000005_raw.npz") as early:
        assert not np.array_equal(raw["images"], early["images"])


def test_metric_rows_in_metrics_csv_and_progress_csv(watched_run):
    with open(watched_run / "metrics.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert [r["step"] for r in rows] == ["10", "20"]
    for row in rows:
        assert row["weights"] == "ema_0.9"
        assert np.isfinite(float(row["fid"])) and float(row["fid"]) >= 0
        assert 0.0 <= float(row["precision"]) <= 1.0 and 0.0 <= float(row["recall"]) <= 1.0
        assert row["num_samples"] == "12" and row["features"].startswith("classifier:")
    logged = {r["step"]: r for r in _progress(watched_run)}
    assert float(logged["10"]["eval_fid"]) == pytest.approx(float(rows[0]["fid"]), rel=1e-5)
    assert logged["15"]["eval_fid"] == ""
    assert (watched_run / "eval_reference.npz").is_file()
    assert "best FID" in (watched_run / "stdout.txt").read_text()


def test_resume_auto_keeps_the_trajectory_and_the_grids(setup, plain_run, watched_run):
    run = _train(setup, "resumed", _watch_flags(setup), iterations=10)
    assert {p.name for p in (run / "samples").glob("*.png")} == {f"{s:06d}_{t}.png" for s in (5, 10) for t in TAGS}
    result = run_cli(["image_train", "--data_dir", str(setup["data"]), "--log_dir", str(run), "--iterations", str(STEPS),
                      "--resume", "auto", *TINY, *_watch_flags(setup)])
    assert result.returncode == 0, result.stderr[-3000:]
    assert_same_checkpoint_set(plain_run, run, 20)
    with np.load(run / "samples" / "000020_ema_0.99.npz") as a, np.load(watched_run / "samples" / "000020_ema_0.99.npz") as b:
        assert np.array_equal(a["images"], b["images"])  # same weights, same seeds: same grid
    with open(run / "metrics.csv", newline="") as handle:
        assert [r["step"] for r in csv.DictReader(handle)] == ["10", "20"]
    assert "held-out statistics from" in result.stdout  # the cache was reused, not recomputed


def test_report_with_plots(watched_run, tmp_path):
    result = run_cli(["report", str(watched_run), "--out_dir", str(tmp_path / "report")])
    assert result.returncode == 0, result.stderr[-3000:]
    report = (tmp_path / "report" / "report.md").read_text()
    for name in ("report_loss.png", "report_optimization.png", "report_metrics.png", "report_samples_ema_0.9.png",
                 "report_samples_raw.png"):
        assert (tmp_path / "report" / name).read_bytes()[:4] == b"\x89PNG"
        assert f"({name})" in report
    assert "best FID" in report and "| 20 | ema_0.9 |" in report


def test_report_on_a_run_in_progress(watched_run, tmp_path):
    run = tmp_path / "live"
    shutil.copytree(watched_run, run)
    text = (run / "progress.csv").read_text()
    (run / "progress.csv").write_text(text + text.splitlines()[-1][:17])  # a row being written
    shutil.rmtree(run / "samples")
    (run / "metrics.csv").unlink()
    result = run_cli(["report", str(run)])
    assert result.returncode == 0, result.stderr[-3000:]
    report = (run / "report.md").read_text()
    assert "logged up to step 20 (4 log rows)" in report
    assert "report_samples" not in report and "FID" not in report


def test_report_needs_a_run_directory(tmp_path):
    result = run_cli(["report", str(tmp_path / "nope")])
    assert result.returncode == 2 and "not a directory" in result.stderr and "Traceback" not in result.stderr
    result = run_cli(["report", str(tmp_path)])
    assert result.returncode == 2 and "progress.csv" in result.stderr


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--eval_interval", "5"], "--eval_data_dir"),
        (["--eval_interval", "5", "--eval_data_dir", "/nonexistent"], "is not a folder"),
        (["--sample_interval", "5", "--sample_sampler", "nope"], "--sample_sampler"),
        (["--sample_interval", "-1"], "--sample_interval"),
        (["--max_time", "-2"], "--max_time"),
    ],
)
def test_bad_watch_flags_are_one_line_errors(setup, tmp_path, flags, message):
    run = tmp_path / "run"
    result = run_cli(["image_train", "--data_dir", str(setup["data"]), "--log_dir", str(run), "--iterations", "2", *TINY, *flags])
    assert result.returncode == 2, result.stderr[-2000:]
    assert message in result.stderr and "Traceback" not in result.stderr
    assert not run.exists() or not list(run.glob("*.pt"))


def test_max_time_saves_and_stops_cleanly(setup):
    run = _train(setup, "budget", ["--max_time", "0.0015", "--save_interval", "100000"], iterations=10**6)
    output = (run / "stdout.txt").read_text()
    assert "saving and stopping" in output
    models = sorted(run.glob("model*.pt"))
    assert len(models) == 1
    step = int(models[0].stem[len("model"):])
    assert 0 < step < 10**6
    state = load_checkpoint_file(run / f"train_state{step:06d}.pt")
    assert state["kind"] == "diffusion"
    assert json.loads((run / "config.json").read_text())["model"]["num_channels"] == 32


def test_classifier_run_reports_held_out_accuracy_per_noise_level(setup, tmp_path):
    """classifier_train keeps its own --eval_interval (validation batches); the report plots the
    held-out accuracy per noise quarter."""
    run = tmp_path / "classifier"
    result = run_cli(["classifier_train", "--data_dir", str(setup["data"]), "--val_data_dir", str(setup["heldout"]),
                      "--log_dir", str(run), "--iterations", "6", "--eval_interval", "2", "--log_interval", "2",
                      "--save_interval", "6", "--image_size", "8", "--classifier_width", "32", "--classifier_depth", "1",
                      "--classifier_attention_resolutions", "", "--classifier_channel_mult", "1", "--classifier_pool", "adaptive",
                      "--classifier_num_head_channels", "32",
                      "--num_classes", "2", "--batch_size", "4", "--num_workers", "0", "--diffusion_steps", "50",
                      "--max_time", "1", "--seed", "0", "--progress", "False"])
    assert result.returncode == 0, result.stderr[-3000:]
    assert "val_acc@1_q" in (run / "progress.csv").read_text().splitlines()[0]
    result = run_cli(["report", str(run)])
    assert result.returncode == 0, result.stderr[-3000:]
    assert (run / "report_accuracy.png").read_bytes()[:4] == b"\x89PNG"
    assert "Held-out accuracy per noise level" in (run / "report.md").read_text()


def test_run_clock_budget_and_time_to_next_save():
    """The stop rule with given times: stop when the time left is below the longest step plus the
    final-save estimate; the bar's time to the next save is steps left times the step time."""
    from guided_diffusion.training.monitor import RunClock

    clock = RunClock(max_time_hours=100 / 3600, save_interval=10, final_save_seconds=5.0, start=0.0)
    clock.tick(now=8.0)  # start-up and step 1
    assert clock.next_save_text(1) is None  # no plain step measured yet
    for now in (10.0, 12.0, 14.0):  # steps 2, 3 and 4
        clock.tick(now=now)
    assert clock.recent_step == pytest.approx(2.0)
    assert clock.next_save_text(4) == "12s"  # 6 steps of 2 s
    assert clock.longest_step == 8.0
    assert not clock.out_of_time(now=86.9)  # 13.1 s left > 8 + 5
    assert clock.out_of_time(now=87.1)
    assert not RunClock(max_time_hours=0.0, start=0.0).out_of_time(now=1e9)  # no budget


def test_upsampler_grids_do_not_change_the_trajectory(setup):
    """super_res_train --sample_interval: grids upsample fixed low-resolution training images, and the
    weights stay bit-identical to a run without grids."""
    flags = ["--large_size", "8", "--small_size", "4", "--num_channels", "32", "--num_res_blocks", "1", "--channel_mult", "1",
             "--attention_resolutions", "", "--diffusion_steps", "50", "--num_workers", "0", "--batch_size", "4",
             "--dropout", "0.1", "--ema_rate", "0.9", "--seed", "4", "--save_interval", "4", "--progress", "False"]
    runs = []
    for name, extra in (("sr_plain", []), ("sr_watched", ["--sample_interval", "2", "--sample_num", "4", "--sample_steps", "5"])):
        run = setup["root"] / name
        result = run_cli(["super_res_train", "--data_dir", str(setup["data"]), "--log_dir", str(run), "--iterations", "4",
                          *flags, *extra])
        assert result.returncode == 0, result.stderr[-3000:]
        runs.append(run)
    for name in ("model000004.pt", "ema_0.9_000004.pt"):
        a, b = load_checkpoint_file(runs[0] / name), load_checkpoint_file(runs[1] / name)
        assert all(torch.equal(a[k], b[k]) for k in a), name
    for step in (2, 4):
        for tag in ("ema_0.9", "raw"):
            with np.load(runs[1] / "samples" / f"{step:06d}_{tag}.npz") as stored:
                assert stored["images"].shape == (4, 8, 8, 3)
