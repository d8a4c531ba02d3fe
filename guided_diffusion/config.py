"""Model and diffusion configuration as data.

Field names are the original command-line flag names, so a config round-trips through the flags, is saved
beside the weights (`config.json`, or safetensors metadata) and rebuilds the network without retyping
flags. New fields have defaults that keep the original behaviour.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch

from guided_diffusion.errors import UserError

NUM_CLASSES = 1000

# channel_mult used by the original when --channel_mult is empty, by image size.
CHANNEL_MULT_BY_SIZE = {
    512: (0.5, 1, 1, 2, 2, 4, 4),
    256: (1, 1, 2, 2, 4, 4),
    128: (1, 1, 2, 3, 4),
    64: (1, 2, 3, 4),
}
SR_CHANNEL_MULT_BY_SIZE = {512: (1, 1, 2, 2, 4, 4), 256: (1, 1, 2, 2, 4, 4), 64: (1, 2, 3, 4)}


def parse_channel_mult(channel_mult: str | tuple, image_size: int, presets=CHANNEL_MULT_BY_SIZE, flag="--channel_mult") -> tuple:
    """The per-level width multipliers: the given comma list (fractions allowed, e.g. "0.5,1,2") or the
    original's preset for the image size."""
    if isinstance(channel_mult, (tuple, list)):
        return tuple(channel_mult)
    if channel_mult == "":
        if image_size not in presets:
            raise UserError(
                f"no default channel_mult for image size {image_size} (known: {sorted(presets)}); "
                f"pass {flag}, e.g. {flag} 1,2,2,2"
            )
        return presets[image_size]
    try:
        values = [float(v) for v in str(channel_mult).split(",")]
    except ValueError:
        raise UserError(f"{flag} {channel_mult!r} is not a comma list of numbers; use e.g. {flag} 1,2,3,4") from None
    return tuple(int(v) if v.is_integer() else v for v in values)


def parse_attention_resolutions(attention_resolutions: str, image_size: int) -> tuple[int, ...]:
    """--attention_resolutions lists resolutions; the networks want downsample factors."""
    if isinstance(attention_resolutions, (tuple, list)):
        return tuple(image_size // int(r) for r in attention_resolutions)
    text = str(attention_resolutions).strip()
    if not text:
        return ()
    try:
        return tuple(image_size // int(res) for res in text.split(","))
    except ValueError:
        raise UserError(
            f"--attention_resolutions {attention_resolutions!r} is not a comma list of resolutions; use e.g. 32,16,8"
        ) from None


class _Config:
    """Shared conversions for the config dataclasses."""

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]):
        """Build from a mapping, ignoring keys that are not fields (so one flag dict serves every config)."""
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in values.items() if k in names})

    @classmethod
    def from_flags(cls, args: Any):
        """Build from an argparse Namespace or a flag dict."""
        return cls.from_dict(args if isinstance(args, Mapping) else vars(args))

    def replace(self, **changes):
        return dataclasses.replace(self, **changes)


@dataclass
class DiffusionConfig(_Config):
    """The diffusion process: schedule, parameterisation, loss, and respacing for sampling."""

    learn_sigma: bool = False
    diffusion_steps: int = 1000
    noise_schedule: str = "linear"
    timestep_respacing: str = ""
    use_kl: bool = False
    predict_xstart: bool = False
    rescale_timesteps: bool = False
    rescale_learned_sigmas: bool = False
    sigma_small: bool = False

    def build(self):
        from guided_diffusion.script_util import create_gaussian_diffusion

        return create_gaussian_diffusion(
            steps=self.diffusion_steps, learn_sigma=self.learn_sigma, sigma_small=self.sigma_small,
            noise_schedule=self.noise_schedule, use_kl=self.use_kl, predict_xstart=self.predict_xstart,
            rescale_timesteps=self.rescale_timesteps, rescale_learned_sigmas=self.rescale_learned_sigmas,
            timestep_respacing=self.timestep_respacing,
        )


@dataclass
class ModelConfig(_Config):
    """The diffusion UNet. `num_classes` and `class_dropout_prob` are additions (1000 and 0 as the
    original); with class_dropout_prob > 0 the label embedding has one extra row, the null label
    num_classes, used for classifier-free guidance."""

    image_size: int = 64
    num_channels: int = 128
    num_res_blocks: int = 2
    num_heads: int = 4
    num_heads_upsample: int = -1
    num_head_channels: int = -1
    attention_resolutions: str = "16,8"
    channel_mult: str = ""
    dropout: float = 0.0
    class_cond: bool = False
    use_checkpoint: bool = False
    use_scale_shift_norm: bool = True
    resblock_updown: bool = False
    use_fp16: bool = False
    use_new_attention_order: bool = False
    learn_sigma: bool = False
    num_classes: int = NUM_CLASSES
    class_dropout_prob: float = 0.0

    kind = "unet"

    @property
    def null_label(self) -> int | None:
        """The label meaning "no class" of a model trained with label dropout (None without one)."""
        return self.num_classes if self.class_cond and self.class_dropout_prob > 0 else None

    def label_count(self) -> int | None:
        """Rows of the label embedding (None when unconditional)."""
        if not self.class_cond:
            return None
        return self.num_classes + (1 if self.class_dropout_prob > 0 else 0)

    def unet_kwargs(self, image_size: int, channel_mult: tuple) -> dict[str, Any]:
        return dict(
            image_size=image_size,
            in_channels=3,
            model_channels=self.num_channels,
            out_channels=6 if self.learn_sigma else 3,
            num_res_blocks=self.num_res_blocks,
            attention_resolutions=parse_attention_resolutions(self.attention_resolutions, image_size),
            dropout=self.dropout,
            channel_mult=channel_mult,
            num_classes=self.label_count(),
            use_checkpoint=self.use_checkpoint,
            use_fp16=self.use_fp16,
            num_heads=self.num_heads,
            num_head_channels=self.num_head_channels,
            num_heads_upsample=self.num_heads_upsample,
            use_scale_shift_norm=self.use_scale_shift_norm,
            resblock_updown=self.resblock_updown,
            use_new_attention_order=self.use_new_attention_order,
        )

    def build(self) -> torch.nn.Module:
        from guided_diffusion.models.unet import UNetModel

        mult = parse_channel_mult(self.channel_mult, self.image_size)
        return UNetModel(**self.unet_kwargs(self.image_size, mult))


@dataclass
class SuperResConfig(ModelConfig):
    """A super-resolution UNet from small_size to large_size (image_size is unused)."""

    large_size: int = 256
    small_size: int = 64

    kind = "superres"

    def build(self) -> torch.nn.Module:
        from guided_diffusion.models.unet import SuperResModel

        mult = parse_channel_mult(self.channel_mult, self.large_size, SR_CHANNEL_MULT_BY_SIZE)
        return SuperResModel(**self.unet_kwargs(self.large_size, mult))


@dataclass
class ClassifierConfig(_Config):
    """The noisy classifier (encoder half of the UNet with a pooling head). `classifier_channel_mult`,
    `classifier_num_head_channels` and `num_classes` are additions with the original's values as defaults."""

    image_size: int = 64
    classifier_use_fp16: bool = False
    classifier_width: int = 128
    classifier_depth: int = 2
    classifier_attention_resolutions: str = "32,16,8"
    classifier_use_scale_shift_norm: bool = True
    classifier_resblock_updown: bool = True
    classifier_pool: str = "attention"
    classifier_channel_mult: str = ""
    classifier_num_head_channels: int = 64
    num_classes: int = NUM_CLASSES

    kind = "classifier"

    def build(self) -> torch.nn.Module:
        from guided_diffusion.models.unet import EncoderUNetModel

        mult = parse_channel_mult(self.classifier_channel_mult, self.image_size, flag="--classifier_channel_mult")
        return EncoderUNetModel(
            image_size=self.image_size,
            in_channels=3,
            model_channels=self.classifier_width,
            out_channels=self.num_classes,
            num_res_blocks=self.classifier_depth,
            attention_resolutions=parse_attention_resolutions(self.classifier_attention_resolutions, self.image_size),
            channel_mult=mult,
            use_fp16=self.classifier_use_fp16,
            num_head_channels=self.classifier_num_head_channels,
            use_scale_shift_norm=self.classifier_use_scale_shift_norm,
            resblock_updown=self.classifier_resblock_updown,
            pool=self.classifier_pool,
        )


CONFIG_KINDS: dict[str, type] = {"unet": ModelConfig, "superres": SuperResConfig, "classifier": ClassifierConfig}


def config_to_dict(network: _Config, diffusion: DiffusionConfig | None = None) -> dict[str, Any]:
    """The JSON-able description saved beside weights: {"kind", "model", "diffusion"}."""
    out: dict[str, Any] = {"kind": type(network).kind, "model": network.to_dict()}
    if diffusion is not None:
        out["diffusion"] = diffusion.to_dict()
    return out


def config_from_dict(data: Mapping[str, Any]) -> tuple[_Config, DiffusionConfig | None]:
    """Inverse of config_to_dict."""
    kind = data.get("kind", "unet")
    if kind not in CONFIG_KINDS:
        raise UserError(f"unknown model kind {kind!r} in saved config; expected one of {sorted(CONFIG_KINDS)}")
    network = CONFIG_KINDS[kind].from_dict(data.get("model", {}))
    diffusion = DiffusionConfig.from_dict(data["diffusion"]) if data.get("diffusion") is not None else None
    return network, diffusion
