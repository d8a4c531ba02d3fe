"""Training diffusion models, upsamplers and noisy classifiers.

A run is a `TrainingJob` (`job`: the network and diffusion configs and the training options, checked
once and frozen) run by `run_training` (`run`); the training commands, Python callers and the demo all
build one and call it:

    from guided_diffusion.training import TrainingJob, TrainingOptions, run_training

Modules: `job` (`TrainingJob`, `TrainingOptions`, `resolve_training_job`: a job from settings by flag
name), `run` (`run_training`), `loop` (the shared loop, `TrainBatch`, `DiffusionTrainer`), `classifier`
(`ClassifierTrainer`), `trainers` (`build_trainer`: which trainer a network needs), `precision` (fp32
master weights, fp16 loss scaling), `ema` (weight averages and their warm-up), `timestep_sampling`
(timestep samplers), `snapshots` (checkpoint sets, resume points), `rundir` (a console that cannot stop a run),
`finetune` (`init_from`), `monitor`, `watch` and `watch_flags` (sample grids, metrics and time budget
during training), `report` (plots of a run), `recipes` (the released models' training flags),
`train_loop` (the original `TrainLoop`).
Atomic file writes are `guided_diffusion.runtime.atomic`; bf16 autocast is `guided_diffusion.runtime.autocast`;
generator states and per-example draws are `guided_diffusion.runtime.rng`.
"""
from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from guided_diffusion.training.job import ClassifierOptions, TrainingJob, TrainingOptions, resolve_training_job
    from guided_diffusion.training.run import TrainingOutcome, run_training

__all__ = ["ClassifierOptions", "TrainingJob", "TrainingOptions", "TrainingOutcome", "resolve_training_job", "run_training"]

# Imported on first use, so the training commands' `--help` (which reads `watch_flags`) stays free of torch.
_LAZY = {"ClassifierOptions": "job", "TrainingJob": "job", "TrainingOptions": "job", "resolve_training_job": "job",
         "TrainingOutcome": "run", "run_training": "run"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(f"{__name__}.{_LAZY[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
