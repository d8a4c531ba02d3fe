"""Sampling subcommands: image_sample, classifier_sample, super_res_sample, image_nll, presets, download.

Each sampling command takes every flag of the original script with the original default, so the
README's flag strings work verbatim, plus: --preset, --seed, --class_labels, --sampler, --steps, --eta,
--dynamic_threshold, --cfg_scale, --progress, --out_dir and --bf16. Defaults keep the original
behaviour (DDPM, random classes, fp16 as flagged).
"""
from __future__ import annotations

import argparse
import copy
import math
import sys
from dataclasses import fields
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from guided_diffusion import dist_util, logger
from guided_diffusion.checkpoints import load_model, read_config_json
from guided_diffusion.config import ClassifierConfig, DiffusionConfig, SuperResConfig
from guided_diffusion.errors import UserError
from guided_diffusion.performance import optimize_model
from guided_diffusion.sampling.generate import (
    SamplerSettings,
    class_labels_for,
    draw,
    gather_in_order,
    to_numpy_uint8,
)
from guided_diffusion.sampling.guidance import GuidedModel, classifier_cond_fn
from guided_diffusion.sampling.noise import fresh_seed
from guided_diffusion.sampling.output import save_grid, save_npz, save_samples
from guided_diffusion.sampling.samplers import SAMPLERS
from guided_diffusion.script_util import (
    add_dict_to_argparser,
    args_to_dict,
    classifier_defaults,
    create_classifier,
    create_model_and_diffusion,
    model_and_diffusion_defaults,
    sr_create_model_and_diffusion,
    sr_model_and_diffusion_defaults,
    str2bool,
)

__all__ = ["image_sample", "classifier_sample", "super_res_sample", "image_nll", "presets", "download"]

# Flags that change the weights or the arithmetic of a checkpoint: overriding them while sampling a
# preset's own checkpoint can only fail (or silently give noise, for the attention order).
_NOT_ARCHITECTURE = {
    "use_fp16", "use_checkpoint", "dropout", "timestep_respacing", "classifier_use_fp16", "use_kl", "rescale_learned_sigmas",
}
_MODEL_ARCH = {f.name for f in (*fields(SuperResConfig), *fields(DiffusionConfig))} - _NOT_ARCHITECTURE
_CLASSIFIER_ARCH = {f.name for f in fields(ClassifierConfig)} - _NOT_ARCHITECTURE


# -- argument parsing ----------------------------------------------------------------------------------


def _original_defaults(command: str) -> dict[str, Any]:
    """The flags and defaults of the original script `command`.py."""
    run = dict(clip_denoised=True, num_samples=10000, batch_size=16, use_ddim=False, model_path="")
    if command == "image_sample":
        return {**run, **model_and_diffusion_defaults()}
    if command == "classifier_sample":
        return {**run, "classifier_path": "", "classifier_scale": 1.0, **model_and_diffusion_defaults(), **classifier_defaults()}
    if command == "super_res_sample":
        return {**run, "base_samples": "", **sr_model_and_diffusion_defaults()}
    if command == "image_nll":
        return dict(data_dir="", clip_denoised=True, num_samples=1000, batch_size=1, model_path="", **model_and_diffusion_defaults())
    raise ValueError(command)


def _build_parser(command: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=f"guided-diffusion {command}",
        description=f"The original scripts/{command}.py flags, plus the options below them.",
    )
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
    extra.add_argument("--progress", type=str2bool, nargs="?", const=True, default=None,
                       help="progress bars (default: on when stderr is a terminal)")
    extra.add_argument("--channels_last", type=str2bool, nargs="?", const=True, default=False,
                       help="channels-last (NHWC) memory layout for the convolutions (a GPU option; same results)")
    extra.add_argument("--bf16", type=str2bool, nargs="?", const=True, default=False,
                       help="run the networks under bfloat16 autocast instead of --use_fp16's fp16 weights")
    if command == "image_nll":
        extra.add_argument("--random_flip", type=str2bool, default=False,
                           help="randomly flip the evaluated images (the original always did)")
        return parser
    extra.add_argument("--sampler", choices=list(SAMPLERS), default=None,
                       help="ddpm (ancestral, the default), ddim, or dpm++2m (DPM-Solver++(2M), good in 10-25 steps); "
                            "--use_ddim True means ddim")
    extra.add_argument("--steps", type=int, default=None,
                       help="number of sampling steps: shorthand for --timestep_respacing N (evenly spaced)")
    extra.add_argument("--eta", type=float, default=None, help="DDIM noise scale (0 = deterministic, the default)")
    extra.add_argument("--dynamic_threshold", type=float, default=None, metavar="PERCENTILE",
                       help="dynamic thresholding of the predicted x0 at this percentile, e.g. 0.995 (for large guidance)")
    extra.add_argument("--cfg_scale", type=float, default=1.0,
                       help="classifier-free guidance scale for models trained with --class_dropout_prob > 0 "
                            "(1 = off); combines with classifier guidance")
    if command != "super_res_sample":
        extra.add_argument("--class_labels", default=None, metavar="C[,C...]",
                           help="class of every sample (one int), or a comma list cycled over the samples "
                                "(default: uniformly random per sample)")
    return parser


def _parse(parser: argparse.ArgumentParser, argv: list[str]) -> tuple[argparse.Namespace, set[str]]:
    """Parsed flags, and the names of the flags the user actually passed."""
    args = parser.parse_args(argv)
    probe = copy.deepcopy(parser)
    for action in probe._actions:
        action.default = argparse.SUPPRESS
    return args, set(vars(probe.parse_args(argv)))


def _convert(parser: argparse.ArgumentParser, name: str, value: Any) -> Any:
    """A preset value as the parser would have parsed it from the command line."""
    for action in parser._actions:
        if action.dest == name and action.type is not None and isinstance(value, str):
            return action.type(value)
    return value


# -- presets -------------------------------------------------------------------------------------------


def _fill_from_preset(
    parser: argparse.ArgumentParser, args: argparse.Namespace, explicit: set[str], flags: dict[str, Any],
    *, preset_name: str, architecture: set[str], path_flag: str,
) -> None:
    """Set every flag the user did not pass from `flags`; refuse explicit architecture overrides that
    cannot load the preset's own checkpoint."""
    own_checkpoint = path_flag in explicit
    for name in sorted(explicit & architecture):
        if own_checkpoint or not hasattr(args, name):
            continue
        preset_value = _convert(parser, name, flags[name]) if name in flags else parser.get_default(name)
        if getattr(args, name) != preset_value:
            raise UserError(
                f"--{name} {getattr(args, name)} does not fit preset {preset_name!r} ({name} = {preset_value}); "
                f"drop --{name}, or pass --{path_flag} with a checkpoint of that architecture"
            )
    for name, value in flags.items():
        if name not in explicit and hasattr(args, name):
            setattr(args, name, _convert(parser, name, value))


def _apply_saved_config(parser: argparse.ArgumentParser, args: argparse.Namespace, explicit: set[str]) -> list[str]:
    """Without --preset, take the architecture flags the user did not pass from the config saved with the
    checkpoint (config.json beside it, or safetensors metadata); returns the flags filled."""
    filled: list[str] = []
    if args.preset is not None:
        return filled
    for path_flag, architecture, kinds in (
        ("model_path", _MODEL_ARCH, ("unet", "superres")),
        ("classifier_path", _CLASSIFIER_ARCH, ("classifier",)),
    ):
        path = getattr(args, path_flag, "")
        saved = read_config_json(path) if path and Path(path).is_file() else None
        if saved is None or saved.get("kind", "unet") not in kinds:
            continue
        values = {**saved.get("model", {}), **(saved.get("diffusion") or {})}
        for name, value in values.items():
            if name in architecture and name not in explicit and hasattr(args, name):
                setattr(args, name, _convert(parser, name, value))
                filled.append(name)
    return filled


def _apply_preset(command: str, parser: argparse.ArgumentParser, args: argparse.Namespace, explicit: set[str]) -> dict[str, Any]:
    """Fill flags from --preset; returns the checkpoints to fetch ({"model_path": Preset, ...})."""
    from guided_diffusion.sampling.fetch import get_preset  # noqa: PLC0415 - presets table only when asked

    if args.preset is None:
        return {}
    kinds = ("upsampler",) if command == "super_res_sample" else ("diffusion",)
    preset = get_preset(args.preset, kinds, command)
    if command == "classifier_sample" and preset.classifier is None:
        raise UserError(
            f"preset {preset.name!r} has no classifier; sample it with image_sample, or pass --classifier_path "
            "and the classifier flags"
        )
    _fill_from_preset(parser, args, explicit, dict(preset.flags), preset_name=preset.name,
                      architecture=_MODEL_ARCH, path_flag="model_path")
    to_fetch: dict[str, Any] = {}
    if "model_path" not in explicit:
        to_fetch["model_path"] = preset
    respacing = getattr(preset, "timestep_respacing", None)
    if respacing and not explicit & {"timestep_respacing", "steps"}:
        args.timestep_respacing = str(respacing)
        if str(respacing).startswith("ddim") and "use_ddim" not in explicit and args.sampler is None:
            args.use_ddim = True  # the README's ddimN recipes are DDIM recipes
    if command == "classifier_sample":
        classifier = get_preset(preset.classifier, ("classifier",))
        _fill_from_preset(parser, args, explicit, dict(classifier.flags), preset_name=classifier.name,
                          architecture=_CLASSIFIER_ARCH, path_flag="classifier_path")
        if "classifier_scale" not in explicit and preset.classifier_scale is not None:
            args.classifier_scale = float(preset.classifier_scale)
        if "classifier_path" not in explicit:
            to_fetch["classifier_path"] = classifier
    return to_fetch


# -- resolving options ---------------------------------------------------------------------------------


def _resolve_sampling(args: argparse.Namespace, explicit: set[str]) -> SamplerSettings:
    if args.steps is not None:
        if args.steps < 2:  # one kept step leaves no posterior variance to compute (the original crashes too)
            raise UserError(f"--steps must be at least 2, got {args.steps}")
        if "timestep_respacing" in explicit and args.timestep_respacing != str(args.steps):
            raise UserError(
                f"--steps {args.steps} and --timestep_respacing {args.timestep_respacing} disagree; pass only one"
            )
        args.timestep_respacing = str(args.steps)
    sampler = args.sampler or ("ddim" if args.use_ddim else "ddpm")
    if args.use_ddim and "use_ddim" in explicit and sampler != "ddim":
        raise UserError(f"--use_ddim True asks for DDIM but --sampler is {sampler}; pass only one of them")
    if args.eta is not None and sampler != "ddim":
        raise UserError(f"--eta only applies to DDIM; add --sampler ddim (the sampler is {sampler})")
    if args.dynamic_threshold is not None and not 0.0 < args.dynamic_threshold <= 1.0:
        raise UserError(f"--dynamic_threshold is a percentile in (0, 1], e.g. 0.995; got {args.dynamic_threshold}")
    if args.eta is not None and args.eta < 0:
        raise UserError(f"--eta must be >= 0, got {args.eta}")
    if args.num_samples < 1 or args.batch_size < 1:
        raise UserError("--num_samples and --batch_size must be at least 1")
    return SamplerSettings(
        sampler=sampler, eta=args.eta or 0.0, clip_denoised=args.clip_denoised,
        dynamic_threshold=args.dynamic_threshold, progress=_progress(args),
    )


def _progress(args: argparse.Namespace) -> bool:
    return sys.stderr.isatty() if args.progress is None else bool(args.progress)


def _resolve_precision(args: argparse.Namespace, device: torch.device) -> torch.dtype | None:
    """Apply --use_fp16/--classifier_use_fp16/--bf16 to this device; returns the autocast dtype."""
    fp16_flags = [name for name in ("use_fp16", "classifier_use_fp16") if getattr(args, name, False)]
    if args.bf16:
        for name in fp16_flags:
            setattr(args, name, False)  # bf16 autocast replaces fp16 weights
        return torch.bfloat16
    if fp16_flags and device.type != "cuda":
        if dist_util.is_main_process():
            print(f"warning: --{' and --'.join(f + ' True' for f in fp16_flags)} needs a GPU; running in fp32 on {device.type}",
                  file=sys.stderr)
        for name in fp16_flags:
            setattr(args, name, False)
    return None


def _parse_class_labels(text: str | None, num_classes: int) -> list[int] | None:
    if text is None:
        return None
    try:
        labels = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise UserError(f"--class_labels {text!r} must be an integer or a comma list of integers, e.g. 207 or 1,2,3") from None
    bad = [c for c in labels if not 0 <= c < num_classes]
    if not labels or bad:
        raise UserError(f"--class_labels {text!r}: classes must be in 0..{num_classes - 1}")
    return labels


def _shared_seed(seed: int | None) -> int:
    """The run's base seed: the given one, or one chosen on rank 0 and shared with every rank."""
    if seed is None:
        box = [fresh_seed()]
        if dist_util.get_world_size() > 1:
            dist.broadcast_object_list(box, src=0)
        seed = int(box[0])
        logger.log(f"seed: {seed} (pass --seed {seed} to draw the same samples again)")
    elif seed < 0:
        raise UserError(f"--seed must be >= 0, got {seed}")
    return seed


def _checkpoint_paths(args: argparse.Namespace, to_fetch: dict[str, Any], progress: bool) -> None:
    from guided_diffusion.sampling.fetch import fetch  # noqa: PLC0415

    for flag, preset in to_fetch.items():
        setattr(args, flag, str(fetch(preset, progress=progress)))
    for flag in ("model_path", "classifier_path"):
        if hasattr(args, flag) and not getattr(args, flag):
            raise UserError(f"no checkpoint given: pass --{flag} PATH, or --preset NAME for a released model")


def _load(network: torch.nn.Module, path: str, device: torch.device, fp16: bool, flags: dict[str, Any],
          channels_last: bool = False) -> torch.nn.Module:
    """Weights from `path` (a one-line error naming mismatching flags), on `device`, in eval mode."""
    load_model(path, model=network, flags=flags)
    network.to(device)
    if fp16:
        network.convert_to_fp16()
    return optimize_model(network.eval(), channels_last=channels_last)


def _guided_model(model: torch.nn.Module, args: argparse.Namespace, autocast_dtype: torch.dtype | None) -> GuidedModel:
    null_label = args.num_classes if getattr(args, "class_dropout_prob", 0.0) > 0 else None
    if args.cfg_scale != 1.0 and (not args.class_cond or null_label is None):
        raise UserError(
            f"--cfg_scale {args.cfg_scale} needs a class-conditional model trained with label dropout "
            "(--class_cond True --class_dropout_prob > 0, which gives it a null label); this model has none"
        )
    return GuidedModel(model, class_cond=args.class_cond, cfg_scale=args.cfg_scale, null_label=null_label,
                       autocast_dtype=autocast_dtype)


def _draw_and_write(args: argparse.Namespace, settings, make_batch, description: str) -> int:
    """Draw every sample across the ranks in index order; rank 0 writes the npz and the grid."""
    logger.log(description + "...")
    result = gather_in_order(args.num_samples, args.batch_size, make_batch, progress=settings.progress)
    if result is not None:
        _write(*result)
    dist_util.barrier()
    logger.log("sampling complete")
    return 0


def _write(images: np.ndarray, labels: np.ndarray | None) -> None:
    directory = Path(logger.get_dir())
    path = save_samples(directory, images, labels)
    save_grid(path.with_suffix(".png"), images)
    logger.log(f"saving to {path} (and a grid of the first images in {path.with_suffix('.png').name})")


# -- sampling commands ---------------------------------------------------------------------------------


def _prepare(command: str, argv: list[str]) -> tuple[argparse.Namespace, SamplerSettings, torch.device, torch.dtype | None, int]:
    parser = _build_parser(command)
    args, explicit = _parse(parser, argv)
    to_fetch = _apply_preset(command, parser, args, explicit)
    from_config = _apply_saved_config(parser, args, explicit)
    settings = _resolve_sampling(args, explicit)
    dist_util.setup_dist()
    device = dist_util.dev()
    autocast_dtype = _resolve_precision(args, device)
    logger.configure(dir=args.out_dir)
    if from_config:
        logger.log(f"flags from the checkpoint's saved config: {', '.join(sorted(set(from_config)))}")
    _checkpoint_paths(args, to_fetch, settings.progress)
    seed = _shared_seed(args.seed)
    return args, settings, device, autocast_dtype, seed


def image_sample(argv: list[str]) -> int:
    """`guided-diffusion image_sample`: unguided samples (DDPM, DDIM or DPM-Solver++) to an npz."""
    return _sample_images("image_sample", argv)


def classifier_sample(argv: list[str]) -> int:
    """`guided-diffusion classifier_sample`: samples guided by a noisy classifier (ADM-G)."""
    return _sample_images("classifier_sample", argv)


def _sample_images(command: str, argv: list[str]) -> int:
    args, settings, device, autocast_dtype, seed = _prepare(command, argv)
    guided = command == "classifier_sample"
    fixed_labels = _parse_class_labels(args.class_labels, args.num_classes)
    if fixed_labels is not None and not (args.class_cond or guided):
        raise UserError("--class_labels needs a class-conditional model (--class_cond True) or classifier_sample")

    logger.log("creating model and diffusion...")
    model, diffusion = create_model_and_diffusion(**args_to_dict(args, model_and_diffusion_defaults().keys()))
    model = _load(model, args.model_path, device, args.use_fp16, vars(args), args.channels_last)
    model_fn = _guided_model(model, args, autocast_dtype)
    cond_fn = None
    if guided:
        logger.log("loading classifier...")
        classifier = create_classifier(**args_to_dict(args, classifier_defaults().keys()))
        classifier = _load(classifier, args.classifier_path, device, args.classifier_use_fp16, {}, args.channels_last)
        if args.classifier_scale != 0:
            cond_fn = classifier_cond_fn(classifier, args.classifier_scale, autocast_dtype=autocast_dtype)
    with_labels = args.class_cond or guided

    def make_batch(indices: list[int]) -> tuple[np.ndarray, np.ndarray | None]:
        labels = class_labels_for(indices, seed, args.num_classes, fixed_labels) if with_labels else None
        x = draw(model_fn, diffusion, indices=indices, seed=seed, image_shape=(3, args.image_size, args.image_size),
                 device=device, settings=settings, labels=labels, cond_fn=cond_fn)
        return to_numpy_uint8(x), labels

    return _draw_and_write(args, settings, make_batch, f"sampling {args.num_samples} images with {settings.sampler} "
                           f"({diffusion.num_timesteps} steps)")


def super_res_sample(argv: list[str]) -> int:
    """`guided-diffusion super_res_sample`: upsample `--base_samples`, keeping their order and labels."""
    args, settings, device, autocast_dtype, seed = _prepare("super_res_sample", argv)
    base_images, base_labels = _load_base_samples(args)

    logger.log("creating model...")
    model, diffusion = sr_create_model_and_diffusion(**args_to_dict(args, sr_model_and_diffusion_defaults().keys()))
    model = _load(model, args.model_path, device, args.use_fp16, vars(args), args.channels_last)
    model_fn = _guided_model(model, args, autocast_dtype)

    def make_batch(indices: list[int]) -> tuple[np.ndarray, np.ndarray | None]:
        source = [i % len(base_images) for i in indices]  # as the original, cycle when asked for more
        low_res = torch.from_numpy(base_images[source]).to(device).permute(0, 3, 1, 2).float() / 127.5 - 1
        labels = base_labels[source] if base_labels is not None else None
        x = draw(model_fn, diffusion, indices=indices, seed=seed, image_shape=(3, args.large_size, args.large_size),
                 device=device, settings=settings, labels=labels, model_kwargs={"low_res": low_res})
        return to_numpy_uint8(x), labels

    return _draw_and_write(args, settings, make_batch, f"upsampling {args.num_samples} images with {settings.sampler} "
                           f"({diffusion.num_timesteps} steps)")


def _load_base_samples(args: argparse.Namespace) -> tuple[np.ndarray, np.ndarray | None]:
    if not args.base_samples:
        raise UserError("pass --base_samples NPZ: the low-resolution samples to upsample (arr_0 uint8 NHWC)")
    try:
        with np.load(args.base_samples) as data:
            images = data["arr_0"]
            labels = data["arr_1"] if "arr_1" in data.files else None
    except (OSError, ValueError, KeyError) as exc:
        raise UserError(f"cannot read --base_samples {args.base_samples} ({exc}); expected an npz with arr_0") from None
    expected = (args.small_size, args.small_size, 3)
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[1:] != expected or len(images) == 0:
        raise UserError(
            f"--base_samples arr_0 is {images.dtype} {images.shape}, expected uint8 N x {'x'.join(map(str, expected))} "
            f"for --small_size {args.small_size}"
        )
    if args.class_cond and labels is None:
        raise UserError("the upsampler is class-conditional but --base_samples has no labels (arr_1); "
                        "sample the base images with class labels, or pass --class_cond False for an unconditional upsampler")
    return images, (labels.astype(np.int64) if args.class_cond else None)


# -- image_nll -----------------------------------------------------------------------------------------


def image_nll(argv: list[str]) -> int:
    """`guided-diffusion image_nll`: bits/dim of a model on an image folder, with per-timestep terms."""
    from guided_diffusion.image_datasets import load_data  # noqa: PLC0415 - data stack only for this command

    parser = _build_parser("image_nll")
    args, explicit = _parse(parser, argv)
    to_fetch = _apply_preset("image_nll", parser, args, explicit)
    _apply_saved_config(parser, args, explicit)
    if args.num_samples < 1 or args.batch_size < 1:
        raise UserError("--num_samples and --batch_size must be at least 1")
    if not args.data_dir:
        raise UserError("pass --data_dir DIR: the images to evaluate")
    progress = _progress(args)
    dist_util.setup_dist()
    device = dist_util.dev()
    autocast_dtype = _resolve_precision(args, device)
    logger.configure(dir=args.out_dir)
    _checkpoint_paths(args, to_fetch, progress)
    if args.seed is not None:
        torch.manual_seed(_shared_seed(args.seed) + dist_util.get_rank())

    logger.log("creating model and diffusion...")
    model, diffusion = create_model_and_diffusion(**args_to_dict(args, model_and_diffusion_defaults().keys()))
    model = _load(model, args.model_path, device, args.use_fp16, vars(args), args.channels_last)  # converted to fp16 when asked (fix of B14)
    model_fn = GuidedModel(model, class_cond=args.class_cond, autocast_dtype=autocast_dtype)

    logger.log("creating data loader...")
    data = load_data(data_dir=args.data_dir, batch_size=args.batch_size, image_size=args.image_size,
                     class_cond=args.class_cond, deterministic=True, random_flip=args.random_flip)

    logger.log("evaluating...")
    world = dist_util.get_world_size()
    all_bpd: list[float] = []
    all_metrics: dict[str, list[np.ndarray]] = {"vb": [], "mse": [], "xstart_mse": []}
    num_complete = 0
    while num_complete < args.num_samples:
        batch, model_kwargs = next(data)
        batch = batch.to(device)
        model_kwargs = {k: v.to(device) for k, v in model_kwargs.items()}
        with torch.no_grad():
            metrics = diffusion.calc_bpd_loop(model_fn, batch, clip_denoised=args.clip_denoised,
                                              model_kwargs=model_kwargs, progress=progress)
        for key, term_list in all_metrics.items():
            terms = metrics[key].mean(dim=0) / world
            if world > 1:
                dist.all_reduce(terms)
            term_list.append(terms.detach().cpu().numpy())
        total_bpd = metrics["total_bpd"].mean() / world
        if world > 1:
            dist.all_reduce(total_bpd)
        all_bpd.append(total_bpd.item())
        num_complete += world * batch.shape[0]
        logger.log(f"done {num_complete} samples: bpd={np.mean(all_bpd)}")

    if dist_util.is_main_process():
        for name, terms in all_metrics.items():
            out_path = Path(logger.get_dir()) / f"{name}_terms.npz"
            logger.log(f"saving {name} terms to {out_path}")
            save_npz(out_path, np.mean(np.stack(terms), axis=0))
        print(f"bits/dim: {np.mean(all_bpd):.6f} over {num_complete} images")
    dist_util.barrier()
    logger.log("evaluation complete")
    return 0


# -- presets and download ------------------------------------------------------------------------------


def _human_size(size: int | None) -> str:
    if not size:
        return "?"
    exponent = min(int(math.log(size, 1024)), 4)
    return f"{size / 1024**exponent:.1f} {['B', 'KiB', 'MiB', 'GiB', 'TiB'][exponent]}"


def _verified_state(preset) -> str:
    """Re-hash a cached checkpoint and re-check its layout: 'verified', or 'BAD: reason'."""
    from guided_diffusion.presets import ensure_preset  # noqa: PLC0415
    from guided_diffusion.sampling.fetch import checkpoint_path  # noqa: PLC0415

    if not checkpoint_path(preset).is_file():
        return "no"
    try:
        ensure_preset(preset, progress=False, verify=True)
    except UserError as exc:
        return f"BAD: {exc}"
    return "verified"


def presets(argv: list[str]) -> int:
    """`guided-diffusion presets [--verify]`: the released checkpoints, and whether each is in the cache."""
    from guided_diffusion.download import cache_dir  # noqa: PLC0415
    from guided_diffusion.presets import PRESETS  # noqa: PLC0415
    from guided_diffusion.sampling.fetch import cache_state  # noqa: PLC0415

    parser = argparse.ArgumentParser(prog="guided-diffusion presets", allow_abbrev=False,
                                     description="List the released checkpoints usable with --preset NAME.")
    parser.add_argument("--verify", action="store_true",
                        help="re-hash every cached checkpoint against its recorded sha256 and re-check its layout")
    args = parser.parse_args(argv)
    rows = [("name", "kind", "resolution", "size", "cached")]
    problems = []
    for preset in PRESETS.values():
        state = cache_state(preset)
        if args.verify and state == "yes":
            state = _verified_state(preset)
            if state.startswith("BAD"):
                problems.append(f"{preset.name}: {state[5:]}")
                state = "BAD"
        rows.append((preset.name, preset.kind, str(preset.resolution), _human_size(preset.size_bytes), state))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip())
    print(f"\ncache: {cache_dir()} (set GUIDED_DIFFUSION_CACHE to move it); fetch with `guided-diffusion download NAME`")
    if problems:
        raise UserError(f"{len(problems)} cached checkpoint(s) failed verification: " + "; ".join(problems))
    return 0


def download(argv: list[str]) -> int:
    """`guided-diffusion download NAME... | --all [--verify]`: fetch released checkpoints into the cache."""
    from guided_diffusion.presets import PRESETS, ensure_preset  # noqa: PLC0415
    from guided_diffusion.sampling.fetch import get_preset  # noqa: PLC0415

    parser = argparse.ArgumentParser(prog="guided-diffusion download", allow_abbrev=False,
                                     description="Download released checkpoints into the cache (resumable, "
                                                 "checked by size, sha256 and layout). Set GUIDED_DIFFUSION_MIRROR=URL "
                                                 "to fetch URL/FILENAME instead of the release host.")
    parser.add_argument("names", nargs="*", metavar="NAME", help="preset names (see `guided-diffusion presets`)")
    parser.add_argument("--all", action="store_true", help="download every released checkpoint")
    parser.add_argument("--verify", action="store_true",
                        help="also re-hash checkpoints already cached and re-check their layout")
    parser.add_argument("--progress", type=str2bool, nargs="?", const=True, default=None,
                        help="progress bars (default: on when stderr is a terminal)")
    args = parser.parse_args(argv)
    if not args.names and not args.all:
        raise UserError("name the checkpoints to download (see `guided-diffusion presets`), or pass --all")
    chosen = list(PRESETS.values()) if args.all else [get_preset(name) for name in args.names]
    progress = _progress(args)
    for preset in chosen:
        path = ensure_preset(preset, progress=progress, verify=args.verify)
        print(f"{preset.name}: {path}" + (" (verified)" if args.verify else ""))
    return 0
