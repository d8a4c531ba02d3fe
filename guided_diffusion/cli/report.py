"""`guided-diffusion report RUN_DIR`: report.md and PNG plots of a training run (also while it runs)."""
from __future__ import annotations

import sys
from pathlib import Path

from guided_diffusion.cli.parsing import OneLineParser
from guided_diffusion.runtime.errors import UserError


def build_parser() -> OneLineParser:
    parser = OneLineParser(
        prog="guided-diffusion report",
        description="Write report.md and plots (loss per noise level, learning rate, gradient norm, loss scale, samples "
                    "over time, FID/precision/recall over time) from a training run directory.",
    )
    parser.add_argument("run_dir", type=Path, help="the run directory (--log_dir of image_train/classifier_train)")
    parser.add_argument("--out_dir", type=Path, default=None, help="where to write the report (default: RUN_DIR)")
    # The spelling before every command took --out_dir; it still works, with a note.
    parser.add_argument("--out", type=Path, default=None, help="the former spelling of --out_dir")
    parser.add_argument("--max_rows", type=int, default=8, help="steps shown in a samples-over-time grid")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.out is not None:
        if args.out_dir is not None:
            raise UserError("give --out_dir only (--out is its former spelling)")
        print("note: --out is now spelled --out_dir", file=sys.stderr)
        args.out_dir = args.out
    if args.max_rows < 1:
        raise UserError(f"--max_rows must be positive (got {args.max_rows})")
    from guided_diffusion.training.report import write_report

    report = write_report(args.run_dir, args.out_dir, max_rows=args.max_rows)
    plots = sorted(p.name for p in report.parent.glob("report_*.png"))
    print(f"wrote {report} ({len(plots)} plots: {', '.join(plots)})")
    return 0
