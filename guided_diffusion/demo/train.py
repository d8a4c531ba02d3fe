"""Training the demo's three networks with the package's own training loop and checkpoint format.

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

from guided_diffusion.config import ClassifierConfig, DiffusionConfig, ModelConfig, config_to_dict
from guided_diffusion.runtime import logs
from guided_diffusion.runtime.rng import seed_everything
from guided_diffusion.training import snapshots
from guided_diffusion.training.loop import LoopOptions
from guided_diffusion.training.trainers import build_trainer
from guided_diffusion.weights.checkpoints import load_model, write_config_json

__all__ = ["TrainSpec", "TrainedNetwork", "train_network"]

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
) -> TrainedNetwork:
    """Train a diffusion UNet (ModelConfig) or a classifier (ClassifierConfig) for `spec.steps` steps
    from `seed`, save its checkpoint set in `run_dir`, and return it reloaded from that checkpoint
    (the EMA weights for a diffusion model)."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    _clear_previous_run(run_dir)
    write_config_json(run_dir, config_to_dict(network_config, diffusion_config))
    is_classifier = isinstance(network_config, ClassifierConfig)
    seed_everything(seed)  # initial weights, then the loop's timestep and noise draws
    model = network_config.build()
    diffusion = diffusion_config.build()
    options = LoopOptions(
        batch_size=spec.batch_size,
        lr=spec.lr,
        weight_decay=spec.weight_decay,
        ema_rate="" if is_classifier or spec.ema_rate is None else str(spec.ema_rate),
        log_interval=max(1, spec.steps // 20),
        save_interval=spec.steps,
        iterations=spec.steps,
        lr_anneal_steps=spec.steps if spec.anneal_lr and not is_classifier else 0,
        class_cond=is_classifier,
        num_classes=network_config.num_classes,
        progress=progress,
        seed=seed,
    )
    # Loop logs go to log.txt / progress.csv in the run directory; the terminal shows progress bars.
    with logs.scoped_configure(dir=str(run_dir), format_strs=["log", "csv"]):
        trainer = build_trainer(
            network_config, model=model, diffusion=diffusion, data=data, options=options, run_dir=run_dir,
            noised=spec.noised, anneal_lr=spec.anneal_lr,
        )
        trainer.prepare_run_dir()
        trainer.run()
    if is_classifier or spec.ema_rate is None:
        checkpoint = run_dir / snapshots.model_name(spec.steps)
    else:
        checkpoint = run_dir / snapshots.ema_name(options.ema_rates()[0], spec.steps)
    trained = load_model(checkpoint)
    return TrainedNetwork(model=trained.eval(), checkpoint=checkpoint, config=network_config)
