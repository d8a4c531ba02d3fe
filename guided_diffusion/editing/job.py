"""An editing job: what to do to which images, resolved once and frozen.

The command line and Python callers describe an edit as an `EditJob` (the task, the images, the networks'
configs, the sampler settings, the seed and the guidance) and hand it to `editing.run.run_edit`. Every
check of an edit's options lives here, before anything is loaded or written: a value that cannot work,
and an option the edit would ignore (a DPS step size for RePaint, a resampling jump for DPS, a classifier
scale without a classifier, class labels nothing is conditioned on), raise `SettingError` naming the
option (a field of the job or of its task), which the command line turns into the flag it came from.

Edit i depends only on (seed, i) and input i, so a job can be split into batches and over ranks in any
way, and its finished batches can be kept and resumed (`fingerprint`).
"""
from __future__ import annotations

import dataclasses
import math
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from guided_diffusion.config import ClassifierConfig, DiffusionConfig, ModelConfig, SuperResConfig
from guided_diffusion.config.presets import preset_for_file
from guided_diffusion.config.resolve import network_config_class, resolve_network
from guided_diffusion.editing.grid import start_points
from guided_diffusion.editing.repaint import repaint_schedule
from guided_diffusion.runtime.errors import SettingError
from guided_diffusion.sampling.guidance import check_cfg
from guided_diffusion.sampling.job import DiffusionJob, array_digest
from guided_diffusion.sampling.settings import SamplerSettings
from guided_diffusion.weights.checkpoints import inspect_checkpoint, read_config_json

__all__ = [
    "EditInputs", "EditJob", "EditTask", "Img2Img", "Inpaint", "Invert", "RESTORE_TASKS", "Restore",
    "checkpoint_configs", "input_downsampling", "needs_mask",
]

JOB_FORMAT = 1  # bump when the meaning of a stored fingerprint changes
RESTORE_TASKS = ("inpaint", "super_res", "deblur")


def _refuse(name: str, value: Any, why: str) -> None:
    """An option given where the edit would not read it."""
    if value is not None:
        raise SettingError(name, f"{name} {value} would be ignored: {why}")


# -- tasks ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Invert:
    """DDIM inversion: the noise from which deterministic DDIM returns each image.

    refine: at most this many fixed-point passes per step (each one more model evaluation);
    round_trip: sample the latents back with DDIM and measure the PSNR against the input;
    keep_round_trip: also return (and write) the round-trip images.
    """

    refine: int = 6
    round_trip: bool = True
    keep_round_trip: bool = False
    name: ClassVar[str] = "invert"
    stochastic: ClassVar[bool] = False

    def __post_init__(self) -> None:
        if self.refine < 0:
            raise SettingError("refine", f"refine must be >= 0, got {self.refine}")
        if self.keep_round_trip and not self.round_trip:
            raise SettingError("keep_round_trip", "keep_round_trip needs round_trip (the round trip it would keep)")


@dataclass(frozen=True)
class Img2Img:
    """SDEdit: noise the images to `strength` of the run (or invert them that far) and sample back."""

    strength: float = 0.75
    from_inversion: bool = False
    name: ClassVar[str] = "img2img"
    stochastic: ClassVar[bool] = True

    def __post_init__(self) -> None:
        if not (math.isfinite(self.strength) and 0.0 < self.strength <= 1.0):
            raise SettingError("strength", f"strength must be in (0, 1] (the fraction of the run), got {self.strength}")


@dataclass(frozen=True)
class Inpaint:
    """Fill the pixels where the mask is 0: RePaint (known region re-noised into every step, resampling
    jumps) or DPS (measurement guidance); the kept pixels stay exactly as given. Options of the other
    method are refused (None = not given)."""

    method: str = "repaint"
    jump_length: int | None = None
    jump_n_sample: int | None = None
    dps_scale: float | None = None
    name: ClassVar[str] = "inpaint"
    stochastic: ClassVar[bool] = True

    def __post_init__(self) -> None:
        if self.method not in ("repaint", "dps"):
            raise SettingError("method", f"method must be repaint or dps, got {self.method!r}")
        if self.method == "dps":
            for option in ("jump_length", "jump_n_sample"):
                _refuse(option, getattr(self, option), "RePaint's resampling jumps apply to method repaint, not dps")
        else:
            _refuse("dps_scale", self.dps_scale, "the DPS step applies to method dps, not repaint")
        for option in ("jump_length", "jump_n_sample"):
            value = getattr(self, option)
            if value is not None and value < 1:
                raise SettingError(option, f"{option} must be >= 1, got {value}")
        _check_dps_scale(self.dps_scale)

    @property
    def jumps(self) -> tuple[int, int]:
        """(jump_length, jump_n_sample), 1 = no resampling."""
        return self.jump_length or 1, self.jump_n_sample or 1

    @property
    def scale(self) -> float:
        return 1.0 if self.dps_scale is None else self.dps_scale


@dataclass(frozen=True)
class Restore:
    """Posterior sampling (DPS) from a measurement: masked (`inpaint`), box-downsampled by `factor`
    (`super_res`) or blurred with a Gaussian of `blur_sigma` pixels (`deblur`). With `simulate` the input
    images are clean and the measurement is made from them first (rounded to uint8, as a real one is).
    Options another task reads are refused (None = not given)."""

    task: str
    factor: int | None = None
    blur_sigma: float | None = None
    blur_size: int | None = None
    dps_scale: float | None = None
    simulate: bool = False
    name: ClassVar[str] = "restore"
    stochastic: ClassVar[bool] = True

    def __post_init__(self) -> None:
        if self.task not in RESTORE_TASKS:
            raise SettingError("task", f"task must be one of {', '.join(RESTORE_TASKS)}, got {self.task!r}")
        if self.task != "super_res":
            _refuse("factor", self.factor, f"the downsampling factor applies to task super_res, not {self.task}")
        if self.task != "deblur":
            for option in ("blur_sigma", "blur_size"):
                _refuse(option, getattr(self, option), f"the blur applies to task deblur, not {self.task}")
        if self.simulate and self.task == "inpaint":
            raise SettingError("simulate", "simulate would be ignored: task inpaint reads the known pixels from the "
                                           "clean images already (the mask is the measurement)")
        if self.factor is not None and self.factor < 1:
            raise SettingError("factor", f"factor must be >= 1, got {self.factor}")
        if self.blur_sigma is not None and not (math.isfinite(self.blur_sigma) and self.blur_sigma > 0):
            raise SettingError("blur_sigma", f"blur_sigma must be > 0, got {self.blur_sigma}")
        if self.blur_size is not None and (self.blur_size < 1 or self.blur_size % 2 == 0):
            raise SettingError("blur_size", f"blur_size must be odd and >= 1, got {self.blur_size}")
        _check_dps_scale(self.dps_scale)

    @property
    def downsampling(self) -> int:
        """How much smaller than the model's images the measurement is (1 unless super_res)."""
        return (self.factor or 2) if self.task == "super_res" else 1

    @property
    def sigma(self) -> float:
        return 1.0 if self.blur_sigma is None else self.blur_sigma

    @property
    def scale(self) -> float:
        return 1.0 if self.dps_scale is None else self.dps_scale


def _check_dps_scale(scale: float | None) -> None:
    if scale is not None and not math.isfinite(scale):
        raise SettingError("dps_scale", f"dps_scale must be a finite number, got {scale}")


EditTask = Invert | Img2Img | Inpaint | Restore


def needs_mask(task: EditTask) -> bool:
    """Whether the task reads a keep-mask (inpainting, by RePaint, DPS or restore --task inpaint)."""
    return isinstance(task, Inpaint) or (isinstance(task, Restore) and task.task == "inpaint")


def input_downsampling(task: EditTask) -> int:
    """How much smaller than the model's images the task's inputs are (a super_res measurement's factor)."""
    return task.downsampling if isinstance(task, Restore) and not task.simulate else 1


# -- inputs --------------------------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class EditInputs:
    """The images to edit (uint8 N x H x W x 3), their own labels (int64, or None) and the keep-mask
    (float32 N x 1 x H x W of 0/1, 1 = known pixel, or None)."""

    images: np.ndarray
    labels: np.ndarray | None = None
    mask: np.ndarray | None = None

    def __post_init__(self) -> None:
        images = self.images
        if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] != 3 or len(images) == 0:
            raise SettingError("input", f"images are {images.dtype} {images.shape}, expected uint8 N x H x W x 3")
        if self.labels is not None:
            labels = np.asarray(self.labels).astype(np.int64).reshape(-1)
            if len(labels) != len(images):
                raise SettingError("input", f"{len(labels)} labels for {len(images)} images")
            object.__setattr__(self, "labels", labels)
        if self.mask is not None:
            mask = np.asarray(self.mask, dtype=np.float32)
            if mask.ndim != 4 or mask.shape[1] != 1 or len(mask) != len(images):
                raise SettingError("mask", f"mask is {mask.shape}, expected one 1 x H x W mask per image")
            object.__setattr__(self, "mask", mask)

    def __len__(self) -> int:
        return len(self.images)

    @property
    def size(self) -> int:
        """The images' side in pixels."""
        return int(self.images.shape[1])

    def identity(self) -> dict[str, str | None]:
        """Digests of the arrays, for a job's fingerprint."""
        return {"images": array_digest(self.images),
                "labels": array_digest(self.labels) if self.labels is not None else None,
                "mask": array_digest(self.mask) if self.mask is not None else None}


# -- the job -------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class EditJob(DiffusionJob):
    """One edit of every input image.

    model / diffusion / classifier: the networks' configs (fp16 already resolved for the device); settings:
    the sampler, its grid and options (invert always walks ddim; RePaint makes its own DDPM steps);
    seed: the base seed of the noise (None for invert, which draws none); classifier_scale: classifier
    guidance (0 = off); cfg_scale: classifier-free guidance (1 = off); class_labels: the class of every
    image, cycled over the images (image i gets class_labels[i % len]), else the inputs' own labels;
    bf16: the networks run in bfloat16.
    """

    task: EditTask
    inputs: EditInputs
    model: ModelConfig
    diffusion: DiffusionConfig
    settings: SamplerSettings
    seed: int | None = None
    batch_size: int = 16
    classifier: ClassifierConfig | None = None
    classifier_scale: float = 0.0
    cfg_scale: float = 1.0
    class_labels: tuple[int, ...] | None = None
    bf16: bool = False
    model_path: str = ""
    classifier_path: str = ""

    def __post_init__(self) -> None:
        if isinstance(self.model, SuperResConfig):
            raise SettingError("model_path", "the model is a super-resolution model; editing needs a diffusion model")
        if self.batch_size < 1:
            raise SettingError("batch_size", f"batch_size must be at least 1, got {self.batch_size}")
        self._check_seed()
        self._check_sampler()
        self._check_guidance()
        self._check_inputs()
        self._check_labels()
        # A steps grid the schedule cannot take fails here, before any network is loaded.
        self.settings.grid(self.trained_diffusion())

    def _check_seed(self) -> None:
        if not self.task.stochastic:
            _refuse("seed", self.seed, f"{self.task.name} is deterministic: it draws no noise")
        elif self.seed is None:
            raise SettingError("seed", f"{self.task.name} draws noise: give a seed (edit i depends on (seed, i))")
        elif self.seed < 0:
            raise SettingError("seed", f"seed must be >= 0, got {self.seed}")

    def _check_sampler(self) -> None:
        sampler = self.settings.sampler
        if isinstance(self.task, Invert) and sampler != "ddim":
            raise SettingError("sampler", f"invert walks DDIM backwards; sampler {sampler} would be ignored")
        if self.uses_repaint and sampler != "ddpm":
            raise SettingError("sampler", f"method repaint makes its own DDPM steps; sampler {sampler} applies to "
                                          "method dps only")

    def _check_guidance(self) -> None:
        for name in ("classifier_scale", "cfg_scale"):
            if not math.isfinite(getattr(self, name)):
                raise SettingError(name, f"{name} must be a finite number, got {getattr(self, name)}")
        check_cfg(self.cfg_scale, class_cond=self.model.class_cond, null_label=self.null_label)
        if self.settings.cfg_interval is not None and self.cfg_scale == 1.0:
            raise SettingError("cfg_interval", "cfg_interval would be ignored: it limits classifier-free guidance, "
                                               "which is off (cfg_scale 1)")
        if self.classifier is None:
            if self.classifier_scale != 0:
                raise SettingError("classifier_scale", f"classifier_scale {self.classifier_scale:g} would be ignored: "
                                                       "there is no classifier to guide with (classifier_path)")
        else:
            if isinstance(self.task, Invert):
                raise SettingError("classifier_path", "invert takes no classifier guidance: DDIM inversion is deterministic")
            if self.classifier.image_size != self.image_size:
                raise SettingError("classifier_path", f"the classifier takes {self.classifier.image_size}x"
                                   f"{self.classifier.image_size} images, the model makes {self.image_size}x{self.image_size}")
            if self.model.class_cond and self.classifier.num_classes != self.model.num_classes:
                raise SettingError("classifier_path", f"the classifier has {self.classifier.num_classes} classes, "
                                                      f"the model {self.model.num_classes}")
        settings = self.settings
        if not self.guided:
            steering = {"guidance_interval": settings.guidance_interval,
                        "guidance_schedule": None if settings.guidance_schedule == "constant" else settings.guidance_schedule,
                        "guidance_scaling": None if settings.guidance_scaling == "none" else settings.guidance_scaling}
            for name, value in steering.items():
                _refuse(name, value, "it steers classifier guidance, which this edit does not run "
                                     "(no classifier, or classifier_scale 0)")

    def _check_inputs(self) -> None:
        expected = self.image_size // self.measurement_downsampling
        if isinstance(self.task, Restore) and self.image_size % self.task.downsampling:
            raise SettingError("factor", f"factor {self.task.downsampling} does not divide the model's image size "
                                         f"{self.image_size}")
        if self.inputs.size != expected or self.inputs.images.shape[2] != expected:
            got = f"{self.inputs.images.shape[2]}x{self.inputs.images.shape[1]}"
            why = (f" (factor {self.measurement_downsampling} upsamples them to the model's {self.image_size}x"
                   f"{self.image_size})" if self.measurement_downsampling > 1 else "")
            raise SettingError("input", f"images are {got}, the model takes {expected}x{expected}{why}")
        if self.needs_mask and self.inputs.mask is None:
            raise SettingError("mask", "inpainting needs a mask: white (1) where the image is kept")
        if not self.needs_mask and self.inputs.mask is not None:
            raise SettingError("mask", f"the mask would be ignored: {self._task_text} reads none")
        if self.inputs.mask is not None and self.inputs.mask.shape[2:] != (self.image_size, self.image_size):
            height, width = self.inputs.mask.shape[2:]
            raise SettingError("mask", f"mask is {width}x{height}, the images are {self.image_size}x{self.image_size}")

    def _check_labels(self) -> None:
        classes = self.num_classes
        if self.class_labels is not None:
            if not self.class_labels:
                raise SettingError("class_labels", "class_labels is empty")
            if not self.with_labels:
                raise SettingError("class_labels", "class_labels would be ignored: the model is not class-conditional "
                                                   "and no classifier guides the edit (give classifier_path)")
            bad = [c for c in self.class_labels if not 0 <= c < classes]
            if bad:
                raise SettingError("class_labels", f"classes must be in 0..{classes - 1}, got {bad[0]}")
        elif self.with_labels:
            given = self.inputs.labels
            if given is None:
                why = "the model is class-conditional" if self.model.class_cond else "classifier guidance steers towards a class"
                raise SettingError("class_labels", f"class_labels needed: {why}; give class_labels, or inputs with "
                                                   "labels (arr_1)")
            if not ((given >= 0) & (given < classes)).all():
                raise SettingError("input", f"the inputs' labels (arr_1) must be in 0..{classes - 1}")

    # -- derived facts -------------------------------------------------------------------------------

    @property
    def _task_text(self) -> str:
        return f"restore --task {self.task.task}" if isinstance(self.task, Restore) else self.task.name

    @property
    def image_size(self) -> int:
        return self.model.image_size

    @property
    def num_samples(self) -> int:
        """The images the job makes, one per input (sampling's name for the count, which resumable runs read)."""
        return len(self.inputs)

    @property
    def num_classes(self) -> int:
        """Classes of the labels: the model's, or the guiding classifier's for an unconditional model."""
        if not self.model.class_cond and self.classifier is not None:
            return self.classifier.num_classes
        return self.model.num_classes

    @property
    def uses_repaint(self) -> bool:
        return isinstance(self.task, Inpaint) and self.task.method == "repaint"

    @property
    def needs_mask(self) -> bool:
        return needs_mask(self.task)

    @property
    def measurement_downsampling(self) -> int:
        """How much smaller than the model's images the inputs are (super_res without simulate)."""
        return input_downsampling(self.task)

    def trained_diffusion(self) -> Any:
        """The trained (un-respaced) process built from `diffusion`: the edits build their step grids from it."""
        build: Callable[[], Any] = dataclasses.replace(self.diffusion, timestep_respacing="").build  # config/ is untyped
        return build()

    def labels(self) -> np.ndarray | None:
        """The class each image is edited towards (int64, one per image), or None when the edit uses none."""
        if not self.with_labels:
            return None
        if self.class_labels is not None:
            return np.array([self.class_labels[i % len(self.class_labels)] for i in range(self.num_samples)], dtype=np.int64)
        return self.inputs.labels

    def output_labels(self) -> np.ndarray | None:
        """The labels written with the output: the classes used, or for invert the inputs' own labels
        (latents keep what they were inverted from, for sampling them back with a classifier)."""
        used = self.labels()
        return self.inputs.labels if used is None and isinstance(self.task, Invert) else used

    @property
    def levels(self) -> int:
        """Grid points of the run (the trained process's steps when settings.steps is None)."""
        return self.settings.steps or self.diffusion.diffusion_steps

    @property
    def output_name(self) -> str:
        """invert: latents.npz; the others: the sample format's samples_NxHxWx3.npz."""
        if isinstance(self.task, Invert):
            return "latents.npz"
        return f"samples_{self.num_samples}x{self.image_size}x{self.image_size}x3.npz"

    def describe(self) -> str:
        """What the run does and costs, in one line for the log."""
        task, levels, sampler = self.task, self.levels, self.settings.sampler
        if isinstance(task, Invert):
            back = f", then {levels} back" if task.round_trip else ""
            return f"inverting with ddim ({levels} levels, up to {levels * (1 + task.refine)} model evaluations{back})"
        if isinstance(task, Img2Img):
            points = start_points(task.strength, levels)
            start = "its inversion" if task.from_inversion else "noise"
            return (f"editing from {start} at strength {task.strength:g} with {sampler} ({points} of {levels} levels, "
                    f"{self.settings.evaluations(points)} model evaluations)")
        if self.uses_repaint:
            assert isinstance(task, Inpaint)
            length, passes = task.jumps
            schedule = repaint_schedule(levels, length, passes)
            evaluations = sum(1 for here, there in zip(schedule, schedule[1:]) if there < here)
            return f"inpainting with RePaint ({levels} levels, jumps {length}x{passes}, {evaluations} model evaluations)"
        what = "inpainting" if isinstance(task, Inpaint) else f"restoring ({task.task})"
        return f"{what} with DPS and {sampler} ({levels} levels, {self.settings.evaluations(levels)} model evaluations)"

    # -- identity for resuming -----------------------------------------------------------------------

    def fingerprint(self) -> dict[str, Any]:
        """Everything that decides the output arrays, JSON-able (progress excluded; the checkpoints count by
        resolved path and size, the inputs by digest): the shared fields, the task and the inputs."""
        return self.fingerprint_of(JOB_FORMAT, {"task": self._task_record(), "inputs": self.inputs.identity()})

    def record_fields(self) -> dict[str, Any]:
        return {"task": self._task_record(), "num_images": self.num_samples}

    def _task_record(self) -> dict[str, Any]:
        return {"name": self.task.name, **dataclasses.asdict(self.task)}


# -- configs from checkpoints --------------------------------------------------------------------------


def _resolved_config(kind: str, path: str, setting: str) -> tuple[ModelConfig | ClassifierConfig, DiffusionConfig]:
    """The network and diffusion configs of the checkpoint at `path` through the one resolver (`config.resolve`):
    its saved config, or a released checkpoint's flags recognised by its file name. The file is read and its
    kind checked first (`inspect_checkpoint`), so a wrong or damaged file is named as such."""
    inspect_checkpoint(path, expected=kind)
    network_class = network_config_class(kind)
    values = {**DiffusionConfig().to_dict(), **network_class().to_dict()}
    preset = preset_for_file(path)
    resolved = resolve_network(kind, values, preset=preset, checkpoint=path)
    if preset is None and not resolved.filled_from("checkpoint"):
        raise SettingError(setting, f"{setting} {path} has no saved config: editing reads the network from the "
                                    "config.json its training run wrote beside it (or a released checkpoint's name)")
    return resolved.network(), resolved.diffusion()


def checkpoint_configs(model_path: str, classifier_path: str = "") -> tuple[ModelConfig, DiffusionConfig, ClassifierConfig | None]:
    """The configs an edit runs with: the diffusion model's and its process's (from `model_path`), and the
    guiding classifier's (from `classifier_path`, when given). A classifier whose saved config says it was
    trained on clean images (`"noised": false`) gets a warning: its gradients on noisy images guide poorly."""
    model, diffusion = _resolved_config("diffusion", model_path, "model_path")
    assert isinstance(model, ModelConfig)  # the "diffusion" kind resolves to a ModelConfig
    classifier: ClassifierConfig | None = None
    if classifier_path:
        network, _ = _resolved_config("classifier", classifier_path, "classifier_path")
        assert isinstance(network, ClassifierConfig)
        classifier = network
        saved = read_config_json(classifier_path)
        if saved is not None and saved.get("noised") is False:
            warnings.warn(f"{classifier_path} was trained on clean images (noised false in its config.json): its "
                          "gradients on noisy images guide poorly; train the classifier with --noised True",
                          stacklevel=2)
    return model, diffusion, classifier
