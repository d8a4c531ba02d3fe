"""`guided-diffusion report RUN_DIR`: report.md and PNG plots of a training run (also while it runs)."""
from __future__ import annotations

import argparse
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="guided-diffusion report",
        description="Write report.md and plots (loss per noise level, learning rate, gradient norm, loss scale, samples "
                    "over time, FID/precision/recall over time) from a training run directory.",
    )
    parser.add_argument("run_dir", type=Path, help="the run directory (--log_dir of image_train/classifier_train)")
    parser.add_argument("--out", type=Path, default=None, help="where to write the report (default: RUN_DIR)")
    parser.add_argument("--max_rows", type=int, default=8, help="steps shown in a samples-over-time grid (default 8)")
    try:
        args = parser.parse_args(argv)
    except SystemExit as exit_:  # --help or a usage error (already printed)
        return int(exit_.code or 0)
    from guided_diffusion.runtime.errors import UserError

    if args.max_rows < 1:
        raise UserError(f"--max_rows must be positive (got {args.max_rows})")
    from guided_diffusion.training.report import write_report

    report = write_report(args.run_dir, args.out, max_rows=args.max_rows)
    plots = sorted(p.name for p in report.parent.glob("report_*.png"))
    print(f"wrote {report} ({len(plots)} plots: {', '.join(plots)})")
    return 0
