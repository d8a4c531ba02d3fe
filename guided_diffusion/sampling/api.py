"""Sampling from Python in a few lines.

    from guided_diffusion.sampling import load_pipeline

    pipe = load_pipeline("256x256_diffusion", classifier="auto")      # a preset, or a checkpoint path
    images = pipe.sample(8, classes=207, guidance_scale=1.0, sampler="dpm++2m", steps=20, seed=0)
    # images: uint8 array [8, 256, 256, 3]; sample i depends only on (seed, i)
"""
from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from guided_diffusion.config import ClassifierConfig, DiffusionConfig, ModelConfig, SuperResConfig
from guided_diffusion.config.flags import (
    classifier_defaults,
    model_and_diffusion_defaults,
    sr_model_and_diffusion_defaults,
)
from guided_diffusion.config.presets import PRESETS, Preset, get_preset, parse_flag_string, preset_for_file
from guided_diffusion.config.resolve import Resolved, resolve_network
from guided_diffusion.runtime.errors import UserError
from guided_diffusion.sampling.job import SamplingJob, array_digest, check_low_res, fp16_runs_on, sampling_job
from guided_diffusion.sampling.networks import Networks, load_network
from guided_diffusion.sampling.run import run
from guided_diffusion.weights.checkpoints import inspect_checkpoint
from guided_diffusion.weights.fetch import fetch

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
        classifier_config: ClassifierConfig | None = None,
        classifier_scale: float = 1.0,
        default_respacing: str = "",
        bf16: bool = False,
        channels_last: bool = False,
        model_path: str = "",
        classifier_path: str = "",
    ):
        self.model = model
        self.model_config = model_config
        self.diffusion_config = diffusion_config
        self.device = device
        self.classifier = classifier
        self.classifier_config = classifier_config
        self.classifier_scale = classifier_scale
        self.default_respacing = default_respacing
        self.bf16 = bf16
        self.channels_last = channels_last
        self.model_path = model_path
        self.classifier_path = classifier_path

    @property
    def is_upsampler(self) -> bool:
        return isinstance(self.model_config, SuperResConfig)

    @property
    def image_size(self) -> int:
        cfg = self.model_config
        return cfg.large_size if isinstance(cfg, SuperResConfig) else cfg.image_size

    def sample(self, n: int, *, return_labels: bool = False,
               **options: Any) -> np.ndarray | tuple[np.ndarray, np.ndarray | None]:
        """Draw samples start_index .. start_index + n - 1 of run `seed` as uint8 [n, H, W, 3] (with
        return_labels, also their labels: int64 [n], or None for an unconditional model without a
        classifier). options: the keywords of `job` (classes, guidance_scale, cfg_scale, sampler, steps,
        seed, ...), with its defaults."""
        if self.is_upsampler:
            raise UserError("this pipeline is an upsampler: call pipe.upsample(low_res_images) instead")
        images, labels = self._draw(self.job(n, **options))
        return (images, labels) if return_labels else images

    def upsample(self, low_res: np.ndarray, *, classes: int | Sequence[int] | None = None,
                 **options: Any) -> np.ndarray:
        """Upsample uint8 [n, small, small, 3] images to uint8 [n, large, large, 3], in order. classes: the
        class of every image (one int) or one per image, for a class-conditional upsampler. options: the
        keywords of `job` but guidance_scale (an upsampler is not classifier-guided)."""
        if not isinstance(self.model_config, SuperResConfig):
            raise UserError("this pipeline is not an upsampler: call pipe.sample(n) instead")
        check_low_res(low_res, self.model_config.small_size)
        if isinstance(classes, (int, np.integer)):
            classes = [int(classes)] * len(low_res)
        job = self.job(len(low_res), classes=classes, guidance_scale=0.0, low_res_digest=array_digest(low_res),
                       **options)
        return self._draw(job, low_res)[0]

    def job(
        self,
        n: int,
        *,
        classes: int | Sequence[int] | None = None,
        guidance_scale: float | None = None,
        cfg_scale: float = 1.0,
        sampler: str = "ddim",
        steps: int | str | None = 25,
        seed: int = 0,
        eta: float | None = None,
        dynamic_threshold: float | None = None,
        clip_denoised: bool = True,
        batch_size: int = 16,
        start_index: int = 0,
        progress: bool = False,
        low_res_digest: str | None = None,
        **solver_options: Any,
    ) -> SamplingJob:
        """The SamplingJob that `sample(n, ...)` runs (the command line builds the same one from its flags).

        classes: one class for all, a list cycled over the samples, or None for random classes (needed
        by class-conditional models and classifier guidance). guidance_scale: classifier scale (default:
        the preset's; 0 turns the classifier off). cfg_scale: classifier-free guidance (1 = off).
        sampler: a name in SAMPLERS; steps: number of steps on the sampler's step grid (or a
        --timestep_respacing string such as "ddim25"); None = the preset's recipe. solver_options: the
        other SamplerSettings fields (step_grid, sigma_min, sigma_max, s_churn, ..., guidance_interval).
        low_res_digest: `array_digest` of an upsampler's inputs. Bad values raise ValueError naming the option.
        """
        scale = self.classifier_scale if guidance_scale is None else float(guidance_scale)
        if guidance_scale and self.classifier is None:
            raise UserError("guidance_scale needs a classifier: load_pipeline(..., classifier='auto' or a path)")
        if isinstance(classes, (int, np.integer)):
            classes = [int(classes)]
        respacing = self.default_respacing if steps is None else steps if isinstance(steps, str) else None
        return sampling_job(
            model=self.model_config, diffusion=dataclasses.replace(self.diffusion_config, timestep_respacing=""),
            num_samples=n, steps=steps if isinstance(steps, int) else None, timestep_respacing=respacing,
            classifier=self.classifier_config if self.classifier is not None else None,
            classifier_scale=scale if self.classifier is not None else 0.0,
            class_labels=tuple(int(c) for c in classes) if classes is not None else None,
            seed=seed, sampler=sampler, eta=eta, dynamic_threshold=dynamic_threshold, clip_denoised=clip_denoised,
            progress=progress, cfg_scale=cfg_scale, batch_size=batch_size, start_index=start_index,
            low_res_digest=low_res_digest, bf16=self.bf16, channels_last=self.channels_last,
            model_path=self.model_path, classifier_path=self.classifier_path, solver_options=solver_options,
        )

    def _draw(self, job: SamplingJob, low_res: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray | None]:
        result = run(job, networks=Networks(self.model, self.classifier), device=self.device, low_res=low_res,
                     split_over_ranks=False, progress=job.settings.progress)
        assert result is not None  # not split over ranks: every process gets its samples
        return result


# Every setting of each kind of network at the original's defaults (what a flag string may set).
_DEFAULTS = {"diffusion": model_and_diffusion_defaults, "superres": sr_model_and_diffusion_defaults,
             "classifier": classifier_defaults}
_PRESET_KINDS = {"diffusion": "diffusion", "upsampler": "superres", "classifier": "classifier"}


def _is_preset_name(name: str) -> bool:
    return not Path(name).is_file() and Path(name).name.removesuffix(".pt") in PRESETS


def _resolve(source: str, flags: dict[str, Any], *, classifier: bool) -> tuple[Resolved, Preset | None, Path | None]:
    """(resolved settings, preset or None, checkpoint file or None for a preset's own) for a preset name or a
    checkpoint path: the file is read first (its kind, `inspect_checkpoint`), then the one resolver's
    precedence applies (defaults < preset < saved config < `flags`)."""
    if _is_preset_name(source):
        preset = get_preset(Path(source).name, ("classifier",) if classifier else ("diffusion", "upsampler"),
                            "classifier=" if classifier else "load_pipeline's model")
        kind = _PRESET_KINDS[preset.kind]
        return resolve_network(kind, {**_DEFAULTS[kind](), **flags}, flags, preset=preset), preset, None
    path = Path(source)
    if not path.is_file():
        raise UserError(f"{source!r} is neither a checkpoint file nor a preset name (see `guided-diffusion presets`)")
    if classifier:
        kind = inspect_checkpoint(path, expected="classifier").kind
    else:
        kind = inspect_checkpoint(path).kind
        if kind == "classifier":
            raise UserError(f"{source} is a classifier checkpoint; pass it as classifier=, with a diffusion model first")
        if kind not in ("diffusion", "superres"):
            inspect_checkpoint(path, expected="diffusion")  # raises: names what the file is instead
    released = preset_for_file(path)
    own = released if released is not None and _PRESET_KINDS[released.kind] == kind else None  # a released file
    resolved = resolve_network(kind, {**_DEFAULTS[kind](), **flags}, flags, preset=own, checkpoint=path)
    if own is None and not flags and not resolved.filled_from("checkpoint"):
        example = "--image_size 64 --classifier_depth 4" if classifier else "--image_size 64 ..."
        raise UserError(f"no config saved with {source}: pass {'classifier_' if classifier else ''}flags='{example}' "
                        "(the flags it was trained with)")
    return resolved, own, path


def _load_network(source: str, flags: dict[str, Any], device: torch.device, fp16: bool | None, bf16: bool,
                  progress: bool, channels_last: bool = False, *, classifier: bool = False
                  ) -> tuple[torch.nn.Module, ModelConfig | ClassifierConfig, DiffusionConfig, Preset | None, str]:
    resolved, preset, checkpoint = _resolve(source, flags, classifier=classifier)
    network_config, diffusion_config = resolved.network(), resolved.diffusion()
    path = fetch(preset, progress=progress) if checkpoint is None and preset is not None else checkpoint
    assert path is not None  # a checkpoint file, or a preset's fetched one
    if isinstance(network_config, ClassifierConfig):
        requested = network_config.classifier_use_fp16 if fp16 is None else fp16
        network_config = dataclasses.replace(network_config, classifier_use_fp16=fp16_runs_on(device, requested, bf16=bf16))
    else:
        requested = network_config.use_fp16 if fp16 is None else fp16
        network_config = dataclasses.replace(network_config, use_fp16=fp16_runs_on(device, requested, bf16=bf16))
    network = load_network(network_config, path, device, channels_last=channels_last, bf16=bf16)
    return network, network_config, diffusion_config, preset, str(path)


def _flag_dict(flags: str | dict[str, Any] | None) -> dict[str, Any]:
    return parse_flag_string(flags) if isinstance(flags, str) else dict(flags or {})


def load_pipeline(
    preset_or_path: str | os.PathLike[str],
    classifier: str | os.PathLike[str] | None = None,
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
    file (its kind read from the file; its architecture from the config saved with it, or from `flags`).

    classifier: None, "auto" (the preset's README classifier and scale), a classifier preset name, or a
    path. flags / classifier_flags: overrides, as a dict or a README-style flag string (the classifier's
    are classifier settings: "--image_size 64 --classifier_depth 4"). Settings resolve as
    `config.resolve` says: defaults < preset < saved config < these flags. use_fp16: None follows the
    preset's flags on a GPU (fp32 on a CPU); bf16: run under bfloat16 autocast instead; channels_last:
    NHWC memory layout for the convolutions (same results; slower on the H200 measured). A file of the wrong kind, or
    weights that do not fit the settings, is a one-line UserError naming the setting to change.
    """
    device = torch.device(device) if device is not None else torch.device("cuda" if torch.cuda.is_available() else "cpu")
    source = os.fspath(preset_or_path)
    model, model_config, diffusion_config, preset, model_path = _load_network(
        source, _flag_dict(flags), device, use_fp16, bf16, progress, channels_last)
    assert isinstance(model_config, ModelConfig)  # _resolve refuses a classifier as the model

    classifier_net, cls_config, classifier_path, scale = None, None, "", 1.0
    if classifier is not None:
        classifier_source = os.fspath(classifier)
        if classifier_source == "auto":
            if preset is None or preset.classifier is None:
                raise UserError("classifier='auto' needs a diffusion preset that has a README classifier")
            classifier_source, scale = preset.classifier, preset.classifier_scale
        classifier_net, loaded, _, _, classifier_path = _load_network(
            classifier_source, _flag_dict(classifier_flags), device, use_fp16, bf16, progress, channels_last,
            classifier=True)
        assert isinstance(loaded, ClassifierConfig)  # resolved as a classifier
        cls_config = loaded
    return Pipeline(
        model, model_config, diffusion_config, device=device, classifier=classifier_net, classifier_config=cls_config,
        classifier_scale=scale, default_respacing=preset.timestep_respacing if preset is not None else "",
        bf16=bf16, channels_last=channels_last, model_path=model_path, classifier_path=classifier_path,
    )
