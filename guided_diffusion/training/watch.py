"""Wiring a job's add-ons into its trainer: the monitor (grids, metrics, time budget, the progress bar's
time to the next save) and the EMA warm-up. Their settings are checked when the job is built
(`training.job.TrainingJob`)."""
from __future__ import annotations

from typing import TYPE_CHECKING

from guided_diffusion.config import SuperResConfig
from guided_diffusion.training.ema import EMAWarmup
from guided_diffusion.training.loop import TrainerBase
from guided_diffusion.training.monitor import TrainingMonitor, estimated_save_seconds
from guided_diffusion.training.watch_flags import PROCESS_START

if TYPE_CHECKING:
    from guided_diffusion.training.job import TrainingJob

__all__ = ["attach_watchers", "ema_warmup"]


def ema_warmup(job: TrainingJob) -> EMAWarmup | None:
    """The EMA warm-up schedule of `ema_warmup` (None without it: the fixed rates of the original)."""
    return EMAWarmup(power=float(job.options.ema_warmup_power)) if job.options.ema_warmup else None


def attach_watchers(trainer: TrainerBase, job: TrainingJob) -> TrainingMonitor:
    """Give `trainer` its monitor (always: the progress bar's time to the next save) and, with
    ema_warmup, the warm-up schedule. Held-out statistics are computed here, before training."""
    trainer.ema_warmup = ema_warmup(job)
    num_params = sum(p.numel() for p in trainer.model.parameters())
    monitor = TrainingMonitor(
        job.watch,
        run_dir=trainer.run_dir,
        diffusion_config=job.diffusion,
        image_shape=(3, job.image_size, job.image_size),
        class_cond=trainer.options.class_cond and job.kind != "classifier",
        num_classes=int(trainer.options.num_classes),
        save_interval=int(trainer.options.save_interval),
        final_save_seconds=estimated_save_seconds(num_params, len(trainer.ema_rate)),
        rank=trainer.rank,
        start=PROCESS_START,
    )
    if isinstance(job.network, SuperResConfig):  # the grids upsample training images, downsampled as in training
        monitor.low_res_source = (job.options.data_dir, int(job.network.small_size))
    monitor.prepare(trainer.device)
    trainer.monitor = monitor
    return monitor
