"""Assemble and run a training job from parsed flags: process group, run directory, resume
point, seed, network, data, trainer."""
from __future__ import annotations

import math
import os
import random
import shutil
from argparse import Namespace
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch.distributed as dist

from guided_diffusion.config import ClassifierConfig, DiffusionConfig, ModelConfig, SuperResConfig, config_to_dict
from guided_diffusion.data.files import CLASS_MAP_NAME, LABEL_MODES, ClassMap, choose_label_mode, list_image_files
from guided_diffusion.data.stream import ImageStream, StreamSpec, resolve_class_map
from guided_diffusion.models.factory import SR_CHANNEL_MULT_BY_SIZE, parse_channel_mult
from guided_diffusion.runtime import distributed, logs
from guided_diffusion.runtime.errors import SettingError, UserError
from guided_diffusion.runtime.performance import optimize_model
from guided_diffusion.runtime.rng import mix_seed, seed_everything
from guided_diffusion.training import snapshots
from guided_diffusion.training.ema import parse_ema_rates
from guided_diffusion.training.finetune import load_initial_weights
from guided_diffusion.training.loop import LoopOptions
from guided_diffusion.training.precision import check_precision_choice
from guided_diffusion.training.rundir import RunDirLock
from guided_diffusion.training.timestep_sampling import SAMPLER_NAMES, create_named_schedule_sampler
from guided_diffusion.training.trainers import build_trainer
from guided_diffusion.training.watch import attach_watchers, prepare_watch
from guided_diffusion.weights.checkpoints import read_config_json, write_config_json

KINDS = ("image", "superres", "classifier")


@dataclass
class TrainingOutcome:
    """How a run ended, for the command line's last words. Filled in as the run goes, so it also
    describes a run that ended in an exception."""

    run_dir: Path | None = None
    step: int = 0
    stop: str | None = None  # None: reached its end; a signal name ("SIGTERM"); "max_time"
    max_time: float = 0.0
    rank: int = 0
    world_size: int = 1


def train_from_flags(args: Namespace, kind: str, outcome: TrainingOutcome | None = None) -> TrainingOutcome:
    """Run the training job described by `args` (see `guided_diffusion.cli.train`); `outcome` (a
    fresh one when not given) records the run directory, the last step and why the run stopped.

    Bad input raises UserError before anything is written where that can be known from the flags; a
    UserError found later (a checkpoint that does not fit, an image that cannot be read) removes what
    this run created in a run directory that was new or empty, so no stray log.txt stays behind."""
    outcome = outcome if outcome is not None else TrainingOutcome()
    created_group = not distributed.is_initialized()
    distributed.setup_dist()
    outcome.rank, outcome.world_size = distributed.get_rank(), distributed.get_world_size()
    held: list[RunDirLock] = []  # the run directory's lock, released however the run ends
    try:
        _train(args, kind, held, outcome)
    finally:
        for lock in held:
            lock.release()
        if created_group:
            distributed.teardown_dist()
    return outcome


def _validate(args: Namespace, kind: str) -> None:
    """Settings that conflict or point nowhere, checked before anything is built or written."""
    check_precision_choice(_uses_fp16(args, kind), args.use_bf16, fp16_setting=_fp16_setting(kind))
    for name in ("log_interval", "save_interval") + (("eval_interval",) if kind == "classifier" else ()):
        if getattr(args, name) <= 0:
            raise SettingError(name, f"{name} must be positive (got {getattr(args, name)})")
    if args.keep_last < 0:
        raise SettingError("keep_last", f"keep_last must be 0 (keep all) or positive (got {args.keep_last})")
    if args.resume and args.resume_checkpoint:
        raise SettingError("resume", "give either resume or resume_checkpoint, not both")
    if args.resume == "auto" and not (args.log_dir or os.environ.get("OPENAI_LOGDIR")):
        raise SettingError("resume", "resume 'auto' continues the run in its directory: set log_dir (or OPENAI_LOGDIR)")
    if args.resume and args.resume != "auto" and not os.path.exists(args.resume):
        raise SettingError("resume", f"resume {args.resume!r} does not exist: use 'auto' or a checkpoint path")
    dropout = getattr(args, "class_dropout_prob", 0.0)
    if not 0.0 <= dropout < 1.0:
        raise SettingError("class_dropout_prob", f"class_dropout_prob must be in [0, 1) (got {dropout})")
    if dropout > 0 and not args.class_cond:
        raise SettingError("class_dropout_prob", "class_dropout_prob needs class_cond True (it drops class labels for classifier-free guidance)")
    if args.grad_clip < 0:
        raise SettingError("grad_clip", f"grad_clip must be 0 (off) or positive (got {args.grad_clip})")
    if args.batch_size < 1:
        raise SettingError("batch_size", f"batch_size must be at least 1 (got {args.batch_size})")
    if args.num_workers < -1:
        raise SettingError("num_workers", f"num_workers must be -1 (automatic), 0 (load in the training process) or positive "
                                          f"(got {args.num_workers})")
    if args.label_mode not in LABEL_MODES:
        raise SettingError("label_mode", f"label_mode {args.label_mode!r} is not one of {', '.join(LABEL_MODES)}")
    if args.schedule_sampler not in SAMPLER_NAMES:
        raise SettingError("schedule_sampler", f"unknown schedule sampler {args.schedule_sampler!r}: schedule_sampler is one "
                                               f"of {', '.join(SAMPLER_NAMES)}")
    growth = getattr(args, "fp16_scale_growth", 1e-3)
    if not math.isfinite(growth) or growth < 0:
        raise SettingError("fp16_scale_growth", f"fp16_scale_growth must be a finite number >= 0 (got {growth})")
    _validate_numbers(args, kind)


def _validate_numbers(args: Namespace, kind: str) -> None:
    """Values that would otherwise run forever, diverge silently or fail deep inside the network."""
    if args.iterations < 0:
        raise SettingError("iterations", f"iterations must be 0 (stop at lr_anneal_steps, or never) or a positive step count (got {args.iterations})")
    if getattr(args, "lr_anneal_steps", 0) < 0:
        raise SettingError("lr_anneal_steps", f"lr_anneal_steps must be 0 (off) or positive (got {args.lr_anneal_steps})")
    for name in ("lr", "weight_decay"):
        value = getattr(args, name)
        if not math.isfinite(value) or value < 0:
            raise SettingError(name, f"{name} must be a finite number >= 0 (got {value})")
    if kind != "classifier":
        parse_ema_rates(args.ema_rate)
    size_setting = "large_size" if kind == "superres" else "image_size"
    size = getattr(args, size_setting)
    if size < 1:
        raise SettingError(size_setting, f"{size_setting} must be positive (got {size})")
    mult_setting = "classifier_channel_mult" if kind == "classifier" else "channel_mult"
    presets = {"presets": SR_CHANNEL_MULT_BY_SIZE} if kind == "superres" else {}
    mult = parse_channel_mult(getattr(args, mult_setting), size, setting=mult_setting, **presets)
    halvings = len(mult) - 1
    if size % (2**halvings):
        raise SettingError(
            size_setting,
            f"{size_setting} {size} cannot be halved {halvings} times ({mult_setting} {','.join(str(m) for m in mult)} has "
            f"{len(mult)} levels): use a multiple of {2**halvings} for {size_setting}, or fewer levels in {mult_setting}",
        )


def _fp16_setting(kind: str) -> str:
    return "classifier_use_fp16" if kind == "classifier" else "use_fp16"


def _uses_fp16(args: Namespace, kind: str) -> bool:
    return bool(getattr(args, _fp16_setting(kind)))


def _log_formats(args: Namespace) -> list[str] | None:
    if not args.tensorboard:
        return None
    if distributed.get_rank() == 0:
        formats = [f for f in os.environ.get("OPENAI_LOG_FORMAT", "stdout,log,csv").split(",") if f]
        return formats + ([] if "tensorboard" in formats else ["tensorboard"])
    return [f for f in os.environ.get("OPENAI_LOG_FORMAT_MPI", "log").split(",") if f]


def _choose_seed(args: Namespace, point: snapshots.ResumePoint | None) -> int:
    if point is not None and point.state is not None and "seed" in point.state:
        saved = int(point.state["seed"])
        if args.seed >= 0 and args.seed != saved:
            logs.log(f"--seed {args.seed} ignored: the resumed run was seeded with {saved}, which fixes its data order")
        return saved
    if args.seed >= 0:
        return int(args.seed)
    choice = [random.SystemRandom().randrange(1 << 62)]
    if distributed.get_world_size() > 1:
        dist.broadcast_object_list(choice, src=0)
    return int(choice[0])


def _configs(args: Namespace, kind: str) -> tuple[Any, DiffusionConfig]:
    flags = vars(args)
    diffusion_config = DiffusionConfig.from_flags(flags)
    if kind == "classifier":
        return ClassifierConfig.from_flags(flags), diffusion_config
    if kind == "superres":
        return SuperResConfig.from_flags(flags), diffusion_config
    return ModelConfig.from_flags(flags), diffusion_config


def _record_config(run_dir: Path, config: dict) -> None:
    previous = read_config_json(run_dir / "config.json") if (run_dir / "config.json").is_file() else None
    if previous is not None and previous != config:
        changed = sorted(
            key
            for section in ("model", "diffusion")
            for key in set(previous.get(section, {})) | set(config.get(section, {}))
            if previous.get(section, {}).get(key) != config.get(section, {}).get(key)
        )
        logs.log(f"config.json in {run_dir} had different settings ({', '.join(changed) or 'kind'}): rewriting it with this run's")
    write_config_json(run_dir, config)


def _check_class_count(class_map: ClassMap | None, num_classes: int) -> None:
    if class_map is not None and len(class_map.names) > num_classes:
        found = len(class_map.names)
        raise SettingError("num_classes", f"the data has {found} classes but num_classes is {num_classes}: use num_classes {found}")


def _claim_run_dir(args: Namespace, held: list[RunDirLock]) -> None:
    """Check the run directory can be written and lock it for the run's life (rank 0 holds the lock),
    before anything is written there: a second trainer on a live directory stops here in one line."""
    directory = args.log_dir or os.environ.get("OPENAI_LOGDIR")
    if not directory:
        return  # a fresh temporary directory: nobody else uses it
    message = None
    if distributed.get_rank() == 0:
        source = "" if args.log_dir else " (from OPENAI_LOGDIR)"
        try:
            held.append(RunDirLock(directory).acquire())
        except UserError as exc:
            message = str(exc)
        except OSError as exc:  # a file in the way, a parent that is a file, no permission
            message = f"log_dir {directory}{source} cannot be used as a run directory ({exc.strerror or exc}): use a writable folder"
    if distributed.get_world_size() > 1:
        box = [message]
        dist.broadcast_object_list(box, src=0)
        message = box[0]
    if message:
        raise SettingError("log_dir", message)


def _check_before_writing(args: Namespace, kind: str) -> Any:
    """Every check the flags allow before the run directory is touched; returns `--init_from`'s weights."""
    _validate(args, kind)
    init = prepare_watch(args, kind)  # add-on flags checked; --init_from sets the architecture flags
    network_config, diffusion_config = _configs(args, kind)
    network_config.validate()
    diffusion_config.validate()
    # The data folder and its classes (reading only: a saved classes.json of a resumed run counts).
    paths = list_image_files(args.data_dir)
    if kind == "classifier" or args.class_cond:
        directory = args.log_dir or os.environ.get("OPENAI_LOGDIR") or None
        spec = StreamSpec(data_dir=args.data_dir, batch_size=args.batch_size, image_size=1, class_cond=True,
                          label_mode=args.label_mode)
        _check_class_count(resolve_class_map(spec, paths, directory), args.num_classes)
    return init


def _fresh_run_dir(args: Namespace) -> tuple[Path | None, bool]:
    """The run directory the flags ask for (None: a new temporary one) and whether it exists with
    something in it (then a failed start must leave it as it was)."""
    directory = args.log_dir or os.environ.get("OPENAI_LOGDIR")
    if not directory:
        return None, False
    path = Path(os.path.expanduser(directory))
    return path, path.is_dir() and any(path.iterdir())


def _remove_created_files(run_dir: Path, existed: bool) -> None:
    """After a start refused for bad input: remove what this run created in its new (or empty) run
    directory, unless a checkpoint made it worth keeping. The directory itself stays if it existed."""
    if any(run_dir.glob("train_state*.pt")) or any(run_dir.glob("model*.pt")):
        return
    logs.reset()  # close log.txt and progress.csv before they go
    if existed:
        for entry in run_dir.iterdir():
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry, ignore_errors=True)
            else:
                entry.unlink(missing_ok=True)
    else:
        shutil.rmtree(run_dir, ignore_errors=True)


def _train(args: Namespace, kind: str, held: list[RunDirLock] | None = None, outcome: TrainingOutcome | None = None) -> None:
    if kind not in KINDS:
        raise ValueError(kind)
    outcome = outcome if outcome is not None else TrainingOutcome()
    init = _check_before_writing(args, kind)
    requested, had_files = _fresh_run_dir(args)
    existed = requested is not None and requested.is_dir()
    _claim_run_dir(args, held if held is not None else [])
    logs.configure(dir=args.log_dir or None, format_strs=_log_formats(args))
    run_dir = Path(logs.get_dir())
    outcome.run_dir = run_dir
    try:
        _run_in(args, kind, held, outcome, run_dir, init)
    except UserError:
        if not had_files and distributed.get_rank() == 0:
            _remove_created_files(run_dir, existed)
        raise


def _run_in(args: Namespace, kind: str, held: list[RunDirLock] | None, outcome: TrainingOutcome, run_dir: Path,
            init: Any) -> None:
    rank = distributed.get_rank()
    for lock in held or []:
        if lock.previous_holder:
            logs.log(f"took over the lock of a run that ended without releasing it (pid {lock.previous_holder.get('pid')}, "
                     f"started {lock.previous_holder.get('started')}; that process is gone)")
    resume_setting = "resume" if args.resume else "resume_checkpoint"
    point = snapshots.resolve_resume_point(getattr(args, resume_setting), run_dir, log=logs.log, setting=resume_setting)
    seed = _choose_seed(args, point)
    logs.log(f"seed {seed}; {distributed.get_world_size()} rank(s) on {distributed.dev()}; run directory {run_dir}")

    seed_everything(seed)  # identical initial weights on every rank
    network_config, diffusion_config = _configs(args, kind)
    logs.log("creating model and diffusion...")
    model = network_config.build()
    if init is not None and point is None:  # a resumed run continues from its own checkpoint instead
        load_initial_weights(model, init)
    model = optimize_model(model, channels_last=args.channels_last)
    diffusion = diffusion_config.build()

    image_size = args.large_size if kind == "superres" else args.image_size
    class_cond = True if kind == "classifier" else bool(args.class_cond)
    spec = StreamSpec(
        data_dir=args.data_dir,
        batch_size=args.batch_size,
        image_size=image_size,
        class_cond=class_cond,
        random_crop=args.random_crop,
        random_flip=args.random_flip,
        label_mode=args.label_mode,
        num_workers=args.num_workers,
        skip_bad_images=args.skip_bad_images,
        seed=seed,
    )
    logs.log("creating data loader...")
    paths = list_image_files(args.data_dir)
    class_map = resolve_class_map(spec, paths, run_dir)
    _check_class_count(class_map, args.num_classes)
    data = ImageStream(spec, class_map, paths=paths)
    if class_map is not None:
        source = "sub-folders" if class_map.label_mode == "folder" else "file-name prefixes"
        logs.log(f"{len(paths)} images in {len(class_map.names)} classes (labels from {source})")
    else:
        logs.log(f"{len(paths)} images")

    options = LoopOptions(
        batch_size=args.batch_size,
        microbatch=args.microbatch,
        lr=args.lr,
        weight_decay=args.weight_decay,
        ema_rate=getattr(args, "ema_rate", ""),
        log_interval=args.log_interval,
        save_interval=args.save_interval,
        lr_anneal_steps=getattr(args, "lr_anneal_steps", 0),
        iterations=args.iterations,
        use_fp16=_uses_fp16(args, kind),
        use_bf16=args.use_bf16,
        fp16_scale_growth=getattr(args, "fp16_scale_growth", 1e-3),
        initial_lg_loss_scale=16.0 if kind == "classifier" else 20.0,
        min_lg_loss_scale=args.min_lg_loss_scale,
        grad_clip=args.grad_clip,
        sum_microbatch_grads=getattr(args, "sum_microbatch_grads", False),
        keep_last=args.keep_last,
        class_cond=class_cond,
        class_dropout_prob=getattr(args, "class_dropout_prob", 0.0),
        num_classes=args.num_classes,
        low_res_size=args.small_size if kind == "superres" else 0,
        progress=args.progress,
        handle_signals=True,
        seed=seed,
    )
    sampler = create_named_schedule_sampler(args.schedule_sampler, diffusion)
    val_data = None
    if kind == "classifier" and args.val_data_dir:
        val_spec = StreamSpec(
            data_dir=args.val_data_dir,
            batch_size=args.batch_size,
            image_size=image_size,
            class_cond=True,
            random_crop=False,
            random_flip=False,
            label_mode=args.label_mode,
            num_workers=min(1, args.num_workers) if args.num_workers >= 0 else 1,
            skip_bad_images=args.skip_bad_images,
            seed=mix_seed(seed, 0x7A1),
        )
        val_paths = list_image_files(args.val_data_dir)
        # The training class indices, with labels read the way the validation folder is laid out.
        assert class_map is not None  # a classifier's data always has labels
        val_map = ClassMap(names=class_map.names, label_mode=choose_label_mode(val_paths, args.val_data_dir, args.label_mode))
        val_data = ImageStream(val_spec, val_map, paths=val_paths)
    classifier_settings = dict(noised=args.noised, eval_interval=args.eval_interval, anneal_lr=args.anneal_lr) if kind == "classifier" else {}
    trainer = build_trainer(
        network_config, model=model, diffusion=diffusion, data=data, options=options, run_dir=run_dir, schedule_sampler=sampler,
        val_data=val_data, **classifier_settings,
    )
    trainer.prepare_run_dir()
    if point is not None:
        trainer.load_resume_point(point)
    if rank == 0:  # only once the weights are known to fit, so a wrong flag cannot clobber them
        _record_config(run_dir, config_to_dict(network_config, diffusion_config))
        if class_map is not None:
            class_map.save(run_dir / CLASS_MAP_NAME)
    attach_watchers(trainer, args, kind, diffusion_config)  # grids, metrics, --max_time, --ema_warmup
    if trainer._restored_rng is None:
        seed_everything(mix_seed(seed, rank, trainer.step))
    logs.log("training...")
    try:
        trainer.run()
    finally:
        outcome.step = trainer.step
        outcome.stop = trainer.stop_reason
        outcome.max_time = float(getattr(args, "max_time", 0.0))
    if outcome.stop is None:
        logs.log(f"done: {trainer.step} steps; checkpoints in {run_dir}")
