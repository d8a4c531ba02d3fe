"""A run's FIDs form one series per feature space (issue 20 item 1, training side): a run resumed with
other --eval_features never calls a value of one space the best of another."""
from __future__ import annotations

import csv
from pathlib import Path

import pytest

from guided_diffusion.cli import main
from guided_diffusion.training.monitor import METRIC_COLUMNS, METRICS_FILE, best_metric_row

ROWS = [  # a run scored in a classifier's features (FIDs near 0.05), then resumed with Inception features
    {"step": "10", "weights": "ema_0.9", "fid": "0.045", "precision": "0.9", "recall": "0.8", "features": "classifier:c.pt"},
    {"step": "20", "weights": "ema_0.9", "fid": "0.040", "precision": "0.9", "recall": "0.8", "features": "classifier:c.pt"},
    {"step": "30", "weights": "ema_0.9", "fid": "52.8", "precision": "0.5", "recall": "0.4", "features": "inception"},
    {"step": "40", "weights": "ema_0.9", "fid": "48.1", "precision": "0.6", "recall": "0.5", "features": "inception"},
]


def test_best_row_is_chosen_within_one_feature_space():
    assert best_metric_row(ROWS, features="inception")["step"] == "40"
    assert best_metric_row(ROWS, features="classifier:c.pt")["step"] == "20"
    assert best_metric_row(ROWS, features="classifier:other.pt") is None


def test_report_names_the_best_of_the_current_space_only(tmp_path):
    pytest.importorskip("matplotlib")
    run = tmp_path / "run"
    run.mkdir()
    (run / "progress.csv").write_text("step,loss\n10,0.5\n40,0.4\n")
    with open(Path(run) / METRICS_FILE, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(METRIC_COLUMNS), restval="")
        writer.writeheader()
        writer.writerows(ROWS)
    assert main(["report", str(run)]) == 0
    report = (run / "report.md").read_text()
    assert "best FID 48.1 at step 40" in report and "best FID 0.04" not in report
    assert "other feature spaces (classifier:c.pt) are not compared" in report
