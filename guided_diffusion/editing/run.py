"""Running an `EditJob`: every image edited in batches over the ranks, the results gathered in input order.

`run_edit(job)` is what the command line and Python callers call. It draws batch after batch with
sampling's `gather_in_order` (rank r of W takes every W-th batch; with a store, each finished batch is
on disk as soon as it is gathered, so a stopped run keeps it), and returns the edits in input order on
rank 0, written into a claimed `EditFolder` when given one. Edit i uses only the noise streams of (seed,
i) and input i. The networks are `editing.networks`', the DPS edits `editing.dps`', the files
`editing.output`'s.
"""
from __future__ import annotations

from typing import Any

import numpy as np
import torch

from guided_diffusion.diffusion.denoiser import Denoiser
from guided_diffusion.diffusion.inversion import ddim_invert, psnr
from guided_diffusion.editing.dps import dps_batch, measurement_images
from guided_diffusion.editing.grid import model_kwargs_of
from guided_diffusion.editing.io import to_model_input, to_uint8_images
from guided_diffusion.editing.job import EditJob, Img2Img, Inpaint, Invert
from guided_diffusion.editing.networks import EditNetworks, classifier_guidance, load_networks
from guided_diffusion.editing.output import EditFolder, EditResult
from guided_diffusion.editing.repaint import repaint
from guided_diffusion.editing.sdedit import sdedit
from guided_diffusion.runtime import distributed
from guided_diffusion.runtime.rng import SampleNoise
from guided_diffusion.sampling.ranks import BatchStore, gather_in_order
from guided_diffusion.sampling.samplers import SAMPLERS

__all__ = ["run_edit"]

Batch = tuple[np.ndarray, np.ndarray | None]


def _invert_records(job: EditJob) -> np.dtype[Any]:
    """One record per image: its latent, its round trip and the round trip's PSNR (a structured array
    travels through the ranks and the store of finished batches as one array)."""
    size = job.image_size
    return np.dtype([("latent", np.float32, (3, size, size)), ("round_trip", np.uint8, (size, size, 3)),
                     ("psnr", np.float64)])


class _Edit:
    """The per-batch work of one job on loaded networks."""

    def __init__(self, job: EditJob, networks: EditNetworks):
        self.job = job
        self.networks = networks
        self.device = networks.device
        self.denoiser: Denoiser = job.settings.denoiser(networks.model, networks.diffusion)
        self.labels = job.labels()
        self.output_labels = job.output_labels()
        self.classifier = classifier_guidance(job, networks)
        self.measured = measurement_images(job)

    def batch(self, indices: list[int]) -> Batch:
        task = self.job.task
        if isinstance(task, Invert):
            images = self._invert(task, indices)
        elif isinstance(task, Img2Img):
            images = self._img2img(task, indices)
        elif self.job.uses_repaint:
            images = self._repaint(indices)
        else:
            images = self._measurement(indices)
        return images, (self.output_labels[indices] if self.output_labels is not None else None)

    def _kwargs(self, indices: list[int]) -> dict[str, torch.Tensor]:
        return model_kwargs_of(self.labels[indices] if self.labels is not None else None, self.device)

    def _x(self, indices: list[int]) -> torch.Tensor:
        return to_model_input(self.job.inputs.images[indices]).to(self.device)

    def _invert(self, task: Invert, indices: list[int]) -> np.ndarray:
        kwargs, progress = self._kwargs(indices), self.job.settings.progress
        latents = ddim_invert(self.denoiser, self._x(indices), model_kwargs=kwargs, refine=task.refine, progress=progress)
        records = np.zeros(len(indices), dtype=_invert_records(self.job))
        records["latent"] = latents.float().cpu().numpy()
        if task.round_trip:
            back = SAMPLERS["ddim"](self.denoiser, latents, model_kwargs=kwargs, clip_denoised=False, progress=progress)
            records["round_trip"] = to_uint8_images(back)
            records["psnr"] = psnr(records["round_trip"], self.job.inputs.images[indices]).numpy()
        return records

    def _img2img(self, task: Img2Img, indices: list[int]) -> np.ndarray:
        assert self.job.seed is not None  # EditJob requires one for stochastic tasks
        out = sdedit(self.denoiser, self._x(indices), strength=task.strength, sampler=self.job.settings.sampler,
                     from_inversion=task.from_inversion, noise=SampleNoise(self.job.seed, indices),
                     cond_fn=self.classifier, model_kwargs=self._kwargs(indices), **self.job.settings.sampler_kwargs())
        return to_uint8_images(out)

    def _mask(self, indices: list[int]) -> np.ndarray:
        assert self.job.inputs.mask is not None  # EditJob requires one for inpainting
        return self.job.inputs.mask[indices]

    def _keep_known(self, indices: list[int], edited: np.ndarray) -> np.ndarray:
        keep = self._mask(indices).transpose(0, 2, 3, 1) > 0.5
        return np.where(keep, self.job.inputs.images[indices], edited)

    def _repaint(self, indices: list[int]) -> np.ndarray:
        assert isinstance(self.job.task, Inpaint) and self.job.seed is not None
        length, passes = self.job.task.jumps
        noise = SampleNoise(self.job.seed, indices)
        x = noise.randn((len(indices), 3, self.job.image_size, self.job.image_size), device=self.device)
        out = repaint(self.denoiser, x, known=self._x(indices), mask=torch.from_numpy(self._mask(indices)),
                      jump_length=length, jump_n_sample=passes, noise=noise, cond_fn=self.classifier,
                      model_kwargs=self._kwargs(indices), progress=self.job.settings.progress)
        return self._keep_known(indices, to_uint8_images(out))

    def _measurement(self, indices: list[int]) -> np.ndarray:
        measured = self.measured[indices] if self.measured is not None else self.job.inputs.images[indices]
        out = dps_batch(self.job, self.networks, self.denoiser, indices, measured=measured, classifier=self.classifier,
                        model_kwargs=self._kwargs(indices))
        edited = to_uint8_images(out)
        return self._keep_known(indices, edited) if self.job.needs_mask else edited


def run_edit(
    job: EditJob,
    *,
    networks: EditNetworks | None = None,
    device: torch.device | None = None,
    folder: EditFolder | None = None,
    store: BatchStore | None = None,
    progress: bool | None = False,
    split_over_ranks: bool = True,
) -> EditResult | None:
    """Edit every input image of `job`; returns the result in input order on rank 0 and None on the
    other ranks (split_over_ranks=False: this process edits everything and returns it).

    networks: loaded ones (`load_networks`, `networks_from_modules`), else loaded from the job's
    checkpoint paths onto `device` (default: this rank's). folder: a claimed `EditFolder`: batches go to
    its partial store as they finish (those it holds are not edited again) and the finished run's outputs
    are written there. store: a bare `BatchStore` instead (nothing written at the end). progress: the
    `--progress` value for the report over the images (False silent; None a bar in a terminal, plain lines
    outside one); the per-step bars follow `job.settings.progress`.
    """
    if networks is None:
        networks = load_networks(job, device if device is not None else distributed.dev())
    edit = _Edit(job, networks)
    gathered = gather_in_order(job.num_samples, job.batch_size, edit.batch, progress=progress,
                               store=folder.store if folder is not None else store, split_over_ranks=split_over_ranks,
                               label=job.task.name)
    if gathered is None:
        return None
    arrays, labels = gathered
    if isinstance(job.task, Invert):
        round_trip = job.task.round_trip
        result = EditResult(images=arrays["round_trip"] if round_trip else None, labels=labels,
                            latents=np.ascontiguousarray(arrays["latent"]), psnr=arrays["psnr"] if round_trip else None)
    else:
        result = EditResult(images=arrays, labels=labels, measurement=measurement_images(job))
    if folder is not None:
        folder.write_outputs(result)
    return result
