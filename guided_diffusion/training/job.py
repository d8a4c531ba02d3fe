"""A training job: the network, its diffusion and the training options, resolved once, checked and frozen.

The commands (`image_train`, `classifier_train`, `super_res_train`), Python callers and the demo describe
a run as a `TrainingJob` and hand it to `training.run.run_training`. Every check a job's settings allow
happens when it is built, before anything is read or written: a value no run can have raises
`SettingError` naming the setting (a field of the job's parts, named as the original's flags), which
the command line turns into the flag it came from. The network and diffusion configs are saved beside
the weights (`config.json`, `TrainingJob.saved_config`).

    from guided_diffusion.config import DiffusionConfig, ModelConfig
    from guided_diffusion.training import TrainingJob, TrainingOptions, run_training

    job = TrainingJob(network=ModelConfig(image_size=32, num_channels=64, channel_mult="1,2,2,2"),
                      diffusion=DiffusionConfig(), options=TrainingOptions(data_dir="images", log_dir="runs/a", iterations=1000, batch_size=16))
    outcome = run_training(job)

A command builds its job from its flags with `resolve_training_job`, which takes the network's settings
through the one resolver (`config.resolve`), with `init_from`'s checkpoint filling in the architecture.
"""
from __future__ import annotations

import dataclasses
import os
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

from guided_diffusion.config import ClassifierConfig, DiffusionConfig, ModelConfig, SuperResConfig, config_to_dict
from guided_diffusion.config.resolve import network_config_class, resolve_network
from guided_diffusion.data.files import LABEL_MODES
from guided_diffusion.models.factory import SR_CHANNEL_MULT_BY_SIZE, parse_channel_mult
from guided_diffusion.runtime.errors import SettingError
from guided_diffusion.training.ema import EMAWarmup, parse_ema_rates
from guided_diffusion.training.finetune import FineTuneSource
from guided_diffusion.training.loop import LoopOptions, LoopSettings
from guided_diffusion.training.monitor import WatchOptions
from guided_diffusion.training.precision import INITIAL_LOG_LOSS_SCALE, check_precision_choice
from guided_diffusion.training.timestep_sampling import SAMPLER_NAMES

__all__ = ["ClassifierOptions", "TrainingJob", "TrainingOptions", "resolve_training_job"]

# Classifiers start their fp16 loss scale lower, as the original's classifier_train.py does.
_CLASSIFIER_LG_LOSS_SCALE = 16.0

_Options = TypeVar("_Options")


def _pick(cls: type[_Options], values: Mapping[str, Any]) -> _Options:
    """An options dataclass from the values among `values` that are its fields (one settings dict serves
    every part of a job)."""
    names = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]  # cls is a dataclass
    return cls(**{name: value for name, value in values.items() if name in names})


@dataclass(frozen=True)
class TrainingOptions(LoopSettings):
    """How to train, besides the network: the loop's settings (`LoopSettings`), the data, the run
    directory, resuming, the seed, the EMA warm-up and the output formats."""

    data_dir: str = ""
    log_dir: str = ""  # "": $OPENAI_LOGDIR, else a new temporary folder
    schedule_sampler: str = "uniform"
    resume: str = ""  # "auto": the newest complete checkpoint in the run directory; or a checkpoint's path
    resume_checkpoint: str = ""  # the original's way to resume from a file
    seed: int | None = None  # None: drawn at the start (and logged); a resumed run keeps its own
    label_mode: str = "auto"
    random_flip: bool = True
    random_crop: bool = False
    num_workers: int = -1  # -1: automatic
    skip_bad_images: bool = False
    tensorboard: bool = False
    channels_last: bool = False
    ema_warmup: bool = False
    ema_warmup_power: float = 2.0 / 3.0

    def check(self) -> None:
        """Raise a SettingError naming the first setting that cannot work or conflicts with another."""
        super().check()
        if self.resume and self.resume_checkpoint:
            raise SettingError("resume", "give either resume or resume_checkpoint, not both")
        if self.resume == "auto" and not self.run_directory:
            raise SettingError("resume", "resume 'auto' continues the run in its directory: set log_dir (or OPENAI_LOGDIR)")
        if self.resume and self.resume != "auto" and not os.path.exists(self.resume):
            raise SettingError("resume", f"resume {self.resume!r} does not exist: use 'auto' or a checkpoint path")
        if self.num_workers < -1:
            raise SettingError("num_workers", "num_workers must be -1 (automatic), 0 (load in the training process) or "
                                              f"positive (got {self.num_workers})")
        if self.label_mode not in LABEL_MODES:
            raise SettingError("label_mode", f"label_mode {self.label_mode!r} is not one of {', '.join(LABEL_MODES)}")
        if self.schedule_sampler not in SAMPLER_NAMES:
            raise SettingError("schedule_sampler", f"unknown schedule sampler {self.schedule_sampler!r}: schedule_sampler "
                                                   f"is one of {', '.join(SAMPLER_NAMES)}")
        if self.ema_warmup:
            EMAWarmup(power=float(self.ema_warmup_power))  # checks the power

    @property
    def run_directory(self) -> str:
        """The run directory asked for: log_dir, else $OPENAI_LOGDIR ("": a new temporary one)."""
        return self.log_dir or os.environ.get("OPENAI_LOGDIR", "")

    @property
    def resume_from(self) -> tuple[str, str]:
        """(setting, value) of where to resume: resume ("auto" or a path), else resume_checkpoint."""
        return ("resume", self.resume) if self.resume else ("resume_checkpoint", self.resume_checkpoint)


@dataclass(frozen=True)
class ClassifierOptions:
    """A noisy classifier's own settings: held-out data for validation every `eval_interval` steps,
    noised inputs (False: clean images at t = 0) and the linear learning-rate decay."""

    val_data_dir: str = ""
    noised: bool = True
    anneal_lr: bool = False
    eval_interval: int = 5

    def check(self) -> None:
        if self.eval_interval <= 0:
            raise SettingError("eval_interval", f"eval_interval must be positive (got {self.eval_interval})")


@dataclass(frozen=True)
class TrainingJob:
    """A training run: the `network` to train (its config's class says which kind: `ModelConfig`,
    `SuperResConfig` or `ClassifierConfig`), its `diffusion`, the training `options`, what to `watch`
    while it trains (sample grids and metrics; only `max_time` for classifiers), a classifier's own
    `classifier_options` (defaults when not given) and the checkpoint it starts from (`init_from`)."""

    network: ModelConfig | ClassifierConfig
    diffusion: DiffusionConfig
    options: TrainingOptions = field(default_factory=TrainingOptions)
    watch: WatchOptions = field(default_factory=WatchOptions)
    classifier_options: ClassifierOptions | None = None
    init_from: FineTuneSource | None = None

    def __post_init__(self) -> None:
        if self.kind == "classifier" and self.classifier_options is None:
            object.__setattr__(self, "classifier_options", ClassifierOptions())
        self._check()

    @property
    def kind(self) -> str:
        """"diffusion", "superres" or "classifier" (the kinds of `config.resolve`)."""
        if isinstance(self.network, ClassifierConfig):
            return "classifier"
        return "superres" if isinstance(self.network, SuperResConfig) else "diffusion"

    @property
    def fp16_setting(self) -> str:
        """The network's fp16 switch."""
        return "classifier_use_fp16" if self.kind == "classifier" else "use_fp16"

    @property
    def uses_fp16(self) -> bool:
        return bool(getattr(self.network, self.fp16_setting))

    @property
    def image_size(self) -> int:
        """The size of the training images (an upsampler's large size)."""
        return int(self.network.large_size if isinstance(self.network, SuperResConfig) else self.network.image_size)

    @property
    def class_cond(self) -> bool:
        """Whether batches carry labels (always for a classifier)."""
        return isinstance(self.network, ClassifierConfig) or bool(self.network.class_cond)

    def _check(self) -> None:
        """Every check the settings allow, before anything is read or written."""
        network, options = self.network, self.options
        check_precision_choice(self.uses_fp16, options.use_bf16, fp16_setting=self.fp16_setting)
        options.check()
        if self.classifier_options is not None:
            if self.kind != "classifier":
                raise SettingError("classifier_options", "classifier_options are a classifier's: this job trains a "
                                                         f"{type(network).__name__}")
            self.classifier_options.check()
        if isinstance(network, ModelConfig):
            if not 0.0 <= network.class_dropout_prob < 1.0:
                raise SettingError("class_dropout_prob", f"class_dropout_prob must be in [0, 1) (got {network.class_dropout_prob})")
            if network.class_dropout_prob > 0 and not network.class_cond:
                raise SettingError("class_dropout_prob", "class_dropout_prob needs class_cond True (it drops class labels "
                                                         "for classifier-free guidance)")
            parse_ema_rates(options.ema_rate)
        self._check_size()
        self._check_watch()
        network.validate()
        self.diffusion.validate()

    def _check_size(self) -> None:
        """An image size the network's levels can halve."""
        size_setting = "large_size" if self.kind == "superres" else "image_size"
        size = self.image_size
        if size < 1:
            raise SettingError(size_setting, f"{size_setting} must be positive (got {size})")
        mult_setting = "classifier_channel_mult" if self.kind == "classifier" else "channel_mult"
        presets = {"presets": SR_CHANNEL_MULT_BY_SIZE} if self.kind == "superres" else {}
        mult = parse_channel_mult(getattr(self.network, mult_setting), size, setting=mult_setting, **presets)
        halvings = len(mult) - 1
        if size % (2**halvings):
            raise SettingError(
                size_setting,
                f"{size_setting} {size} cannot be halved {halvings} times ({mult_setting} {','.join(str(m) for m in mult)} "
                f"has {len(mult)} levels): use a multiple of {2**halvings} for {size_setting}, or fewer levels in {mult_setting}",
            )

    def _check_watch(self) -> None:
        """The add-ons: a classifier run draws no samples (its eval_interval is the validation interval)
        and starts from no checkpoint; the others' grids and metrics are checked by `WatchOptions`."""
        if self.kind == "classifier":
            for name, value in dataclasses.asdict(self.watch).items():
                if name != "max_time" and value != getattr(WatchOptions(), name):
                    raise SettingError(name, f"{name} {value} would be ignored: a classifier run draws no samples")
            if self.init_from is not None:
                raise SettingError("init_from", "init_from starts a diffusion model or an upsampler from a checkpoint, "
                                                "not a classifier")
        self.watch.validate()

    def saved_config(self) -> dict[str, Any]:
        """What `config.json` in the run directory records: the network and diffusion configs (and, for a
        classifier, whether it was trained on noised images, which guidance needs to know)."""
        config = config_to_dict(self.network, self.diffusion)
        if self.classifier_options is not None:
            config["noised"] = self.classifier_options.noised
        return config

    def loop_options(self, *, seed: int, progress: bool | None, handle_signals: bool) -> LoopOptions:
        """The loop's options for this job, with the run's `seed` and how it reports and stops."""
        settings = {f.name: getattr(self.options, f.name) for f in dataclasses.fields(LoopSettings)}
        network = self.network
        if isinstance(network, ClassifierConfig):
            settings["ema_rate"] = ""  # classifiers keep no EMA, as the original
            derived: dict[str, Any] = dict(initial_lg_loss_scale=_CLASSIFIER_LG_LOSS_SCALE, class_dropout_prob=0.0, low_res_size=0)
        else:
            derived = dict(initial_lg_loss_scale=INITIAL_LOG_LOSS_SCALE, class_dropout_prob=network.class_dropout_prob,
                           low_res_size=network.small_size if isinstance(network, SuperResConfig) else 0)
        return LoopOptions(
            **settings,
            **derived,
            use_fp16=self.uses_fp16,
            class_cond=self.class_cond,
            num_classes=network.num_classes,
            progress=progress,
            handle_signals=handle_signals,
            seed=seed,
        )


def resolve_training_job(kind: str, values: Mapping[str, Any], typed: Collection[str] = ()) -> TrainingJob:
    """The job that training settings describe, for a network of `kind` ("diffusion", "superres" or
    "classifier"). `values`: every setting by the original's flag names (a command's flags with their
    defaults); `typed`: the ones the user gave. The network and diffusion settings go through the one
    resolver (`config.resolve.resolve_network`); with `init_from` its checkpoint's config fills in the
    architecture (`FineTuneSource.settings`). A negative `seed` means none (one is drawn at the start)."""
    network_config_class(kind)  # checks the kind
    spec = str(values.get("init_from") or "")
    source = FineTuneSource.locate(spec, kind) if spec else None
    resolved = source.settings(kind, values, typed) if source is not None else resolve_network(kind, values, typed)
    seed = values.get("seed")
    options = _pick(TrainingOptions, {**values, "seed": None if seed is None or seed < 0 else int(seed)})
    if kind == "classifier":  # its eval_interval is the validation interval, not the metrics'
        return TrainingJob(network=resolved.network(), diffusion=resolved.diffusion(), options=options,
                           watch=WatchOptions(max_time=float(values.get("max_time", 0.0))),
                           classifier_options=_pick(ClassifierOptions, values))
    return TrainingJob(network=resolved.network(), diffusion=resolved.diffusion(), options=options,
                       watch=_pick(WatchOptions, values), init_from=source)
