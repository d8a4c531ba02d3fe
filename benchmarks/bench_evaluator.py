"""Evaluator throughput on CPU: Inception features of 64x64 uint8 images streamed from an npz, with
random weights (speed does not depend on the weights' values), plus the FID step.

ours: `summarize_batch` as `guided-diffusion evaluate` runs it: batches of 64 read from the npz on a
background thread, batch norm folded into the convolutions, channels-last layout, inference mode;
the time includes the statistics (np.cov).
baseline (same process, same weights, same images): a straightforward port, one image at a time
through the unfolded network in NCHW layout under no_grad (the per-image loop of simple FID scripts),
on the first --baseline_images images (its images/s does not depend on the count).
The FID step is timed with the original's scipy sqrtm and with the eigh method on full-rank 2048-d
statistics (what 50k samples give).

    python benchmarks/bench_evaluator.py                    # 1000 images, baseline on 100
    python benchmarks/bench_evaluator.py --images 200 --baseline_images 20
"""
from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

from guided_diffusion.evaluation import (
    InceptionFeatureExtractor,
    InceptionV3,
    frechet_distance,
    statistics,
    summarize_batch,
)


def random_network(seed: int = 0) -> InceptionV3:
    """He-initialised weights and non-trivial batch-norm statistics (realistic activation scales)."""
    generator = torch.Generator().manual_seed(seed)
    network = InceptionV3()
    with torch.no_grad():
        for module in network.modules():
            if isinstance(module, nn.Conv2d):
                fan_in = module.weight[0].numel()
                module.weight.copy_(torch.randn(module.weight.shape, generator=generator) * (2.0 / fan_in) ** 0.5)
            elif isinstance(module, nn.BatchNorm2d):
                module.running_var.copy_(torch.rand(module.num_features, generator=generator) + 0.5)
    return network.eval()


def baseline_features(network: InceptionV3, images: np.ndarray) -> np.ndarray:
    pools = []
    with torch.no_grad():
        for image in images:
            x = torch.from_numpy(image).permute(2, 0, 1)[None].float().contiguous()
            pools.append(network(x).pool.numpy())
    return np.concatenate(pools)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=1000)
    parser.add_argument("--baseline_images", type=int, default=100)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--batch_size", type=int, default=64)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: leave as is)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    images = np.random.default_rng(0).integers(0, 256, size=(args.images, args.size, args.size, 3), dtype=np.uint8)
    weights = random_network().state_dict()
    print(f"CPU threads: {torch.get_num_threads()}; {args.images} images of {args.size}x{args.size}")

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "samples.npz"
        np.savez(path, images)
        network = InceptionV3()
        network.load_state_dict(weights)
        extractor = InceptionFeatureExtractor(network, device="cpu", batch_size=args.batch_size)
        extractor.extract(images[:2])  # warm-up (oneDNN primitive creation)
        start = time.perf_counter()
        summary = summarize_batch(path, extractor, progress=False)
        ours_seconds = time.perf_counter() - start

    plain = InceptionV3()
    plain.load_state_dict(weights)
    plain.eval()
    baseline_features(plain, images[:1])  # warm-up
    subset = images[: args.baseline_images]
    start = time.perf_counter()
    plain_pool = baseline_features(plain, subset)
    baseline_seconds = time.perf_counter() - start
    deviation = np.abs(plain_pool - summary.pool[: len(subset)]).max() / np.abs(plain_pool).max()

    ours_rate = args.images / ours_seconds
    baseline_rate = len(subset) / baseline_seconds
    print(f"ours:     {ours_rate:7.2f} images/s  ({args.images} images in {ours_seconds:.1f} s, incl. npz reads and np.cov)")
    print(f"baseline: {baseline_rate:7.2f} images/s  ({len(subset)} images in {baseline_seconds:.1f} s, per-image, unfolded BN)")
    print(f"ratio (ours / baseline): {ours_rate / baseline_rate:.2f}x; max relative feature difference {deviation:.1e}")

    # FID step on full-rank 2048-d statistics, as with the paper's 50k samples (1k images would give
    # singular covariances, which sends sqrtm down a slower complex path and is not representative).
    rng = np.random.default_rng(1)
    mixing = rng.standard_normal((2048, 2048)) / 45
    stats_a = statistics(rng.standard_normal((4096, 2048)) @ mixing)
    stats_b = statistics(rng.standard_normal((4096, 2048)) @ mixing * 1.1 + 0.05)
    timings = {}
    for method in ("sqrtm", "eigh"):
        start = time.perf_counter()
        value = frechet_distance(*stats_a, *stats_b, method=method)
        timings[method] = time.perf_counter() - start
        print(f"FID step ({method:5s}, full-rank 2048-d statistics): {timings[method]:6.2f} s, FID {value:.10f}")
    print(f"FID step ratio (sqrtm / eigh): {timings['sqrtm'] / timings['eigh']:.1f}x")


if __name__ == "__main__":
    main()
