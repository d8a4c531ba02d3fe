"""The sampling commands' flags as a `SamplingJob` (shared by image_sample, classifier_sample,
super_res_sample, image_nll and tune_steps).

Settings resolve once, through `config.resolve` (defaults < --preset < the config saved with the
checkpoint < typed flags); the files the flags name are read and checked before anything is built from
flags, and everything is checked before anything is written.
"""
from __future__ import annotations

import argparse
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from guided_diffusion.cli import flag_message
from guided_diffusion.cli.parsing import parse_class_labels, progress_enabled
from guided_diffusion.cli.solver_flags import solver_options
from guided_diffusion.config import ClassifierConfig, DiffusionConfig, ModelConfig, SuperResConfig
from guided_diffusion.config.presets import Preset, get_preset
from guided_diffusion.config.resolve import resolve_network
from guided_diffusion.runtime import distributed
from guided_diffusion.runtime.errors import SettingError, UserError
from guided_diffusion.sampling.job import (
    SamplingJob,
    array_digest,
    check_init_noise,
    check_low_res,
    fp16_runs_on,
    sampling_job,
)

__all__ = ["Resolution", "resolve_flags", "Inputs", "check_inputs", "job_from_flags", "flag_error",
           "precision", "sampling_device"]

# Job options whose flag is not simply --<option>.
_FLAG_OF_SETTING = {"low_res": "--base_samples", "low_res_digest": "--base_samples", "init_noise": "--init_noise",
                    "init_noise_digest": "--init_noise"}
# The kind of diffusion network each command samples (`config.resolve.KINDS`) and of preset it takes.
_MODEL_KIND = {"super_res_sample": "superres"}
_PRESET_KINDS = {"super_res_sample": ("upsampler",)}


# -- resolving the flags ----------------------------------------------------------------------------


def _check_checkpoint(flag: str, path: str, expected: str) -> None:
    """A missing, damaged or wrong-kind checkpoint is named before any flag is built into a config."""
    from guided_diffusion.weights.checkpoints import inspect_checkpoint

    if not path:
        raise UserError(f"no checkpoint given: pass --{flag} PATH, or --preset NAME for a released model")
    if not Path(path).is_file():
        what = "is a directory, not a checkpoint file" if Path(path).is_dir() else "does not exist"
        raise UserError(f"--{flag} {path} {what}: check the path")
    try:
        inspect_checkpoint(path, expected=expected)
    except UserError as exc:
        raise UserError(f"--{flag}: {exc}") from None


class Resolution:
    """Resolved flags: `flags` (every flag's value), `to_fetch` (path flag -> the preset whose checkpoint
    fills it) and `from_checkpoint` (the flags a checkpoint's saved config filled)."""

    def __init__(self, flags: dict[str, Any], to_fetch: dict[str, Preset], from_checkpoint: list[str]):
        self.flags, self.to_fetch, self.from_checkpoint = flags, to_fetch, from_checkpoint


def resolve_flags(command: str, args: argparse.Namespace, typed: set[str]) -> Resolution:
    """Every flag's value after --preset, the checkpoints' saved configs and the typed flags (one
    precedence, `config.resolve`). The checkpoint files named by flags are read and their kind checked
    first, so a wrong file is named as such rather than as a flag problem."""
    flags = dict(vars(args))
    model_preset = classifier_preset = None
    if args.preset is not None:
        model_preset = get_preset(args.preset, _PRESET_KINDS.get(command, ("diffusion",)), command)
        if "classifier_path" in flags and model_preset.classifier is None:
            raise UserError(f"preset {model_preset.name!r} has no classifier; sample it with image_sample, or pass "
                            "--classifier_path and the classifier flags")
        if "classifier_path" in flags and model_preset.classifier is not None:
            classifier_preset = get_preset(model_preset.classifier, ("classifier",))
    to_fetch: dict[str, Preset] = {}
    from_checkpoint: list[str] = []
    kinds = (("model_path", _MODEL_KIND.get(command, "diffusion"), model_preset),
             ("classifier_path", "classifier", classifier_preset))
    for flag, kind, preset in kinds:
        if flag not in flags:
            continue
        if preset is not None and flag not in typed:
            to_fetch[flag] = preset  # the preset's own file, fetched once everything is checked
        else:
            _check_checkpoint(flag, flags[flag], kind)
        try:
            resolved = resolve_network(kind, flags, typed, preset=preset,
                                       checkpoint=None if flag in to_fetch else flags[flag])
        except SettingError as exc:
            raise UserError(f"{flag_message(exc)} with --{flag}") from None
        flags.update(resolved.values)
        from_checkpoint += resolved.filled_from("checkpoint")
    if model_preset is not None:
        _apply_recipe(flags, typed, model_preset, classifier_preset)
    return Resolution(flags, to_fetch, sorted(set(from_checkpoint)))


def _apply_recipe(flags: dict[str, Any], typed: set[str], preset: Preset, classifier: Preset | None) -> None:
    """The README's sampling recipe of a preset: its respacing (ddimN: DDIM) and classifier scale."""
    respacing = preset.timestep_respacing
    if respacing and not typed & {"timestep_respacing", "steps"} and "timestep_respacing" in flags:
        flags["timestep_respacing"] = str(respacing)
        if str(respacing).startswith("ddim") and "use_ddim" not in typed and flags.get("sampler") is None:
            flags["use_ddim"] = True  # the README's ddimN recipes are DDIM recipes
    if classifier is not None and "classifier_scale" not in typed and preset.classifier_scale is not None:
        flags["classifier_scale"] = float(preset.classifier_scale)


# -- inputs and the job -------------------------------------------------------------------------------


class Inputs:
    """Arrays a command reads from files named by flags: --base_samples (images, labels) and
    --init_noise (noise, labels), each None when not given."""

    def __init__(self, base: tuple[np.ndarray, np.ndarray | None] | None = None,
                 init_noise: tuple[np.ndarray, np.ndarray | None] | None = None):
        self.base = base
        self.init_noise = init_noise


def check_inputs(command: str, flags: Mapping[str, Any]) -> Inputs:
    """Read --base_samples / --init_noise (damaged or truncated files are one line naming the flag)."""
    from guided_diffusion.evaluation.npz import npz_keys, read_npz_arrays

    inputs = Inputs()
    if command == "super_res_sample":
        path = flags["base_samples"]
        if not path:
            raise UserError("pass --base_samples NPZ: the low-resolution samples to upsample (arr_0 uint8 NHWC)")
        try:
            if not Path(path).is_file():
                raise UserError(f"{path} does not exist")
            arrays = read_npz_arrays(path, [name for name in ("arr_0", "arr_1") if name in npz_keys(path)])
            if "arr_0" not in arrays:
                raise UserError(f"{path} has no arr_0")
        except UserError as exc:
            raise UserError(f"cannot read --base_samples: {exc}; pass a complete npz with arr_0 (uint8 N x H x W x 3)") from None
        labels = arrays.get("arr_1")
        inputs.base = arrays["arr_0"], (labels.astype(np.int64) if labels is not None else None)
    if flags.get("init_noise"):
        from guided_diffusion.editing.io import read_latents

        try:
            latents, labels = read_latents(flags["init_noise"])
        except ValueError as exc:
            raise UserError(f"--init_noise: {exc}; pass the latents.npz written by `guided-diffusion invert`") from None
        inputs.init_noise = latents.numpy(), labels
    return inputs


def sampling_device(name: str) -> torch.device:
    """The --device to compute on (`runtime.distributed.resolve_device`); a name this machine lacks is one line."""
    try:
        return distributed.resolve_device(name)
    except SettingError as exc:
        raise UserError(flag_message(exc)) from None


def flag_error(command: str, exc: SettingError) -> UserError:
    """A library error about an option (`exc.setting`) as a one-line error naming the flag."""
    if command == "super_res_sample" and exc.setting == "class_labels":
        return UserError(f"--base_samples has no labels (arr_1): {exc}; sample the base images with class labels, "
                         "or pass --class_cond False for an unconditional upsampler")
    return UserError(flag_message(exc, _FLAG_OF_SETTING))


def precision(flags: Mapping[str, Any], device: torch.device) -> dict[str, bool]:
    """The fp16 flags as they run on `device` (a one-line warning when a README flag asks for fp16 on a CPU)."""
    resolved = {name: fp16_runs_on(device, flags[name], bf16=flags["bf16"])
                for name in ("use_fp16", "classifier_use_fp16") if name in flags}
    dropped = [name for name, on in resolved.items() if flags[name] and not on and not flags["bf16"]]
    if dropped and distributed.is_main_process():
        print(f"warning: --{' and --'.join(f + ' True' for f in dropped)} needs a GPU; running in fp32 on {device.type}",
              file=sys.stderr)
    return resolved


def job_from_flags(command: str, flags: Mapping[str, Any], typed: set[str], device: torch.device, *, seed: int,
                   inputs: Inputs | None = None) -> SamplingJob:
    """The resolved flags of `command` as a SamplingJob (the only place they are interpreted)."""
    inputs = inputs or Inputs()
    sampler = flags["sampler"] or ("ddim" if flags["use_ddim"] else "ddpm")
    if flags["use_ddim"] and "use_ddim" in typed and sampler != "ddim":
        raise UserError(f"--use_ddim True asks for DDIM but --sampler is {sampler}; pass only one of them")
    fp16 = precision(flags, device)
    model_cls = SuperResConfig if command == "super_res_sample" else ModelConfig
    model = model_cls.from_flags(flags).replace(use_fp16=fp16["use_fp16"])
    classifier = None
    if "classifier_path" in flags:
        classifier = ClassifierConfig.from_flags(flags).replace(classifier_use_fp16=fp16["classifier_use_fp16"])
    extra: dict[str, Any] = {}
    base, init_noise = inputs.base, inputs.init_noise
    # per-step bars inside a batch only in a terminal: elsewhere the run's plain progress lines say enough
    step_bars = progress_enabled(flags["progress"]) and sys.stderr.isatty()
    # an upsampler draws each base image once unless --num_samples says otherwise (cycling over them)
    num_samples = len(base[0]) if base is not None and "num_samples" not in typed else flags["num_samples"]
    if base is not None:
        extra["low_res_digest"] = array_digest(base[0])
        class_labels = tuple(int(c) for c in base[1]) if base[1] is not None and flags["class_cond"] else None
    else:
        class_labels = parse_class_labels(flags.get("class_labels"))
    if init_noise is not None:
        extra["init_noise_digest"] = array_digest(init_noise[0])
        if class_labels is None and init_noise[1] is not None and (flags["class_cond"] or classifier is not None):
            class_labels = tuple(int(c) for c in init_noise[1][:num_samples])  # sample i gets label i
    try:
        if base is not None:
            check_low_res(base[0], flags["small_size"])
        job = sampling_job(
            model=model, diffusion=DiffusionConfig.from_flags(flags), seed=seed, num_samples=num_samples,
            sampler=sampler, steps=flags["steps"], dynamic_threshold=flags["dynamic_threshold"],
            clip_denoised=flags["clip_denoised"], progress=step_bars,
            batch_size=flags["batch_size"], solver_options=solver_options(argparse.Namespace(**flags)),
            classifier=classifier, classifier_scale=flags["classifier_scale"] if classifier is not None else 0.0,
            cfg_scale=flags["cfg_scale"], class_labels=class_labels, bf16=flags["bf16"],
            channels_last=flags["channels_last"], model_path=flags["model_path"],
            classifier_path=flags.get("classifier_path", ""), **extra,
        )
        if init_noise is not None:
            check_init_noise(init_noise[0], job)
        return job
    except SettingError as exc:
        raise flag_error(command, exc) from None
