"""Which trainer a network needs: `build_trainer` picks and builds it, for the command line
(`training.run`) and the demo alike."""
from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import torch

from guided_diffusion.config import ClassifierConfig
from guided_diffusion.training.classifier import ClassifierTrainer
from guided_diffusion.training.loop import DiffusionTrainer, LoopOptions, TrainerBase
from guided_diffusion.training.timestep_sampling import ScheduleSampler

__all__ = ["build_trainer"]


def build_trainer(
    network_config: Any,
    *,
    model: torch.nn.Module,
    diffusion: Any,
    data: Iterator[Any],
    options: LoopOptions,
    run_dir: str | os.PathLike,
    schedule_sampler: ScheduleSampler | None = None,
    noised: bool = True,
    val_data: Iterator[Any] | None = None,
    eval_interval: int = 5,
    anneal_lr: bool = False,
    device: torch.device | None = None,
) -> TrainerBase:
    """A `ClassifierTrainer` for a `ClassifierConfig` network, else a `DiffusionTrainer` (UNet or
    super-resolution UNet) on `device` (default: this rank's GPU, else the CPU). `noised`, `val_data`,
    `eval_interval` and `anneal_lr` are the classifier's settings; a diffusion model anneals through
    `options.lr_anneal_steps` instead."""
    common = dict(model=model, diffusion=diffusion, data=data, options=options, run_dir=run_dir, schedule_sampler=schedule_sampler,
                  device=device)
    if isinstance(network_config, ClassifierConfig):
        return ClassifierTrainer(noised=noised, val_data=val_data, eval_interval=eval_interval, anneal_lr=anneal_lr, **common)
    return DiffusionTrainer(**common)
