"""Sampling from Python in a few lines.

    from guided_diffusion.sampling import load_pipeline

    pipe = load_pipeline("256x256_diffusion", classifier="auto")      # a preset, or a checkpoint path
    images = pipe.sample(8, classes=207, guidance_scale=1.0, sampler="dpm++2m", steps=20, seed=0)
    # images: uint8 array [8, 256, 256, 3]; sample i depends only on (seed, i)
"""
from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from guided_diffusion.checkpoints import load_model, read_config_json
from guided_diffusion.config import ClassifierConfig, DiffusionConfig, ModelConfig, SuperResConfig, config_from_dict
from guided_diffusion.errors import UserError
from guided_diffusion.performance import optimize_model
from guided_diffusion.presets import PRESETS, Preset, get_preset, parse_flag_string
from guided_diffusion.sampling.fetch import fetch
from guided_diffusion.sampling.generate import SamplerSettings, class_labels_for, draw, to_numpy_uint8
from guided_diffusion.sampling.guidance import GuidedModel, classifier_cond_fn

__all__ = ["Pipeline", "load_pipeline"]


class Pipeline:
    """A diffusion model (optionally with a noisy classifier) ready to draw samples.

    Build one with `load_pipeline`. `sample` returns uint8 NHWC images; `upsample` does the same for
    a super-resolution model given low-resolution images.
    """

    def __init__(
        self,
        model: torch.nn.Module,
        model_config: ModelConfig,
        diffusion_config: DiffusionConfig,
        *,
        device: torch.device,
        classifier: torch.nn.Module | None = None,
        classifier_scale: float = 1.0,
        default_respacing: str = "",
        autocast_dtype: torch.dtype | None = None,
    ):
        self.model = model
        self.model_config = model_config
        self.diffusion_config = diffusion_config
        self.device = device
        self.classifier = classifier
        self.classifier_scale = classifier_scale
        self.default_respacing = default_respacing
        self.autocast_dtype = autocast_dtype
        self._diffusions: dict[str, Any] = {}

    @property
    def is_upsampler(self) -> bool:
        return isinstance(self.model_config, SuperResConfig)

    @property
    def image_size(self) -> int:
        cfg = self.model_config
        return cfg.large_size if isinstance(cfg, SuperResConfig) else cfg.image_size

    def diffusion(self, steps: int | str | None = None) -> Any:
        """The diffusion respaced to `steps` (an int, or a --timestep_respacing string; None = default)."""
        if isinstance(steps, int) and steps < 2:
            raise UserError(f"steps must be at least 2, got {steps}")
        respacing = self.default_respacing if steps is None else str(steps)
        if respacing not in self._diffusions:
            self._diffusions[respacing] = self.diffusion_config.replace(timestep_respacing=respacing).build()
        return self._diffusions[respacing]

    def sample(
        self,
        n: int,
        *,
        classes: int | Sequence[int] | None = None,
        guidance_scale: float | None = None,
        cfg_scale: float = 1.0,
        sampler: str = "ddim",
        steps: int | str | None = 25,
        seed: int = 0,
        eta: float = 0.0,
        dynamic_threshold: float | None = None,
        clip_denoised: bool = True,
        batch_size: int = 16,
        start_index: int = 0,
        progress: bool = False,
        return_labels: bool = False,
    ) -> np.ndarray | tuple[np.ndarray, np.ndarray | None]:
        """Draw samples start_index .. start_index + n - 1 of run `seed` as uint8 [n, H, W, 3].

        classes: one class for all, a list cycled over the samples, or None for random classes (needed
        by class-conditional models and classifier guidance). guidance_scale: classifier scale (default:
        the preset's; 0 turns the classifier off). cfg_scale: classifier-free guidance (1 = off).
        sampler: "ddpm", "ddim" or "dpm++2m"; steps: number of steps (or a respacing string).
        """
        if self.is_upsampler:
            raise UserError("this pipeline is an upsampler: call pipe.upsample(low_res_images) instead")
        return self._run(n, None, classes, guidance_scale, cfg_scale, sampler, steps, seed, eta, dynamic_threshold,
                         clip_denoised, batch_size, start_index, progress, return_labels)

    def upsample(
        self,
        low_res: np.ndarray,
        *,
        classes: int | Sequence[int] | None = None,
        cfg_scale: float = 1.0,
        sampler: str = "ddim",
        steps: int | str | None = 25,
        seed: int = 0,
        eta: float = 0.0,
        dynamic_threshold: float | None = None,
        clip_denoised: bool = True,
        batch_size: int = 16,
        progress: bool = False,
    ) -> np.ndarray:
        """Upsample uint8 [n, small, small, 3] images to uint8 [n, large, large, 3], in order."""
        if not self.is_upsampler:
            raise UserError("this pipeline is not an upsampler: call pipe.sample(n) instead")
        if self.model_config.class_cond and classes is None:
            raise UserError("this upsampler is class-conditional: pass classes= (one class, or one per image)")
        small = self.model_config.small_size
        if low_res.dtype != np.uint8 or low_res.ndim != 4 or low_res.shape[1:] != (small, small, 3):
            raise UserError(f"low_res must be uint8 [n, {small}, {small}, 3], got {low_res.dtype} {low_res.shape}")
        return self._run(len(low_res), low_res, classes, None, cfg_scale, sampler, steps, seed, eta,
                         dynamic_threshold, clip_denoised, batch_size, 0, progress, False)

    def _run(self, n, low_res, classes, guidance_scale, cfg_scale, sampler, steps, seed, eta, dynamic_threshold,
             clip_denoised, batch_size, start_index, progress, return_labels):
        if n < 1 or batch_size < 1:
            raise UserError("n and batch_size must be at least 1")
        cfg = self.model_config
        scale = self.classifier_scale if guidance_scale is None else float(guidance_scale)
        if guidance_scale and self.classifier is None:
            raise UserError("guidance_scale needs a classifier: load_pipeline(..., classifier='auto' or a path)")
        null_label = cfg.num_classes if cfg.class_dropout_prob > 0 else None
        if cfg_scale != 1.0 and (not cfg.class_cond or null_label is None):
            raise UserError("cfg_scale needs a class-conditional model trained with label dropout (class_dropout_prob > 0)")
        model_fn = GuidedModel(self.model, class_cond=cfg.class_cond, cfg_scale=cfg_scale, null_label=null_label,
                               autocast_dtype=self.autocast_dtype)
        guided = self.classifier is not None and scale != 0
        cond_fn = classifier_cond_fn(self.classifier, scale, autocast_dtype=self.autocast_dtype) if guided else None
        fixed = [int(classes)] if isinstance(classes, (int, np.integer)) else (list(classes) if classes is not None else None)
        if fixed is not None and not (cfg.class_cond or guided):
            raise UserError("classes need a class-conditional model or a classifier")
        if fixed is not None and any(not 0 <= c < cfg.num_classes for c in fixed):
            raise UserError(f"classes must be in 0..{cfg.num_classes - 1}")
        settings = SamplerSettings(sampler=sampler, eta=eta, clip_denoised=clip_denoised,
                                   dynamic_threshold=dynamic_threshold, progress=progress)
        diffusion = self.diffusion(steps)
        images, labels = [], []
        for start in range(start_index, start_index + n, batch_size):
            indices = list(range(start, min(start + batch_size, start_index + n)))
            batch_labels = None
            if cfg.class_cond or guided:
                batch_labels = class_labels_for(indices, seed, cfg.num_classes, fixed)
            kwargs = {}
            if low_res is not None:
                chunk = torch.from_numpy(low_res[[i - start_index for i in indices]]).to(self.device)
                kwargs["low_res"] = chunk.permute(0, 3, 1, 2).float() / 127.5 - 1
            x = draw(model_fn, diffusion, indices=indices, seed=seed, image_shape=(3, self.image_size, self.image_size),
                     device=self.device, settings=settings, labels=batch_labels, cond_fn=cond_fn, model_kwargs=kwargs)
            images.append(to_numpy_uint8(x))
            if batch_labels is not None:
                labels.append(batch_labels)
        out = np.concatenate(images)
        if return_labels:
            return out, (np.concatenate(labels) if labels else None)
        return out


def _is_preset_name(name: str) -> bool:
    return not Path(name).is_file() and Path(name).name.removesuffix(".pt") in PRESETS


def _configs_for(source: str, flags: dict[str, Any]) -> tuple[Any, DiffusionConfig, Preset | None]:
    """(network config, diffusion config, preset or None) for a preset name or a checkpoint path."""
    if _is_preset_name(source):
        preset = get_preset(Path(source).name)
        values = {**preset.flags, **flags}
        network_cls = {"diffusion": ModelConfig, "classifier": ClassifierConfig, "upsampler": SuperResConfig}[preset.kind]
        return network_cls.from_dict(values), DiffusionConfig.from_dict(values), preset
    if not Path(source).is_file():
        raise UserError(f"{source!r} is neither a checkpoint file nor a preset name (see `guided-diffusion presets`)")
    saved = read_config_json(source)
    if saved is not None:
        network, diffusion = config_from_dict(saved)
        values = {**(diffusion.to_dict() if diffusion else {}), **network.to_dict(), **flags}
        return type(network).from_dict(values), DiffusionConfig.from_dict(values), None
    if flags:
        network_cls = SuperResConfig if "large_size" in flags else ClassifierConfig if "classifier_width" in flags else ModelConfig
        return network_cls.from_dict(flags), DiffusionConfig.from_dict(flags), None
    raise UserError(f"no config saved with {source}: pass flags='--image_size 64 ...' (the flags it was trained with)")


def _load_network(source: str, flags: dict[str, Any], device: torch.device, fp16: bool | None, progress: bool,
                  channels_last: bool = False):
    network_config, diffusion_config, preset = _configs_for(source, flags)
    path = fetch(preset, progress=progress) if preset is not None else Path(source)
    use_fp16_flag = "classifier_use_fp16" if isinstance(network_config, ClassifierConfig) else "use_fp16"
    want_fp16 = getattr(network_config, use_fp16_flag) if fp16 is None else fp16
    want_fp16 = bool(want_fp16) and device.type == "cuda"  # fp16 weights only make sense on a GPU
    network_config = network_config.replace(**{use_fp16_flag: want_fp16})
    network = network_config.build()
    load_model(path, model=network, flags=network_config.to_dict())
    network.to(device)
    if want_fp16:
        network.convert_to_fp16()
    return optimize_model(network.eval(), channels_last=channels_last), network_config, diffusion_config, preset


def load_pipeline(
    preset_or_path: str | os.PathLike,
    classifier: str | os.PathLike | None = None,
    *,
    device: str | torch.device | None = None,
    flags: str | dict[str, Any] | None = None,
    classifier_flags: str | dict[str, Any] | None = None,
    use_fp16: bool | None = None,
    bf16: bool = False,
    channels_last: bool = False,
    progress: bool = True,
) -> Pipeline:
    """Load a released checkpoint by preset name (downloaded into the cache when missing) or a checkpoint
    file (its architecture from the config saved with it, or from `flags`).

    classifier: None, "auto" (the preset's README classifier and scale), a classifier preset name, or a
    path. flags / classifier_flags: overrides, as a dict or a README-style flag string. use_fp16: None
    follows the checkpoint's flags on a GPU (fp32 on a CPU); bf16: run under bfloat16 autocast instead;
    channels_last: NHWC memory layout for the convolutions (a GPU option; same results).
    """
    device = torch.device(device) if device is not None else torch.device("cuda" if torch.cuda.is_available() else "cpu")
    source = os.fspath(preset_or_path)
    model_flags = parse_flag_string(flags) if isinstance(flags, str) else dict(flags or {})
    fp16 = False if bf16 else use_fp16
    model, model_config, diffusion_config, preset = _load_network(source, model_flags, device, fp16, progress, channels_last)
    if isinstance(model_config, ClassifierConfig):
        raise UserError(f"{source} is a classifier; pass it as classifier=, with a diffusion model first")

    classifier_net, scale = None, 1.0
    if classifier is not None:
        classifier_source = os.fspath(classifier)
        if classifier_source == "auto":
            if preset is None or preset.classifier is None:
                raise UserError("classifier='auto' needs a diffusion preset that has a README classifier")
            classifier_source, scale = preset.classifier, preset.classifier_scale
        cls_flags = parse_flag_string(classifier_flags) if isinstance(classifier_flags, str) else dict(classifier_flags or {})
        classifier_net, cls_config, _, _ = _load_network(classifier_source, cls_flags, device, fp16, progress, channels_last)
        if not isinstance(cls_config, ClassifierConfig):
            raise UserError(f"{classifier_source} is not a classifier checkpoint")
    return Pipeline(
        model, model_config, diffusion_config, device=device, classifier=classifier_net, classifier_scale=scale,
        default_respacing=preset.timestep_respacing if preset is not None else "",
        autocast_dtype=torch.bfloat16 if bf16 else None,
    )
