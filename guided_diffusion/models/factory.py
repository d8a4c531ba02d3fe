"""Building the networks from the original's flag values.

The flags describe a network in the user's terms (a comma list of attention resolutions, "" for the
image size's channel multipliers, learn_sigma for six output channels); these factories turn them into
the constructor arguments of `UNetModel`, `SuperResModel` and `EncoderUNetModel`. Their signatures are
the original `script_util` ones (`guided_diffusion.script_util` re-exports them); the config dataclasses
in `guided_diffusion.config` call them from `build()`.
"""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from guided_diffusion.models.unet import EncoderUNetModel, SuperResModel, UNetModel
from guided_diffusion.runtime.errors import SettingError

NUM_CLASSES = 1000

# Per-level width multipliers (ints, or fractions such as 0.5) and what a setting may hold for them.
ChannelMult = tuple[float, ...]
ChannelMultSetting = str | tuple[float, ...] | list[float]
# Attention resolutions as a setting: "32,16,8", or a sequence of resolutions.
ResolutionsSetting = str | tuple[int | str, ...] | list[int | str]

# channel_mult used by the original when channel_mult is empty, by image size.
CHANNEL_MULT_BY_SIZE: Mapping[int, ChannelMult] = {
    512: (0.5, 1, 1, 2, 2, 4, 4),
    256: (1, 1, 2, 2, 4, 4),
    128: (1, 1, 2, 3, 4),
    64: (1, 2, 3, 4),
}
SR_CHANNEL_MULT_BY_SIZE: Mapping[int, ChannelMult] = {512: (1, 1, 2, 2, 4, 4), 256: (1, 1, 2, 2, 4, 4), 64: (1, 2, 3, 4)}

CLASSIFIER_POOLS = ("adaptive", "attention", "spatial", "spatial_v2")


def parse_channel_mult(channel_mult: ChannelMultSetting, image_size: int,
                       presets: Mapping[int, ChannelMult] = CHANNEL_MULT_BY_SIZE,
                       setting: str = "channel_mult") -> ChannelMult:
    """The per-level width multipliers: the given comma list (fractions allowed, e.g. "0.5,1,2") or the
    original's preset for the image size. `setting` names the argument in errors."""
    if isinstance(channel_mult, (tuple, list)):
        return tuple(channel_mult)
    if channel_mult == "":
        if image_size not in presets:
            raise SettingError(setting, f"{setting} is empty and image size {image_size} has no default (known sizes: "
                                        f"{sorted(presets)}); give it, e.g. 1,2,2,2")
        return tuple(presets[image_size])
    try:
        values = [float(v) for v in str(channel_mult).split(",")]
    except ValueError:
        raise SettingError(setting, f"{setting} {channel_mult!r} is not a comma list of numbers; use e.g. 1,2,3,4") from None
    return tuple(int(v) if v.is_integer() else v for v in values)


def parse_attention_resolutions(attention_resolutions: ResolutionsSetting, image_size: int,
                                setting: str = "attention_resolutions") -> tuple[int, ...]:
    """The networks want downsample factors; the setting lists resolutions ("32,16,8")."""
    if isinstance(attention_resolutions, (tuple, list)):
        return tuple(image_size // int(r) for r in attention_resolutions)
    text = str(attention_resolutions).strip()
    if not text:
        return ()
    try:
        return tuple(image_size // int(res) for res in text.split(","))
    except ValueError:
        raise SettingError(
            setting, f"{setting} {attention_resolutions!r} is not a comma list of resolutions; use e.g. 32,16,8"
        ) from None


def label_rows(class_cond: bool, num_classes: int, class_dropout_prob: float) -> int | None:
    """Rows of the label embedding: None when unconditional, one extra (the null label) with label dropout."""
    if not class_cond:
        return None
    return num_classes + (1 if class_dropout_prob > 0 else 0)


def _unet_arguments(image_size: int, channel_mult: ChannelMult, flags: Mapping[str, Any]) -> dict[str, Any]:
    """UNetModel's keyword arguments from the flags `create_model` and `sr_create_model` share (their
    own arguments, by the original's names), for images of `image_size` with widths `channel_mult`."""
    return dict(
        image_size=image_size,
        in_channels=3,
        model_channels=flags["num_channels"],
        out_channels=6 if flags["learn_sigma"] else 3,
        num_res_blocks=flags["num_res_blocks"],
        attention_resolutions=parse_attention_resolutions(flags["attention_resolutions"], image_size),
        dropout=flags["dropout"],
        channel_mult=channel_mult,
        num_classes=label_rows(flags["class_cond"], flags["num_classes"], flags["class_dropout_prob"]),
        **{name: flags[name] for name in _UNET_FLAGS_AS_GIVEN},
    )


# UNetModel arguments that take a flag's value unchanged, under the flag's own name.
_UNET_FLAGS_AS_GIVEN = ("use_checkpoint", "use_fp16", "num_heads", "num_head_channels", "num_heads_upsample",
                        "use_scale_shift_norm", "resblock_updown", "use_new_attention_order")


def create_model(
    image_size: int, num_channels: int, num_res_blocks: int, channel_mult: ChannelMultSetting = "",
    learn_sigma: bool = False, class_cond: bool = False, use_checkpoint: bool = False,
    attention_resolutions: ResolutionsSetting = "16", num_heads: int = 1, num_head_channels: int = -1,
    num_heads_upsample: int = -1, use_scale_shift_norm: bool = False, dropout: float = 0,
    resblock_updown: bool = False, use_fp16: bool = False, use_new_attention_order: bool = False,
    num_classes: int = NUM_CLASSES, class_dropout_prob: float = 0.0,
) -> UNetModel:
    """The diffusion UNet (channel_mult "" picks the original's preset for image_size). With
    class_dropout_prob > 0 the label embedding has one extra row, the null label num_classes."""
    flags = dict(locals())
    return UNetModel(**_unet_arguments(image_size, parse_channel_mult(channel_mult, image_size), flags))


def sr_create_model(
    large_size: int, small_size: int, num_channels: int, num_res_blocks: int, learn_sigma: bool, class_cond: bool,
    use_checkpoint: bool, attention_resolutions: ResolutionsSetting, num_heads: int, num_head_channels: int,
    num_heads_upsample: int, use_scale_shift_norm: bool, dropout: float, resblock_updown: bool, use_fp16: bool,
    channel_mult: ChannelMultSetting = "", use_new_attention_order: bool = False, num_classes: int = NUM_CLASSES,
    class_dropout_prob: float = 0.0,
) -> SuperResModel:
    """The super-resolution UNet from small_size to large_size (small_size only documents the input:
    the low-resolution image is upsampled to large_size inside the model)."""
    flags = dict(locals())
    mult = parse_channel_mult(channel_mult, large_size, SR_CHANNEL_MULT_BY_SIZE)
    return SuperResModel(**_unet_arguments(large_size, mult, flags))


# The encoder's argument names as the classifier's settings call them (for errors raised while building).
_CLASSIFIER_SETTING = {"num_head_channels": "classifier_num_head_channels", "pool": "classifier_pool"}


def create_classifier(
    image_size: int, classifier_use_fp16: bool, classifier_width: int, classifier_depth: int,
    classifier_attention_resolutions: ResolutionsSetting, classifier_use_scale_shift_norm: bool,
    classifier_resblock_updown: bool, classifier_pool: str, classifier_channel_mult: ChannelMultSetting = "",
    classifier_num_head_channels: int = 64, num_classes: int = NUM_CLASSES,
) -> EncoderUNetModel:
    """The noisy classifier: the UNet's encoder half with a pooling head over num_classes."""
    if classifier_pool not in CLASSIFIER_POOLS:
        raise SettingError("classifier_pool", f"classifier_pool {classifier_pool!r} is not one of {', '.join(CLASSIFIER_POOLS)}")
    mult = parse_channel_mult(classifier_channel_mult, image_size, setting="classifier_channel_mult")
    attention = parse_attention_resolutions(classifier_attention_resolutions, image_size, setting="classifier_attention_resolutions")
    try:
        return EncoderUNetModel(
            image_size=image_size,
            in_channels=3,
            model_channels=classifier_width,
            out_channels=num_classes,
            num_res_blocks=classifier_depth,
            attention_resolutions=attention,
            channel_mult=mult,
            use_fp16=classifier_use_fp16,
            num_head_channels=classifier_num_head_channels,
            use_scale_shift_norm=classifier_use_scale_shift_norm,
            resblock_updown=classifier_resblock_updown,
            pool=classifier_pool,
        )
    except SettingError as exc:
        setting = _CLASSIFIER_SETTING.get(exc.setting, exc.setting)
        raise SettingError(setting, str(exc).replace(exc.setting, setting, 1)) from None
