"""Running a training job (`training.job.TrainingJob`): process group, run directory, resume point, seed,
network, data, trainer.

`run_training(job)` is what the training commands, Python callers and the demo call. A job's settings
were checked when it was built; here the data folder and the initial weights are read before anything
is written, then the run directory is locked for the run's life, the logger opened in it, and the
trainer built, resumed when asked, and run until its end or a stop.
"""
from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from guided_diffusion.data.files import CLASS_MAP_NAME, ClassMap, choose_label_mode, list_image_files
from guided_diffusion.data.stream import ImageStream, StreamSpec, resolve_class_map
from guided_diffusion.runtime import distributed, logs
from guided_diffusion.runtime.autocast import warn_if_bf16_is_slow
from guided_diffusion.runtime.errors import SettingError, UserError
from guided_diffusion.runtime.locks import FolderLock
from guided_diffusion.runtime.performance import optimize_model
from guided_diffusion.runtime.rng import choose_seed, mix_seed, seed_everything
from guided_diffusion.training import snapshots
from guided_diffusion.training.finetune import InitWeights, load_initial_weights
from guided_diffusion.training.job import TrainingJob
from guided_diffusion.training.loop import TrainerBase
from guided_diffusion.training.timestep_sampling import create_named_schedule_sampler
from guided_diffusion.training.trainers import build_trainer
from guided_diffusion.training.watch import attach_watchers
from guided_diffusion.weights.checkpoints import read_config_json, write_config_json

__all__ = ["TrainingOutcome", "run_training"]

_VALIDATION_STREAM = 0x7A1  # the validation batches' seed, mixed with the run's


@dataclass
class TrainingOutcome:
    """How a run ended, for the caller's last words. Filled in as the run goes, so it also describes a
    run that ended in an exception."""

    run_dir: Path | None = None
    step: int = 0
    stop: str | None = None  # None: reached its end; a signal name ("SIGTERM"); "max_time"
    max_time: float = 0.0
    rank: int = 0
    world_size: int = 1


@dataclass(frozen=True)
class _Caller:
    """What the caller of `run_training` chose about data, device, output and stops."""

    data: Iterator[Any] | None
    device: torch.device
    progress: bool | None
    stop_on_signals: bool


def run_training(job: TrainingJob, *, data: Iterator[Any] | None = None, device: torch.device | str | None = None,
                 progress: bool | None = True, console: bool = True, stop_on_signals: bool = True,
                 keep_logger: bool = False, outcome: TrainingOutcome | None = None) -> TrainingOutcome:
    """Run `job` and return how it ended (`outcome`, filled in as the run goes, when given).

    data: batches to train on instead of reading `job.options.data_dir` (the demo's digits in memory):
    `(images, {"y": labels})` pairs or `data.dataset.ImageBatch`es; the global generators then go on from
    the initial weights' seeding, as they always have for such sources. device: where a single process
    trains (a name `runtime.distributed.resolve_device` reads, e.g. "cpu", "cuda:1", "mps", or a
    torch.device); None: this rank's GPU, else the CPU. progress: False silent, else a bar in a terminal
    and plain lines outside one. console: False writes the log lines to the run directory's log.txt and
    progress.csv only. stop_on_signals: SIGINT/SIGTERM finish the step, save and stop (False: they
    interrupt as usual). keep_logger: leave the run's logger configured afterwards (the command line adds
    its last words to log.txt); by default the caller's logger is restored. With use_bf16 on a device
    that only emulates bfloat16, a RuntimeWarning says so.

    Bad input raises SettingError/UserError before anything is written where the job's files allow; one
    found later (a checkpoint that does not fit, an image that cannot be read) removes what this run
    created in a run directory that was new or empty, so no stray log.txt stays behind."""
    outcome = outcome if outcome is not None else TrainingOutcome()
    outcome.max_time = job.watch.max_time
    created_group = not distributed.is_initialized()
    distributed.setup_dist()
    outcome.rank, outcome.world_size = distributed.get_rank(), distributed.get_world_size()
    held: list[FolderLock] = []  # the run directory's lock, released however the run ends
    try:
        caller = _Caller(data=data, device=_training_device(device), progress=progress, stop_on_signals=stop_on_signals)
        if job.options.use_bf16 and outcome.rank == 0:
            warn_if_bf16_is_slow(caller.device)
        init = _check_before_writing(job, data)
        requested, had_files = _fresh_run_dir(job)
        existed = requested is not None and requested.is_dir()
        _claim_run_dir(job, held)
        with _run_logger(job, console=console, keep=keep_logger) as run_dir:
            outcome.run_dir = run_dir
            try:
                _run_in(job, caller, run_dir, init, held, outcome)
            except UserError:
                if not had_files and distributed.get_rank() == 0:
                    _remove_created_files(run_dir, existed)
                raise
    finally:
        for lock in held:
            lock.release()
        if created_group:
            distributed.teardown_dist()
    return outcome


# -- before anything is written ---------------------------------------------------------------------


def _training_device(device: torch.device | str | None) -> torch.device:
    """The device this process trains on (a name as `resolve_device` reads it; None: this rank's)."""
    if device is None:
        return distributed.dev()
    if distributed.get_world_size() > 1:
        raise SettingError("device", "device is for a single process: with several, each rank trains on the GPU of its "
                                     "LOCAL_RANK; leave device unset")
    return device if isinstance(device, torch.device) else distributed.resolve_device(device)


def _check_before_writing(job: TrainingJob, data: Iterator[Any] | None) -> InitWeights | None:
    """What the job's files allow to check before the run directory is touched: the data folder and its
    classes (a saved classes.json of a resumed run counts), and init_from's weights, read now."""
    if data is None:
        paths = list_image_files(job.options.data_dir)
        if job.class_cond:
            spec = StreamSpec(data_dir=job.options.data_dir, batch_size=job.options.batch_size, image_size=1,
                              class_cond=True, label_mode=job.options.label_mode)
            _check_class_count(resolve_class_map(spec, paths, job.options.run_directory or None), job.network.num_classes)
    elif job.classifier_options is not None and job.classifier_options.val_data_dir:
        raise SettingError("val_data_dir", "val_data_dir takes its class indices from the training folder: give "
                                           "data_dir instead of in-memory data, or no val_data_dir")
    return job.init_from.read_weights() if job.init_from is not None else None


def _check_class_count(class_map: ClassMap | None, num_classes: int) -> None:
    if class_map is not None and len(class_map.names) > num_classes:
        found = len(class_map.names)
        raise SettingError("num_classes", f"the data has {found} classes but num_classes is {num_classes}: use num_classes {found}")


def _fresh_run_dir(job: TrainingJob) -> tuple[Path | None, bool]:
    """The run directory asked for (None: a new temporary one) and whether it exists with something in
    it (then a failed start must leave it as it was)."""
    directory = job.options.run_directory
    if not directory:
        return None, False
    path = Path(os.path.expanduser(directory))
    return path, path.is_dir() and any(path.iterdir())


def _claim_run_dir(job: TrainingJob, held: list[FolderLock]) -> None:
    """Check the run directory can be written and lock it for the run's life (rank 0 holds the lock),
    before anything is written there: a second trainer on a live directory stops here in one line."""
    directory = job.options.run_directory
    if not directory:
        return  # a fresh temporary directory: nobody else uses it

    def claim() -> None:
        source = "" if job.options.log_dir else " (from OPENAI_LOGDIR)"
        try:
            held.append(FolderLock(directory, purpose="training run", advice="use another log_dir").acquire())
        except UserError as exc:
            raise SettingError("log_dir", str(exc)) from None
        except OSError as exc:  # a file in the way, a parent that is a file, no permission
            raise SettingError("log_dir", f"log_dir {directory}{source} cannot be used as a run directory "
                                          f"({exc.strerror or exc}): use a writable folder") from None

    distributed.decide_on_rank0(claim)


@contextlib.contextmanager
def _run_logger(job: TrainingJob, *, console: bool, keep: bool) -> Iterator[Path]:
    """The logger in the run directory (log.txt, progress.csv, TensorBoard when asked), and that directory."""
    directory = job.options.log_dir or None  # else $OPENAI_LOGDIR, else a new temporary folder
    formats = _log_formats(job.options.tensorboard, console)
    if keep:
        logs.configure(dir=directory, format_strs=formats)
        yield Path(logs.get_dir())
    else:
        with logs.scoped_configure(dir=directory, format_strs=formats) as logger:
            yield Path(logger.get_dir())


def _log_formats(tensorboard: bool, console: bool) -> list[str] | None:
    """The logger's formats (None: the environment's or the default ones)."""
    if console and not tensorboard:
        return None
    if distributed.get_rank() == 0:
        formats = [f for f in os.environ.get("OPENAI_LOG_FORMAT", "stdout,log,csv").split(",") if f]
    else:
        formats = [f for f in os.environ.get("OPENAI_LOG_FORMAT_MPI", "log").split(",") if f]
    if tensorboard and distributed.get_rank() == 0 and "tensorboard" not in formats:
        formats.append("tensorboard")
    return formats if console else [f for f in formats if f != "stdout"]


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


# -- the run ----------------------------------------------------------------------------------------


def _run_in(job: TrainingJob, caller: _Caller, run_dir: Path, init: InitWeights | None, held: list[FolderLock],
            outcome: TrainingOutcome) -> None:
    for lock in held:
        if lock.previous_holder:
            logs.log(f"took over the lock of a run that ended without releasing it (pid {lock.previous_holder.get('pid')}, "
                     f"started {lock.previous_holder.get('started')}; that process is gone)")
    setting, value = job.options.resume_from
    point = snapshots.resolve_resume_point(value, run_dir, log=logs.log, setting=setting)
    seed = _run_seed(job.options.seed, point)
    logs.log(f"seed {seed}; {distributed.get_world_size()} rank(s) on {caller.device}; run directory {run_dir}")
    trainer, class_map = _build_trainer(job, caller, run_dir, seed, init if point is None else None)
    if point is not None:
        trainer.load_resume_point(point)
    if distributed.get_rank() == 0:  # only once the weights are known to fit, so a wrong setting cannot clobber them
        _record_config(run_dir, job.saved_config())
        if class_map is not None:
            class_map.save(run_dir / CLASS_MAP_NAME)
    attach_watchers(trainer, job)  # grids, metrics, max_time, ema_warmup
    if trainer._restored_rng is None and caller.data is None:
        seed_everything(mix_seed(seed, distributed.get_rank(), trainer.step))
    logs.log("training...")
    try:
        trainer.run()
    finally:
        outcome.step = trainer.step
        outcome.stop = trainer.stop_reason
    if outcome.stop is None:
        logs.log(f"done: {trainer.step} steps; checkpoints in {run_dir}")


def _run_seed(given: int | None, point: snapshots.ResumePoint | None) -> int:
    """The run's seed: a resumed run's own (it fixes the data order), else `given`, else a fresh one."""
    if point is not None and point.state is not None and "seed" in point.state:
        saved = int(point.state["seed"])
        if given is not None and given != saved:
            logs.log(f"seed {given} ignored: the resumed run was seeded with {saved}, which fixes its data order")
        return saved
    return choose_seed(given)[0]


def _build_trainer(job: TrainingJob, caller: _Caller, run_dir: Path, seed: int,
                   init: InitWeights | None) -> tuple[TrainerBase, ClassMap | None]:
    """The network (from `init`'s weights when fine-tuning a new run), its data and its trainer, and the
    data's classes."""
    seed_everything(seed)  # identical initial weights on every rank
    logs.log("creating model and diffusion...")
    model = job.network.build()
    if init is not None:  # a resumed run continues from its own checkpoint instead
        logs.log(f"init_from {job.init_from.spec if job.init_from else init.source}: a new run from the weights of "
                 f"{init.source} (architecture from the checkpoint; optimizer fresh)")
        load_initial_weights(model, init)
    model = optimize_model(model, channels_last=job.options.channels_last)
    diffusion = job.diffusion.build()
    data, class_map = (caller.data, None) if caller.data is not None else _image_stream(job, run_dir, seed)
    classifier = job.classifier_options
    settings: dict[str, Any] = {}  # a classifier's own
    if classifier is not None:
        val_data = _validation_stream(job, seed, class_map) if classifier.val_data_dir else None
        settings = dict(noised=classifier.noised, eval_interval=classifier.eval_interval, anneal_lr=classifier.anneal_lr,
                        val_data=val_data)
    trainer = build_trainer(
        job.network, model=model, diffusion=diffusion, data=data, run_dir=run_dir,
        options=job.loop_options(seed=seed, progress=caller.progress, handle_signals=caller.stop_on_signals),
        schedule_sampler=create_named_schedule_sampler(job.options.schedule_sampler, diffusion), device=caller.device,
        **settings,
    )
    trainer.prepare_run_dir()
    return trainer, class_map


def _image_stream(job: TrainingJob, run_dir: Path, seed: int) -> tuple[ImageStream, ClassMap | None]:
    """The training images of `job.options.data_dir` as a resumable stream, and their classes."""
    o = job.options
    spec = StreamSpec(data_dir=o.data_dir, batch_size=o.batch_size, image_size=job.image_size, class_cond=job.class_cond,
                      random_crop=o.random_crop, random_flip=o.random_flip, label_mode=o.label_mode,
                      num_workers=o.num_workers, skip_bad_images=o.skip_bad_images, seed=seed)
    logs.log("creating data loader...")
    paths = list_image_files(o.data_dir)
    class_map = resolve_class_map(spec, paths, run_dir)
    _check_class_count(class_map, job.network.num_classes)
    if class_map is not None:
        source = "sub-folders" if class_map.label_mode == "folder" else "file-name prefixes"
        logs.log(f"{len(paths)} images in {len(class_map.names)} classes (labels from {source})")
    else:
        logs.log(f"{len(paths)} images")
    return ImageStream(spec, class_map, paths=paths), class_map


def _validation_stream(job: TrainingJob, seed: int, class_map: ClassMap | None) -> ImageStream:
    """A classifier's held-out batches: center crops, no flips, the training class indices with labels
    read the way the validation folder is laid out."""
    assert job.classifier_options is not None and class_map is not None  # a classifier's data always has labels
    o, directory = job.options, job.classifier_options.val_data_dir
    spec = StreamSpec(data_dir=directory, batch_size=o.batch_size, image_size=job.image_size, class_cond=True,
                      random_crop=False, random_flip=False, label_mode=o.label_mode,
                      num_workers=min(1, o.num_workers) if o.num_workers >= 0 else 1,
                      skip_bad_images=o.skip_bad_images, seed=mix_seed(seed, _VALIDATION_STREAM))
    paths = list_image_files(directory)
    mapping = ClassMap(names=class_map.names, label_mode=choose_label_mode(paths, directory, o.label_mode))
    return ImageStream(spec, mapping, paths=paths)


def _record_config(run_dir: Path, config: dict[str, Any]) -> None:
    previous = read_config_json(run_dir / "config.json") if (run_dir / "config.json").is_file() else None
    if previous is not None and previous != config:
        changed = sorted(
            key
            for section in ("model", "diffusion")
            for key in set(previous.get(section, {})) | set(config.get(section, {}))
            if previous.get(section, {}).get(key) != config.get(section, {}).get(key)
        ) + sorted(key for key in (set(previous) | set(config)) - {"model", "diffusion"} if previous.get(key) != config.get(key))
        logs.log(f"config.json in {run_dir} had different settings ({', '.join(changed) or 'kind'}): rewriting it with this run's")
    write_config_json(run_dir, config)
