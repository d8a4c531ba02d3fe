"""Drawing the study's samples: a fixed set of per-sample seeds, every class equally often, with or
without classifier guidance, through the same job and `sampling.run.run` as `classifier_sample` and the Python API."""
from __future__ import annotations

import numpy as np
import torch

from guided_diffusion.config import ClassifierConfig, DiffusionConfig, ModelConfig
from guided_diffusion.sampling.job import sampling_job
from guided_diffusion.sampling.networks import Networks
from guided_diffusion.sampling.run import run

__all__ = ["balanced_labels", "sample_images"]


def balanced_labels(num_samples: int, num_classes: int) -> np.ndarray:
    """Sample i is meant to show class i mod num_classes (what `--class_labels 0,1,...,9` gives the CLI)."""
    return np.arange(num_samples, dtype=np.int64) % num_classes


def sample_images(
    model: torch.nn.Module,
    model_config: ModelConfig,
    diffusion_config: DiffusionConfig,
    classifier: torch.nn.Module,
    classifier_config: ClassifierConfig,
    *,
    labels: np.ndarray,
    scale: float,
    sampler: str,
    seed: int,
    batch_size: int,
    progress: bool = False,
) -> np.ndarray:
    """uint8 NHWC samples 0..len(labels)-1 of run `seed`, guided towards `labels` with classifier scale
    `scale` (0: unguided). Sample i depends only on (seed, i), so every setting starts from the same noise."""
    job = sampling_job(
        model=model_config, diffusion=diffusion_config, seed=seed, num_samples=len(labels), sampler=sampler,
        progress=progress, batch_size=batch_size, classifier=classifier_config, classifier_scale=scale,
        class_labels=tuple(int(c) for c in labels),
    )
    result = run(job, networks=Networks(model, classifier), split_over_ranks=False, progress=progress)
    assert result is not None  # not split over ranks: this process draws every sample
    return result[0]
