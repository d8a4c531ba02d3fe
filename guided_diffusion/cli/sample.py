"""Sampling subcommands: image_sample, classifier_sample, super_res_sample, image_nll, presets, download.

Each sampling command takes every flag of the original script with the original default, so the
README's flag strings work verbatim, plus: --preset, --seed, --class_labels, --sampler, --steps with
--step_grid and the solver and guidance-steering options, --eta, --dynamic_threshold, --cfg_scale,
--progress, --out_dir, --resume, --init_noise, --channels_last and --bf16. Defaults keep the original behaviour (DDPM,
random classes, fp16 as flagged).

The flags become one `SamplingJob` (`job_from_flags`), drawn by `sampling.runner` exactly as the Python
API and the demo draw theirs. Finished batches are kept in a partial folder as they complete, so
SIGINT/SIGTERM keep them (one line, exit 130/143) and `--resume` continues the run.
"""
from __future__ import annotations

import argparse
import copy
import dataclasses
import math
import os
import shlex
import signal
import sys
import zipfile
import zlib
from collections.abc import Callable
from dataclasses import fields
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from guided_diffusion.cli import flag_message
from guided_diffusion.cli.solver_flags import (
    add_grid_flags,
    add_guidance_steering_flags,
    add_sampler_flags,
    solver_options,
)
from guided_diffusion.config import ClassifierConfig, DiffusionConfig, ModelConfig, SuperResConfig
from guided_diffusion.config.flags import (
    add_dict_to_argparser,
    classifier_defaults,
    model_and_diffusion_defaults,
    sr_model_and_diffusion_defaults,
    str2bool,
)
from guided_diffusion.diffusion.stepping import NonFiniteSampleError
from guided_diffusion.runtime import distributed, logs
from guided_diffusion.runtime.atomic import directory_write_problem
from guided_diffusion.runtime.errors import SettingError, UserError
from guided_diffusion.runtime.rng import fresh_seed
from guided_diffusion.sampling.guidance import GuidedModel
from guided_diffusion.sampling.job import (
    SamplingJob,
    array_digest,
    check_counts,
    check_init_noise,
    check_low_res,
    fp16_runs_on,
    sampling_job,
)
from guided_diffusion.sampling.output import save_grid, save_npz, save_samples
from guided_diffusion.sampling.runner import (
    PartialRun,
    ResumeError,
    SamplingInterrupted,
    draw_samples,
    guidance_for,
    load_network,
    stop_on_signals,
)
from guided_diffusion.weights.checkpoints import read_config_json

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
    parser = _Parser(
        prog=f"guided-diffusion {command}",
        description=f"The original scripts/{command}.py flags, plus the options below them.",
        allow_abbrev=False,  # `--num_sample 2` is a typo to report, not --num_samples
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
    extra.add_argument("--resume", action="store_true",
                       help="continue an interrupted run in --out_dir (same flags and seed): finished batches are kept "
                            "in samples_*.partial/ as they complete and only the rest is drawn")
    add_sampler_flags(extra, default=None, default_text="ddpm, or ddim with --use_ddim True")
    add_grid_flags(extra)
    add_guidance_steering_flags(extra, classifier=command == "classifier_sample")
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


class _Parser(argparse.ArgumentParser):
    """argparse whose errors are one line (the usage of ~60 flags would bury the message)."""

    def error(self, message: str):
        raise UserError(f"{message} (see `{self.prog} --help`)")


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
        if action.dest == name and callable(action.type) and isinstance(value, str):
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
    from guided_diffusion.config.presets import get_preset

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
    if command == "classifier_sample" and preset.classifier is not None:  # checked above
        classifier = get_preset(preset.classifier, ("classifier",))
        _fill_from_preset(parser, args, explicit, dict(classifier.flags), preset_name=classifier.name,
                          architecture=_CLASSIFIER_ARCH, path_flag="classifier_path")
        if "classifier_scale" not in explicit and preset.classifier_scale is not None:
            args.classifier_scale = float(preset.classifier_scale)
        if "classifier_path" not in explicit:
            to_fetch["classifier_path"] = classifier
    return to_fetch


# -- resolving flags into a job ------------------------------------------------------------------------

# Job options whose flag is not simply --<option>.
_FLAG_OF_SETTING = {"low_res": "--base_samples", "low_res_digest": "--base_samples", "init_noise": "--init_noise",
                    "init_noise_digest": "--init_noise"}


def _flag_error(command: str, exc: SettingError) -> UserError:
    """A library error about an option (`exc.setting`) as a one-line error naming the flag."""
    if command == "super_res_sample" and exc.setting == "class_labels":
        return UserError(f"--base_samples has no labels (arr_1): {exc}; sample the base images with class labels, "
                         "or pass --class_cond False for an unconditional upsampler")
    return UserError(flag_message(exc, _FLAG_OF_SETTING))


def _progress(args: argparse.Namespace) -> bool:
    return sys.stderr.isatty() if args.progress is None else bool(args.progress)


def _parse_class_labels(text: str | None) -> tuple[int, ...] | None:
    if text is None:
        return None
    try:
        return tuple(int(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise UserError(f"--class_labels {text!r} must be an integer or a comma list of integers, e.g. 207 or 1,2,3") from None


def _precision(args: argparse.Namespace, device: torch.device) -> dict[str, bool]:
    """The fp16 flags as they run on `device` (a one-line warning when a README flag asks for fp16 on a CPU)."""
    resolved = {name: fp16_runs_on(device, getattr(args, name), bf16=args.bf16)
                for name in ("use_fp16", "classifier_use_fp16") if hasattr(args, name)}
    dropped = [name for name, on in resolved.items() if getattr(args, name) and not on and not args.bf16]
    if dropped and distributed.is_main_process():
        print(f"warning: --{' and --'.join(f + ' True' for f in dropped)} needs a GPU; running in fp32 on {device.type}",
              file=sys.stderr)
    return resolved


def job_from_flags(command: str, args: argparse.Namespace, explicit: set[str], device: torch.device, *, seed: int,
                   base: tuple[np.ndarray, np.ndarray | None] | None = None,
                   init_noise: tuple[np.ndarray, np.ndarray | None] | None = None) -> SamplingJob:
    """The sampling flags of `command` as a SamplingJob (the only place they are interpreted)."""
    sampler = args.sampler or ("ddim" if args.use_ddim else "ddpm")
    if args.use_ddim and "use_ddim" in explicit and sampler != "ddim":
        raise UserError(f"--use_ddim True asks for DDIM but --sampler is {sampler}; pass only one of them")
    precision = _precision(args, device)
    model_cls = SuperResConfig if command == "super_res_sample" else ModelConfig
    model = model_cls.from_flags(args).replace(use_fp16=precision["use_fp16"])
    classifier = None
    if command == "classifier_sample":
        classifier = ClassifierConfig.from_flags(args).replace(classifier_use_fp16=precision["classifier_use_fp16"])
    extra: dict[str, Any] = {}
    if base is not None:
        extra["low_res_digest"] = array_digest(base[0])
        class_labels = tuple(int(c) for c in base[1]) if base[1] is not None and args.class_cond else None
    else:
        class_labels = _parse_class_labels(args.class_labels)
    if init_noise is not None:
        extra["init_noise_digest"] = array_digest(init_noise[0])
        if class_labels is None and init_noise[1] is not None and (args.class_cond or command == "classifier_sample"):
            class_labels = tuple(int(c) for c in init_noise[1][:args.num_samples])  # sample i gets label i
    try:
        if base is not None:
            check_low_res(base[0], args.small_size)
        job = sampling_job(
            model=model, diffusion=DiffusionConfig.from_flags(args), seed=seed, num_samples=args.num_samples,
            sampler=sampler, steps=args.steps, dynamic_threshold=args.dynamic_threshold,
            clip_denoised=args.clip_denoised, progress=_progress(args), batch_size=args.batch_size,
            solver_options=solver_options(args),
            classifier=classifier, classifier_scale=args.classifier_scale if classifier is not None else 0.0,
            cfg_scale=args.cfg_scale, class_labels=class_labels, bf16=args.bf16, channels_last=args.channels_last,
            model_path=args.model_path, classifier_path=getattr(args, "classifier_path", ""), **extra,
        )
        if init_noise is not None:
            check_init_noise(init_noise[0], job)
        return job
    except SettingError as exc:
        raise _flag_error(command, exc) from None


# -- checks before any work ----------------------------------------------------------------------------


def _check_out_dir(args: argparse.Namespace) -> None:
    target = args.out_dir or os.environ.get("OPENAI_LOGDIR")
    if target:
        problem = directory_write_problem(target)
        if problem is not None:
            flag = "--out_dir" if args.out_dir else "OPENAI_LOGDIR"
            raise UserError(f"{flag} {target}: {problem}; choose another output directory")


def _check_checkpoints_exist(args: argparse.Namespace, to_fetch: dict[str, Any]) -> None:
    """Name a missing checkpoint before anything is built from flags that depend on it."""
    for flag in ("model_path", "classifier_path"):
        if not hasattr(args, flag) or flag in to_fetch:
            continue
        path = getattr(args, flag)
        if not path:
            raise UserError(f"no checkpoint given: pass --{flag} PATH, or --preset NAME for a released model")
        if not Path(path).is_file():
            what = "is a directory, not a checkpoint file" if Path(path).is_dir() else "does not exist"
            raise UserError(f"--{flag} {path} {what}: check the path")


def _load_init_noise(args: argparse.Namespace) -> tuple[np.ndarray, np.ndarray | None] | None:
    if not getattr(args, "init_noise", None):
        return None
    from guided_diffusion.editing.io import read_latents

    try:
        latents, labels = read_latents(args.init_noise)
    except ValueError as exc:
        raise UserError(f"--init_noise: {exc}; pass the latents.npz written by `guided-diffusion invert`") from None
    return latents.numpy(), labels


def _load_base_samples(args: argparse.Namespace) -> tuple[np.ndarray, np.ndarray | None]:
    if not args.base_samples:
        raise UserError("pass --base_samples NPZ: the low-resolution samples to upsample (arr_0 uint8 NHWC)")
    try:
        with np.load(args.base_samples) as data:
            images = data["arr_0"]
            labels = data["arr_1"] if "arr_1" in data.files else None
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile, zlib.error) as exc:
        reason = f"{type(exc).__name__}: {exc}".splitlines()[0]
        raise UserError(f"cannot read --base_samples {args.base_samples} ({reason}): it is not a complete npz with "
                        "arr_0; write it again") from None
    return images, (labels.astype(np.int64) if labels is not None else None)


# -- seeds, checkpoints and the partial folder, agreed by every rank ---------------------------------------


def _on_rank0(action: Callable[[], Any]) -> Any:
    """Run `action` on rank 0 and give every rank its result, or raise its error on every rank (so no
    rank is left waiting in a collective when rank 0 refuses)."""
    result: Any = None
    failure: str | None = None
    if distributed.is_main_process():
        try:
            result = action()
        except (UserError, ResumeError) as exc:
            failure = str(exc)
    if distributed.get_world_size() > 1:
        box = [(result, failure)]
        dist.broadcast_object_list(box, src=0)
        result, failure = box[0]
    if failure is not None:
        raise UserError(failure)
    return result


def _run_seed(args: argparse.Namespace, partial_dir: Path | None) -> tuple[int, bool]:
    """The run's base seed (the given one, the interrupted run's when resuming without --seed, else a
    fresh one) and whether it was chosen here."""
    if args.seed is not None:
        return args.seed, False

    def choose() -> tuple[int, bool]:
        stored = PartialRun.stored_fingerprint(partial_dir) if args.resume and partial_dir is not None else None
        return (int(stored["seed"]), False) if stored and "seed" in stored else (fresh_seed(), True)

    return _on_rank0(choose)


def _checkpoint_paths(args: argparse.Namespace, to_fetch: dict[str, Any], progress: bool) -> None:
    from guided_diffusion.weights.fetch import fetch

    for flag, preset in to_fetch.items():
        setattr(args, flag, str(fetch(preset, progress=progress)))


def _resume_command(command: str, argv: list[str], seed: int) -> str:
    words = list(argv)
    if "--seed" not in words and not any(w.startswith("--seed=") for w in words):
        words += ["--seed", str(seed)]
    if "--resume" not in words:
        words.append("--resume")
    world = distributed.get_world_size()
    launcher = ["guided-diffusion"] if world == 1 else ["torchrun", "--nproc_per_node", str(world), "-m", "guided_diffusion"]
    return shlex.join([*launcher, command, *words])


# -- sampling commands ---------------------------------------------------------------------------------


def image_sample(argv: list[str]) -> int:
    """`guided-diffusion image_sample`: unguided samples (any sampler in SAMPLERS) to an npz."""
    return _sample("image_sample", argv)


def classifier_sample(argv: list[str]) -> int:
    """`guided-diffusion classifier_sample`: samples guided by a noisy classifier (ADM-G)."""
    return _sample("classifier_sample", argv)


def super_res_sample(argv: list[str]) -> int:
    """`guided-diffusion super_res_sample`: upsample `--base_samples`, keeping their order and labels."""
    return _sample("super_res_sample", argv)


def _sample(command: str, argv: list[str]) -> int:
    """Resolve the flags into a job, check everything that can be checked, then draw, keeping each batch
    as it finishes; SIGINT/SIGTERM keep what was drawn and print how to resume (exit 128 + signal)."""
    parser = _build_parser(command)
    args, explicit = _parse(parser, argv)
    to_fetch = _apply_preset(command, parser, args, explicit)
    _check_out_dir(args)
    _check_checkpoints_exist(args, to_fetch)
    from_config = _apply_saved_config(parser, args, explicit)
    base = _load_base_samples(args) if command == "super_res_sample" else None
    init_noise = _load_init_noise(args)
    distributed.setup_dist()
    device = distributed.dev()
    job = job_from_flags(command, args, explicit, device, seed=args.seed if args.seed is not None else 0, base=base,
                         init_noise=init_noise)
    logs.configure(dir=args.out_dir)
    out_dir = Path(logs.get_dir())
    if from_config:
        logs.log(f"flags from the checkpoint's saved config: {', '.join(sorted(set(from_config)))}")
    partial_dir = PartialRun.directory_for(out_dir, job)
    store: PartialRun | None = None
    seed = job.seed
    with stop_on_signals() as received:
        try:
            seed, chosen = _run_seed(args, partial_dir)
            if chosen:
                logs.log(f"seed: {seed} (pass --seed {seed} to draw the same samples again)")
            _checkpoint_paths(args, to_fetch, job.settings.progress)
            job = dataclasses.replace(job, seed=seed, model_path=args.model_path,
                                      classifier_path=getattr(args, "classifier_path", ""))
            store = _on_rank0(lambda: PartialRun.open(out_dir, job, resume=args.resume))
            if store is not None and distributed.is_main_process() and store.finished():
                logs.log(f"resuming: {store.count()} of {job.num_samples} samples already in {store.directory}")
            return _draw_and_write(job, device, base, store, init_noise[0] if init_noise is not None else None)
        except NonFiniteSampleError as exc:
            kept = f"; the {store.count()} finished samples stay in {store.directory}" if store is not None else ""
            raise UserError(f"sampling stopped: {exc} (try a smaller --classifier_scale/--cfg_scale, or "
                            f"--dynamic_threshold 0.995){kept}") from None
        except SamplingInterrupted as stop:
            return _interrupted(command, argv, job, seed, stop.signum, store)
        except Exception:
            signum = received()
            if signum is None:
                raise
            return _interrupted(command, argv, job, seed, signum, store)  # a collective broken by a stopped peer


def _draw_and_write(job: SamplingJob, device: torch.device, base: tuple[np.ndarray, Any] | None,
                    store: PartialRun | None, init_noise: np.ndarray | None = None) -> int:
    logs.log("loading networks...")
    model = load_network(job.model, job.model_path, device, channels_last=job.channels_last)
    classifier = None
    if job.guided:
        classifier = load_network(job.classifier, job.classifier_path, device, channels_last=job.channels_last)
    model_fn, cond_fn = guidance_for(job, model, classifier)
    diffusion = job.build_diffusion()
    verb = "upsampling" if job.is_upsampler else "sampling"
    levels = job.settings.steps or diffusion.num_timesteps  # with --steps the diffusion is the un-respaced one
    logs.log(f"{verb} {job.num_samples} images with {job.settings.sampler} ({levels} levels, "
             f"{job.settings.evaluations(levels)} model evaluations)...")
    result = draw_samples(job, model_fn, cond_fn, device, diffusion=diffusion,
                          low_res=base[0] if base is not None else None, init_noise=init_noise, store=store)
    if result is not None:
        images, labels = result
        path = save_samples(Path(logs.get_dir()), images, labels)
        save_grid(path.with_suffix(".png"), images)
        if store is not None:
            store.discard()
        logs.log(f"saving to {path} (and a grid of the first images in {path.with_suffix('.png').name})")
    distributed.barrier()
    logs.log("sampling complete")
    return 0


def _interrupted(command: str, argv: list[str], job: SamplingJob, seed: int, signum: int,
                 store: PartialRun | None) -> int:
    """One line on rank 0 (what was kept, the command that continues), and the conventional 128 + signal."""
    if distributed.is_main_process():
        name = signal.Signals(signum).name
        if store is None:
            print(f"interrupted by {name} before sampling started; nothing to keep", file=sys.stderr)
        else:
            print(f"interrupted by {name}: kept {store.count()} of {job.num_samples} samples in {store.directory}; "
                  f"resume with: {_resume_command(command, argv, seed)}", file=sys.stderr)
    sys.stderr.flush()
    return 128 + signum


# -- image_nll -----------------------------------------------------------------------------------------


def image_nll(argv: list[str]) -> int:
    """`guided-diffusion image_nll`: bits/dim of a model on an image folder, with per-timestep terms."""
    from guided_diffusion.data.load import load_data

    parser = _build_parser("image_nll")
    args, explicit = _parse(parser, argv)
    to_fetch = _apply_preset("image_nll", parser, args, explicit)
    _check_out_dir(args)
    _check_checkpoints_exist(args, to_fetch)
    _apply_saved_config(parser, args, explicit)
    try:
        check_counts(num_samples=args.num_samples, batch_size=args.batch_size, seed=args.seed)
    except SettingError as exc:
        raise _flag_error("image_nll", exc) from None
    if not args.data_dir:
        raise UserError("pass --data_dir DIR: the images to evaluate")
    progress = _progress(args)
    distributed.setup_dist()
    device = distributed.dev()
    model_config = ModelConfig.from_flags(args).replace(use_fp16=_precision(args, device)["use_fp16"])
    logs.configure(dir=args.out_dir)
    _checkpoint_paths(args, to_fetch, progress)
    if args.seed is not None:
        torch.manual_seed(args.seed + distributed.get_rank())

    logs.log("creating model and diffusion...")
    model = load_network(model_config, args.model_path, device, channels_last=args.channels_last)
    diffusion = DiffusionConfig.from_flags(args).build()
    model_fn = GuidedModel(model, class_cond=args.class_cond, autocast_dtype=torch.bfloat16 if args.bf16 else None)

    logs.log("creating data loader...")
    data = load_data(data_dir=args.data_dir, batch_size=args.batch_size, image_size=args.image_size,
                     class_cond=args.class_cond, deterministic=True, random_flip=args.random_flip)

    logs.log("evaluating...")
    world = distributed.get_world_size()
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
        logs.log(f"done {num_complete} samples: bpd={np.mean(all_bpd)}")

    if distributed.is_main_process():
        for name, terms in all_metrics.items():
            out_path = Path(logs.get_dir()) / f"{name}_terms.npz"
            logs.log(f"saving {name} terms to {out_path}")
            save_npz(out_path, np.mean(np.stack(terms), axis=0))
        print(f"bits/dim: {np.mean(all_bpd):.6f} over {num_complete} images")
    distributed.barrier()
    logs.log("evaluation complete")
    return 0


# -- presets and download ------------------------------------------------------------------------------


def _human_size(size: int | None) -> str:
    if not size:
        return "?"
    exponent = min(int(math.log(size, 1024)), 4)
    return f"{size / 1024**exponent:.1f} {['B', 'KiB', 'MiB', 'GiB', 'TiB'][exponent]}"


def _verified_state(preset) -> str:
    """Re-hash a cached checkpoint and re-check its layout: 'verified', or 'BAD: reason'."""
    from guided_diffusion.weights.fetch import checkpoint_path, ensure_preset

    if not checkpoint_path(preset).is_file():
        return "no"
    try:
        ensure_preset(preset, progress=False, verify=True)
    except UserError as exc:
        return f"BAD: {exc}"
    return "verified"


def presets(argv: list[str]) -> int:
    """`guided-diffusion presets [--verify]`: the released checkpoints, and whether each is in the cache."""
    from guided_diffusion.config.presets import PRESETS
    from guided_diffusion.runtime.download import cache_dir
    from guided_diffusion.weights.fetch import cache_state

    parser = argparse.ArgumentParser(prog="guided-diffusion presets", allow_abbrev=False,
                                     description="List the released checkpoints usable with --preset NAME.")
    parser.add_argument("--verify", action="store_true",
                        help="re-hash every cached checkpoint against its recorded sha256 and re-check its layout")
    parser.add_argument("--training", action="store_true",
                        help="print the released models' training recipes instead (batch, lr, iterations, flags)")
    args = parser.parse_args(argv)
    if args.training:
        from guided_diffusion.training.recipes import recipes_text

        print(recipes_text())
        return 0
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
    from guided_diffusion.config.presets import PRESETS, get_preset
    from guided_diffusion.weights.fetch import ensure_preset

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
