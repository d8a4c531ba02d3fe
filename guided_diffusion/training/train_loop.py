"""`TrainLoop` with the original constructor, on top of `DiffusionTrainer`.

Differences from the original, all fixes: works without MPI and in a single process; resume reads
the files on every rank (no deadlock) and restores the loss scale, sampler, RNG and data position
when a training-state file exists; the checkpoint resumed from is never overwritten; microbatch
gradients are averaged (pass `sum_microbatch_grads=True` for the original sum); `step` counts
finished steps including the resumed ones, and `modelN.pt` holds exactly N updates.
"""
from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from guided_diffusion.runtime import logs
from guided_diffusion.training import snapshots
from guided_diffusion.training.loop import DiffusionTrainer, LoopOptions, log_loss_dict
from guided_diffusion.training.timestep_sampling import ScheduleSampler

parse_resume_step_from_filename = snapshots.parse_resume_step_from_filename

__all__ = [
    "TrainLoop",
    "find_ema_checkpoint",
    "find_resume_checkpoint",
    "get_blob_logdir",
    "log_loss_dict",
    "parse_resume_step_from_filename",
]


def get_blob_logdir() -> str:
    """Where checkpoints go: the logger's directory."""
    return logs.get_dir()


def find_resume_checkpoint() -> str | None:
    """Hook of the original for discovering checkpoints automatically; pass `resume_checkpoint="auto"`."""
    return None


def find_ema_checkpoint(main_checkpoint: str | None, step: int, rate: float) -> str | None:
    """The EMA file beside `main_checkpoint` for `step` and `rate`, if it exists."""
    if not main_checkpoint:
        return None
    from pathlib import Path

    path = Path(main_checkpoint).parent / snapshots.ema_name(rate, step)
    return str(path) if path.exists() else None


class TrainLoop(DiffusionTrainer):
    """The original's training loop object: construct, then `run_loop()`."""

    def __init__(
        self,
        *,
        model: Any,
        diffusion: Any,
        data: Iterator[Any],
        batch_size: int,
        microbatch: int,
        lr: float,
        ema_rate: float | str,
        log_interval: int,
        save_interval: int,
        resume_checkpoint: str,
        use_fp16: bool = False,
        fp16_scale_growth: float = 1e-3,
        schedule_sampler: ScheduleSampler | None = None,
        weight_decay: float = 0.0,
        lr_anneal_steps: int = 0,
        **new_options: Any,
    ):
        options = LoopOptions(
            batch_size=batch_size,
            microbatch=microbatch,
            lr=lr,
            weight_decay=weight_decay,
            ema_rate=ema_rate,
            log_interval=log_interval,
            save_interval=save_interval,
            lr_anneal_steps=lr_anneal_steps,
            use_fp16=use_fp16,
            fp16_scale_growth=fp16_scale_growth,
            **new_options,
        )
        super().__init__(model=model, diffusion=diffusion, data=data, options=options, run_dir=get_blob_logdir(), schedule_sampler=schedule_sampler)
        self.batch_size = batch_size
        self.microbatch = microbatch if microbatch > 0 else batch_size
        self.lr = lr
        self.log_interval = log_interval
        self.save_interval = save_interval
        self.weight_decay = weight_decay
        self.lr_anneal_steps = lr_anneal_steps
        self.resume_checkpoint = find_resume_checkpoint() or resume_checkpoint
        self.prepare_run_dir()
        point = snapshots.resolve_resume_point(self.resume_checkpoint, self.run_dir, log=logs.log)
        if point is not None:
            self.load_resume_point(point)

    @property
    def use_ddp(self) -> bool:
        return self.ddp_model is not self.model

    def run_loop(self) -> None:
        """Train until `lr_anneal_steps` (forever when 0); with DIFFUSION_TRAINING_TEST set, stop
        after the first save."""
        self.run()
