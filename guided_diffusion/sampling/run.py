"""Running a sampling job: the one function the command line, the Python API and the demo call.

    result = run(job, networks=Networks(model, classifier), device=device, split_over_ranks=False)
    images, labels = result

`run` takes the networks (or loads them from the job's checkpoint paths), wraps them the way the job
guides (`networks.guidance_for`), draws every batch (`draw.draw_batch`) split over the ranks
(`ranks.gather_in_order`) and, given an output folder (`resume.SampleFolder`, claimed), keeps each
batch there as it finishes and writes the finished run's files.
"""
from __future__ import annotations

import numpy as np
import torch

from guided_diffusion.runtime import distributed
from guided_diffusion.sampling.draw import Batch, draw_batch
from guided_diffusion.sampling.job import SamplingJob
from guided_diffusion.sampling.networks import Networks, guidance_for, load_networks
from guided_diffusion.sampling.ranks import BatchStore, gather_in_order
from guided_diffusion.sampling.resume import SampleFolder

__all__ = ["run"]


def run(
    job: SamplingJob,
    *,
    networks: Networks | None = None,
    device: torch.device | None = None,
    low_res: np.ndarray | None = None,
    init_noise: np.ndarray | None = None,
    folder: SampleFolder | None = None,
    store: BatchStore | None = None,
    split_over_ranks: bool = True,
    progress: bool | None = False,
) -> Batch | None:
    """Draw every sample of `job`; returns (uint8 NHWC images, int64 labels or None) in sample order on
    rank 0 and None on the other ranks (split_over_ranks=False: this process draws everything and
    returns it).

    networks: the loaded networks, else they are loaded from `job.model_path` / `job.classifier_path`
    onto `device` (default: this rank's device). low_res: an upsampler's uint8 inputs (image i % len
    for sample i). init_noise: float N x C x H x W starting noise (sample i from init_noise[i]).
    folder: a claimed `SampleFolder`: batches go to its partial store as they finish (those it holds
    are not drawn again) and the finished run's npz, grid and settings record are written there.
    store: a bare `BatchStore` instead (no files written at the end). progress: the `--progress` value
    (False: silent; None: a bar in a terminal, plain lines outside one).
    """
    if device is None:
        device = next(networks.model.parameters()).device if networks is not None else distributed.dev()
    if networks is None:
        networks = load_networks(job, device)
    model_fn, cond_fn = guidance_for(job, networks)
    diffusion = job.build_diffusion()
    verb = "upsampling" if job.is_upsampler else "sampling"
    result = gather_in_order(
        job.num_samples, job.batch_size,
        lambda indices: draw_batch(job, model_fn, cond_fn, diffusion, indices, device, low_res, init_noise),
        progress=progress, start_index=job.start_index, store=folder.store if folder is not None else store,
        split_over_ranks=split_over_ranks, label=verb,
    )
    if result is not None and folder is not None:
        folder.finish(*result)
    return result
