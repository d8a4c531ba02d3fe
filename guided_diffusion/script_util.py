"""The original's `guided_diffusion.script_util`: its flag dictionaries and factories under their original
names and signatures. The defaults and argparse helpers live in `guided_diffusion.config.flags`, the network
factories in `guided_diffusion.models.factory`, the diffusion factory in `guided_diffusion.diffusion.factory`;
the `*_and_diffusion` functions below only split the original's keyword arguments between them.
"""
from __future__ import annotations

from guided_diffusion.config import DiffusionConfig
from guided_diffusion.config.flags import (
    add_dict_to_argparser,
    args_to_dict,
    classifier_and_diffusion_defaults,
    classifier_defaults,
    diffusion_defaults,
    model_and_diffusion_defaults,
    sr_model_and_diffusion_defaults,
    str2bool,
)
from guided_diffusion.diffusion.factory import create_gaussian_diffusion
from guided_diffusion.diffusion.respace import SpacedDiffusion
from guided_diffusion.models.factory import NUM_CLASSES, create_classifier, create_model, sr_create_model

__all__ = [
    "NUM_CLASSES", "diffusion_defaults", "model_and_diffusion_defaults", "classifier_defaults",
    "classifier_and_diffusion_defaults", "sr_model_and_diffusion_defaults", "create_model_and_diffusion",
    "create_model", "create_classifier_and_diffusion", "create_classifier", "sr_create_model_and_diffusion",
    "sr_create_model", "create_gaussian_diffusion", "add_dict_to_argparser", "args_to_dict", "str2bool",
]


def create_model_and_diffusion(
    image_size, class_cond, learn_sigma, num_channels, num_res_blocks, channel_mult, num_heads, num_head_channels,
    num_heads_upsample, attention_resolutions, dropout, diffusion_steps, noise_schedule, timestep_respacing, use_kl,
    predict_xstart, rescale_timesteps, rescale_learned_sigmas, use_checkpoint, use_scale_shift_norm, resblock_updown,
    use_fp16, use_new_attention_order, num_classes=NUM_CLASSES, class_dropout_prob=0.0,
):
    """The UNet and its (spaced) diffusion from flag values."""
    diffusion = _diffusion(locals())  # first, while the locals are the arguments
    model = create_model(
        image_size, num_channels, num_res_blocks, channel_mult=channel_mult, learn_sigma=learn_sigma,
        class_cond=class_cond, use_checkpoint=use_checkpoint, attention_resolutions=attention_resolutions,
        num_heads=num_heads, num_head_channels=num_head_channels, num_heads_upsample=num_heads_upsample,
        use_scale_shift_norm=use_scale_shift_norm, dropout=dropout, resblock_updown=resblock_updown,
        use_fp16=use_fp16, use_new_attention_order=use_new_attention_order, num_classes=num_classes,
        class_dropout_prob=class_dropout_prob,
    )
    return model, diffusion


def create_classifier_and_diffusion(
    image_size, classifier_use_fp16, classifier_width, classifier_depth, classifier_attention_resolutions,
    classifier_use_scale_shift_norm, classifier_resblock_updown, classifier_pool, learn_sigma, diffusion_steps,
    noise_schedule, timestep_respacing, use_kl, predict_xstart, rescale_timesteps, rescale_learned_sigmas,
    classifier_channel_mult="", classifier_num_head_channels=64, num_classes=NUM_CLASSES,
):
    """The noisy classifier and its diffusion from flag values."""
    diffusion = _diffusion(locals())  # first, while the locals are the arguments
    classifier = create_classifier(
        image_size, classifier_use_fp16, classifier_width, classifier_depth, classifier_attention_resolutions,
        classifier_use_scale_shift_norm, classifier_resblock_updown, classifier_pool,
        classifier_channel_mult=classifier_channel_mult, classifier_num_head_channels=classifier_num_head_channels,
        num_classes=num_classes,
    )
    return classifier, diffusion


def sr_create_model_and_diffusion(
    large_size, small_size, class_cond, learn_sigma, num_channels, num_res_blocks, num_heads, num_head_channels,
    num_heads_upsample, attention_resolutions, dropout, diffusion_steps, noise_schedule, timestep_respacing, use_kl,
    predict_xstart, rescale_timesteps, rescale_learned_sigmas, use_checkpoint, use_scale_shift_norm, resblock_updown,
    use_fp16, channel_mult="", use_new_attention_order=False, num_classes=NUM_CLASSES,
):
    """The super-resolution UNet and its diffusion from flag values."""
    diffusion = _diffusion(locals())  # first, while the locals are the arguments
    model = sr_create_model(
        large_size, small_size, num_channels, num_res_blocks, learn_sigma=learn_sigma, class_cond=class_cond,
        use_checkpoint=use_checkpoint, attention_resolutions=attention_resolutions, num_heads=num_heads,
        num_head_channels=num_head_channels, num_heads_upsample=num_heads_upsample,
        use_scale_shift_norm=use_scale_shift_norm, dropout=dropout, resblock_updown=resblock_updown,
        use_fp16=use_fp16, channel_mult=channel_mult, use_new_attention_order=use_new_attention_order,
        num_classes=num_classes,
    )
    return model, diffusion


def _diffusion(arguments: dict) -> SpacedDiffusion:
    """create_gaussian_diffusion from the diffusion flags among a factory's arguments."""
    return DiffusionConfig.from_dict(arguments).build()
