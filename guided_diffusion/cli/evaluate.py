"""`guided-diffusion evaluate REF.npz SAMPLE.npz`: the original evaluator's five metrics, in PyTorch."""
from __future__ import annotations

import argparse
import json
import signal
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from guided_diffusion.cli.parsing import OneLineParser, add_progress_flag, progress_enabled
from guided_diffusion.runtime.atomic import atomic_write_bytes, directory_write_problem
from guided_diffusion.runtime.errors import UserError

DESCRIPTION = """\
Compare a sample batch with a reference batch (npz files whose arr_0 holds uint8 NHWC images) and print
Inception Score, FID, sFID, Precision and Recall as OpenAI's evaluator does. Precomputed mu/sigma/mu_s/
sigma_s in a file are used instead of the statistics of its images (files written by --save_stats record
their feature space, and are refused in other features). With --save_stats and no SAMPLE, only writes a
reference file for REF (statistics of all its images plus 10k of them for precision/recall).
"""
DEFAULT_SAVE_STATS_IMAGES = 10_000


def _parser() -> argparse.ArgumentParser:
    parser = OneLineParser(prog="guided-diffusion evaluate", description=DESCRIPTION)
    parser.add_argument("ref_batch", type=Path, help="reference .npz (e.g. VIRTUAL_imagenet256_labeled.npz)")
    parser.add_argument("sample_batch", type=Path, nargs="?", help="sample .npz to evaluate")
    parser.add_argument("--json", type=Path, help="also write the metrics to this JSON file (needs SAMPLE)")
    parser.add_argument("--save_stats", type=Path, help="write REF's statistics and images as a reference .npz here")
    parser.add_argument("--save_stats_images", type=int,
                        help=f"images of REF kept in --save_stats for precision/recall (default {DEFAULT_SAVE_STATS_IMAGES}, "
                             "seeded random)")
    parser.add_argument("--inception_weights", type=Path,
                        help="pytorch-fid's pt_inception-2015-12-05-6726825d.pth (default: download once into the cache)")
    parser.add_argument("--features", default="inception",
                        help="feature space: inception (the published metric) or classifier:PATH, the penultimate "
                             "features of one of this package's classifier checkpoints at t=0 (works offline; numbers are "
                             "not comparable with published FIDs)")
    parser.add_argument("--batch_size", type=int, default=64, help="images per network forward")
    parser.add_argument("--device", default="auto", help="auto (CUDA when present), cpu, cuda or cuda:N")
    parser.add_argument("--fid_method", choices=("sqrtm", "eigh"), default="sqrtm",
                        help="sqrtm: scipy's sqrtm as the original; eigh: same value, several times faster")
    add_progress_flag(parser)
    parser.add_argument("--no_progress", action="store_true", help="same as --progress false (kept for older scripts)")
    return parser


def _same_file(a: Path, b: Path) -> bool:
    if a.exists() and b.exists():
        return a.samefile(b)
    return a.resolve() == b.resolve()


def _check_flags(args: argparse.Namespace) -> Path | None:
    """Refuse flag combinations that would be ignored or could not work, and missing input files; returns
    the classifier checkpoint of `--features classifier:PATH` (None for Inception features)."""
    from guided_diffusion.evaluation.features import parse_feature_spec

    if args.sample_batch is None and args.save_stats is None:
        raise UserError("give a SAMPLE.npz to evaluate, or --save_stats OUT.npz to only build a reference file")
    if args.sample_batch is None and args.json is not None:
        raise UserError("--json writes the metrics of a SAMPLE.npz, and none is given: add SAMPLE or drop --json")
    if args.save_stats_images is not None:
        if args.save_stats is None:
            raise UserError("--save_stats_images sets how many images --save_stats keeps: add --save_stats OUT.npz or drop it")
        if args.save_stats_images < 1:
            raise UserError(f"--save_stats_images must be positive, got {args.save_stats_images}")
    if args.batch_size < 1:
        raise UserError(f"--batch_size must be positive, got {args.batch_size}")
    for path in (args.ref_batch, args.sample_batch):
        if path is not None and not path.is_file():
            raise UserError(f"{path} not found; pass the path of an .npz batch")
    try:
        kind, classifier = parse_feature_spec(args.features)
    except ValueError as exc:
        raise UserError(f"--features: {exc}") from None
    if kind == "classifier":
        if args.inception_weights is not None:
            raise UserError(f"--inception_weights is not used with --features {args.features}: drop one of them")
        assert classifier is not None  # parse_feature_spec gives classifier:PATH a path
        if not Path(classifier).expanduser().is_file():
            raise UserError(f"--features {args.features}: {classifier} does not exist; pass a classifier checkpoint")
        return Path(classifier).expanduser()
    return None


def _check_weights(args: argparse.Namespace) -> None:
    if args.inception_weights is not None and not args.inception_weights.expanduser().is_file():
        raise UserError(f"--inception_weights {args.inception_weights} does not exist; pass pytorch-fid's "
                        "pt_inception-2015-12-05-6726825d.pth, or leave the flag out to use the cached download")


def _check_outputs(args: argparse.Namespace, classifier: Path | None) -> None:
    """Fail in one line before any feature is computed when --json or --save_stats cannot be written or
    would overwrite an input, or when the Inception weights would have to be downloaded into an unusable
    cache."""
    inputs = [("the reference batch", args.ref_batch), ("the sample batch", args.sample_batch),
              ("--inception_weights", args.inception_weights), ("the classifier of --features", classifier)]
    outputs = [("--json", args.json), ("--save_stats", args.save_stats)]
    for flag, path in outputs:
        if path is None:
            continue
        for role, given in inputs:
            if given is not None and _same_file(path, given):
                raise UserError(f"{flag} {path} is also {role}: it would be overwritten while it is read; "
                                "write to another file")
        if path.is_dir():
            raise UserError(f"{flag} {path} is a directory: pass a file name")
        problem = directory_write_problem(path.parent)
        if problem is not None:
            raise UserError(f"{flag} {path} cannot be written: {problem}")
    if args.json is not None and args.save_stats is not None and _same_file(args.json, args.save_stats):
        raise UserError(f"--json and --save_stats both name {args.json}: give them different files")
    from guided_diffusion.evaluation.npz import NpzArrayReader, npz_keys

    for path in (args.ref_batch, args.sample_batch):  # a damaged or object-holding batch fails here, not after the weights load
        if path is not None and "arr_0" in npz_keys(path):
            NpzArrayReader(path).close()
    if args.inception_weights is None and classifier is None:
        from guided_diffusion.evaluation.weights import INCEPTION_WEIGHTS_URL
        from guided_diffusion.runtime.download import cache_dir, check_cache_dir

        if not (cache_dir() / INCEPTION_WEIGHTS_URL.rsplit("/", 1)[-1]).is_file():
            check_cache_dir()


def _write_json_atomic(path: Path, payload: dict) -> None:
    atomic_write_bytes(path, (json.dumps(payload, indent=2) + "\n").encode())


class _Stopped(BaseException):
    """SIGINT or SIGTERM arrived (a BaseException, so no `except Exception` on the way swallows it)."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


@contextmanager
def _stop_on_signals() -> Iterator[None]:
    """SIGINT and SIGTERM unwind the work like an exception, so a reference file being written is
    discarded (no orphan temp file); later signals are ignored while that clean-up runs."""
    if threading.current_thread() is not threading.main_thread():  # signals reach the main thread only
        yield
        return
    received: list[int] = []

    def handler(signum: int, _frame: Any) -> None:
        received.append(signum)
        if len(received) == 1:
            raise _Stopped(signum)

    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


def main(argv: list[str] | None = None) -> int:
    try:
        args = _parser().parse_args(sys.argv[1:] if argv is None else argv)
    except SystemExit as exit_:  # --help (errors are UserErrors, one line through cli.main)
        return int(exit_.code or 0)
    classifier = _check_flags(args)
    _check_outputs(args, classifier)
    _check_weights(args)
    progress = progress_enabled(args.progress) and not args.no_progress
    try:
        with _stop_on_signals():
            return _evaluate(args, progress)
    except _Stopped as stop:
        if progress:  # end a progress bar's line first
            print(file=sys.stderr)
        print(f"evaluate stopped by {stop}: no output was written; run the same command again", file=sys.stderr)
        return 128 + stop.signum  # 130 for SIGINT, 143 for SIGTERM, as shells report them


def _evaluate(args: argparse.Namespace, progress: bool) -> int:
    from guided_diffusion.evaluation import evaluate, resolve_device, save_reference_batch
    from guided_diffusion.evaluation.features import feature_extractor_from_spec
    from guided_diffusion.evaluation.weights import InceptionWeightsUnavailable

    device = resolve_device(args.device)  # check before a possible weights download
    try:
        extractor = feature_extractor_from_spec(args.features, inception_weights=args.inception_weights, device=device,
                                                batch_size=args.batch_size, progress=progress)
    except InceptionWeightsUnavailable as exc:
        raise UserError(f"{exc}; or pass --inception_weights PATH to a copy you have, or evaluate offline with "
                        "--features classifier:PATH") from None
    save_images = args.save_stats_images if args.save_stats_images is not None else DEFAULT_SAVE_STATS_IMAGES
    if args.sample_batch is None:
        save_reference_batch(args.ref_batch, args.save_stats, extractor, max_images=save_images, progress=progress)
        print(f"wrote reference statistics to {args.save_stats} ({extractor.feature_space.describe()})")
        return 0

    result = evaluate(
        args.ref_batch, args.sample_batch, extractor, fid_method=args.fid_method, progress=progress,
        save_stats=args.save_stats, save_stats_images=save_images,
    )
    for line in result.lines():
        print(line)
    if args.json is not None:
        _write_json_atomic(args.json, {
            **result.to_dict(),
            "ref_batch": str(args.ref_batch),
            "sample_batch": str(args.sample_batch),
            "fid_method": args.fid_method,
            "features": args.features,
            "feature_space": extractor.feature_space.key,
        })
    return 0
