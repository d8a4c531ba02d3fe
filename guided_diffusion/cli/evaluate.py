"""`guided-diffusion evaluate REF.npz SAMPLE.npz`: the original evaluator's five metrics, in PyTorch."""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from guided_diffusion.runtime.atomic import atomic_write_bytes, directory_write_problem
from guided_diffusion.runtime.errors import UserError

DESCRIPTION = """\
Compare a sample batch with a reference batch (npz files whose arr_0 holds uint8 NHWC images) and print
Inception Score, FID, sFID, Precision and Recall as OpenAI's evaluator does. Precomputed mu/sigma/mu_s/
sigma_s in a file are used instead of the statistics of its images. With --save_stats and no SAMPLE,
only writes a reference file for REF (statistics of all its images plus 10k of them for precision/recall).
"""


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="guided-diffusion evaluate", description=DESCRIPTION, allow_abbrev=False)
    parser.add_argument("ref_batch", help="reference .npz (e.g. VIRTUAL_imagenet256_labeled.npz)")
    parser.add_argument("sample_batch", nargs="?", help="sample .npz to evaluate")
    parser.add_argument("--json", type=Path, help="also write the metrics to this JSON file")
    parser.add_argument("--save_stats", type=Path, help="write REF's statistics and images as a reference .npz here")
    parser.add_argument("--save_stats_images", type=int, default=10_000,
                        help="images of REF kept in --save_stats for precision/recall (default 10000, seeded random)")
    parser.add_argument("--inception_weights", type=Path,
                        help="pytorch-fid's pt_inception-2015-12-05-6726825d.pth (default: download once into the cache)")
    parser.add_argument("--features", default="inception",
                        help="feature space: inception (default, the published metric) or classifier:PATH, the penultimate "
                             "features of one of this package's classifier checkpoints at t=0 (works offline; numbers are "
                             "not comparable with published FIDs)")
    parser.add_argument("--batch_size", type=int, default=64, help="images per Inception forward (default 64)")
    parser.add_argument("--device", default="auto", help="auto (CUDA when present), cpu, cuda or cuda:N")
    parser.add_argument("--fid_method", choices=("sqrtm", "eigh"), default="sqrtm",
                        help="sqrtm: scipy's sqrtm as the original (default); eigh: same value, several times faster")
    parser.add_argument("--no_progress", action="store_true", help="no progress bars or status lines")
    return parser


def _check_outputs(args: argparse.Namespace) -> None:
    """Fail in one line before any feature is computed when --json or --save_stats cannot be written, or
    when the Inception weights would have to be downloaded into an unusable cache."""
    for flag, path in (("--json", args.json), ("--save_stats", args.save_stats)):
        if path is None:
            continue
        if path.is_dir():
            raise UserError(f"{flag} {path} is a directory: pass a file name")
        problem = directory_write_problem(path.parent)
        if problem is not None:
            raise UserError(f"{flag} {path} cannot be written: {problem}")
    from guided_diffusion.evaluation.npz import NpzArrayReader, npz_keys

    for path in (args.ref_batch, args.sample_batch):  # a damaged or object-holding batch fails here, not after the weights load
        if path is not None and "arr_0" in npz_keys(path):
            NpzArrayReader(path).close()
    if args.inception_weights is None and getattr(args, "features", "inception") == "inception":
        from guided_diffusion.evaluation.weights import INCEPTION_WEIGHTS_URL
        from guided_diffusion.runtime.download import cache_dir, check_cache_dir

        if not (cache_dir() / INCEPTION_WEIGHTS_URL.rsplit("/", 1)[-1]).is_file():
            check_cache_dir()


def _write_json_atomic(path: Path, payload: dict) -> None:
    atomic_write_bytes(path, (json.dumps(payload, indent=2) + "\n").encode())


def main(argv: list[str] | None = None) -> int:
    try:
        args = _parser().parse_args(argv)
    except SystemExit as exit_:  # --help or a usage error (already printed)
        return int(exit_.code or 0)
    if args.sample_batch is None and args.save_stats is None:
        raise UserError("give a SAMPLE.npz to evaluate, or --save_stats OUT.npz to only build a reference file")
    if args.save_stats_images < 1:
        raise UserError(f"--save_stats_images must be positive, got {args.save_stats_images}")
    for path in (args.ref_batch, args.sample_batch):
        if path is not None and not Path(path).is_file():
            raise UserError(f"{path} not found; pass the path of an .npz batch")

    if args.batch_size < 1:
        raise UserError(f"--batch_size must be positive, got {args.batch_size}")
    _check_outputs(args)

    from guided_diffusion.evaluation import evaluate, resolve_device, save_reference_batch
    from guided_diffusion.evaluation.features import feature_extractor_from_spec, parse_feature_spec

    try:
        parse_feature_spec(args.features)
    except ValueError as exc:
        raise UserError(f"--features: {exc}") from None
    device = resolve_device(args.device)  # check before a possible weights download
    progress = not args.no_progress
    extractor = feature_extractor_from_spec(
        args.features, inception_weights=args.inception_weights, device=device, batch_size=args.batch_size, progress=progress
    )
    if args.sample_batch is None:
        save_reference_batch(args.ref_batch, args.save_stats, extractor, max_images=args.save_stats_images,
                             progress=progress)
        print(f"wrote reference statistics to {args.save_stats}")
        return 0

    result = evaluate(
        args.ref_batch, args.sample_batch, extractor, fid_method=args.fid_method, progress=progress,
        save_stats=args.save_stats, save_stats_images=args.save_stats_images,
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
        })
    return 0
