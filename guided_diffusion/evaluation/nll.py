"""Bits per dimension of a diffusion model on images: the variational bound, with its per-timestep terms.

`bits_per_dim` runs the original `image_nll.py` loop (`GaussianDiffusion.calc_bpd_loop` per batch,
averaged over the torch.distributed ranks) until `num_samples` images are done; `nll_class_map` gives
the labels of a class-conditional model the way its training run derived them.
"""
from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from guided_diffusion.data.files import CLASS_MAP_NAME, ClassMap, build_class_map, choose_label_mode
from guided_diffusion.runtime import distributed

__all__ = ["NllResult", "TERMS", "bits_per_dim", "nll_class_map"]

# The per-timestep terms `calc_bpd_loop` returns, saved as <name>_terms.npz.
TERMS = ("vb", "mse", "xstart_mse")


@dataclass
class NllResult:
    """`bits_per_dim` averaged over the batches, `terms` (name -> mean over images per timestep) and the
    number of images evaluated (over every rank)."""

    bits_per_dim: float
    terms: dict[str, np.ndarray] = field(default_factory=dict)
    count: int = 0


def nll_class_map(paths: list[str], data_dir: str | os.PathLike[str], checkpoint: str | os.PathLike[str],
                  label_mode: str = "auto") -> ClassMap:
    """The class indices a class-conditional model was trained with: the run's `classes.json` beside the
    checkpoint when there is one, else derived from the images as training derives them (`label_mode`:
    auto, filename or folder)."""
    saved = Path(checkpoint).parent / CLASS_MAP_NAME
    if saved.is_file():
        return ClassMap.load(saved)
    return build_class_map(paths, data_dir, choose_label_mode(paths, data_dir, label_mode))


def bits_per_dim(
    model: Callable[..., torch.Tensor],
    diffusion: Any,
    batches: Iterator[tuple[torch.Tensor, dict[str, torch.Tensor]]],
    *,
    num_samples: int,
    device: torch.device,
    clip_denoised: bool = True,
    progress: bool = False,
    on_batch: Callable[[int, float], None] | None = None,
) -> NllResult:
    """Evaluate batches (images NCHW in [-1, 1], model keywords such as {"y": labels}) until `num_samples`
    images are done over all ranks; every rank must call it. `on_batch(done, running bits/dim)` is called
    after each batch (e.g. to log)."""
    world = distributed.get_world_size()
    all_bpd: list[float] = []
    all_terms: dict[str, list[np.ndarray]] = {name: [] for name in TERMS}
    done = 0
    while done < num_samples:
        images, model_kwargs = next(batches)
        images = images.to(device)
        model_kwargs = {k: v.to(device) for k, v in model_kwargs.items()}
        with torch.no_grad():
            metrics = diffusion.calc_bpd_loop(model, images, clip_denoised=clip_denoised, model_kwargs=model_kwargs,
                                              progress=progress)
        for name, kept in all_terms.items():
            terms = metrics[name].mean(dim=0) / world
            if world > 1:
                dist.all_reduce(terms)
            kept.append(terms.detach().cpu().numpy())
        total = metrics["total_bpd"].mean() / world
        if world > 1:
            dist.all_reduce(total)
        all_bpd.append(float(total.item()))
        done += world * images.shape[0]
        if on_batch is not None:
            on_batch(done, float(np.mean(all_bpd)))
    return NllResult(float(np.mean(all_bpd)), {name: np.mean(np.stack(kept), axis=0) for name, kept in all_terms.items()},
                     done)
