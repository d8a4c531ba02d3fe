"""`image_train`, `classifier_train`, `super_res_train`: the original training scripts' flags (same
names and defaults, booleans as True/False/yes/no/1/0) plus the new ones listed in NEW_FLAGS."""
from __future__ import annotations

import argparse
import errno
import functools
import shlex
import sys
from pathlib import Path

from guided_diffusion.cli import flag_message
from guided_diffusion.cli.parsing import OneLineParser, add_bf16_flag, add_progress_flag
from guided_diffusion.config.flags import (
    add_dict_to_argparser,
    classifier_and_diffusion_defaults,
    model_and_diffusion_defaults,
    sr_model_and_diffusion_defaults,
)
from guided_diffusion.runtime import logs
from guided_diffusion.runtime.errors import SettingError, UserError
from guided_diffusion.training.watch_flags import add_watch_flags

# Flags added by this package to every training subcommand, with defaults that keep the original's
# behaviour (apart from fixes), and their help text.
NEW_FLAGS: dict[str, tuple[object, str]] = {
    "iterations": (0, "stop after this many steps (0: at --lr_anneal_steps, or never, as the original)"),
    "seed": (-1, "seed for weights, data order, noise (-1: random; a resumed run keeps its seed)"),
    "resume": ("", "'auto': continue from the newest complete checkpoint in the run directory (start fresh if none)"),
    "log_dir": ("", "run directory for logs and checkpoints (default: $OPENAI_LOGDIR, else a new temp dir)"),
    "keep_last": (0, "keep only the newest K checkpoints (0: keep all)"),
    "min_lg_loss_scale": (0.0, "fp16: floor of log2 of the loss scale"),
    "grad_clip": (0.0, "clip the gradient norm to this value (0: off)"),
    "label_mode": ("auto", "class labels from 'filename' prefixes (CLASS_xxx.png, the original), 'folder' (one sub-folder per class) or 'auto'"),
    "random_flip": (True, "flip training images left-right with probability 0.5"),
    "random_crop": (False, "random-resized crops (0.8-1.0 of the short side) instead of center crops"),
    "num_workers": (-1, "data loader worker processes per rank (-1: automatic)"),
    "skip_bad_images": (False, "skip unreadable images (counted and logged) instead of stopping"),
    "tensorboard": (False, "also write TensorBoard logs (needs the tensorboard package)"),
    "channels_last": (False, "channels-last (NHWC) memory layout for the convolutions (same results; slower on the H200 measured)"),
    "device": ("", "where a single process trains: auto, cpu, cuda, cuda:N or mps (default: the GPU, else the CPU; "
                   "under torchrun each rank takes its LOCAL_RANK's GPU)"),
}


# The original image_train.py and super_res_train.py share these flags.
_DIFFUSION_TRAIN_DEFAULTS = dict(
    data_dir="",
    schedule_sampler="uniform",
    lr=1e-4,
    weight_decay=0.0,
    lr_anneal_steps=0,
    batch_size=1,
    microbatch=-1,  # -1 disables microbatches
    ema_rate="0.9999",  # comma-separated list of EMA values
    log_interval=10,
    save_interval=10000,
    resume_checkpoint="",
    use_fp16=False,
    fp16_scale_growth=1e-3,
)


def _image_train_defaults() -> dict:
    return {**_DIFFUSION_TRAIN_DEFAULTS, **model_and_diffusion_defaults()}


def _super_res_train_defaults() -> dict:
    defaults = {**_DIFFUSION_TRAIN_DEFAULTS, **sr_model_and_diffusion_defaults()}
    defaults.setdefault("class_dropout_prob", 0.0)
    return defaults


def _classifier_train_defaults() -> dict:
    defaults = dict(
        data_dir="",
        val_data_dir="",
        noised=True,
        iterations=150000,
        lr=3e-4,
        weight_decay=0.0,
        anneal_lr=False,
        batch_size=4,
        microbatch=-1,
        schedule_sampler="uniform",
        resume_checkpoint="",
        log_interval=10,
        eval_interval=5,
        save_interval=10000,
    )
    defaults.update(classifier_and_diffusion_defaults())
    return defaults


_DESCRIPTIONS = {
    "image_train": "Train a diffusion model on a folder of images.",
    "classifier_train": "Train a noisy classifier for classifier guidance on a folder of labelled images.",
    "super_res_train": "Train a super-resolution diffusion model (its low-resolution inputs are the training images, "
                       "area-downsampled).",
}
_FLAGS_NOTE = ("The first flags are the original scripts' (same names and defaults; booleans as True/False/yes/no/1/0); "
               "the groups below them are added by this package.")


def build_parser(name: str) -> argparse.ArgumentParser:
    """The flag parser of training subcommand `name`."""
    defaults_of = {"image_train": _image_train_defaults, "super_res_train": _super_res_train_defaults,
                   "classifier_train": _classifier_train_defaults}
    defaults = defaults_of[name]()
    parser = OneLineParser(prog=f"guided-diffusion {name}", description=f"{_DESCRIPTIONS[name]} {_FLAGS_NOTE}")
    add_dict_to_argparser(parser, defaults)
    extra = {key: value for key, (value, _) in NEW_FLAGS.items() if key not in defaults}
    if name == "classifier_train":
        extra["random_crop"] = True  # the original hard-codes random crops for the classifier
        extra.pop("sum_microbatch_grads", None)
    else:
        extra["sum_microbatch_grads"] = False
    group = parser.add_argument_group("added by this package")
    add_dict_to_argparser(group, extra)
    for action in group._group_actions:
        key = action.dest
        action.help = NEW_FLAGS[key][1] if key in NEW_FLAGS else "sum microbatch gradients as the original did (default: average them)"
    add_bf16_flag(group, "bfloat16 autocast with float32 weights (instead of --use_fp16's loss scaling); "
                         "--use_bf16 True is the same", aliases=("--use_bf16",), dest="use_bf16")
    add_progress_flag(group)
    add_watch_flags(parser, name)  # samples/metrics during training, --init_from, --max_time, --ema_warmup
    return parser


# The kind of network each command trains (`training.job.resolve_training_job`).
_KIND_OF_COMMAND = {"image_train": "diffusion", "super_res_train": "superres", "classifier_train": "classifier"}
# Settings whose flag is not `--<setting>`.
_FLAG_OF_SETTING = {"use_bf16": "--bf16"}
_DISK_FULL = (errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC))


def resume_command(name: str, argv: list[str], run_dir: Path | None, world_size: int = 1) -> str:
    """The command that continues this run: its own flags with `--resume auto` (and `--log_dir` when
    the run directory came from elsewhere), under torchrun when several ranks ran."""
    words: list[str] = []
    skip = False
    for word in argv:
        if skip:
            skip = False
            continue
        flag = word.split("=", 1)[0]
        if flag in ("--resume", "--resume_checkpoint"):  # replaced by --resume auto
            skip = "=" not in word
            continue
        words.append(word)
    has_log_dir = any(w == "--log_dir" or w.startswith("--log_dir=") for w in words)
    if run_dir is not None and not has_log_dir:
        words += ["--log_dir", str(run_dir)]
    words += ["--resume", "auto"]
    launcher = ["guided-diffusion"] if world_size <= 1 else ["torchrun", "--nproc_per_node", str(world_size), "-m", "guided_diffusion"]
    return shlex.join([*launcher, name, *words])


def _say(text: str) -> None:
    """A last word on stderr and in the run's log.txt."""
    print(text, file=sys.stderr, flush=True)
    logs.log_to_files(text)


def _run(name: str, argv: list[str]) -> int:
    """Parse the flags, build the job (`training.job.resolve_training_job`), run it and say how it ended."""
    parser = build_parser(name)
    args = parser.parse_args(argv)
    from guided_diffusion.config.resolve import typed_flags
    from guided_diffusion.training.job import resolve_training_job
    from guided_diffusion.training.monitor import MissingInceptionWeights
    from guided_diffusion.training.run import TrainingOutcome, run_training
    from guided_diffusion.training.rundir import tolerant_console

    outcome = TrainingOutcome()
    with tolerant_console():  # under `| tee log`, Ctrl-C kills tee first: the final save must still happen
        try:
            job = resolve_training_job(_KIND_OF_COMMAND[name], vars(args), typed_flags(parser, argv))
            run_training(job, device=args.device or None, progress=args.progress, keep_logger=True, outcome=outcome)
        except MissingInceptionWeights as exc:
            raise UserError(f"{flag_message(exc)}: give a downloaded copy with --inception_weights PATH, or use "
                            "--eval_features classifier:PATH with one of your classifier checkpoints") from None
        except SettingError as exc:
            raise UserError(flag_message(exc, _FLAG_OF_SETTING)) from None
        except KeyboardInterrupt:  # Ctrl-C before training started, or a second one while a save was pending
            if outcome.run_dir is None:
                _say("training stopped by Ctrl-C before it started; nothing was saved")
                return 130
            _say("training stopped by Ctrl-C without a final save; checkpoint sets saved before are intact: "
                 f"resume with: {resume_command(name, argv, outcome.run_dir, outcome.world_size)}")
            return 130
        except OSError as exc:
            if exc.errno not in _DISK_FULL:
                raise
            where = f" writing {exc.filename}" if exc.filename else ""
            print(f"error: disk full{where} ({exc.strerror}): checkpoint sets saved before are intact; free some space, "
                  f"then resume with: {resume_command(name, argv, outcome.run_dir, outcome.world_size)}", file=sys.stderr)
            return 1
    if outcome.stop is not None and outcome.rank == 0:
        command = resume_command(name, argv, outcome.run_dir, outcome.world_size)
        if outcome.stop == "max_time":
            _say(f"stopped by --max_time {outcome.max_time:g}h at step {outcome.step}: saved a checkpoint in "
                 f"{outcome.run_dir}; resume with: {command}")
        else:
            _say(f"interrupted by {outcome.stop}: saved a checkpoint at step {outcome.step} in {outcome.run_dir}; "
                 f"resume with: {command}")
    return 0


# The subcommands (`cli.SUBCOMMANDS` says what each does): one body, run under the command's name.
image_train = functools.partial(_run, "image_train")
super_res_train = functools.partial(_run, "super_res_train")
classifier_train = functools.partial(_run, "classifier_train")
