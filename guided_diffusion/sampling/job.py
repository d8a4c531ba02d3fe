"""A sampling job: everything that decides which images a run draws, resolved once and frozen.

The command line, the Python API and the demo all describe their work as a `SamplingJob` and hand it to
`guided_diffusion.sampling.run.run`, so a check on the options lives here and nowhere else. Checks raise
`SettingError` naming the option (a SamplingJob or SamplerSettings field) as `exc.setting`, which the
command line turns into the flag it came from.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import math
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from guided_diffusion.config import ClassifierConfig, DiffusionConfig, ModelConfig, SuperResConfig
from guided_diffusion.runtime import distributed
from guided_diffusion.runtime.errors import SettingError, UserError
from guided_diffusion.sampling.failures import warn_if_known_failure
from guided_diffusion.sampling.guidance import check_cfg
from guided_diffusion.sampling.settings import SamplerSettings

__all__ = ["DiffusionJob", "SamplingJob", "sampling_job", "check_counts", "fp16_runs_on", "array_digest", "file_identity",
           "check_low_res", "low_res_input"]

JOB_FORMAT = 2  # bump when the meaning of a stored fingerprint changes (2: sampler options by name)


def check_counts(*, num_samples: int, batch_size: int, seed: int | None) -> None:
    """num_samples and batch_size at least 1, seed (when given) >= 0; SettingError otherwise."""
    for name, value in (("num_samples", num_samples), ("batch_size", batch_size)):
        if value < 1:
            raise SettingError(name, f"{name} must be at least 1, got {value}")
    if seed is not None and seed < 0:
        raise SettingError("seed", f"seed must be >= 0, got {seed}")


def fp16_runs_on(device: torch.device, requested: bool, *, bf16: bool) -> bool:
    """Whether fp16 weights are used: only on a GPU, and never together with bf16 autocast."""
    return bool(requested) and not bf16 and device.type == "cuda"


class DiffusionJob(ABC):
    """What every job that runs a diffusion model has, `SamplingJob` and editing's `EditJob` alike: the
    networks' configs and files, the sampler settings, the seed, the guidance and the precision.

    The jobs are frozen dataclasses with these fields; this base states once what follows from them
    (whether guidance runs, whether images have classes, the autocast dtype) and the part of the
    fingerprint and of the settings record they share, so a resumed or finished run of either is told
    apart by the same rules.
    """

    model: ModelConfig
    diffusion: DiffusionConfig
    settings: SamplerSettings
    seed: int | None
    batch_size: int
    classifier: ClassifierConfig | None
    classifier_scale: float
    cfg_scale: float
    class_labels: tuple[int, ...] | None
    bf16: bool
    model_path: str
    classifier_path: str

    @property
    def null_label(self) -> int | None:
        """The label meaning "no class" of a model trained with label dropout."""
        return self.model.null_label

    @property
    def guided(self) -> bool:
        """Whether classifier guidance runs (a classifier and a non-zero scale)."""
        return self.classifier is not None and self.classifier_scale != 0

    @property
    def with_labels(self) -> bool:
        """Whether the images have classes: a class-conditional model, or a classifier to guide towards them."""
        return self.model.class_cond or self.classifier is not None

    @property
    def autocast_dtype(self) -> torch.dtype | None:
        return torch.bfloat16 if self.bf16 else None

    @abstractmethod
    def fingerprint(self) -> dict[str, Any]:
        """Everything that decides the job's output arrays, JSON-able (`fingerprint_of` builds it)."""

    @abstractmethod
    def record_fields(self) -> dict[str, Any]:
        """The settings record's entries particular to this kind of job (`sampling.resume.settings_record`)."""

    def fingerprint_of(self, job_format: int, own: Mapping[str, Any]) -> dict[str, Any]:
        """The fingerprint as plain JSON: `job_format`, the shared fields (configs, sampler settings but the
        progress bars, checkpoints by `file_identity`, seed, batch size, guidance, labels, precision) and the
        job's `own` values; an `own` key that the shared part states too is the shared part's."""
        settings = {k: v for k, v in dataclasses.asdict(self.settings).items() if k != "progress"}
        shared: dict[str, Any] = {
            "format": job_format,
            "model": {"kind": type(self.model).kind, **self.model.to_dict()},
            "diffusion": self.diffusion.to_dict(),
            "classifier": self.classifier.to_dict() if self.classifier is not None else None,
            "settings": settings,
            "model_path": file_identity(self.model_path),
            "classifier_path": file_identity(self.classifier_path),
        }
        for name in ("seed", "batch_size", "classifier_scale", "cfg_scale", "class_labels", "bf16"):
            shared[name] = getattr(self, name)
        plain: dict[str, Any] = json.loads(json.dumps({**own, **shared}, default=str))  # str: e.g. a torch dtype
        return plain


@dataclass(frozen=True)
class SamplingJob(DiffusionJob):
    """What to draw: samples start_index .. start_index + num_samples - 1 of run `seed`.

    model / diffusion / classifier: the networks' configs (fp16 already resolved for the device);
    classifier_scale: classifier guidance (0 = off, the classifier is then not run); cfg_scale:
    classifier-free guidance (1 = off); class_labels: fixed labels cycled over the samples (sample i
    gets class_labels[i % len]), None = uniformly random per sample; bf16: bfloat16 autocast.
    """

    model: ModelConfig
    diffusion: DiffusionConfig
    settings: SamplerSettings
    seed: int
    num_samples: int
    batch_size: int = 16
    classifier: ClassifierConfig | None = None
    classifier_scale: float = 0.0
    cfg_scale: float = 1.0
    class_labels: tuple[int, ...] | None = None
    start_index: int = 0
    bf16: bool = False
    channels_last: bool = False
    model_path: str = ""
    classifier_path: str = ""
    low_res_digest: str | None = None  # sha256 of an upsampler's low-resolution inputs
    init_noise_digest: str | None = None  # sha256 of given starting noise (e.g. `invert`'s latents)

    def __post_init__(self) -> None:
        check_counts(num_samples=self.num_samples, batch_size=self.batch_size, seed=self.seed)
        if self.start_index < 0:
            raise SettingError("start_index", f"start_index must be >= 0, got {self.start_index}")
        for name in ("classifier_scale", "cfg_scale"):
            if not math.isfinite(getattr(self, name)):
                raise SettingError(name, f"{name} must be a finite number, got {getattr(self, name)}")
        check_cfg(self.cfg_scale, class_cond=self.model.class_cond, null_label=self.null_label)
        if self.class_labels is not None:
            if not self.class_labels:
                raise SettingError("class_labels", "class_labels is empty")
            bad = [c for c in self.class_labels if not 0 <= c < self.model.num_classes]
            if bad:
                raise SettingError("class_labels", f"classes must be in 0..{self.model.num_classes - 1}, got {bad[0]}")
            if not self.with_labels:
                raise SettingError("class_labels", "class labels need a class-conditional model or a classifier")
        if self.is_upsampler and self.model.class_cond and self.class_labels is None:
            raise SettingError("class_labels", "this upsampler is class-conditional: it needs the class of every image")
        # A respacing or a steps grid the schedule cannot take fails here, before any network is loaded.
        self.settings.grid(self.build_diffusion())
        self._check_steering()

    def _check_steering(self) -> None:
        """Guidance steering must act: an interval inside the schedule, and on guidance that runs."""
        steps = self.diffusion.diffusion_steps
        interval = self.settings.guidance_interval
        if interval is not None:
            if not self.guided:
                raise SettingError("guidance_interval", "guidance_interval steers classifier guidance, which is off "
                                   "(no classifier, or classifier_scale 0)")
            if interval[1] > steps - 1:
                raise SettingError("guidance_interval", f"guidance_interval {interval[0]:g},{interval[1]:g} reaches "
                                   f"beyond this model's timesteps 0..{steps - 1}: guidance would run only where "
                                   "the interval overlaps them")
        for name, default in (("guidance_schedule", "constant"), ("guidance_scaling", "none")):
            if getattr(self.settings, name) != default and not self.guided:
                raise SettingError(name, f"{name} {getattr(self.settings, name)} steers classifier guidance, which is "
                                   "off (no classifier, or classifier_scale 0)")
        if self.settings.cfg_interval is not None:
            if self.cfg_scale == 1.0:
                raise SettingError("cfg_interval", "cfg_interval limits classifier-free guidance, which is off "
                                   "(cfg_scale 1)")
            top = (steps - 1) * (1000.0 / steps if self.diffusion.rescale_timesteps else 1.0)
            if self.settings.cfg_interval[1] > top:
                lo, hi = self.settings.cfg_interval
                raise SettingError("cfg_interval", f"cfg_interval {lo:g},{hi:g} reaches beyond this model's "
                                   f"timesteps 0..{top:g}")

    # -- derived facts -------------------------------------------------------------------------------

    @property
    def is_upsampler(self) -> bool:
        return isinstance(self.model, SuperResConfig)

    @property
    def image_size(self) -> int:
        return self.model.large_size if isinstance(self.model, SuperResConfig) else self.model.image_size

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return (3, self.image_size, self.image_size)

    @property
    def output_name(self) -> str:
        """The original scripts' file name for this job's npz."""
        return f"samples_{self.num_samples}x{self.image_size}x{self.image_size}x3.npz"

    def batches(self) -> list[list[int]]:
        """The sample indices of each batch, in order (the same batches whatever the number of ranks)."""
        end = self.start_index + self.num_samples
        return [list(range(s, min(s + self.batch_size, end))) for s in range(self.start_index, end, self.batch_size)]

    def build_diffusion(self) -> Any:
        """The diffusion given to the sampler: respaced for `timestep_respacing`, else the trained process
        (with settings.steps the samplers build their own grid from it)."""
        build: Callable[[], Any] = self.diffusion.build  # DiffusionConfig.build is not annotated
        try:
            return build()
        except UserError:
            raise  # already names the setting at fault
        except ValueError as exc:
            raise SettingError("timestep_respacing", f"timestep_respacing {self.diffusion.timestep_respacing!r}: {exc}") from None

    # -- identity for resuming -----------------------------------------------------------------------

    def fingerprint(self) -> dict[str, Any]:
        """Everything that decides the drawn arrays, JSON-able (progress bars and paths' spelling excluded;
        the checkpoints count by resolved path and size): the shared fields and every other field."""
        return self.fingerprint_of(JOB_FORMAT, {f.name: getattr(self, f.name) for f in dataclasses.fields(self)})

    def record_fields(self) -> dict[str, Any]:
        return {"timestep_respacing": self.diffusion.timestep_respacing, "num_samples": self.num_samples}

    def fingerprint_digest(self) -> str:
        return hashlib.sha256(json.dumps(self.fingerprint(), sort_keys=True).encode()).hexdigest()[:16]


def sampling_job(
    *,
    model: ModelConfig,
    diffusion: DiffusionConfig,
    seed: int,
    num_samples: int,
    sampler: str = "ddpm",
    steps: int | None = None,
    timestep_respacing: str | None = None,
    eta: float | None = None,
    dynamic_threshold: float | None = None,
    clip_denoised: bool = True,
    progress: bool = False,
    solver_options: dict[str, Any] | None = None,
    **job_fields: Any,
) -> SamplingJob:
    """The one way options become a `SamplingJob` (the command line, the Python API and the demo all call it).

    steps: a grid of that many steps on the un-respaced diffusion; timestep_respacing: the original
    respacing string (None keeps the diffusion config's own); solver_options: further SamplerSettings
    fields (step_grid, sigma_min, s_churn, guidance_interval, ...). Other keywords are SamplingJob fields.
    Raises SettingError naming the option at fault.
    """
    if timestep_respacing is not None:
        diffusion = dataclasses.replace(diffusion, timestep_respacing=timestep_respacing)
    if steps is not None and diffusion.timestep_respacing:
        raise SettingError("steps", f"steps={steps} and timestep_respacing={diffusion.timestep_respacing!r} both "
                       "choose the steps; give only one")
    # with `steps` the samplers build their grid from the un-respaced diffusion
    options = {**(solver_options or {}), **({"eta": eta} if eta is not None else {})}
    settings = SamplerSettings(sampler=sampler, clip_denoised=clip_denoised, steps=steps,
                               dynamic_threshold=dynamic_threshold, progress=progress, **options)
    job = SamplingJob(model=model, diffusion=diffusion, settings=settings, seed=seed, num_samples=num_samples,
                      **job_fields)
    if distributed.is_main_process():
        warn_if_known_failure(settings, guided=job.guided)
    return job


def array_digest(array: np.ndarray) -> str:
    """A short sha256 of an array's shape, dtype and bytes."""
    digest = hashlib.sha256(f"{array.dtype}{array.shape}".encode())
    digest.update(np.ascontiguousarray(array).tobytes())
    return digest.hexdigest()[:16]


def file_identity(path: str) -> list[Any] | None:
    """A checkpoint as a fingerprint counts it: [resolved path, size in bytes] (None for no path), so the
    same file named another way is the same job and a replaced file of another size is not."""
    if not path:
        return None
    resolved = Path(path).resolve()
    return [str(resolved), resolved.stat().st_size if resolved.is_file() else None]


def check_low_res(images: np.ndarray, small_size: int) -> None:
    """Low-resolution inputs of an upsampler must be uint8 [n, small, small, 3] with n >= 1."""
    expected = (small_size, small_size, 3)
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[1:] != expected or len(images) == 0:
        raise SettingError("low_res", f"low-resolution images are {images.dtype} {images.shape}, expected uint8 "
                       f"N x {'x'.join(map(str, expected))} for small_size {small_size}")


def check_init_noise(noise: np.ndarray, job: SamplingJob) -> None:
    """Given starting noise must hold one float C x H x W array per sample of the job."""
    needed = job.start_index + job.num_samples
    if noise.ndim != 4 or tuple(noise.shape[1:]) != tuple(job.image_shape):
        raise SettingError("init_noise", f"starting noise is {tuple(noise.shape)}, expected N x "
                       f"{'x'.join(map(str, job.image_shape))} for this model")
    if len(noise) < needed:
        raise SettingError("init_noise", f"starting noise holds {len(noise)} samples, {needed} are asked for; "
                       f"draw at most {len(noise)} samples")


def low_res_input(images: np.ndarray, indices: Sequence[int], device: torch.device) -> torch.Tensor:
    """The upsampler's `low_res` input for samples `indices`: image i % len(images), as float NCHW in [-1, 1]
    (cycling when more samples than images are asked for, as the original does)."""
    chosen = images[[i % len(images) for i in indices]]
    return torch.from_numpy(chosen).to(device).permute(0, 3, 1, 2).float() / 127.5 - 1
