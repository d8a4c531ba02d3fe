"""`guided-diffusion demo`: the guided-diffusion study on scikit-learn's 8x8 digits, on a CPU in minutes.

Trains an unconditional diffusion model, a noisy classifier and an independent judge, samples with
classifier guidance at scales 0, 1, 2, 4 and 8 with DDIM and DPM-Solver++, and writes checkpoints,
grids, a plot, metrics.json and report.md to --out_dir.
"""
from __future__ import annotations

import argparse
import shlex
import signal
import sys
from pathlib import Path

from guided_diffusion.cli.parsing import OneLineParser, add_progress_flag
from guided_diffusion.runtime.errors import UserError

__all__ = ["main", "build_parser", "THREADS"]

# A fixed thread count: CPU kernels may add in a different order with a different number of threads,
# and the same --seed must give the same metrics.json on any machine with enough cores.
THREADS = 1
_DESCRIPTION = " ".join(__doc__.split()).split(": ", 1)[1].capitalize()


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(prog="guided-diffusion demo", description=_DESCRIPTION)
    parser.add_argument("--out_dir", default="demo_out", help="where checkpoints, grids, plot, metrics.json and report.md go")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace the files of a previous run in --out_dir (without it, a folder that is not empty is refused)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the whole run: the same seed gives the same metrics.json")
    parser.add_argument("--quick", action="store_true", help="shorter training and fewer samples (about a third of the time)")
    parser.add_argument("--device", default="", help="where the networks train and sample: auto, cpu, cuda, cuda:N or mps "
                                                      "(default: train on the GPU, else the CPU, and sample on the CPU)")
    add_progress_flag(parser)
    return parser


def _check_out_dir(out_dir: Path, overwrite: bool) -> None:
    """Refuse, before anything is written, a folder that cannot be written or that holds files (a
    previous run's checkpoints and report) the study would replace without --overwrite."""
    from guided_diffusion.runtime.atomic import directory_write_problem

    problem = directory_write_problem(out_dir)
    if problem is not None:
        raise UserError(f"--out_dir {out_dir} cannot be used: {problem}")
    if out_dir.is_dir() and not overwrite:
        entries = sorted(entry.name for entry in out_dir.iterdir())
        if entries:
            shown = ", ".join(entries[:4]) + (", ..." if len(entries) > 4 else "")
            raise UserError(f"--out_dir {out_dir} is not empty ({shown}): pass --overwrite to replace a previous run's "
                            "files, or choose another --out_dir")


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    if args.seed < 0:
        raise UserError(f"--seed must be >= 0, got {args.seed}")
    out_dir = Path(args.out_dir)
    _check_out_dir(out_dir, args.overwrite)
    import torch

    from guided_diffusion.demo import run_demo
    from guided_diffusion.runtime.distributed import resolve_device

    device = resolve_device(args.device) if args.device else None

    torch.set_num_threads(THREADS)
    previous = signal.signal(signal.SIGTERM, _raise_terminated)
    try:
        run_demo(out_dir, seed=args.seed, quick=args.quick, progress=args.progress, overwrite=args.overwrite, device=device)
    except (KeyboardInterrupt, _Terminated) as stop:
        signum = stop.signum if isinstance(stop, _Terminated) else signal.SIGINT
        again = argv if args.overwrite else [*argv, "--overwrite"]
        if sys.stderr.isatty():  # end a progress bar's line first
            print(file=sys.stderr)
        print(f"interrupted by {signal.Signals(signum).name}: files written so far are in {out_dir}; the study takes "
              f"minutes and does not resume: run it again with: {shlex.join(['guided-diffusion', 'demo', *again])}",
              file=sys.stderr)
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
