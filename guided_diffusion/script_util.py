"""The original's flag dictionaries and factories (`guided_diffusion.script_util`), built on
guided_diffusion.config. Extra keyword arguments default to the original's behaviour."""
from __future__ import annotations

import argparse
import dataclasses
import inspect

from guided_diffusion.config import (
    NUM_CLASSES,
    ClassifierConfig,
    DiffusionConfig,
    ModelConfig,
    SuperResConfig,
)
from guided_diffusion.diffusion.gaussian import LossType, ModelMeanType, ModelVarType
from guided_diffusion.diffusion.respace import SpacedDiffusion, parse_respacing
from guided_diffusion.diffusion.schedules import get_named_beta_schedule

__all__ = [
    "NUM_CLASSES", "diffusion_defaults", "model_and_diffusion_defaults", "classifier_defaults",
    "classifier_and_diffusion_defaults", "sr_model_and_diffusion_defaults", "create_model_and_diffusion",
    "create_model", "create_classifier_and_diffusion", "create_classifier", "sr_create_model_and_diffusion",
    "sr_create_model", "create_gaussian_diffusion", "add_dict_to_argparser", "args_to_dict", "str2bool",
]

_DIFFUSION_FLAGS = [f.name for f in dataclasses.fields(DiffusionConfig) if f.name != "sigma_small"]
_MODEL_FLAGS = [f.name for f in dataclasses.fields(ModelConfig) if f.name != "learn_sigma"]


def diffusion_defaults() -> dict:
    """Defaults for the diffusion flags (image and classifier training alike)."""
    d = DiffusionConfig().to_dict()
    return {k: d[k] for k in _DIFFUSION_FLAGS}


def classifier_defaults() -> dict:
    """Defaults for the classifier flags."""
    return ClassifierConfig().to_dict()


def model_and_diffusion_defaults() -> dict:
    """Defaults for the image model and diffusion flags."""
    d = ModelConfig().to_dict()
    res = {k: d[k] for k in _MODEL_FLAGS}
    res.update(diffusion_defaults())
    return res


def classifier_and_diffusion_defaults() -> dict:
    res = classifier_defaults()
    res.update(diffusion_defaults())
    return res


def create_model_and_diffusion(
    image_size, class_cond, learn_sigma, num_channels, num_res_blocks, channel_mult, num_heads, num_head_channels,
    num_heads_upsample, attention_resolutions, dropout, diffusion_steps, noise_schedule, timestep_respacing, use_kl,
    predict_xstart, rescale_timesteps, rescale_learned_sigmas, use_checkpoint, use_scale_shift_norm, resblock_updown,
    use_fp16, use_new_attention_order, num_classes=NUM_CLASSES, class_dropout_prob=0.0,
):
    """Build the UNet and its (spaced) diffusion from flag values."""
    model = create_model(
        image_size, num_channels, num_res_blocks, channel_mult=channel_mult, learn_sigma=learn_sigma,
        class_cond=class_cond, use_checkpoint=use_checkpoint, attention_resolutions=attention_resolutions,
        num_heads=num_heads, num_head_channels=num_head_channels, num_heads_upsample=num_heads_upsample,
        use_scale_shift_norm=use_scale_shift_norm, dropout=dropout, resblock_updown=resblock_updown,
        use_fp16=use_fp16, use_new_attention_order=use_new_attention_order, num_classes=num_classes,
        class_dropout_prob=class_dropout_prob,
    )
    diffusion = _diffusion_from_flags(locals())
    return model, diffusion


def create_model(
    image_size, num_channels, num_res_blocks, channel_mult="", learn_sigma=False, class_cond=False,
    use_checkpoint=False, attention_resolutions="16", num_heads=1, num_head_channels=-1, num_heads_upsample=-1,
    use_scale_shift_norm=False, dropout=0, resblock_updown=False, use_fp16=False, use_new_attention_order=False,
    num_classes=NUM_CLASSES, class_dropout_prob=0.0,
):
    """Build a UNetModel from flag values (channel_mult "" picks the original's preset for image_size)."""
    return ModelConfig(
        image_size=image_size, num_channels=num_channels, num_res_blocks=num_res_blocks, num_heads=num_heads,
        num_heads_upsample=num_heads_upsample, num_head_channels=num_head_channels,
        attention_resolutions=attention_resolutions, channel_mult=channel_mult, dropout=dropout,
        class_cond=class_cond, use_checkpoint=use_checkpoint, use_scale_shift_norm=use_scale_shift_norm,
        resblock_updown=resblock_updown, use_fp16=use_fp16, use_new_attention_order=use_new_attention_order,
        learn_sigma=learn_sigma, num_classes=num_classes, class_dropout_prob=class_dropout_prob,
    ).build()


def create_classifier_and_diffusion(
    image_size, classifier_use_fp16, classifier_width, classifier_depth, classifier_attention_resolutions,
    classifier_use_scale_shift_norm, classifier_resblock_updown, classifier_pool, learn_sigma, diffusion_steps,
    noise_schedule, timestep_respacing, use_kl, predict_xstart, rescale_timesteps, rescale_learned_sigmas,
    classifier_channel_mult="", classifier_num_head_channels=64, num_classes=NUM_CLASSES,
):
    """Build the noisy classifier and its diffusion from flag values."""
    classifier = create_classifier(
        image_size, classifier_use_fp16, classifier_width, classifier_depth, classifier_attention_resolutions,
        classifier_use_scale_shift_norm, classifier_resblock_updown, classifier_pool,
        classifier_channel_mult=classifier_channel_mult, classifier_num_head_channels=classifier_num_head_channels,
        num_classes=num_classes,
    )
    diffusion = _diffusion_from_flags(locals())
    return classifier, diffusion


def create_classifier(
    image_size, classifier_use_fp16, classifier_width, classifier_depth, classifier_attention_resolutions,
    classifier_use_scale_shift_norm, classifier_resblock_updown, classifier_pool,
    classifier_channel_mult="", classifier_num_head_channels=64, num_classes=NUM_CLASSES,
):
    """Build an EncoderUNetModel classifier from flag values."""
    return ClassifierConfig(
        image_size=image_size, classifier_use_fp16=classifier_use_fp16, classifier_width=classifier_width,
        classifier_depth=classifier_depth, classifier_attention_resolutions=classifier_attention_resolutions,
        classifier_use_scale_shift_norm=classifier_use_scale_shift_norm,
        classifier_resblock_updown=classifier_resblock_updown, classifier_pool=classifier_pool,
        classifier_channel_mult=classifier_channel_mult, classifier_num_head_channels=classifier_num_head_channels,
        num_classes=num_classes,
    ).build()


def sr_model_and_diffusion_defaults() -> dict:
    """Defaults for the super-resolution flags: the model flags that sr_create_model_and_diffusion takes."""
    res = model_and_diffusion_defaults()
    res["large_size"] = 256
    res["small_size"] = 64
    arg_names = inspect.getfullargspec(sr_create_model_and_diffusion)[0]
    return {k: v for k, v in res.items() if k in arg_names}


def sr_create_model_and_diffusion(
    large_size, small_size, class_cond, learn_sigma, num_channels, num_res_blocks, num_heads, num_head_channels,
    num_heads_upsample, attention_resolutions, dropout, diffusion_steps, noise_schedule, timestep_respacing, use_kl,
    predict_xstart, rescale_timesteps, rescale_learned_sigmas, use_checkpoint, use_scale_shift_norm, resblock_updown,
    use_fp16, channel_mult="", use_new_attention_order=False, num_classes=NUM_CLASSES,
):
    """Build the super-resolution UNet and its diffusion from flag values."""
    model = sr_create_model(
        large_size, small_size, num_channels, num_res_blocks, learn_sigma=learn_sigma, class_cond=class_cond,
        use_checkpoint=use_checkpoint, attention_resolutions=attention_resolutions, num_heads=num_heads,
        num_head_channels=num_head_channels, num_heads_upsample=num_heads_upsample,
        use_scale_shift_norm=use_scale_shift_norm, dropout=dropout, resblock_updown=resblock_updown,
        use_fp16=use_fp16, channel_mult=channel_mult, use_new_attention_order=use_new_attention_order,
        num_classes=num_classes,
    )
    diffusion = _diffusion_from_flags(locals())
    return model, diffusion


def sr_create_model(
    large_size, small_size, num_channels, num_res_blocks, learn_sigma, class_cond, use_checkpoint,
    attention_resolutions, num_heads, num_head_channels, num_heads_upsample, use_scale_shift_norm, dropout,
    resblock_updown, use_fp16, channel_mult="", use_new_attention_order=False, num_classes=NUM_CLASSES,
):
    """Build a SuperResModel from flag values."""
    return SuperResConfig(
        large_size=large_size, small_size=small_size, num_channels=num_channels, num_res_blocks=num_res_blocks,
        num_heads=num_heads, num_heads_upsample=num_heads_upsample, num_head_channels=num_head_channels,
        attention_resolutions=attention_resolutions, channel_mult=channel_mult, dropout=dropout,
        class_cond=class_cond, use_checkpoint=use_checkpoint, use_scale_shift_norm=use_scale_shift_norm,
        resblock_updown=resblock_updown, use_fp16=use_fp16, use_new_attention_order=use_new_attention_order,
        learn_sigma=learn_sigma, num_classes=num_classes,
    ).build()


def create_gaussian_diffusion(
    *, steps=1000, learn_sigma=False, sigma_small=False, noise_schedule="linear", use_kl=False,
    predict_xstart=False, rescale_timesteps=False, rescale_learned_sigmas=False, timestep_respacing="",
) -> SpacedDiffusion:
    """Build the diffusion (always a SpacedDiffusion; the identity spacing when no respacing is asked)."""
    betas = get_named_beta_schedule(noise_schedule, steps)
    if use_kl:
        loss_type = LossType.RESCALED_KL
    elif rescale_learned_sigmas:
        loss_type = LossType.RESCALED_MSE
    else:
        loss_type = LossType.MSE
    if learn_sigma:
        var_type = ModelVarType.LEARNED_RANGE
    else:
        var_type = ModelVarType.FIXED_SMALL if sigma_small else ModelVarType.FIXED_LARGE
    return SpacedDiffusion(
        use_timesteps=parse_respacing(steps, timestep_respacing) if isinstance(timestep_respacing, str)
        else set(timestep_respacing),
        betas=betas,
        model_mean_type=ModelMeanType.START_X if predict_xstart else ModelMeanType.EPSILON,
        model_var_type=var_type,
        loss_type=loss_type,
        rescale_timesteps=rescale_timesteps,
    )


def _diffusion_from_flags(flags: dict) -> SpacedDiffusion:
    """create_gaussian_diffusion from the diffusion flags among a factory's arguments."""
    return DiffusionConfig.from_dict(flags).build()


def add_dict_to_argparser(parser: argparse.ArgumentParser, default_dict: dict) -> None:
    """Add `--key` for every default (booleans parsed by str2bool, None as str)."""
    for k, v in default_dict.items():
        v_type = type(v)
        if v is None:
            v_type = str
        elif isinstance(v, bool):
            v_type = str2bool
        parser.add_argument(f"--{k}", default=v, type=v_type)


def args_to_dict(args, keys) -> dict:
    return {k: getattr(args, k) for k in keys}


def str2bool(v) -> bool:
    """Parse True/False/yes/no/t/f/y/n/1/0 (any case) as the original does."""
    if isinstance(v, bool):
        return v
    if v.lower() in ("yes", "true", "t", "y", "1"):
        return True
    if v.lower() in ("no", "false", "f", "n", "0"):
        return False
    raise argparse.ArgumentTypeError("boolean value expected")
