"""A run report from a run directory: `report.md` and PNG plots of what the log recorded.

Reads `progress.csv` (the logger's rows: loss and its quarters of the timestep range `KEY_q0..q3`,
lr, grad_norm, lg_loss_scale, classifier accuracies), `metrics.csv` (FID, precision, recall during
training) and `samples/STEP_TAG.npz` (grids drawn during training). Works on a run in progress: a
last row still being written is skipped, and every plot uses whatever columns exist so far.
"""
from __future__ import annotations

import csv
import io
import json
import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from guided_diffusion.runtime.atomic import atomic_write_bytes
from guided_diffusion.runtime.errors import UserError
from guided_diffusion.training.monitor import (
    METRICS_FILE,
    SAMPLES_DIR,
    best_metric_row,
    image_grid,
    read_metric_rows,
)

__all__ = ["REPORT_NAME", "RunLog", "read_run", "write_report"]

REPORT_NAME = "report.md"
PROGRESS_FILE = "progress.csv"
_SAMPLE_NAME = re.compile(r"^(\d+)_(.+)\.npz$")
_LOSS_KEYS = ("loss", "mse", "vb", "train_loss", "val_loss")
_QUARTER_LABELS = ("q0 (least noise)", "q1", "q2", "q3 (most noise)")
_OPTIMIZATION_KEYS = (("lr", "learning rate"), ("grad_norm", "gradient norm"), ("lg_loss_scale", "log2 loss scale"),
                      ("param_norm", "parameter norm"))


@dataclass
class RunLog:
    """What a run directory holds, as numbers."""

    run_dir: Path
    columns: dict[str, np.ndarray] = field(default_factory=dict)  # progress.csv, NaN where empty
    metrics: list[dict[str, str]] = field(default_factory=list)  # metrics.csv rows
    samples: dict[str, list[tuple[int, Path]]] = field(default_factory=dict)  # tag -> [(step, npz)]
    config: dict[str, Any] | None = None

    @property
    def steps(self) -> np.ndarray:
        return self.columns.get("step", np.arange(1, self.num_rows + 1, dtype=np.float64))

    @property
    def num_rows(self) -> int:
        return len(next(iter(self.columns.values()))) if self.columns else 0

    def has(self, key: str) -> bool:
        return key in self.columns and bool(np.isfinite(self.columns[key]).any())

    def last(self, key: str) -> float | None:
        if not self.has(key):
            return None
        values = self.columns[key][np.isfinite(self.columns[key])]
        return float(values[-1])


def _number(text: str) -> float:
    try:
        return float(text)
    except (TypeError, ValueError):
        return float("nan")


def read_progress(path: Path) -> dict[str, np.ndarray]:
    """progress.csv as columns of floats. A last line without its newline (being written) is dropped,
    as are rows with more fields than the header."""
    if not path.is_file() or path.stat().st_size == 0:
        return {}
    text = path.read_text(encoding="utf-8", errors="replace")
    if not text.endswith("\n"):
        text = text[: text.rfind("\n") + 1]
    rows = list(csv.reader(io.StringIO(text)))
    if not rows:
        return {}
    header, body = rows[0], [r for r in rows[1:] if r and len(r) <= len(rows[0])]
    return {key: np.array([_number(r[i]) if i < len(r) else np.nan for r in body], dtype=np.float64)
            for i, key in enumerate(header)}


def read_run(run_dir: str | Path) -> RunLog:
    """Everything the report uses from `run_dir` (a UserError when it is not a run directory)."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise UserError(f"{run_dir} is not a directory: pass a training run directory (its --log_dir)")
    log = RunLog(run_dir=run_dir, columns=read_progress(run_dir / PROGRESS_FILE), metrics=read_metric_rows(run_dir))
    for path in sorted((run_dir / SAMPLES_DIR).glob("*.npz")):
        match = _SAMPLE_NAME.match(path.name)
        if match:
            log.samples.setdefault(match.group(2), []).append((int(match.group(1)), path))
    for entries in log.samples.values():
        entries.sort()
    config_path = run_dir / "config.json"
    if config_path.is_file():
        try:
            log.config = json.loads(config_path.read_text())
        except json.JSONDecodeError:
            log.config = None
    if not log.columns and not log.metrics and not log.samples:
        raise UserError(f"{run_dir} has no progress.csv, {METRICS_FILE} or {SAMPLES_DIR}/ yet: is it a training run directory "
                        "(csv logging on, the default)?")
    return log


# --- plots ---------------------------------------------------------------------------------------

def _figure(rows: int, cols: int, width: float = 5.0, height: float = 3.2):
    try:
        from matplotlib.figure import Figure
    except ImportError:
        raise UserError("guided-diffusion report needs matplotlib: pip install matplotlib (or the demo extra: "
                        "pip install -e '.[demo]')") from None
    figure = Figure(figsize=(width * cols, height * rows), layout="constrained")
    axes = figure.subplots(rows, cols, squeeze=False)
    return figure, [ax for row in axes for ax in row]


def _save(figure: Any, path: Path) -> Path:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=100)
    atomic_write_bytes(path, buffer.getvalue())
    return path


def _series(log: RunLog, key: str) -> tuple[np.ndarray, np.ndarray]:
    values = log.columns[key]
    keep = np.isfinite(values)
    return log.steps[keep], values[keep]


def plot_losses(log: RunLog, path: Path) -> Path | None:
    """Each loss term's mean and its means over the four quarters of the timestep range (q0: the
    least noisy quarter, q3: the noisiest)."""
    keys = [k for k in _LOSS_KEYS if log.has(k)]
    if not keys:
        return None
    figure, axes = _figure(1, len(keys))
    for ax, key in zip(axes, keys):
        for q in range(4):
            name = f"{key}_q{q}"
            if log.has(name):
                ax.plot(*_series(log, name), linewidth=1, alpha=0.8, label=_QUARTER_LABELS[q])
        ax.plot(*_series(log, key), color="black", linewidth=2, label="mean")
        ax.set_title(key)
        ax.set_xlabel("step")
        low, high = np.nanmin(log.columns[key]), np.nanmax(log.columns[key])
        if low > 0 and high / low > 20:  # early losses dwarf the rest
            ax.set_yscale("log")
        ax.legend(fontsize=7)
    return _save(figure, path)


def plot_accuracy(log: RunLog, path: Path) -> Path | None:
    """Classifier runs: held-out (and training) top-1 accuracy per noise quarter."""
    keys = [k for k in ("val_acc@1", "train_acc@1") if log.has(k)]
    if not keys:
        return None
    figure, axes = _figure(1, len(keys))
    for ax, key in zip(axes, keys):
        for q in range(4):
            if log.has(f"{key}_q{q}"):
                ax.plot(*_series(log, f"{key}_q{q}"), linewidth=1, label=f"q{q}")
        ax.plot(*_series(log, key), color="black", linewidth=2, label="all t")
        ax.set_title(f"{key} per noise quarter" + (" (held-out)" if key.startswith("val") else ""))
        ax.set_xlabel("step")
        ax.set_ylim(-0.02, 1.02)
        ax.legend(fontsize=7)
    return _save(figure, path)


def plot_optimization(log: RunLog, path: Path) -> Path | None:
    """Learning rate, gradient norm, loss scale and parameter norm (those the run logged)."""
    present = [(k, title) for k, title in _OPTIMIZATION_KEYS if log.has(k)]
    if not present:
        return None
    figure, axes = _figure(1, len(present), width=4.0)
    for ax, (key, title) in zip(axes, present):
        ax.plot(*_series(log, key))
        ax.set_title(title)
        ax.set_xlabel("step")
    return _save(figure, path)


def plot_metrics(log: RunLog, path: Path) -> Path | None:
    """FID, precision and recall during training, the best FID marked."""
    if not log.metrics:
        return None
    figure, axes = _figure(1, 3, width=4.0)
    spaces = _feature_spaces(log.metrics)
    for ax, key in zip(axes, ("fid", "precision", "recall")):
        for space in spaces:  # one series per feature space: their values do not compare
            rows = [r for r in log.metrics if r.get("features", "") == space]
            steps = np.array([int(r["step"]) for r in rows])
            values = np.array([_number(r.get(key, "")) for r in rows])
            ax.plot(steps, values, marker="o", label=space or "?")
        ax.set_title(key.upper() if key == "fid" else key)
        ax.set_xlabel("step")
    if len(spaces) > 1:
        axes[0].legend(fontsize=7)
    best = best_metric_row(log.metrics, features=log.metrics[-1].get("features", ""))
    if best is not None:
        axes[0].axvline(int(best["step"]), color="gray", linestyle="--", linewidth=1)
        axes[0].annotate(f"best {float(best['fid']):.4g}\nstep {best['step']}", (int(best["step"]), float(best["fid"])),
                         fontsize=8)
    figure.suptitle(f"{log.metrics[-1].get('features', '')} features, {log.metrics[-1].get('num_samples', '?')} samples",
                    fontsize=9)
    return _save(figure, path)


def _feature_spaces(rows: list[dict[str, str]]) -> list[str]:
    """The feature spaces of metric rows, in order of first appearance."""
    return list(dict.fromkeys(r.get("features", "") for r in rows))


def _chosen(entries: list[tuple[int, Path]], max_rows: int) -> list[tuple[int, Path]]:
    if len(entries) <= max_rows:
        return entries
    picks = np.unique(np.round(np.linspace(0, len(entries) - 1, max_rows)).astype(int))
    return [entries[i] for i in picks]


def samples_over_time(entries: list[tuple[int, Path]], *, max_rows: int = 8, max_columns: int = 10) -> tuple[np.ndarray, list[int]]:
    """One row per chosen step (first, last and evenly between), the same first samples in each."""
    chosen = _chosen(entries, max_rows)
    rows = []
    for _, path in chosen:
        with np.load(path, allow_pickle=False) as stored:
            rows.append(stored["images"][:max_columns])
    columns = min(len(r) for r in rows)
    images = np.concatenate([r[:columns] for r in rows])
    zoom = max(1, 48 // images.shape[1])
    return image_grid(images, columns, zoom=zoom), [step for step, _ in chosen]


def plot_samples_over_time(log: RunLog, tag: str, path: Path, max_rows: int = 8) -> Path | None:
    entries = log.samples.get(tag)
    if not entries:
        return None
    grid, steps = samples_over_time(entries, max_rows=max_rows)
    height = max(2.0, 0.5 + 0.45 * len(steps))
    figure, axes = _figure(1, 1, width=max(3.0, height * grid.shape[1] / grid.shape[0]), height=height)
    ax = axes[0]
    ax.imshow(grid, interpolation="nearest")
    row_height = grid.shape[0] / len(steps)
    ax.set_yticks([row_height * (i + 0.5) for i in range(len(steps))], [f"step {s}" for s in steps], fontsize=8)
    ax.set_xticks([])
    ax.set_title(f"samples over time ({tag.replace('_', ' ')})", fontsize=9)
    return _save(figure, path)


# --- the report ----------------------------------------------------------------------------------

def _fmt(value: float | None) -> str:
    return "–" if value is None else f"{value:.4g}"


def _summary_lines(log: RunLog) -> list[str]:
    lines = []
    if log.num_rows:
        step = log.last("step")
        lines.append(f"- logged up to step {int(step) if step is not None else '?'} ({log.num_rows} log rows)")
    for key in ("loss", "train_loss", "val_loss", "val_acc@1", "lr", "grad_norm", "lg_loss_scale"):
        if log.has(key):
            lines.append(f"- last {key}: {_fmt(log.last(key))}")
    if log.metrics:
        last = log.metrics[-1]
        best = best_metric_row(log.metrics, features=last.get("features", ""))
        others = [space for space in _feature_spaces(log.metrics) if space != last.get("features", "")]
        if best is not None:
            lines.append(f"- best FID {best['fid']} at step {best['step']} (precision {best['precision']}, recall {best['recall']}; "
                         f"{best.get('features', '')} features, {best.get('num_samples', '?')} samples); latest FID {last['fid']} "
                         f"at step {last['step']}")
        if others:
            lines.append(f"- earlier FIDs in other feature spaces ({', '.join(others)}) are not compared with these")
    if log.samples:
        tags = ", ".join(f"{tag} ({len(v)} grids, last at step {v[-1][0]})" for tag, v in sorted(log.samples.items()))
        lines.append(f"- sample grids: {tags}")
    return lines


def write_report(run_dir: str | Path, out_dir: str | Path | None = None, *, max_rows: int = 8) -> Path:
    """Write `report.md` and its plots into `out_dir` (default: the run directory); returns the report."""
    log = read_run(run_dir)
    out = Path(out_dir) if out_dir is not None else log.run_dir
    out.mkdir(parents=True, exist_ok=True)
    sections: list[tuple[str, Path | None, str]] = [
        ("Loss per noise level", plot_losses(log, out / "report_loss.png"),
         "Mean loss (black) and its mean over each quarter of the timestep range: q0 = least noise, q3 = most."),
        ("Held-out accuracy per noise level", plot_accuracy(log, out / "report_accuracy.png"),
         "Classifier top-1 accuracy on the validation batches, per quarter of the timestep range."),
        ("Optimization", plot_optimization(log, out / "report_optimization.png"), "Learning rate, gradient norm, loss scale."),
        ("Sample quality during training", plot_metrics(log, out / "report_metrics.png"),
         ("FID, precision and recall of samples against the held-out folder (--eval_interval); not comparable with "
          "published FIDs unless the Inception features and 50k samples were used.")),
    ]
    for tag in sorted(log.samples, key=lambda t: (t == "raw", t)):
        sections.append((f"Samples over time: {tag.replace('_', ' ')}",
                         plot_samples_over_time(log, tag, out / f"report_samples_{tag}.png", max_rows=max_rows),
                         "The same seeds and classes at each step (one row per step)."))
    lines = [f"# Training report: {log.run_dir.name}", "", f"Run directory: `{log.run_dir}`", ""]
    lines += _summary_lines(log)
    if log.config is not None and isinstance(log.config.get("model"), dict):
        model = log.config["model"]
        # shlex.join quotes empty values ('--attention_resolutions ""'), so the line pastes back as it was.
        flags = shlex.join(word for key, value in sorted(model.items()) for word in (f"--{key}", str(value)))
        lines += ["", f"Model ({log.config.get('kind', '?')}): `{flags}`"]
    if log.metrics:
        lines += ["", "| step | weights | FID | precision | recall |", "|---:|---|---:|---:|---:|"]
        lines += [f"| {r['step']} | {r.get('weights', '')} | {r['fid']} | {r['precision']} | {r['recall']} |" for r in log.metrics]
    for title, plot, caption in sections:
        if plot is None:
            continue
        rel = Path(plot).relative_to(out) if Path(plot).is_relative_to(out) else plot
        lines += ["", f"## {title}", "", caption, "", f"![{title}]({rel})"]
    report = out / REPORT_NAME
    atomic_write_bytes(report, ("\n".join(lines) + "\n").encode())
    return report
