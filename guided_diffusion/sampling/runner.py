"""Former home of network loading, drawing a job and resumable runs; kept only so importers that have
not switched yet keep working. New code calls `sampling.run.run` and imports from the modules below.

- `load_network`: `sampling.networks`; `draw_batch`: `sampling.draw`
- `PartialRun`, `ResumeError`, `SamplingInterrupted`, `stop_on_signals`: `sampling.resume`
- `guidance_for(job, model, classifier)` and `draw_samples(...)`: `sampling.networks.guidance_for(job,
  Networks(model, classifier))` and `sampling.run.run(job, networks=..., ...)`
"""
from __future__ import annotations

import numpy as np
import torch

from guided_diffusion.diffusion.denoiser import CondFn
from guided_diffusion.sampling import networks as _networks
from guided_diffusion.sampling.draw import Batch, draw_batch
from guided_diffusion.sampling.guidance import GuidedModel
from guided_diffusion.sampling.job import SamplingJob
from guided_diffusion.sampling.networks import Networks, load_network
from guided_diffusion.sampling.ranks import BatchStore, gather_in_order
from guided_diffusion.sampling.resume import PartialRun, ResumeError, SamplingInterrupted, stop_on_signals

__all__ = [
    "load_network", "guidance_for", "draw_batch", "draw_samples", "PartialRun", "ResumeError",
    "SamplingInterrupted", "stop_on_signals",
]


def guidance_for(job: SamplingJob, model: torch.nn.Module,
                 classifier: torch.nn.Module | None) -> tuple[GuidedModel, CondFn | None]:
    """`sampling.networks.guidance_for` with the networks as two arguments."""
    return _networks.guidance_for(job, Networks(model, classifier))


def draw_samples(job: SamplingJob, model_fn: GuidedModel, cond_fn: CondFn | None, device: torch.device, *,
                 low_res: np.ndarray | None = None, init_noise: np.ndarray | None = None,
                 store: BatchStore | None = None, split_over_ranks: bool = True) -> Batch | None:
    """Every batch of `job` drawn with already wrapped networks (see `sampling.run.run`)."""
    diffusion = job.build_diffusion()
    return gather_in_order(
        job.num_samples, job.batch_size,
        lambda indices: draw_batch(job, model_fn, cond_fn, diffusion, indices, device, low_res, init_noise),
        progress=job.settings.progress, start_index=job.start_index, store=store, split_over_ranks=split_over_ranks,
    )
