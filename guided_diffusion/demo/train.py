"""Training the demo's three networks: each is a `TrainingJob` run by `training.run.run_training`, as the
training commands run theirs, on the digits held in memory.

Each network gets its own run directory holding `config.json` and the loop's checkpoint set
(`modelNNNNNN.pt`, `ema_RATE_NNNNNN.pt`, `optNNNNNN.pt`, `train_stateNNNNNN.pt`), so the weights load
with `load_model` and with `guided-diffusion classifier_sample --model_path/--classifier_path`.
"""
from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from guided_diffusion.config import ClassifierConfig, DiffusionConfig, ModelConfig
from guided_diffusion.training import snapshots
from guided_diffusion.training.ema import parse_ema_rates
from guided_diffusion.training.job import ClassifierOptions, TrainingJob, TrainingOptions
from guided_diffusion.training.run import run_training
from guided_diffusion.weights.checkpoints import load_model

__all__ = ["TrainSpec", "TrainedNetwork", "train_network", "training_job"]

# Files a previous demo run left in a run directory; removed first so the directory holds one run.
_RUN_FILE_PATTERNS = ("model*.pt", "ema_*.pt", "opt*.pt", "train_state*.pt", "config.json", "log.txt", "progress.csv")


@dataclass(frozen=True)
class TrainSpec:
    """How long and how fast to train one network."""

    steps: int
    batch_size: int
    lr: float
    weight_decay: float = 0.0
    ema_rate: float | None = None  # diffusion models sample from an EMA of the weights
    noised: bool = True  # classifiers: train on noised inputs at random timesteps (False: clean, t = 0)
    anneal_lr: bool = True  # decay the learning rate linearly to zero over the run


@dataclass
class TrainedNetwork:
    """A trained network in eval mode and the checkpoint file it was reloaded from."""

    model: torch.nn.Module
    checkpoint: Path
    config: Any


def _clear_previous_run(run_dir: Path) -> None:
    for pattern in _RUN_FILE_PATTERNS:
        for path in run_dir.glob(pattern):
            path.unlink()


def train_network(
    network_config: ModelConfig | ClassifierConfig,
    diffusion_config: DiffusionConfig,
    data: Iterator[Any],
    spec: TrainSpec,
    *,
    run_dir: str | Path,
    seed: int,
    progress: bool | None,
    device: torch.device | None = None,
) -> TrainedNetwork:
    """Train a diffusion UNet (ModelConfig) or a classifier (ClassifierConfig) for `spec.steps` steps
    from `seed` on the batches of `data`, as a `TrainingJob` run by `run_training` into `run_dir` on
    `device` (None: the GPU, else the CPU), and return it reloaded from its checkpoint (the EMA weights
    for a diffusion model), on `device` when one is given, else on the CPU."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    _clear_previous_run(run_dir)
    job = training_job(network_config, diffusion_config, spec, run_dir=run_dir, seed=seed)
    # The demo prints its own summary and stops at once on Ctrl-C: log lines go to the run's files only.
    run_training(job, data=data, device=device, progress=progress, console=False, stop_on_signals=False)
    if job.options.ema_rate:
        checkpoint = run_dir / snapshots.ema_name(parse_ema_rates(job.options.ema_rate)[0], spec.steps)
    else:
        checkpoint = run_dir / snapshots.model_name(spec.steps)
    trained = load_model(checkpoint)
    if device is not None:
        trained = trained.to(device)
    return TrainedNetwork(model=trained.eval(), checkpoint=checkpoint, config=network_config)


def training_job(network_config: ModelConfig | ClassifierConfig, diffusion_config: DiffusionConfig, spec: TrainSpec, *,
                 run_dir: Path, seed: int) -> TrainingJob:
    """The job of one of the demo's networks: `spec.steps` steps, one checkpoint set at the end, the
    learning rate annealed linearly to zero when asked, an EMA for a diffusion model that keeps one."""
    classifier = isinstance(network_config, ClassifierConfig)
    options = TrainingOptions(
        log_dir=str(run_dir),
        batch_size=spec.batch_size,
        lr=spec.lr,
        weight_decay=spec.weight_decay,
        ema_rate="" if classifier or spec.ema_rate is None else str(spec.ema_rate),
        log_interval=max(1, spec.steps // 20),
        save_interval=spec.steps,
        iterations=spec.steps,
        lr_anneal_steps=spec.steps if spec.anneal_lr and not classifier else 0,  # a classifier anneals by its own option
        seed=seed,
    )
    return TrainingJob(network=network_config, diffusion=diffusion_config, options=options,
                       classifier_options=ClassifierOptions(noised=spec.noised, anneal_lr=spec.anneal_lr) if classifier else None)
