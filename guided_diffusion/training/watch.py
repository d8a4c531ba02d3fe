"""Wiring the training add-ons into a run assembled from flags: validation and `--init_from` before
the network is built, then the monitor (grids, metrics, time budget) and the EMA warm-up on the trainer."""
from __future__ import annotations

from argparse import Namespace
from typing import Any

from guided_diffusion.training.ema import EMAWarmup
from guided_diffusion.training.finetune import InitWeights, resolve_init_from
from guided_diffusion.training.monitor import (
    TrainingMonitor,
    WatchOptions,
    estimated_save_seconds,
)
from guided_diffusion.training.watch_flags import PROCESS_START

__all__ = ["attach_watchers", "prepare_watch"]


def watch_options(args: Namespace, kind: str) -> WatchOptions:
    """The add-on settings of this run. A classifier run draws no samples (its own --eval_interval is
    the validation interval), so it only takes --max_time."""
    if kind == "classifier":
        return WatchOptions(max_time=float(getattr(args, "max_time", 0.0)))
    return WatchOptions.from_flags(args)


def ema_warmup(args: Namespace) -> EMAWarmup | None:
    """The EMA warm-up schedule of `--ema_warmup` (None without it: the fixed rates of the original)."""
    return EMAWarmup(power=float(args.ema_warmup_power)) if getattr(args, "ema_warmup", False) else None


def prepare_watch(args: Namespace, kind: str) -> InitWeights | None:
    """Check the add-on flags (one-line errors, nothing written yet) and resolve `--init_from`, which
    sets the architecture flags in `args` from the checkpoint."""
    watch_options(args, kind).validate()
    ema_warmup(args)  # checks ema_warmup_power
    return resolve_init_from(args, kind)


def attach_watchers(trainer: Any, args: Namespace, kind: str, diffusion_config: Any) -> TrainingMonitor:
    """Give `trainer` its monitor (always: the progress bar's time to the next save) and, with
    --ema_warmup, the warm-up schedule. Held-out statistics are computed here, before training."""
    trainer.ema_warmup = ema_warmup(args)
    size = int(args.large_size if kind == "superres" else args.image_size)
    num_params = sum(p.numel() for p in trainer.model.parameters())
    monitor = TrainingMonitor(
        watch_options(args, kind),
        run_dir=trainer.run_dir,
        diffusion_config=diffusion_config,
        image_shape=(3, size, size),
        class_cond=bool(trainer.options.class_cond) and kind != "classifier",
        num_classes=int(trainer.options.num_classes),
        save_interval=int(trainer.options.save_interval),
        final_save_seconds=estimated_save_seconds(num_params, len(trainer.ema_rate)),
        rank=trainer.rank,
        start=PROCESS_START,
    )
    if kind == "superres":
        monitor.low_res_source = (str(args.data_dir), int(args.small_size))
    monitor.prepare(trainer.device)
    trainer.monitor = monitor
    return monitor
