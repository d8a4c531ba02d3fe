"""Model and diffusion configuration as data.

Field names are the original command-line flag names, so a config round-trips through the flags, is saved
beside the weights (`config.json`, or safetensors metadata) and rebuilds the network without retyping
flags. New fields have defaults that keep the original behaviour. `build()` is a convenience over the
factories that hold the construction logic: `diffusion.factory` and `models.factory`.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

import torch

from guided_diffusion.diffusion.factory import create_gaussian_diffusion
from guided_diffusion.models.factory import NUM_CLASSES, create_classifier, create_model, label_rows, sr_create_model
from guided_diffusion.runtime.errors import SettingError, UserError


def _at_least(config: Any, minimum: int, *names: str) -> None:
    for name in names:
        value = getattr(config, name)
        if value < minimum:
            raise SettingError(name, f"{name} must be at least {minimum} (got {value})")


def _heads(config: Any, *names: str) -> None:
    """Head settings where -1 means "derived from another setting"."""
    for name in names:
        value = getattr(config, name)
        if value != -1 and value < 1:
            raise SettingError(name, f"{name} must be -1 (not used) or at least 1 (got {value})")


def _probability(config: Any, *names: str) -> None:
    for name in names:
        value = getattr(config, name)
        if not 0.0 <= value < 1.0:
            raise SettingError(name, f"{name} must be in [0, 1) (got {value})")


@dataclass
class _Config:
    """Shared conversions for the config dataclasses; `kind` names the network in saved configs."""

    kind: ClassVar[str] = ""

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

    def validate(self) -> None:
        """Raise a SettingError for a value no diffusion can have."""
        _at_least(self, 1, "diffusion_steps")

    def build(self):
        """The SpacedDiffusion these settings describe."""
        self.validate()
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
        return label_rows(self.class_cond, self.num_classes, self.class_dropout_prob)

    def validate(self) -> None:
        """Raise a SettingError for a value no network can have (before anything is built)."""
        _at_least(self, 1, "num_channels", "num_res_blocks", "num_classes")
        if self.num_head_channels == -1:
            _at_least(self, 1, "num_heads")
        _heads(self, "num_head_channels", "num_heads_upsample")
        _probability(self, "dropout", "class_dropout_prob")

    def build(self) -> torch.nn.Module:
        """The UNetModel these settings describe."""
        self.validate()
        return create_model(**self.to_dict())


@dataclass
class SuperResConfig(ModelConfig):
    """A super-resolution UNet from small_size to large_size (image_size is unused)."""

    large_size: int = 256
    small_size: int = 64

    kind = "superres"

    def build(self) -> torch.nn.Module:
        """The SuperResModel these settings describe (image_size is not used)."""
        self.validate()
        values = self.to_dict()
        del values["image_size"]
        return sr_create_model(**values)


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

    def validate(self) -> None:
        """Raise a SettingError for a value no classifier can have."""
        _at_least(self, 1, "classifier_width", "classifier_depth", "num_classes")
        _heads(self, "classifier_num_head_channels")

    def build(self) -> torch.nn.Module:
        """The EncoderUNetModel classifier these settings describe."""
        self.validate()
        return create_classifier(**self.to_dict())


CONFIG_KINDS: dict[str, type[_Config]] = {"unet": ModelConfig, "superres": SuperResConfig, "classifier": ClassifierConfig}


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
