"""`guided-diffusion demo`: the guided-diffusion study on scikit-learn's 8x8 digits, on a CPU in minutes.

Trains an unconditional diffusion model, a noisy classifier and an independent judge, samples with
classifier guidance at scales 0, 1, 2, 4 and 8 with DDIM and DPM-Solver++, and writes checkpoints,
grids, a plot, metrics.json and report.md to --out_dir.
"""
from __future__ import annotations

import argparse
import sys

from guided_diffusion.errors import UserError
from guided_diffusion.script_util import str2bool

__all__ = ["main", "build_parser", "THREADS"]

# A fixed thread count: CPU kernels may add in a different order with a different number of threads,
# and the same --seed must give the same metrics.json on any machine with enough cores.
THREADS = 1


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="guided-diffusion demo", description=__doc__.split("\n")[0])
    parser.add_argument("--out_dir", default="demo_out", help="where checkpoints, grids, plot, metrics.json and report.md go (default: demo_out)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the whole run: the same seed gives the same metrics.json (default: 0)")
    parser.add_argument("--quick", action="store_true", help="shorter training and fewer samples (about a third of the time)")
    parser.add_argument("--progress", type=str2bool, nargs="?", const=True, default=None,
                        help="progress bars (default: on when stderr is a terminal)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(sys.argv[1:] if argv is None else argv)
    if args.seed < 0:
        raise UserError(f"--seed must be >= 0, got {args.seed}")
    import torch  # noqa: PLC0415 - keep --help fast

    from guided_diffusion.demo import run_demo  # noqa: PLC0415

    torch.set_num_threads(THREADS)
    progress = sys.stderr.isatty() if args.progress is None else bool(args.progress)
    run_demo(args.out_dir, seed=args.seed, quick=args.quick, progress=progress)
    return 0
