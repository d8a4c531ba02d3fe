"""Flags of the training add-ons (samples and metrics during training, EMA warm-up, fine-tuning, a
wall-time budget), kept free of torch imports so `guided-diffusion image_train --help` stays fast."""
from __future__ import annotations

import argparse
import time

from guided_diffusion.config.flags import add_dict_to_argparser

__all__ = ["PROCESS_START", "WATCH_FLAGS", "add_watch_flags"]

# When the training command started (this module is imported while its flags are parsed): --max_time
# counts from here, as a scheduler's wall-time limit does.
PROCESS_START = time.monotonic()

# name -> (default, help, subcommands that take it)
_DIFFUSION = ("image_train", "super_res_train")
_ALL = ("image_train", "super_res_train", "classifier_train")
_GRIDS = ("image_train", "super_res_train")
WATCH_FLAGS: dict[str, tuple[object, str, tuple[str, ...]]] = {
    "sample_interval": (0, "every N steps draw a fixed grid of samples from each EMA rate and the raw weights into RUN_DIR/samples/ "
                        "(0: off)", _GRIDS),
    "sample_num": (16, "samples per grid (fixed seeds and classes, so grids compare over time)", _GRIDS),
    "sample_steps": (25, "sampler steps for the grids and the metrics", _GRIDS),
    "sample_sampler": ("dpm++2m", "sampler for the grids and the metrics (ddim, dpm++2m, ...)", _GRIDS),
    "sample_seed": (0, "seed of the grids' noise and of the metrics' samples", _GRIDS),
    "eval_interval": (0, "every N steps compute FID/precision/recall of --eval_num_samples samples against --eval_data_dir "
                      "(0: off)", ("image_train",)),
    "eval_data_dir": ("", "held-out image folder the metrics compare with (its statistics are computed once and cached in "
                      "the run directory)", ("image_train",)),
    "eval_num_samples": (256, "samples per evaluation", ("image_train",)),
    "eval_features": ("inception", "feature space of the metrics: inception, or classifier:PATH (penultimate features of one of this "
                      "package's classifier checkpoints at t=0)", ("image_train",)),
    "eval_batch_size": (64, "samples drawn per batch for the metrics", ("image_train",)),
    "inception_weights": ("", "a downloaded copy of pytorch-fid's pt_inception-2015-12-05-6726825d.pth for the metrics "
                          "(default: the cache, downloaded on first use)", ("image_train",)),
    "ema_warmup": (False, "EMA warm-up (Karras et al. power schedule): decay = min(rate, 1 - (1 + step)^-power), so early EMA "
                   "samples are usable", _DIFFUSION),
    "ema_warmup_power": (2.0 / 3.0, "power of the EMA warm-up (2/3: 0.999 after ~31.6k steps; 3/4: after 10k)", _DIFFUSION),
    "init_from": ("", "start a new run from the weights of a released preset or a local checkpoint (optimizer fresh; "
                  "architecture flags from the checkpoint)", _DIFFUSION),
    "max_time": (0.0, "wall-time budget in hours: save and exit cleanly before it runs out (0: none)", _ALL),
}


def add_watch_flags(parser: argparse.ArgumentParser, subcommand: str) -> None:
    """Add the flags of WATCH_FLAGS that `subcommand` takes, in their own help group."""
    group = parser.add_argument_group("samples, metrics, fine-tuning and time limits")
    chosen = {name: default for name, (default, _, kinds) in WATCH_FLAGS.items() if subcommand in kinds}
    add_dict_to_argparser(group, chosen)
    for action in group._group_actions:
        action.help = WATCH_FLAGS[action.dest][1]

