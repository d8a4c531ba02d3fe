"""bfloat16 against float32 on a CPU, for classifier-guided sampling (issue 22).

1. Speed: guided DDIM sampling (`--steps` steps, batch `--batch`) with the 64x64 ADM and its classifier
   (released architectures, random weights). The paths run interleaved in one process on the same
   weights and noise, so machine load hits all of them alike; only their ratios mean something:
     original fp32   the original's arithmetic: explicit-formula attention, schedule arrays uploaded from
                     NumPy at every lookup, the timestep map rebuilt at every call (the baseline)
     fp32            this package's default path
     bf16 autocast   float32 weights under torch.autocast (what `--bf16` did before issue 22)
     bf16            `--bf16`: networks prepared by `runtime.performance.prepare_for_bf16` (bfloat16
                     torso weights cast once, channels-last; classifier forward and backward in bfloat16,
                     its gradient returned in float32)
   For each: seconds per run and the speed-up over the original fp32 (median over rounds of the ratio
   within a round), by wall-clock and by this process's CPU time (at one thread the robust one on a
   shared machine: time spent descheduled is not counted), the relative difference of the final samples
   and the PSNR of their uint8 images against the original fp32. `--parts` also times the UNet forward
   and the classifier's forward + backward alone. The machine's load (`uptime`) is printed around each.
2. Accuracy where it can be judged: the demo's trained digits models (`--models`, one or more
   `guided-diffusion demo` output folders): `--samples` guided DDIM samples at scale 4 in float32 and in
   bfloat16 from the same noise; the judge's accuracy on the intended class in each, and the PSNR
   between the two sets.

    python benchmarks/bench_bf16_cpu.py --threads 1 --models /work/demo_full /work/demo_quick
"""
from __future__ import annotations

import argparse
import copy
import os
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).parent))

from bench_guided_ddim_step import PlainDiffusion
from common import released_network

from guided_diffusion.config import DiffusionConfig
from guided_diffusion.config.presets import PRESETS
from guided_diffusion.demo.judge import JudgeFeatures
from guided_diffusion.diffusion.schedules import get_named_beta_schedule
from guided_diffusion.models.attention import attention_backend
from guided_diffusion.runtime.autocast import bf16_is_native
from guided_diffusion.runtime.performance import prepare_for_bf16
from guided_diffusion.sampling.guidance import GuidedModel, classifier_cond_fn
from guided_diffusion.sampling.output import to_uint8
from guided_diffusion.weights.checkpoints import load_model, read_config_json

BF16 = torch.bfloat16


def load_text() -> str:
    """`uptime`'s line (load averages over 1, 5 and 15 minutes), or the same numbers from os.getloadavg."""
    if shutil.which("uptime"):
        return subprocess.run(["uptime"], capture_output=True, text=True, check=False).stdout.strip()
    one, five, fifteen = os.getloadavg()
    return f"load average: {one:.2f}, {five:.2f}, {fifteen:.2f}"


def psnr(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Per-image PSNR in dB between uint8 image sets (inf where identical)."""
    mse = ((a.astype(np.float64) - b.astype(np.float64)) ** 2).reshape(len(a), -1).mean(1)
    with np.errstate(divide="ignore"):
        return 10 * np.log10(255.0**2 / mse)


def psnr_text(values: np.ndarray) -> str:
    finite = values[np.isfinite(values)]
    if not len(finite):
        return "identical images"
    return (f"PSNR {np.mean(finite):.1f} dB mean over the {len(finite)} of {len(values)} images that differ, "
            f"{np.min(values):.1f} dB worst")


Timings = dict[str, dict[str, list[float]]]  # {"wall"|"cpu": {path: seconds per round}}


def interleaved(paths: dict[str, Callable[[], torch.Tensor]], rounds: int) -> tuple[Timings, dict[str, torch.Tensor]]:
    """One warm-up call per path, then `rounds` rounds calling every path once, in turn. Records wall time
    and this process's CPU time (with one thread the latter does not count time spent descheduled, so
    other jobs on the machine barely move it)."""
    outputs = {name: fn() for name, fn in paths.items()}
    times: Timings = {"wall": {name: [] for name in paths}, "cpu": {name: [] for name in paths}}
    for _ in range(rounds):
        for name, fn in paths.items():
            wall, cpu = time.perf_counter(), time.process_time()
            fn()
            times["cpu"][name].append(time.process_time() - cpu)
            times["wall"][name].append(time.perf_counter() - wall)
    return times, outputs


def speedups(times: dict[str, list[float]], baseline: str) -> dict[str, list[float]]:
    """Per round, baseline time / path time (each ratio within one round, so load drift cancels)."""
    return {name: [b / t for b, t in zip(times[baseline], ts)] for name, ts in times.items()}


def speed_table(title: str, times: Timings, outputs: dict[str, torch.Tensor], baseline: str, images: bool) -> None:
    """Print median seconds and the median speed-up over rounds (range in brackets), by wall and by CPU
    time, with the relative difference of each path's output from the baseline's."""
    print(f"\n{title}")
    print(f"{'path':<16}{'wall s':>8}{'speed-up (wall)':>22}{'CPU s':>8}{'speed-up (CPU)':>22}{'rel. diff':>11}"
          + ("   uint8 PSNR vs baseline" if images else ""))
    ratios = {clock: speedups(times[clock], baseline) for clock in ("wall", "cpu")}
    for name in times["wall"]:
        cells = []
        for clock in ("wall", "cpu"):
            r = ratios[clock][name]
            cells.append(f"{statistics.median(times[clock][name]):>8.2f}"
                         f"{f'{statistics.median(r):.2f}x ({min(r):.2f}-{max(r):.2f})':>22}")
        ref, out = outputs[baseline].double(), outputs[name].double()
        line = f"{name:<16}{''.join(cells)}{float((out - ref).norm() / ref.norm()):>11.1e}"
        if images and name != baseline:
            values = psnr(to_uint8(outputs[baseline]).numpy(), to_uint8(outputs[name]).numpy())
            line += "   " + (f"{np.mean(values):.1f} dB mean, {np.min(values):.1f} dB worst"
                             if np.isfinite(values).any() else "identical")
        print(line, flush=True)


def speed(args: argparse.Namespace) -> None:
    preset = PRESETS[args.preset]
    model_cfg, unet = released_network(args.preset, 0)
    _, classifier = released_network(preset.classifier, 1)
    size = model_cfg.image_size
    unet_bf16 = prepare_for_bf16(copy.deepcopy(unet))
    classifier_bf16 = prepare_for_bf16(copy.deepcopy(classifier))

    diff_cfg = DiffusionConfig.from_dict({**preset.flags, "timestep_respacing": f"ddim{args.steps}"})
    fast = diff_cfg.build()
    plain = PlainDiffusion(
        use_timesteps=fast.timestep_map,
        betas=get_named_beta_schedule(diff_cfg.noise_schedule, diff_cfg.diffusion_steps),
        model_mean_type=fast.model_mean_type, model_var_type=fast.model_var_type, loss_type=fast.loss_type,
        rescale_timesteps=fast.rescale_timesteps,
    )
    generator = torch.Generator().manual_seed(0)
    noise = torch.randn(args.batch, 3, size, size, generator=generator)
    y = torch.randint(0, 1000, (args.batch,), generator=generator)
    scale = preset.classifier_scale
    cpu = torch.device("cpu")

    def sampling(diffusion, model_fn, cond_fn, math_attention=False):
        @torch.no_grad()  # cond_fn enables gradients for the classifier alone
        def run():
            with attention_backend("math" if math_attention else "sdpa"):
                return diffusion.ddim_sample_loop(model_fn, noise.shape, noise=noise, cond_fn=cond_fn,
                                                  model_kwargs={"y": y}, device=cpu)
        return run

    def ours(model, clf, dtype):
        return sampling(fast, GuidedModel(model, class_cond=True, autocast_dtype=dtype),
                        classifier_cond_fn(clf, scale, autocast_dtype=dtype))

    paths = {
        "original fp32": sampling(plain, unet, classifier_cond_fn(classifier, scale), math_attention=True),
        "fp32": ours(unet, classifier, None),
        "bf16 autocast": ours(unet, classifier, BF16),
        "bf16": ours(unet_bf16, classifier_bf16, BF16),
    }
    print(f"\n[{load_text()}]")
    times, outputs = interleaved(paths, args.rounds)
    speed_table(f"guided DDIM sampling, {args.steps} steps, {args.preset} + {preset.classifier} (random weights), "
                f"batch {args.batch}, {args.rounds} rounds", times, outputs, "original fp32", images=True)
    print(f"[{load_text()}]")
    if not args.parts:
        return

    t = torch.full((args.batch,), 500)

    def unet_forward(model, dtype, math_attention=False):
        model_fn = GuidedModel(model, class_cond=True, autocast_dtype=dtype)

        @torch.no_grad()
        def run():
            with attention_backend("math" if math_attention else "sdpa"):
                return model_fn(noise, t, y=y)
        return run

    def classifier_gradient(clf, dtype, math_attention=False):
        cond_fn = classifier_cond_fn(clf, scale, autocast_dtype=dtype)

        def run():
            with attention_backend("math" if math_attention else "sdpa"):
                return cond_fn(noise, t, y=y)
        return run

    for title, make in (("UNet forward", unet_forward), ("classifier forward + backward (guidance gradient)", classifier_gradient)):
        nets = (unet, unet_bf16) if make is unet_forward else (classifier, classifier_bf16)
        part_paths = {"original fp32": make(nets[0], None, True), "fp32": make(nets[0], None),
                      "bf16 autocast": make(nets[0], BF16), "bf16": make(nets[1], BF16)}
        times, outputs = interleaved(part_paths, args.rounds)
        speed_table(f"{title}, batch {args.batch}", times, outputs, "original fp32", images=False)
    print(f"[{load_text()}]")


def _checkpoint(folder: Path, pattern: str) -> Path:
    found = sorted(folder.glob(pattern))
    if not found:
        raise SystemExit(f"no {pattern} in {folder}: pass --models folders written by `guided-diffusion demo`")
    return found[-1]


def digits(folder: Path, args: argparse.Namespace) -> None:
    root = folder / "checkpoints"
    unet_path = _checkpoint(root / "diffusion", "ema_*.pt")
    unet = load_model(unet_path).eval()
    guide = load_model(_checkpoint(root / "classifier", "model*.pt")).eval()
    judge = JudgeFeatures(load_model(_checkpoint(root / "judge", "model*.pt")).eval())
    saved = read_config_json(unet_path)
    assert saved is not None, f"{unet_path} has no config.json beside it"
    diffusion = DiffusionConfig.from_dict(saved["diffusion"]).replace(timestep_respacing=str(args.digit_steps)).build()
    size = unet.image_size
    labels = torch.arange(args.samples) % 10
    noise = torch.randn(args.samples, 3, size, size, generator=torch.Generator().manual_seed(0))
    networks = {"fp32": (unet, guide, None),
                "bf16": (prepare_for_bf16(copy.deepcopy(unet)), prepare_for_bf16(copy.deepcopy(guide)), BF16)}
    images = {}
    for name, (model, clf, dtype) in networks.items():
        model_fn = GuidedModel(model, class_cond=False, autocast_dtype=dtype)
        cond_fn = classifier_cond_fn(clf, args.digit_scale, autocast_dtype=dtype)
        with torch.no_grad():
            out = diffusion.ddim_sample_loop(model_fn, noise.shape, noise=noise, cond_fn=cond_fn,
                                             model_kwargs={"y": labels}, device=torch.device("cpu"))
        images[name] = to_uint8(out).numpy()
    accuracy = {name: float(np.mean(judge.predict(imgs) == labels.numpy())) for name, imgs in images.items()}
    print(f"\ndigits models in {folder}: {args.samples} samples, classifier scale {args.digit_scale}, DDIM "
          f"{args.digit_steps} steps: judge accuracy fp32 {accuracy['fp32']:.3f}, bf16 {accuracy['bf16']:.3f} "
          f"(difference {accuracy['bf16'] - accuracy['fp32']:+.3f}); {psnr_text(psnr(images['fp32'], images['bf16']))}",
          flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", default="64x64_diffusion")
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--steps", type=int, default=2, help="guided DDIM steps of the timed sampling run")
    parser.add_argument("--rounds", type=int, default=3, help="timed rounds after one warm-up round")
    parser.add_argument("--parts", action="store_true", help="also time the UNet forward and the classifier gradient")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: leave as is)")
    parser.add_argument("--models", nargs="*", default=[], help="demo output folders for the digits check")
    parser.add_argument("--samples", type=int, default=500)
    parser.add_argument("--digit_scale", type=float, default=4.0)
    parser.add_argument("--digit_steps", type=int, default=20)
    parser.add_argument("--skip_speed", action="store_true", help="only the digits check")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    cpu = torch.device("cpu")
    print(f"torch {torch.__version__}; bf16_is_native(cpu): {bf16_is_native(cpu)}; {torch.get_num_threads()} "
          f"thread(s) on {os.cpu_count()} cores; {load_text()}")
    if not args.skip_speed:
        speed(args)
    for folder in args.models:
        digits(Path(folder), args)
    if args.models:
        print(f"[{load_text()}]")
    else:
        print("\ndigits check skipped: pass --models DIR [DIR ...] (`guided-diffusion demo` output folders)")


if __name__ == "__main__":
    main()
