"""Drawing the study's samples: a fixed set of per-sample seeds, every class equally often, with or
without classifier guidance, through the sampling package's samplers."""
from __future__ import annotations

import numpy as np
import torch

from guided_diffusion.sampling.generate import SamplerSettings, draw, to_numpy_uint8
from guided_diffusion.sampling.guidance import GuidedModel, classifier_cond_fn

__all__ = ["balanced_labels", "sample_images"]


def balanced_labels(num_samples: int, num_classes: int) -> np.ndarray:
    """Sample i is meant to show class i mod num_classes (what `--class_labels 0,1,...,9` gives the CLI)."""
    return np.arange(num_samples, dtype=np.int64) % num_classes


def sample_images(
    model: torch.nn.Module,
    diffusion,
    classifier: torch.nn.Module,
    *,
    labels: np.ndarray,
    scale: float,
    sampler: str,
    seed: int,
    image_size: int,
    batch_size: int,
    progress: bool = False,
) -> np.ndarray:
    """uint8 NHWC samples 0..len(labels)-1 of run `seed`, guided towards `labels` with classifier scale
    `scale` (0: unguided). Sample i depends only on (seed, i), so every setting starts from the same noise."""
    device = next(model.parameters()).device
    model_fn = GuidedModel(model, class_cond=False)
    cond_fn = classifier_cond_fn(classifier, scale) if scale != 0 else None
    settings = SamplerSettings(sampler=sampler, progress=progress)
    chunks = []
    for start in range(0, len(labels), batch_size):
        indices = list(range(start, min(start + batch_size, len(labels))))
        x = draw(model_fn, diffusion, indices=indices, seed=seed, image_shape=(3, image_size, image_size), device=device,
                 settings=settings, labels=labels[indices], cond_fn=cond_fn)
        chunks.append(to_numpy_uint8(x))
    return np.concatenate(chunks)
