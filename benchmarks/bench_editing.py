"""Editing and restoring on the demo's trained digits models: the figures of docs/editing.md.

Train the models once with `guided-diffusion demo --out_dir /tmp/demo_full`, then

    python benchmarks/bench_editing.py --demo_dir /tmp/demo_full [--figure docs/images/editing_digits.png]

On the held-out digits (never trained on) it prints:
- inversion: round-trip PSNR of DDIM inversion + DDIM sampling at 50 steps, plain and refined;
- class editing: SDEdit with classifier guidance towards class (c + 1) mod 10, the judge's accuracy on the
  target class (and how often it still reads the source class);
- inpainting the lower half: the judge's accuracy on the true class for RePaint and DPS, against the
  unguided sampler from the same noise (chance level), and whether the known half is unchanged;
- 2x super-resolution from 4x4 box-downsampled digits: PSNR of DPS against bicubic upsampling.
Every quality figure is a comparison within this one process (same images, same noise).
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw, ImageFont

from guided_diffusion.config import DiffusionConfig
from guided_diffusion.demo.data import load_digits_dataset
from guided_diffusion.demo.judge import JudgeFeatures
from guided_diffusion.editing import (
    DownsampleOperator,
    MaskOperator,
    X0Predictor,
    ddim_invert,
    measurement_cond_fn,
    paste_known,
    psnr,
    repaint,
    sdedit,
)
from guided_diffusion.editing.io import to_model_input, to_uint8_images
from guided_diffusion.runtime.atomic import atomic_write_path
from guided_diffusion.runtime.rng import SampleNoise
from guided_diffusion.sampling.guidance import GuidedModel, classifier_cond_fn
from guided_diffusion.sampling.samplers import SAMPLERS
from guided_diffusion.sampling.settings import SamplerSettings
from guided_diffusion.weights.checkpoints import load_model, read_config_json


def _checkpoint(run_dir: Path, pattern: str) -> Path:
    found = sorted(run_dir.glob(pattern))
    if not found:
        raise SystemExit(f"no {pattern} in {run_dir}: train the demo first (guided-diffusion demo --out_dir DIR)")
    return found[-1]


def _in_batches(fn, count: int, batch: int) -> torch.Tensor:
    return torch.cat([fn(list(range(start, min(start + batch, count)))) for start in range(0, count, batch)])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--demo_dir", default="/tmp/demo_full", help="output folder of `guided-diffusion demo`")
    parser.add_argument("--num_images", type=int, default=0, help="held-out digits to use (0 = all 359)")
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--batch_size", type=int, default=128)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--edit_strength", type=float, default=0.8)
    parser.add_argument("--edit_scale", type=float, default=8.0)
    parser.add_argument("--jump_length", type=int, default=5)
    parser.add_argument("--jump_n_sample", type=int, default=5)
    parser.add_argument("--inpaint_dps_scale", type=float, default=0.5)
    parser.add_argument("--sr_dps_scale", type=float, default=4.0)
    parser.add_argument("--figure", default="", help="write the docs/editing.md picture here (PNG; needs every part)")
    parser.add_argument("--parts", default="inversion,editing,inpainting,super_res",
                        help="comma list of the parts to run (default: all four)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    root = Path(args.demo_dir) / "checkpoints"
    unet_path = _checkpoint(root / "diffusion", "ema_*.pt")
    unet = load_model(unet_path).eval()
    guide = load_model(_checkpoint(root / "classifier", "model*.pt")).eval()
    judge = JudgeFeatures(load_model(_checkpoint(root / "judge", "model*.pt")).eval())
    diffusion = DiffusionConfig.from_dict(read_config_json(unet_path)["diffusion"]).replace(timestep_respacing="").build()
    model = GuidedModel(unet, class_cond=False)
    settings = SamplerSettings(sampler="ddim", steps=args.steps)
    denoiser = settings.denoiser(model, diffusion)

    digits = load_digits_dataset()
    images, labels = digits.subset(digits.test)
    if args.num_images:
        images, labels = images[: args.num_images], labels[: args.num_images]
    n, batch, seed = len(images), args.batch_size, args.seed
    x = to_model_input(images)
    print(f"{n} held-out digits, {args.steps}-point {denoiser.num_steps}-step grid, seed {seed}; "
          f"judge reads the originals right {np.mean(judge.predict(images) == labels):.1%} of the time")
    figure: dict[str, np.ndarray] = {"original": images}

    parts = set(args.parts.split(","))
    # 1. inversion round trip
    for refine in (0, 6) if "inversion" in parts else ():
        begin = time.perf_counter()

        def invert_back(idx: list[int], refine: int = refine) -> torch.Tensor:
            latents = ddim_invert(denoiser, x[idx], refine=refine)
            return SAMPLERS["ddim"](denoiser, latents, clip_denoised=False)

        back = to_uint8_images(_in_batches(invert_back, n, batch))
        values = psnr(back, images).clamp(max=100)
        print(f"inversion, refine <= {refine}, then DDIM back: round-trip PSNR {values.mean():.2f} dB mean, "
              f"{values.median():.2f} median, {values.min():.2f} worst, {float((values >= 30).float().mean()):.1%} of images >= 30 dB "
              f"[{time.perf_counter() - begin:.0f} s]")
        figure[f"inverted{refine}"] = back

    # 2. class editing with classifier guidance
    targets = (labels + 1) % 10
    cond_fn = classifier_cond_fn(guide, args.edit_scale)
    for strength in sorted({0.6, args.edit_strength, 1.0}) if "editing" in parts else ():
        def edit(idx: list[int], strength: float = strength) -> torch.Tensor:
            return sdedit(denoiser, x[idx], strength=strength, sampler="ddim", noise=SampleNoise(seed, idx),
                          cond_fn=cond_fn, model_kwargs={"y": torch.as_tensor(targets[idx])})

        edited = to_uint8_images(_in_batches(edit, n, batch))
        read = judge.predict(edited)
        print(f"class editing (SDEdit, ddim, strength {strength:g}, classifier scale {args.edit_scale:g}) -> (c+1) mod 10: "
              f"judge reads the target {np.mean(read == targets):.1%}, the source {np.mean(read == labels):.1%}")
        if strength == args.edit_strength:
            figure["edited"] = edited

    # 3. inpainting the lower half
    predict_x0 = X0Predictor(model, diffusion)
    if "inpainting" in parts:
        _inpainting(args, denoiser, model, diffusion, predict_x0, judge, x, images, labels, figure)
    # 4. 2x super-resolution from 4x4
    if "super_res" in parts:
        _super_resolution(args, model, diffusion, predict_x0, x, images, figure)
    if args.figure:
        _write_figure(Path(args.figure), figure)
        print(f"wrote {args.figure}")


def _inpainting(args, denoiser, model, diffusion, predict_x0, judge, x, images, labels, figure) -> None:
    n, batch, seed = len(images), args.batch_size, args.seed
    keep = torch.zeros(n, 1, 8, 8)
    keep[:, :, :4] = 1
    keep_hw = keep.numpy().transpose(0, 2, 3, 1) > 0.5
    start = _in_batches(lambda idx: SampleNoise(seed, idx).randn((len(idx), 3, 8, 8)), n, batch)
    unguided = to_uint8_images(_in_batches(lambda idx: SAMPLERS["ddim"](denoiser, start[idx]), n, batch))
    unguided_accuracy = np.mean(judge.predict(unguided) == labels)
    print(f"inpainting the lower half: unguided samples from the same noise read as the true class {unguided_accuracy:.1%} (chance)")
    for jump_length, jump_n in ((1, 1), (args.jump_length, args.jump_n_sample)):
        def fill(idx: list[int], jump_length: int = jump_length, jump_n: int = jump_n) -> torch.Tensor:
            noise = SampleNoise(seed, idx)
            z = noise.randn((len(idx), 3, 8, 8))
            return repaint(denoiser, z, known=x[idx], mask=keep[idx], jump_length=jump_length, jump_n_sample=jump_n,
                           noise=noise)

        filled = to_uint8_images(_in_batches(fill, n, batch))
        unchanged = bool((filled[keep_hw.repeat(3, -1)] == images[keep_hw.repeat(3, -1)]).all())
        print(f"  RePaint (jumps {jump_length}x{jump_n}, {len(range(args.steps)) * jump_n} NFE): judge accuracy on the true class "
              f"{np.mean(judge.predict(filled) == labels):.1%}; known half unchanged: {unchanged}")
        figure["inpainted"] = filled
    ddpm = SamplerSettings(sampler="ddpm", steps=args.steps).denoiser(model, diffusion)

    def dps_fill(idx: list[int]) -> torch.Tensor:
        noise = SampleNoise(seed, idx)
        z = noise.randn((len(idx), 3, 8, 8))
        cond = measurement_cond_fn(MaskOperator(keep[idx]), keep[idx] * x[idx], args.inpaint_dps_scale, predict_x0=predict_x0)
        return paste_known(SAMPLERS["ddpm"](ddpm, z, noise=noise, cond_fn=cond), x[idx], keep[idx])

    filled = to_uint8_images(_in_batches(dps_fill, n, batch))
    print(f"  DPS (ddpm, scale {args.inpaint_dps_scale:g}): judge accuracy on the true class {np.mean(judge.predict(filled) == labels):.1%}")
    figure["masked"] = np.where(keep_hw, images, 128).astype(np.uint8)


def _super_resolution(args, model, diffusion, predict_x0, x, images, figure) -> None:
    n, batch, seed = len(images), args.batch_size, args.seed
    down = DownsampleOperator(2)
    low = down(x)
    bicubic = to_uint8_images(F.interpolate(low, scale_factor=2, mode="bicubic", align_corners=False).clamp(-1, 1))
    print(f"2x super-resolution from 4x4: bicubic PSNR {psnr(bicubic, images).mean():.2f} dB")
    den = SamplerSettings(steps=args.steps).denoiser(model, diffusion)
    # The default x0-space step at the bench's scale with both samplers, then the paper's zeta/||r|| step.
    for sampler, step, scale in (("ddpm", "x0", args.sr_dps_scale), ("ddim", "x0", args.sr_dps_scale),
                                 ("ddpm", "dps", 0.5), ("ddpm", "dps", 1.0), ("ddpm", "dps", 2.0)):
        def upsample(idx: list[int], sampler: str = sampler, step: str = step, scale: float = scale) -> torch.Tensor:
            noise = SampleNoise(seed, idx)
            z = noise.randn((len(idx), 3, 8, 8))
            cond = measurement_cond_fn(down, low[idx], scale, predict_x0=predict_x0, step=step)
            return SAMPLERS[sampler](den, z, noise=noise, cond_fn=cond)

        restored = to_uint8_images(_in_batches(upsample, n, batch))
        print(f"  DPS ({sampler}, step {step}, scale {scale:g}): PSNR {psnr(restored, images).mean():.2f} dB; "
              f"measurement RMSE {float((down(to_model_input(restored)) - low).pow(2).mean().sqrt()) * 127.5:.1f} grey levels")
        if (sampler, step) == ("ddpm", "x0"):
            figure["super_res"] = restored
    figure["low_res"] = to_uint8_images(F.interpolate(low, scale_factor=2, mode="nearest"))
    figure["bicubic"] = bicubic


def _write_figure(path: Path, parts: dict[str, np.ndarray], count: int = 8, zoom: int = 8, gap: int = 4) -> None:
    """Four titled panels side by side: inversion (original, round trip), class editing (original, edited
    to c + 1), inpainting (lower half masked, RePaint), super-resolution (4x4 input, bicubic, DPS, original)."""
    panels = [
        ("inversion", ["original", "inverted6"]), ("class edit c -> c+1", ["original", "edited"]),
        ("inpainting", ["masked", "inpainted"]), ("2x super-resolution", ["low_res", "bicubic", "super_res", "original"]),
    ]
    count = min(count, len(parts["original"]))
    cell, header, spacer = 8 * zoom + gap, 16, gap * 4
    width = sum(len(names) for _, names in panels) * cell + spacer * (len(panels) - 1) + gap
    sheet = np.full((header + count * cell + gap, width, 3), 255, dtype=np.uint8)
    titles = []
    left = gap
    for title, names in panels:
        titles.append((left, title))
        for name in names:
            for row in range(count):
                top = header + gap + row * cell
                sheet[top : top + 8 * zoom, left : left + 8 * zoom] = np.kron(parts[name][row], np.ones((zoom, zoom, 1), np.uint8))
            left += cell
        left += spacer
    image = Image.fromarray(sheet)
    draw = ImageDraw.Draw(image)
    for x, title in titles:
        draw.text((x, 3), title, fill=(0, 0, 0), font=ImageFont.load_default())
    atomic_write_path(path, lambda tmp: image.save(tmp, format="PNG"))

if __name__ == "__main__":
    main()
