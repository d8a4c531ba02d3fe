"""The sampling commands' flags (image_sample, classifier_sample, super_res_sample, image_nll; tune_steps
takes classifier_sample's): every flag of the original script with the original default, so the README's
flag strings work verbatim, plus the additions in their own help group. `cli.sample_job` turns them
into a job."""
from __future__ import annotations

import argparse
from typing import Any

from guided_diffusion.cli.parsing import OneLineParser, add_bf16_flag, add_progress_flag
from guided_diffusion.cli.resumable import add_resume_flags
from guided_diffusion.cli.solver_flags import add_grid_flags, add_guidance_steering_flags, add_sampler_flags
from guided_diffusion.config.flags import (
    add_dict_to_argparser,
    classifier_defaults,
    model_and_diffusion_defaults,
    sr_model_and_diffusion_defaults,
    str2bool,
)
from guided_diffusion.sampling.samplers import SAMPLERS

__all__ = ["build_parser"]


def _original_defaults(command: str) -> dict[str, Any]:
    """The flags and defaults of the original script `command`.py."""
    run = dict(clip_denoised=True, num_samples=10000, batch_size=16, use_ddim=False, model_path="")
    if command == "classifier_sample" or command == "tune_steps":
        return {**run, "classifier_path": "", "classifier_scale": 1.0, **model_and_diffusion_defaults(), **classifier_defaults()}
    if command == "image_sample":
        return {**run, **model_and_diffusion_defaults()}
    if command == "super_res_sample":
        return {**run, "base_samples": "", **sr_model_and_diffusion_defaults()}
    if command == "image_nll":
        return dict(data_dir="", clip_denoised=True, num_samples=1000, batch_size=1, model_path="", **model_and_diffusion_defaults())
    raise ValueError(command)


def _description(command: str) -> str:
    samplers = ", ".join(SAMPLERS)
    what = {"image_nll": "Bits/dim of a diffusion model on an image folder (with per-timestep terms)."}.get(
        command, f"Draw samples into --out_dir as samples_NxHxWx3.npz. Samplers: {samplers}.")
    return f"{what} Takes the original scripts/{command}.py flags, plus the additions below them."


def build_parser(command: str) -> argparse.ArgumentParser:
    """The flags of a sampling command (`tune_steps` takes classifier_sample's)."""
    parser = OneLineParser(prog=f"guided-diffusion {command}", description=_description(command))
    add_dict_to_argparser(parser, _original_defaults(command))
    extra = parser.add_argument_group("additions to the original flags")
    kinds = "upsampler" if command == "super_res_sample" else "diffusion"
    extra.add_argument("--preset", default=None, metavar="NAME",
                       help=f"released {kinds} checkpoint: fills the architecture flags, sampling recipe and "
                            "checkpoint path (downloaded into the cache when missing); explicit flags still win")
    extra.add_argument("--seed", type=int, default=None,
                       help="base seed; sample i depends only on (seed, i), whatever the batch size or process count "
                            "(default: a random seed, printed)")
    extra.add_argument("--out_dir", default=None, help="output directory (default: $OPENAI_LOGDIR, else a fresh temp dir)")
    add_progress_flag(extra)
    extra.add_argument("--device", default="auto",
                       help="auto (this rank's GPU when CUDA is available, else Apple's MPS, else the CPU), cpu, cuda, "
                            "cuda:N or mps")
    extra.add_argument("--channels_last", type=str2bool, nargs="?", const=True, default=False, metavar="BOOL",
                       help="channels-last (NHWC) memory layout for the convolutions (same results; slower on the H200 measured)")
    add_bf16_flag(extra, "run the networks under bfloat16 autocast instead of --use_fp16's fp16 weights")
    if command == "super_res_sample":  # each base image once, unless --num_samples says otherwise
        parser._option_string_actions["--num_samples"].help = ("samples to draw (default: one per --base_samples "
                                                               "image; more cycle over them)")
    if command == "image_nll":
        extra.add_argument("--random_flip", type=str2bool, default=False,
                           help="randomly flip the evaluated images (the original always did)")
        extra.add_argument("--label_mode", choices=("auto", "filename", "folder"), default="auto",
                           help="class labels from 'filename' prefixes (CLASS_xxx.png, the original), 'folder' (one "
                                "sub-folder per class) or 'auto'; the run's classes.json beside the checkpoint wins")
        return parser
    add_resume_flags(extra, verb="drawn")
    add_sampler_flags(extra, default=None, default_text="ddpm, or ddim with --use_ddim True")
    add_grid_flags(extra)
    add_guidance_steering_flags(extra, classifier=command in ("classifier_sample", "tune_steps"))
    extra.add_argument("--dynamic_threshold", type=float, default=None, metavar="PERCENTILE",
                       help="dynamic thresholding of the predicted x0 at this percentile, e.g. 0.995 (for large guidance)")
    extra.add_argument("--cfg_scale", type=float, default=1.0,
                       help="classifier-free guidance scale for models trained with --class_dropout_prob > 0 "
                            "(1 = off); combines with classifier guidance")
    if command != "super_res_sample":
        extra.add_argument("--init_noise", default=None, metavar="NPZ",
                           help="start sample i from arr_0[i] of this npz (float N x C x H x W, e.g. the latents.npz "
                                "of `guided-diffusion invert`) instead of seeded noise; its arr_1 labels are used "
                                "when --class_labels is not given")
        extra.add_argument("--class_labels", default=None, metavar="C[,C...]",
                           help="class of every sample (one int), or a comma list cycled over the samples "
                                "(default: uniformly random per sample)")
    return parser
