"""Editing subcommands: invert, img2img, inpaint, restore.

Each parses its flags, checks the checkpoints and reads the inputs, builds one `editing.EditJob` and runs
it with `editing.run_edit`, as a Python caller would; every check happens before the output folder or
log.txt exists, so bad input writes nothing. Edit i depends only on (--seed, i) and input i, whatever
--batch_size or the number of torchrun ranks.
"""
from __future__ import annotations

import argparse
import dataclasses
import shlex
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from guided_diffusion.cli import flag_message, solver_flags
from guided_diffusion.cli.parsing import (
    OneLineParser,
    add_bf16_flag,
    add_progress_flag,
    parse_class_labels,
    progress_enabled,
)
from guided_diffusion.cli.resumable import add_resume_flags, check_out_dir, default_out_dir, run_claimed
from guided_diffusion.config.flags import str2bool as _bool
from guided_diffusion.config.resolve import typed_flags
from guided_diffusion.data.files import ClassMap
from guided_diffusion.diffusion.stepping import NonFiniteSampleError
from guided_diffusion.editing import job as edit
from guided_diffusion.editing.io import load_images, load_mask
from guided_diffusion.editing.networks import check_networks
from guided_diffusion.editing.output import EditFolder, psnr_summary
from guided_diffusion.editing.run import run_edit
from guided_diffusion.runtime import distributed, logs
from guided_diffusion.runtime.autocast import warn_if_bf16_is_slow
from guided_diffusion.runtime.errors import SettingError, UserError
from guided_diffusion.runtime.rng import choose_seed
from guided_diffusion.sampling.job import fp16_runs_on
from guided_diffusion.sampling.settings import SamplerSettings

__all__ = ["img2img", "inpaint", "invert", "restore"]

# Job settings whose flag is not --<setting>.
_FLAG_OF_SETTING = {"keep_round_trip": "--write_round_trip", "input": "--input"}


# -- flags ---------------------------------------------------------------------------------------------


def _parser(command: str, description: str, *, sampler_default: str | None, guidance: bool = True) -> OneLineParser:
    parser = OneLineParser(prog=f"guided-diffusion {command}", description=description)
    parser.add_argument("--model_path", required=True, help="diffusion checkpoint with its config (config.json beside it)")
    parser.add_argument("--input", required=True,
                        help="images: an npz in the sample format (arr_0 uint8 NHWC, optional arr_1 labels), a folder of "
                             "images (class sub-folders give labels) or one image file")
    parser.add_argument("--out_dir", default=None, help="output directory (default: $OPENAI_LOGDIR, else a fresh temp dir)")
    solver_flags.add_grid_flags(parser, steps_default=50)
    if sampler_default is not None:
        solver_flags.add_sampler_flags(parser, default=sampler_default, default_text=sampler_default)
    seed_help = ("base seed; edit i depends only on (seed, i) and input i (default: a random seed, printed)" if guidance
                 else argparse.SUPPRESS)  # invert draws no noise: a given --seed is refused in one line
    parser.add_argument("--seed", type=int, default=None, help=seed_help)
    parser.add_argument("--batch_size", type=int, default=16, help="images per forward pass and rank")
    parser.add_argument("--class_labels", default=None, metavar="C[,C...]",
                        help="class of every image (one int) or a comma list cycled over the images "
                             "(default: the input's labels, when it has them)")
    parser.add_argument("--cfg_scale", type=float, default=1.0,
                        help="classifier-free guidance scale for models trained with label dropout (1 = off)")
    if guidance:
        parser.add_argument("--classifier_path", default="", help="noisy classifier checkpoint for classifier guidance")
        parser.add_argument("--classifier_scale", type=float, default=1.0,
                            help="classifier guidance scale (needs --classifier_path)")
    solver_flags.add_guidance_steering_flags(parser, classifier=guidance)
    add_resume_flags(parser, verb="edited")
    add_progress_flag(parser)
    add_bf16_flag(parser, help="run the networks under bfloat16 autocast (float32 weights)")
    return parser


def _flag_error(exc: SettingError) -> UserError:
    return UserError(flag_message(exc, _FLAG_OF_SETTING))


# -- one run -------------------------------------------------------------------------------------------


def _inputs(args: argparse.Namespace, size: int, mask_size: int, with_mask: bool) -> edit.EditInputs:
    """The --input images (labels from the training run's classes.json for class folders) and --mask."""
    classes = Path(args.model_path).parent / "classes.json"
    try:
        images, labels = load_images(args.input, size, class_map=ClassMap.load(classes) if classes.is_file() else None)
    except ValueError as exc:
        raise SettingError("input", str(exc)) from None
    mask = None
    if with_mask:
        if not args.mask:
            raise UserError("pass --mask: a PNG or npz with white (1) where the image is kept")
        try:
            mask = load_mask(args.mask, len(images), mask_size)
        except ValueError as exc:
            raise SettingError("mask", str(exc)) from None
    return edit.EditInputs(images, labels, mask)


def _job(args: argparse.Namespace, typed: set[str], task: edit.EditTask, device: torch.device) -> edit.EditJob:
    """The flags as an EditJob (seed 0 for now when one is to be chosen: nothing depends on it yet)."""
    model, diffusion, classifier = edit.checkpoint_configs(args.model_path, getattr(args, "classifier_path", ""))
    model = dataclasses.replace(model, use_fp16=fp16_runs_on(device, model.use_fp16, bf16=args.bf16))
    if classifier is not None:
        classifier = dataclasses.replace(
            classifier, classifier_use_fp16=fp16_runs_on(device, classifier.classifier_use_fp16, bf16=args.bf16))
    inputs = _inputs(args, model.image_size // edit.input_downsampling(task), model.image_size,
                     edit.needs_mask(task) or bool(getattr(args, "mask", "")))
    step_bars = progress_enabled(args.progress) and sys.stderr.isatty()  # outside a terminal: the per-image lines only
    settings = SamplerSettings(sampler=getattr(args, "sampler", None) or "ddim", steps=args.steps, progress=step_bars,
                               **solver_flags.solver_options(args))
    guided = bool(getattr(args, "classifier_path", "")) or "classifier_scale" in typed
    seed = 0 if task.stochastic and args.seed is None else args.seed
    return edit.EditJob(task=task, inputs=inputs, model=model, diffusion=diffusion, settings=settings, seed=seed,
                        batch_size=args.batch_size, classifier=classifier,
                        classifier_scale=args.classifier_scale if guided else 0.0, cfg_scale=args.cfg_scale,
                        class_labels=parse_class_labels(args.class_labels), bf16=args.bf16, model_path=args.model_path,
                        classifier_path=getattr(args, "classifier_path", ""))


def _edit(command: str, parser: OneLineParser, argv: list[str], task_of: Callable[[argparse.Namespace, set[str]], edit.EditTask]) -> int:
    """Check everything (nothing is written before), claim the output folder, then edit, keeping each batch."""
    args = parser.parse_args(argv)
    typed = typed_flags(parser, argv)
    if args.resume and args.overwrite:
        raise UserError("--resume continues a run and --overwrite starts it again: pass only one of them")
    check_out_dir(args.out_dir)
    for flag in ("model_path", "classifier_path", "input", "mask"):
        path = getattr(args, flag, "")
        if path and not Path(path).exists():
            raise UserError(f"--{flag} {path} does not exist")
    distributed.setup_dist()
    device = distributed.dev()
    try:
        job = _job(args, typed, task_of(args, typed), device)
        check_networks(job)  # weights that do not fit their config stop here, before anything is written
    except SettingError as exc:
        raise _flag_error(exc) from None
    if job.bf16:
        warn_if_bf16_is_slow(device)
    out_dir = Path(args.out_dir or default_out_dir())
    chosen = False
    if job.task.stochastic:
        given = args.seed
        if given is None and args.resume:
            given = distributed.decide_on_rank0(lambda: EditFolder.interrupted_seed(out_dir, job))
        seed, chosen = choose_seed(given)
        job = dataclasses.replace(job, seed=seed)
    folder = EditFolder(out_dir, job, command=shlex.join(["guided-diffusion", command, *argv]))

    def work() -> int:
        logs.configure(dir=str(out_dir))
        if chosen:
            logs.log(f"seed: {job.seed} (pass --seed {job.seed} to make the same edits again)")
        if folder.store is not None and folder.resumed_count():
            logs.log(f"resuming: {folder.resumed_count()} of {job.num_samples} images already in {folder.store.directory}")
        logs.log(f"{job.describe()}: {job.num_samples} images on {distributed.get_world_size()} rank(s)...")
        try:
            result = run_edit(job, device=device, folder=folder, progress=args.progress)
        except NonFiniteSampleError as exc:
            kept = f"; finished batches stay in {folder.store.directory}" if folder.store is not None else ""
            raise UserError(f"editing stopped: {exc} (try a smaller --classifier_scale, --cfg_scale or --dps_scale)"
                            f"{kept}") from None
        if result is not None:
            logs.log(f"saved into {out_dir}: {job.output_name}, its settings in {folder.record_path.name}")
            if result.psnr is not None:
                mean, worst = psnr_summary(result.psnr)
                print(f"round trip (DDIM, {job.levels} steps): PSNR {mean:.2f} dB mean, {worst:.2f} dB worst over "
                      f"{job.num_samples} images")
        distributed.barrier()
        return 0

    return run_claimed(command, argv, folder, work, seed=job.seed, resume=args.resume, overwrite=args.overwrite,
                       unit="images")


def _given(args: argparse.Namespace, typed: set[str], *names: str) -> dict[str, Any]:
    """The options among `names` that were typed (the rest stay None: "not given", so an option the task
    would ignore is refused by the task and defaults apply otherwise)."""
    return {name: getattr(args, name) for name in names if name in typed}


# -- the commands --------------------------------------------------------------------------------------


def invert(argv: list[str]) -> int:
    """`guided-diffusion invert`: DDIM inversion of images to latents.npz, with the round-trip PSNR."""
    parser = _parser("invert", "DDIM inversion: the noise from which deterministic DDIM returns each image. It draws no "
                     "noise, so it takes no --seed.", sampler_default=None, guidance=False)
    parser.add_argument("--refine", type=int, default=6,
                        help="at most this many fixed-point refinements per step, each one more model evaluation, "
                             "until the step moves by < 1e-4 (0 = the plain first-order inversion)")
    parser.add_argument("--round_trip", type=_bool, default=True,
                        help="sample the latents back with DDIM and report the PSNR against the input")
    parser.add_argument("--write_round_trip", type=_bool, nargs="?", const=True, default=False,
                        help="also write the round-trip images (samples_NxHxWx3.npz and a sheet of input | round trip)")

    def task(args: argparse.Namespace, typed: set[str]) -> edit.EditTask:
        return edit.Invert(refine=args.refine, round_trip=args.round_trip, keep_round_trip=args.write_round_trip)

    return _edit("invert", parser, argv, task)


def img2img(argv: list[str]) -> int:
    """`guided-diffusion img2img`: SDEdit, optionally with classifier guidance towards --class_labels."""
    parser = _parser("img2img", "SDEdit: noise the images to --strength of the run, then sample them back.",
                     sampler_default="ddim")
    parser.add_argument("--strength", type=float, default=0.75,
                        help="fraction of the diffusion run in (0, 1]: how much of the input is replaced")
    parser.add_argument("--from_inversion", type=_bool, nargs="?", const=True, default=False,
                        help="start from the images' DDIM inversion to --strength instead of a noised copy")

    def task(args: argparse.Namespace, typed: set[str]) -> edit.EditTask:
        return edit.Img2Img(strength=args.strength, from_inversion=args.from_inversion)

    return _edit("img2img", parser, argv, task)


def _add_dps_scale(parser: OneLineParser) -> None:
    parser.add_argument("--dps_scale", type=float, default=None,
                        help="measurement guidance (DPS) step: x0 moves by -scale * grad ||y - A(x0)||^2 at every grid point "
                             "(0.5 projects exactly onto a mask's known pixels, factor^2/2 onto a box-downsampled image; "
                             "default: 1)")


def inpaint(argv: list[str]) -> int:
    """`guided-diffusion inpaint`: fill the masked-out pixels; the kept pixels stay exactly as given."""
    parser = _parser("inpaint", "Inpainting: regenerate the pixels where --mask is black, keep the white ones exactly.",
                     sampler_default="ddpm")
    parser.add_argument("--mask", default="", help="PNG or npz mask, white (1) = keep; one for all images or one per image")
    parser.add_argument("--method", choices=("repaint", "dps"), default="repaint",
                        help="repaint: known region re-noised into every step (Lugmayr et al.); dps: measurement guidance")
    parser.add_argument("--jump_length", type=int, default=None,
                        help="RePaint: levels to jump back up when resampling (default: 1)")
    parser.add_argument("--jump_n_sample", type=int, default=None,
                        help="RePaint: passes over each stretch of --jump_length levels (default: 1, no resampling)")
    _add_dps_scale(parser)

    def task(args: argparse.Namespace, typed: set[str]) -> edit.EditTask:
        return edit.Inpaint(method=args.method, **_given(args, typed, "jump_length", "jump_n_sample", "dps_scale"))

    return _edit("inpaint", parser, argv, task)


def restore(argv: list[str]) -> int:
    """`guided-diffusion restore --task inpaint|super_res|deblur`: posterior sampling from a measurement."""
    parser = _parser("restore", "Restoration by diffusion posterior sampling (DPS): the --input images are the "
                     "measurement (masked, downsampled by --factor, or blurred), or with --simulate the clean "
                     "images it is made from.", sampler_default="ddpm")
    parser.add_argument("--task", choices=edit.RESTORE_TASKS, required=True,
                        help="inpaint: fill where --mask is black; super_res: upsample --input by --factor; deblur: "
                             "undo a Gaussian blur of --blur_sigma")
    parser.add_argument("--mask", default="", help="inpaint: PNG or npz mask, white (1) = keep")
    parser.add_argument("--factor", type=int, default=None,
                        help="super_res: upsampling factor; --input images are the model's size divided by it (default: 2)")
    parser.add_argument("--blur_sigma", type=float, default=None,
                        help="deblur: standard deviation of the Gaussian blur in pixels (default: 1)")
    parser.add_argument("--blur_size", type=int, default=None, help="deblur: odd kernel width (default: 2*ceil(2 sigma)+1)")
    parser.add_argument("--simulate", type=_bool, nargs="?", const=True, default=False,
                        help="--input holds clean images of the model's size: make the measurement from them first "
                             "(downsample or blur, rounded to uint8) and show original | measurement | restored")
    _add_dps_scale(parser)

    def task(args: argparse.Namespace, typed: set[str]) -> edit.EditTask:
        return edit.Restore(task=args.task, simulate=args.simulate,
                            **_given(args, typed, "factor", "blur_sigma", "blur_size", "dps_scale"))

    return _edit("restore", parser, argv, task)
