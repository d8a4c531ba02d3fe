"""`image_train`, `classifier_train`, `super_res_train`: the original training scripts' flags (same
names and defaults, booleans as True/False/yes/no/1/0) plus the new ones listed in NEW_FLAGS."""
from __future__ import annotations

import argparse
import sys

from guided_diffusion.config.flags import (
    add_dict_to_argparser,
    classifier_and_diffusion_defaults,
    model_and_diffusion_defaults,
    sr_model_and_diffusion_defaults,
)
from guided_diffusion.training.watch_flags import add_watch_flags, explicit_flags

# Flags added by this package to every training subcommand, with defaults that keep the original's
# behaviour (apart from fixes), and their help text.
NEW_FLAGS: dict[str, tuple[object, str]] = {
    "iterations": (0, "stop after this many steps (0: at --lr_anneal_steps, or never, as the original)"),
    "seed": (-1, "seed for weights, data order, noise (-1: random; a resumed run keeps its seed)"),
    "resume": ("", "'auto': continue from the newest complete checkpoint in the run directory (start fresh if none)"),
    "log_dir": ("", "run directory for logs and checkpoints (default: $OPENAI_LOGDIR, else a new temp dir)"),
    "keep_last": (0, "keep only the newest K checkpoints (0: keep all)"),
    "use_bf16": (False, "bfloat16 autocast with float32 weights (alternative to fp16 loss scaling)"),
    "min_lg_loss_scale": (0.0, "fp16: floor of log2 of the loss scale"),
    "grad_clip": (0.0, "clip the gradient norm to this value (0: off)"),
    "label_mode": ("auto", "class labels from 'filename' prefixes (CLASS_xxx.png, the original), 'folder' (one sub-folder per class) or 'auto'"),
    "random_flip": (True, "flip training images left-right with probability 0.5"),
    "random_crop": (False, "random-resized crops (0.8-1.0 of the short side) instead of center crops"),
    "num_workers": (-1, "data loader worker processes per rank (-1: automatic)"),
    "skip_bad_images": (False, "skip unreadable images (counted and logged) instead of stopping"),
    "tensorboard": (False, "also write TensorBoard logs (needs the tensorboard package)"),
    "progress": (True, "show a progress bar"),
    "channels_last": (False, "channels-last (NHWC) memory layout for the convolutions (a GPU option; same results)"),
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


def build_parser(name: str) -> argparse.ArgumentParser:
    """The flag parser of training subcommand `name`."""
    defaults_of = {"image_train": _image_train_defaults, "super_res_train": _super_res_train_defaults,
                   "classifier_train": _classifier_train_defaults}
    defaults = defaults_of[name]()
    # allow_abbrev=False: `--iteration 5` is a typo to report, not silently --iterations.
    parser = argparse.ArgumentParser(prog=f"guided-diffusion {name}", description=__doc__.split("\n")[0], allow_abbrev=False)
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
    add_watch_flags(parser, name)  # samples/metrics during training, --init_from, --max_time, --ema_warmup
    return parser


def _run(name: str, kind: str, argv: list[str]) -> int:
    args = build_parser(name).parse_args(argv)
    args.explicit_flags = explicit_flags(argv)  # --init_from: which flags override the checkpoint's
    from guided_diffusion.training.run import train_from_flags
    from guided_diffusion.training.rundir import tolerant_console

    with tolerant_console():  # under `| tee log`, Ctrl-C kills tee first: the final save must still happen
        try:
            return train_from_flags(args, kind)
        except KeyboardInterrupt:  # Ctrl-C before training started, or a second one while a save was pending
            print("training stopped by Ctrl-C without a final save; checkpoint sets saved before are intact: "
                  "continue with --resume auto", file=sys.stderr)
            return 130


def image_train(argv: list[str]) -> int:
    """Train a diffusion model on a folder of images."""
    return _run("image_train", "image", argv)


def super_res_train(argv: list[str]) -> int:
    """Train a super-resolution diffusion model (low-res input: area-downsampled training images)."""
    return _run("super_res_train", "superres", argv)


def classifier_train(argv: list[str]) -> int:
    """Train a (noisy) classifier for classifier guidance."""
    return _run("classifier_train", "classifier", argv)
