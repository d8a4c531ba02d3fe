"""Editing subcommands: invert, img2img, inpaint, restore.

Each loads a diffusion checkpoint saved with its config (as `image_train` and the demo save them), reads
images (an npz in the sample format or a folder of image files), splits them over the torchrun ranks the
way sampling does (`gather_in_order`), and writes its output atomically into --out_dir. Edit i depends
only on (--seed, i) and input i, whatever --batch_size or the number of ranks.
"""
from __future__ import annotations

import argparse
import dataclasses
import itertools
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from guided_diffusion.cli.solver_flags import (
    add_grid_flags,
    add_guidance_steering_flags,
    add_sampler_flags,
    solver_options,
)
from guided_diffusion.config import (
    ClassifierConfig,
    DiffusionConfig,
    ModelConfig,
    SuperResConfig,
)
from guided_diffusion.config.flags import str2bool
from guided_diffusion.diffusion.denoiser import CondFn, Denoiser
from guided_diffusion.diffusion.inversion import ddim_invert, psnr
from guided_diffusion.editing.grid import model_kwargs_of, start_points
from guided_diffusion.editing.io import (
    load_images,
    load_mask,
    save_latents,
    to_model_input,
    to_uint8_images,
)
from guided_diffusion.editing.measurement import (
    BlurOperator,
    DownsampleOperator,
    MaskOperator,
    Operator,
    X0Predictor,
    measurement_cond_fn,
    sum_cond_fns,
)
from guided_diffusion.editing.repaint import repaint, repaint_schedule
from guided_diffusion.editing.sdedit import sdedit
from guided_diffusion.runtime import distributed, logs
from guided_diffusion.runtime.errors import SettingError, UserError
from guided_diffusion.runtime.rng import SampleNoise, fresh_seed
from guided_diffusion.sampling.generate import SamplerSettings, gather_in_order
from guided_diffusion.sampling.guidance import GuidedModel, check_cfg, classifier_cond_fn
from guided_diffusion.sampling.output import save_grid, save_samples
from guided_diffusion.sampling.runner import load_network
from guided_diffusion.sampling.samplers import SAMPLERS
from guided_diffusion.weights.checkpoints import (
    config_for_checkpoint,
    read_config_json,
)

__all__ = ["img2img", "inpaint", "invert", "restore"]

Batch = tuple[np.ndarray, np.ndarray | None]


# -- flags ---------------------------------------------------------------------------------------------


def _parser(command: str, description: str, *, sampler_default: str | None, guidance: bool = True) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=f"guided-diffusion {command}", description=description)
    parser.add_argument("--model_path", required=True, help="diffusion checkpoint with its config (config.json beside it)")
    parser.add_argument("--input", required=True,
                        help="images: an npz in the sample format (arr_0 uint8 NHWC, optional arr_1 labels) or a folder of images")
    parser.add_argument("--out_dir", default=None, help="output directory (default: $OPENAI_LOGDIR, else a fresh temp dir)")
    add_grid_flags(parser, steps_default=50)
    if sampler_default is not None:
        add_sampler_flags(parser, default=sampler_default, default_text=sampler_default)
    parser.add_argument("--seed", type=int, default=None,
                        help="base seed; edit i depends only on (seed, i) and input i (default: a random seed, printed)")
    parser.add_argument("--batch_size", type=int, default=16, help="images per forward pass and rank")
    parser.add_argument("--class_labels", default=None, metavar="C[,C...]",
                        help="class of every image (one int) or a comma list cycled over the images "
                             "(default: the input's arr_1 labels, when it has them)")
    parser.add_argument("--cfg_scale", type=float, default=1.0,
                        help="classifier-free guidance scale for models trained with label dropout (1 = off)")
    if guidance:
        parser.add_argument("--classifier_path", default="", help="noisy classifier checkpoint for classifier guidance")
        parser.add_argument("--classifier_scale", type=float, default=1.0, help="classifier guidance scale")
    add_guidance_steering_flags(parser, classifier=guidance)
    parser.add_argument("--progress", type=str2bool, nargs="?", const=True, default=None,
                        help="progress bars (default: on when stderr is a terminal)")
    return parser


def _progress(args: argparse.Namespace) -> bool:
    return sys.stderr.isatty() if args.progress is None else bool(args.progress)


def _check_common(args: argparse.Namespace) -> None:
    _settings(args, getattr(args, "sampler", None) or "ddim")  # steps, grid and eta, checked where sampling checks them
    if args.batch_size < 1:
        raise UserError(f"--batch_size must be at least 1, got {args.batch_size}")
    if args.seed is not None and args.seed < 0:
        raise UserError(f"--seed must be >= 0, got {args.seed}")
    for flag in ("model_path", "input", "classifier_path"):
        path = getattr(args, flag, "")
        if path and not Path(path).exists():
            raise UserError(f"--{flag} {path} does not exist")


def _settings(args: argparse.Namespace, sampler: str | None = None) -> SamplerSettings:
    """The sampler, grid, steering and progress choices, in the sampling engine's terms (a bad one raises a
    SettingError naming its field, which is also its flag here)."""
    return SamplerSettings(sampler=sampler or args.sampler, steps=args.steps, progress=_progress(args),
                           **solver_options(args))


# -- networks ------------------------------------------------------------------------------------------


@dataclass
class Networks:
    """The loaded diffusion model as samplers call it, its schedule, and the optional classifier."""

    model: GuidedModel
    config: ModelConfig
    diffusion: DiffusionConfig
    classifier: torch.nn.Module | None
    device: torch.device
    _base: Any = None

    @property
    def image_size(self) -> int:
        return self.config.image_size

    def denoiser(self, settings: SamplerSettings) -> Denoiser:
        """The model on the grid of `settings` (built from the un-respaced schedule)."""
        return settings.denoiser(self.model, self.base_diffusion)

    @property
    def base_diffusion(self) -> Any:
        if self._base is None:
            self._base = self.diffusion.replace(timestep_respacing="").build()
        return self._base


def _diffusion_config(path: str) -> DiffusionConfig:
    saved = read_config_json(path)
    if saved is not None and saved.get("diffusion"):
        return DiffusionConfig.from_dict(saved["diffusion"])
    from guided_diffusion.config.presets import preset_for_file

    preset = preset_for_file(path)
    if preset is not None:
        return DiffusionConfig.from_dict(preset.flags)
    raise UserError(f"--model_path {path} has no saved diffusion config: keep the config.json its training run wrote beside it")


def _model_configs(args: argparse.Namespace, settings: SamplerSettings) -> tuple[ModelConfig, DiffusionConfig]:
    """The network and schedule saved with --model_path (read before anything runs, to check inputs,
    the steps grid of `settings` included)."""
    config = config_for_checkpoint(args.model_path)
    if not isinstance(config, ModelConfig) or isinstance(config, SuperResConfig):
        raise UserError(f"--model_path {args.model_path} is a {config.kind} checkpoint; the editing commands need a diffusion model")
    check_cfg(args.cfg_scale, class_cond=config.class_cond, null_label=config.null_label)
    if getattr(args, "classifier_path", ""):
        classifier = config_for_checkpoint(args.classifier_path)
        if not isinstance(classifier, ClassifierConfig):
            raise UserError(f"--classifier_path {args.classifier_path} is a {classifier.kind} checkpoint, not a noisy classifier")
        if classifier.image_size != config.image_size:
            raise UserError(f"--classifier_path takes {classifier.image_size}x{classifier.image_size} images, "
                            f"the model makes {config.image_size}x{config.image_size}")
        if config.class_cond and classifier.num_classes != config.num_classes:
            raise UserError(f"--classifier_path has {classifier.num_classes} classes, the model {config.num_classes}")
        config = dataclasses.replace(config, num_classes=classifier.num_classes) if not config.class_cond else config
    diffusion = _diffusion_config(args.model_path)
    settings.grid(diffusion.replace(timestep_respacing="").build())  # as Networks.denoiser builds it
    return config, diffusion


def _load_networks(args: argparse.Namespace, config: ModelConfig, diffusion: DiffusionConfig, device: torch.device) -> Networks:
    network = load_network(config, args.model_path, device)
    model = GuidedModel(network, class_cond=config.class_cond, cfg_scale=args.cfg_scale, null_label=config.null_label)
    classifier = None
    if getattr(args, "classifier_path", ""):
        classifier = load_network(config_for_checkpoint(args.classifier_path), args.classifier_path, device)
    return Networks(model=model, config=config, diffusion=diffusion, classifier=classifier, device=device)


# -- run setup -----------------------------------------------------------------------------------------


def _shared_seed(seed: int | None) -> int:
    """The given seed, or one chosen on rank 0, shared with every rank and printed."""
    if seed is not None:
        return seed
    box = [fresh_seed()]
    if distributed.get_world_size() > 1:
        dist.broadcast_object_list(box, src=0)
    logs.log(f"seed: {box[0]} (pass --seed {box[0]} to make the same edits again)")
    return int(box[0])


def _start(args: argparse.Namespace, configs: tuple[ModelConfig, DiffusionConfig]) -> tuple[Networks, int]:
    """Join the ranks, open the output directory, load the networks, agree on the seed (after every
    input has been checked, so a bad flag leaves nothing behind)."""
    distributed.setup_dist()
    logs.configure(dir=args.out_dir)
    networks = _load_networks(args, *configs, distributed.dev())
    return networks, _shared_seed(args.seed)


def _read_images(args: argparse.Namespace, size: int, hint: str = "") -> tuple[np.ndarray, np.ndarray | None]:
    try:
        return load_images(args.input, size)
    except ValueError as exc:
        raise SettingError("input", f"{exc}{hint}") from None


def _labels(args: argparse.Namespace, config: ModelConfig, count: int, given: np.ndarray | None) -> np.ndarray | None:
    """Per-image classes: --class_labels cycled, else the input's own labels, else None."""
    num_classes = config.num_classes
    if args.class_labels is not None:
        try:
            fixed = [int(part) for part in args.class_labels.split(",") if part.strip()]
        except ValueError:
            raise UserError(f"--class_labels {args.class_labels!r} must be an integer or a comma list of integers") from None
        if not fixed or not all(0 <= c < num_classes for c in fixed):
            raise UserError(f"--class_labels {args.class_labels!r}: classes must be in 0..{num_classes - 1}")
        return np.array([fixed[i % len(fixed)] for i in range(count)], dtype=np.int64)
    if given is not None and not ((given >= 0) & (given < num_classes)).all():
        raise UserError(f"--input labels (arr_1) must be in 0..{num_classes - 1}")
    return given


def _require_labels(config: ModelConfig, labels: np.ndarray | None, needs_classes: bool) -> None:
    if labels is None and (config.class_cond or needs_classes):
        why = "the model is class-conditional" if config.class_cond else "classifier guidance steers towards a class"
        raise UserError(f"{why}: pass --class_labels, or an --input npz with labels (arr_1)")


def _guided(args: argparse.Namespace) -> bool:
    return bool(getattr(args, "classifier_path", "")) and args.classifier_scale != 0


def _classifier_cond_fn(args: argparse.Namespace, networks: Networks, settings: SamplerSettings) -> CondFn | None:
    """The classifier's guidance with the run's scaling, interval and schedule (None without guidance)."""
    if networks.classifier is None or args.classifier_scale == 0:
        return None
    cond_fn = classifier_cond_fn(networks.classifier, args.classifier_scale, scaling=settings.guidance_scaling)
    return settings.steered(cond_fn, networks.base_diffusion)


def _run(args: argparse.Namespace, count: int, make_batch: Callable[[list[int]], Batch], what: str) -> Batch | None:
    logs.log(f"{what}: {count} images on {distributed.get_world_size()} rank(s)...")
    return gather_in_order(count, args.batch_size, make_batch, progress=_progress(args))


def _write_images(result: Batch | None) -> None:
    """Rank 0 writes samples_NxHxWx3.npz (arr_0 images, arr_1 labels) and a PNG grid, atomically."""
    if result is not None:
        images, labels = result
        path = save_samples(logs.get_dir(), images, labels)
        save_grid(path.with_suffix(".png"), images)
        logs.log(f"saving to {path} (and a grid in {path.with_suffix('.png').name})")
    distributed.barrier()


# -- invert --------------------------------------------------------------------------------------------


def invert(argv: list[str]) -> int:
    """`guided-diffusion invert`: DDIM inversion of images to latents.npz, with the round-trip PSNR."""
    parser = _parser("invert", "DDIM inversion: the noise from which deterministic DDIM returns each image.",
                     sampler_default=None, guidance=False)
    parser.add_argument("--refine", type=int, default=6,
                        help="at most this many fixed-point refinements per step, each one more model evaluation, "
                             "until the step moves by < 1e-4 (0 = the plain first-order inversion; default 6)")
    parser.add_argument("--round_trip", type=str2bool, default=True,
                        help="sample the latents back with DDIM and report the PSNR against the input")
    args = parser.parse_args(argv)
    _check_common(args)
    if args.refine < 0:
        raise UserError(f"--refine must be >= 0, got {args.refine}")
    settings = _settings(args, "ddim")
    configs = _model_configs(args, settings)
    images, given = _read_images(args, configs[0].image_size)
    labels = _labels(args, configs[0], len(images), given)
    _require_labels(configs[0], labels, False)
    networks, _ = _start(args, configs)
    denoiser = networks.denoiser(settings)
    progress = settings.progress
    psnrs: list[float] = []

    def make_batch(indices: list[int]) -> Batch:
        x = to_model_input(images[indices]).to(networks.device)
        kwargs = model_kwargs_of(labels[indices] if labels is not None else None, networks.device)
        latents = ddim_invert(denoiser, x, model_kwargs=kwargs, refine=args.refine, progress=progress)
        if args.round_trip:
            back = SAMPLERS["ddim"](denoiser, latents, model_kwargs=kwargs, clip_denoised=False, progress=progress)
            psnrs.extend(psnr(to_uint8_images(back), images[indices]).tolist())
        return latents.float().cpu().numpy(), (labels[indices] if labels is not None else None)

    result = _run(args, len(images), make_batch, f"inverting with ddim ({args.steps} levels, "
                                                      f"up to {args.steps * (1 + args.refine)} model evaluations)")
    if result is not None:
        path = save_latents(Path(logs.get_dir()) / "latents.npz", *result)
        logs.log(f"saving to {path} (arr_0 float32 {'x'.join(map(str, result[0].shape))}"
                   f"{', arr_1 labels' if result[1] is not None else ''})")
    if args.round_trip:
        mean, worst, n = _reduce_psnr(psnrs)
        if distributed.is_main_process():
            print(f"round trip (DDIM, {args.steps} steps): PSNR {mean:.2f} dB mean, {worst:.2f} dB worst over {n} images")
    distributed.barrier()
    return 0


def _reduce_psnr(values: list[float]) -> tuple[float, float, int]:
    """Mean and minimum of per-image PSNRs over all ranks (identical images count as 100 dB)."""
    finite = [min(v, 100.0) for v in values]
    totals = torch.tensor([sum(finite), float(len(finite))], dtype=torch.float64)
    worst = torch.tensor([min(finite, default=100.0)], dtype=torch.float64)
    if distributed.get_world_size() > 1:
        dist.all_reduce(totals)
        dist.all_reduce(worst, op=dist.ReduceOp.MIN)
    return float(totals[0] / totals[1]), float(worst[0]), int(totals[1])


# -- img2img -------------------------------------------------------------------------------------------


def img2img(argv: list[str]) -> int:
    """`guided-diffusion img2img`: SDEdit, optionally with classifier guidance towards --class_labels."""
    parser = _parser("img2img", "SDEdit: noise the images to --strength of the run, then sample them back.",
                     sampler_default="ddim")
    parser.add_argument("--strength", type=float, default=0.75,
                        help="fraction of the diffusion run in (0, 1]: how much of the input is replaced (default 0.75)")
    parser.add_argument("--from_inversion", type=str2bool, nargs="?", const=True, default=False,
                        help="start from the images' DDIM inversion to --strength instead of a noised copy")
    args = parser.parse_args(argv)
    _check_common(args)
    if not 0.0 < args.strength <= 1.0:
        raise UserError(f"--strength must be in (0, 1] (the fraction of the run), got {args.strength}")
    settings = _settings(args)
    configs = _model_configs(args, settings)
    images, given = _read_images(args, configs[0].image_size)
    labels = _labels(args, configs[0], len(images), given)
    _require_labels(configs[0], labels, _guided(args))
    networks, seed = _start(args, configs)
    cond_fn = _classifier_cond_fn(args, networks, settings)
    denoiser = networks.denoiser(settings)
    points = start_points(args.strength, denoiser.num_steps)

    def make_batch(indices: list[int]) -> Batch:
        x = to_model_input(images[indices]).to(networks.device)
        batch_labels = labels[indices] if labels is not None else None
        out = sdedit(denoiser, x, strength=args.strength, sampler=args.sampler, from_inversion=args.from_inversion,
                     noise=SampleNoise(seed, indices), cond_fn=cond_fn,
                     model_kwargs=model_kwargs_of(batch_labels, networks.device), **settings.sampler_kwargs())
        return to_uint8_images(out), batch_labels

    start = "its inversion" if args.from_inversion else "noise"
    _write_images(_run(args, len(images), make_batch,
                       f"editing from {start} at strength {args.strength:g} with {args.sampler} ({points} of {args.steps} "
                       f"levels, {settings.evaluations(points)} model evaluations)"))
    return 0


# -- inpaint and restore -------------------------------------------------------------------------------


def _add_measurement_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--dps_scale", type=float, default=1.0,
                        help="measurement guidance (DPS) step: x0 moves by -scale * grad ||y - A(x0)||^2 at every grid point "
                             "(0.5 projects exactly onto a mask's known pixels, factor^2/2 onto a box-downsampled image; "
                             "default 1)")


def _measurement_sampling(args: argparse.Namespace, settings: SamplerSettings, networks: Networks, operator, measured: np.ndarray | torch.Tensor,
                          labels: np.ndarray | None, seed: int, known: tuple[np.ndarray, np.ndarray] | None,
                          what: str) -> Batch | None:
    """Sample every image with measurement guidance towards `measured` (plus classifier guidance when
    given); with `known` = (uint8 images, mask) the kept pixels are pasted back exactly."""
    denoiser = networks.denoiser(settings)
    predict_x0 = X0Predictor(networks.model, networks.base_diffusion)
    classifier = _classifier_cond_fn(args, networks, settings)
    y_all = torch.as_tensor(measured, dtype=torch.float32)
    shape = (3, networks.image_size, networks.image_size)

    def make_batch(indices: list[int]) -> Batch:
        op = operator(indices)
        cond_fn = sum_cond_fns(measurement_cond_fn(op, y_all[indices], args.dps_scale, predict_x0=predict_x0,
                                                   step="x0"), classifier)
        batch_labels = labels[indices] if labels is not None else None
        noise = SampleNoise(seed, indices)
        x = noise.randn((len(indices), *shape), device=networks.device)
        out = SAMPLERS[settings.sampler](denoiser, x, noise=noise, cond_fn=cond_fn,
                                         model_kwargs=model_kwargs_of(batch_labels, networks.device), **settings.sampler_kwargs())
        result = to_uint8_images(out)
        if known is not None:
            keep = known[1][indices].transpose(0, 2, 3, 1) > 0.5
            result = np.where(keep, known[0][indices], result)
        return result, batch_labels

    return _run(args, len(measured), make_batch, what)


def _mask_for(args: argparse.Namespace, count: int, size: int) -> np.ndarray:
    if not args.mask:
        raise UserError("pass --mask: a PNG or npz with white (1) where the image is kept")
    try:
        return load_mask(args.mask, count, size)
    except ValueError as exc:
        raise SettingError("mask", str(exc)) from None


def inpaint(argv: list[str]) -> int:
    """`guided-diffusion inpaint`: fill the masked-out pixels; the kept pixels stay exactly as given."""
    parser = _parser("inpaint", "Inpainting: regenerate the pixels where --mask is black, keep the white ones exactly.",
                     sampler_default="ddpm")
    parser.add_argument("--mask", default="", help="PNG or npz mask, white (1) = keep; one for all images or one per image")
    parser.add_argument("--method", choices=("repaint", "dps"), default="repaint",
                        help="repaint: known region re-noised into every step (Lugmayr et al.); dps: measurement guidance")
    parser.add_argument("--jump_length", type=int, default=1, help="RePaint: levels to jump back up when resampling")
    parser.add_argument("--jump_n_sample", type=int, default=1,
                        help="RePaint: passes over each stretch of --jump_length levels (1 = no resampling)")
    _add_measurement_flags(parser)
    args = parser.parse_args(argv)
    _check_common(args)
    if args.jump_length < 1 or args.jump_n_sample < 1:
        raise UserError(f"--jump_length and --jump_n_sample must be >= 1, got {args.jump_length} and {args.jump_n_sample}")
    if args.method == "repaint" and args.sampler != "ddpm":
        raise UserError(f"--method repaint makes its own DDPM steps; --sampler {args.sampler} applies to --method dps only")
    settings = _settings(args)
    configs = _model_configs(args, settings)
    images, given = _read_images(args, configs[0].image_size)
    mask = _mask_for(args, len(images), configs[0].image_size)
    labels = _labels(args, configs[0], len(images), given)
    _require_labels(configs[0], labels, _guided(args))
    networks, seed = _start(args, configs)
    known_all = to_model_input(images)
    if args.method == "dps":
        result = _measurement_sampling(
            args, settings, networks, lambda idx: MaskOperator(torch.from_numpy(mask[idx])), torch.from_numpy(mask) * known_all,
            labels, seed, (images, mask), f"inpainting with DPS and {args.sampler} ({args.steps} levels, {settings.evaluations(args.steps)} "
            "model evaluations)")
        _write_images(result)
        return 0
    cond_fn = _classifier_cond_fn(args, networks, settings)
    denoiser = networks.denoiser(settings)

    def make_batch(indices: list[int]) -> Batch:
        noise = SampleNoise(seed, indices)
        x = noise.randn((len(indices), *known_all.shape[1:]), device=networks.device)
        batch_labels = labels[indices] if labels is not None else None
        out = repaint(denoiser, x, known=known_all[indices], mask=torch.from_numpy(mask[indices]),
                      jump_length=args.jump_length, jump_n_sample=args.jump_n_sample, noise=noise, cond_fn=cond_fn,
                      model_kwargs=model_kwargs_of(batch_labels, networks.device), progress=settings.progress)
        keep = mask[indices].transpose(0, 2, 3, 1) > 0.5
        return np.where(keep, images[indices], to_uint8_images(out)), batch_labels

    evaluations = sum(1 for here, there in itertools.pairwise(
        repaint_schedule(args.steps, args.jump_length, args.jump_n_sample)) if there < here)
    _write_images(_run(args, len(images), make_batch, f"inpainting with RePaint ({args.steps} levels, jumps "
                                                      f"{args.jump_length}x{args.jump_n_sample}, {evaluations} model "
                                                      "evaluations)"))
    return 0


def restore(argv: list[str]) -> int:
    """`guided-diffusion restore --task inpaint|super_res|deblur`: posterior sampling from a measurement."""
    parser = _parser("restore", "Restoration by diffusion posterior sampling (DPS): the --input images are the "
                     "measurement (masked, downsampled by --factor, or blurred).", sampler_default="ddpm")
    parser.add_argument("--task", choices=("inpaint", "super_res", "deblur"), required=True)
    parser.add_argument("--mask", default="", help="inpaint: PNG or npz mask, white (1) = keep")
    parser.add_argument("--factor", type=int, default=2,
                        help="super_res: upsampling factor; --input images are the model's size divided by it")
    parser.add_argument("--blur_sigma", type=float, default=1.0, help="deblur: standard deviation of the Gaussian blur in pixels")
    parser.add_argument("--blur_size", type=int, default=None, help="deblur: odd kernel width (default: 2*ceil(2 sigma)+1)")
    _add_measurement_flags(parser)
    args = parser.parse_args(argv)
    _check_common(args)
    if args.factor < 1:
        raise UserError(f"--factor must be >= 1, got {args.factor}")
    settings = _settings(args)
    try:
        blur = BlurOperator(args.blur_sigma, args.blur_size) if args.task == "deblur" else None
    except ValueError as exc:
        raise UserError(f"--blur_sigma/--blur_size: {exc}") from None
    configs = _model_configs(args, settings)
    size = configs[0].image_size
    if args.task == "super_res":
        if size % args.factor:
            raise UserError(f"--factor {args.factor} does not divide the model's image size {size}")
        images, given = _read_images(args, size // args.factor, f" (--factor {args.factor} upsamples them to the model's {size}x{size})")
    else:
        images, given = _read_images(args, size)
    labels = _labels(args, configs[0], len(images), given)
    _require_labels(configs[0], labels, _guided(args))
    measured = to_model_input(images)
    known = None
    operator: Callable[[list[int]], Operator]
    if args.task == "inpaint":
        mask = _mask_for(args, len(images), size)
        measured = torch.from_numpy(mask) * measured
        known = (images, mask)

        def operator(indices: list[int]) -> Operator:
            return MaskOperator(torch.from_numpy(mask[indices]))
    else:
        shared: Operator = DownsampleOperator(args.factor) if blur is None else blur

        def operator(indices: list[int]) -> Operator:
            return shared
    networks, seed = _start(args, configs)
    _write_images(_measurement_sampling(args, settings, networks, operator, measured, labels, seed, known,
                                        f"restoring ({args.task}) with DPS and {args.sampler} ({args.steps} levels, "
                                        f"{settings.evaluations(args.steps)} model evaluations)"))
    return 0
