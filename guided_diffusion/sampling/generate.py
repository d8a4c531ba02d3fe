"""Drawing numbered samples: per-sample seeds, labels, guidance, and splitting the work over ranks.

Sample i is determined by (seed, i) alone, so a run can be split into batches and across processes in
any way: rank r of W takes the r-th batch of every round of W batches, and rank 0 reassembles the
rounds in sample order.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from tqdm.auto import tqdm

from guided_diffusion import dist_util
from guided_diffusion.sampling.denoiser import CondFn, DiffusionDenoiser
from guided_diffusion.sampling.guidance import dynamic_threshold
from guided_diffusion.sampling.noise import SampleNoise, random_labels
from guided_diffusion.sampling.output import to_uint8
from guided_diffusion.sampling.samplers import SAMPLERS

__all__ = ["SamplerSettings", "draw", "class_labels_for", "gather_in_order"]


@dataclass(frozen=True)
class SamplerSettings:
    """How to run the reverse process (the choices that do not change the model)."""

    sampler: str = "ddpm"
    eta: float = 0.0
    clip_denoised: bool = True
    dynamic_threshold: float | None = None  # percentile, e.g. 0.995; None = off
    progress: bool = False

    def __post_init__(self) -> None:
        if self.sampler not in SAMPLERS:
            raise ValueError(f"unknown sampler {self.sampler!r}; choose one of {', '.join(SAMPLERS)}")

    def sampler_kwargs(self) -> dict[str, Any]:
        kwargs: dict[str, Any] = {
            "clip_denoised": self.clip_denoised,
            "threshold": dynamic_threshold(self.dynamic_threshold) if self.dynamic_threshold else None,
            "progress": self.progress,
        }
        if self.sampler == "ddim":
            kwargs["eta"] = self.eta
        return kwargs


def draw(
    model: Callable[..., torch.Tensor],
    diffusion: Any,
    *,
    indices: Sequence[int],
    seed: int,
    image_shape: Sequence[int],
    device: torch.device,
    settings: SamplerSettings,
    labels: np.ndarray | None = None,
    cond_fn: CondFn | None = None,
    model_kwargs: dict[str, torch.Tensor] | None = None,
) -> torch.Tensor:
    """Samples `indices` of run `seed` as a float NCHW batch; sample i uses only its own noise stream.

    `model` is called as model(x, t, y=..., **model_kwargs) (see `GuidedModel`); `labels` become `y`.
    """
    noise = SampleNoise(seed, indices)
    x = noise.randn((len(indices), *image_shape), device=device)
    kwargs = dict(model_kwargs or {})
    if labels is not None:
        kwargs["y"] = torch.as_tensor(np.asarray(labels), dtype=torch.long, device=device)
    sampler = SAMPLERS[settings.sampler]
    return sampler(
        DiffusionDenoiser(model, diffusion), x, noise=noise, cond_fn=cond_fn, model_kwargs=kwargs,
        **settings.sampler_kwargs(),
    )


def class_labels_for(
    indices: Sequence[int], seed: int, num_classes: int, fixed: Sequence[int] | None = None
) -> np.ndarray:
    """Labels of samples `indices`: `fixed` repeated in order (sample i gets fixed[i % len]), else uniform
    random labels that depend only on (seed, i)."""
    if fixed:
        return np.array([fixed[i % len(fixed)] for i in indices], dtype=np.int64)
    return random_labels(seed, indices, num_classes)


def gather_in_order(
    num_samples: int,
    batch_size: int,
    make_batch: Callable[[list[int]], tuple[np.ndarray, np.ndarray | None]],
    *,
    progress: bool = False,
) -> tuple[np.ndarray, np.ndarray | None] | None:
    """Run `make_batch(indices) -> (uint8 NHWC images, labels or None)` over samples 0..num_samples-1,
    split over the torch.distributed ranks. Returns everything, in sample order, on rank 0; None elsewhere.

    Each round, rank r handles indices [round_start + r * batch_size, ...) so one gather per round puts
    the round in order, and memory on rank 0 grows only by what it keeps.
    """
    if num_samples <= 0 or batch_size <= 0:
        raise ValueError("num_samples and batch_size must be positive")
    rank, world = dist_util.get_rank(), dist_util.get_world_size()
    per_round = batch_size * world
    images: list[np.ndarray] = []
    labels: list[np.ndarray] = []
    with tqdm(total=num_samples, desc="samples", unit="img", disable=not progress or rank != 0) as bar:
        for round_start in range(0, num_samples, per_round):
            start = round_start + rank * batch_size
            mine = list(range(start, min(start + batch_size, num_samples)))
            result = make_batch(mine) if mine else None
            parts = [result]
            if world > 1:
                parts = [None] * world
                dist.all_gather_object(parts, result)
            for part in parts:
                if part is not None:
                    images.append(part[0])
                    if part[1] is not None:
                        labels.append(part[1])
            bar.update(min(per_round, num_samples - round_start))
    if rank != 0:
        return None
    return np.concatenate(images), (np.concatenate(labels) if labels else None)


def to_numpy_uint8(x: torch.Tensor) -> np.ndarray:
    """Float NCHW samples in [-1, 1] -> uint8 NHWC numpy (truncating, as the original)."""
    return to_uint8(x).cpu().numpy()
