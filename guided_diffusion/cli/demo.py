"""`guided-diffusion demo`: the guided-diffusion study on scikit-learn's 8x8 digits, on a CPU in minutes.

Trains an unconditional diffusion model, a noisy classifier and an independent judge, samples with
classifier guidance at scales 0, 1, 2, 4 and 8 with DDIM and DPM-Solver++, and writes checkpoints,
grids, a plot, metrics.json and report.md to --out_dir.
"""
from __future__ import annotations

import argparse
import signal
import sys

from guided_diffusion.config.flags import str2bool
from guided_diffusion.runtime.errors import UserError

__all__ = ["main", "build_parser", "THREADS"]

# A fixed thread count: CPU kernels may add in a different order with a different number of threads,
# and the same --seed must give the same metrics.json on any machine with enough cores.
THREADS = 1


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="guided-diffusion demo", description=__doc__.split("\n")[0], allow_abbrev=False)
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
    import torch

    from guided_diffusion.demo import run_demo

    torch.set_num_threads(THREADS)
    progress = sys.stderr.isatty() if args.progress is None else bool(args.progress)
    previous = signal.signal(signal.SIGTERM, _raise_terminated)
    try:
        run_demo(args.out_dir, seed=args.seed, quick=args.quick, progress=progress)
    except (KeyboardInterrupt, _Terminated) as stop:
        signum = stop.signum if isinstance(stop, _Terminated) else signal.SIGINT
        name = "SIGTERM" if signum == signal.SIGTERM else "Ctrl-C (SIGINT)"
        if progress:  # end a progress bar's line first
            print(file=sys.stderr)
        print(f"demo stopped by {name}: files written so far are in {args.out_dir}; run the same command again "
              "to redo the study (it takes minutes, nothing needs resuming)", file=sys.stderr)
        return 128 + int(signum)  # 130 for Ctrl-C, 143 for SIGTERM, as shells report them
    finally:
        signal.signal(signal.SIGTERM, previous)
    return 0


class _Terminated(Exception):
    """SIGTERM arrived: unwind like Ctrl-C does, without a traceback."""

    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = signum


def _raise_terminated(signum, frame) -> None:  # signal handler signature
    raise _Terminated(signum)
