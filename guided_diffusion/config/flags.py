"""The original's command-line flags: their default dicts (derived from the config dataclasses, so a
flag and its config field cannot drift apart) and the argparse helpers the original scripts use.

`guided_diffusion.script_util` re-exports all of these under the original names; the subcommands,
the presets table and the training add-on flags use them from here.
"""
from __future__ import annotations

import argparse
import dataclasses
from typing import Any

from guided_diffusion.config import ClassifierConfig, DiffusionConfig, ModelConfig, SuperResConfig

__all__ = [
    "diffusion_defaults", "model_and_diffusion_defaults", "classifier_defaults", "classifier_and_diffusion_defaults",
    "sr_model_and_diffusion_defaults", "add_dict_to_argparser", "args_to_dict", "str2bool",
]

# sigma_small is not a flag of the original; learn_sigma is listed with the diffusion flags.
_DIFFUSION_FLAGS = [f.name for f in dataclasses.fields(DiffusionConfig) if f.name != "sigma_small"]
_MODEL_FLAGS = [f.name for f in dataclasses.fields(ModelConfig) if f.name != "learn_sigma"]
# The super-resolution scripts take the model flags except image_size and class_dropout_prob (the
# upsampler has no classifier-free guidance), plus the two sizes.
_SR_EXCLUDED = {"image_size", "class_dropout_prob"}


def diffusion_defaults() -> dict[str, Any]:
    """Defaults for the diffusion flags (image and classifier training alike)."""
    d = DiffusionConfig().to_dict()
    return {k: d[k] for k in _DIFFUSION_FLAGS}


def classifier_defaults() -> dict[str, Any]:
    """Defaults for the classifier flags."""
    return ClassifierConfig().to_dict()


def model_and_diffusion_defaults() -> dict[str, Any]:
    """Defaults for the image model and diffusion flags."""
    d = ModelConfig().to_dict()
    res = {k: d[k] for k in _MODEL_FLAGS}
    res.update(diffusion_defaults())
    return res


def classifier_and_diffusion_defaults() -> dict[str, Any]:
    """Defaults for the classifier and diffusion flags (classifier training)."""
    res = classifier_defaults()
    res.update(diffusion_defaults())
    return res


def sr_model_and_diffusion_defaults() -> dict[str, Any]:
    """Defaults for the super-resolution model and diffusion flags."""
    res = {k: v for k, v in model_and_diffusion_defaults().items() if k not in _SR_EXCLUDED}
    sizes = SuperResConfig()
    res["large_size"] = sizes.large_size
    res["small_size"] = sizes.small_size
    return res


def add_dict_to_argparser(parser: argparse.ArgumentParser | argparse._ArgumentGroup, default_dict: dict[str, Any]) -> None:
    """Add `--key` for every default (booleans parsed by str2bool, None as str)."""
    for k, v in default_dict.items():
        v_type: Any = type(v)
        if v is None:
            v_type = str
        elif isinstance(v, bool):
            v_type = str2bool
        parser.add_argument(f"--{k}", default=v, type=v_type)


def args_to_dict(args: argparse.Namespace, keys) -> dict[str, Any]:
    """The values of `keys` among parsed flags."""
    return {k: getattr(args, k) for k in keys}


def str2bool(v: str | bool) -> bool:
    """Parse True/False/yes/no/t/f/y/n/1/0 (any case) as the original does."""
    if isinstance(v, bool):
        return v
    if v.lower() in ("yes", "true", "t", "y", "1"):
        return True
    if v.lower() in ("no", "false", "f", "n", "0"):
        return False
    raise argparse.ArgumentTypeError("boolean value expected")
