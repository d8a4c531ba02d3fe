"""The demo study: classifier guidance on scikit-learn's 8x8 digits, trained and evaluated on a CPU.

    from guided_diffusion.demo import run_demo
    result = run_demo("demo_out", seed=0, quick=True)   # writes checkpoints, grids, plot, metrics.json, report.md
"""
from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch

from guided_diffusion.demo.report import metrics_table
from guided_diffusion.demo.result import StudyResult
from guided_diffusion.demo.settings import StudySettings, default_settings, quick_settings
from guided_diffusion.demo.study import run_study

__all__ = ["run_demo", "run_study", "StudyResult", "StudySettings", "default_settings", "quick_settings"]


def run_demo(out_dir: str | Path, *, seed: int = 0, quick: bool = False, progress: bool | None = False,
             settings: StudySettings | None = None, echo: Callable[[str], None] = print,
             overwrite: bool = False, device: torch.device | None = None) -> StudyResult:
    """Run the study (default or --quick recipe, or explicit `settings`) on `device` and print its
    summary. An `out_dir` that is not empty is refused unless `overwrite` (see `run_study`)."""
    chosen = settings or (quick_settings() if quick else default_settings())
    echo(f"guided-diffusion demo: classifier guidance on scikit-learn digits (seed {seed}{', quick' if quick else ''}) -> {out_dir}")
    result = run_study(out_dir, seed=seed, settings=chosen, progress=progress, echo=echo, overwrite=overwrite, device=device)
    echo("")
    echo(metrics_table(result.metrics))
    echo("")
    echo(f"wrote {result.files['report']}, {result.files['metrics'].name}, {result.files['plot'].name}, "
         f"grids/ and checkpoints/ in {result.seconds:.0f} s")
    echo("sample again from the trained checkpoints with:")
    echo(f"  {result.command}")
    return result
