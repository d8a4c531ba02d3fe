"""Running an `EditJob`: loading its networks, editing every image in batches over the ranks, writing
the outputs.

`run_edit(job)` is what the command line and Python callers call. It draws batch after batch with
sampling's `gather_in_order` (rank r of W takes every W-th batch; with a store, each finished batch is
on disk as soon as it is gathered, so a stopped run keeps it), and returns the edits in input order on
rank 0. Edit i uses only the noise streams of (seed, i) and input i.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from guided_diffusion.config import ClassifierConfig, ModelConfig
from guided_diffusion.diffusion.denoiser import CondFn, Denoiser
from guided_diffusion.diffusion.inversion import ddim_invert, psnr
from guided_diffusion.editing.grid import model_kwargs_of
from guided_diffusion.editing.inputs import blurred, downsampled
from guided_diffusion.editing.io import save_latents, to_model_input, to_uint8_images
from guided_diffusion.editing.job import EditJob, Img2Img, Inpaint, Invert, Restore
from guided_diffusion.editing.measurement import (
    BlurOperator,
    DownsampleOperator,
    MaskOperator,
    Operator,
    X0Predictor,
    measurement_cond_fn,
    sum_cond_fns,
)
from guided_diffusion.editing.repaint import repaint
from guided_diffusion.editing.sdedit import sdedit
from guided_diffusion.editing.sheet import save_edit_sheet
from guided_diffusion.runtime import distributed
from guided_diffusion.runtime.errors import SettingError
from guided_diffusion.runtime.locks import FolderLock
from guided_diffusion.runtime.rng import SampleNoise
from guided_diffusion.sampling.guidance import GuidedModel, classifier_cond_fn
from guided_diffusion.sampling.networks import load_network
from guided_diffusion.sampling.output import save_record, save_samples
from guided_diffusion.sampling.ranks import BatchStore, gather_in_order
from guided_diffusion.sampling.resume import SampleFolder, settings_record
from guided_diffusion.sampling.samplers import SAMPLERS
from guided_diffusion.weights.checkpoints import check_released_flags, diagnose_mismatch, inspect_checkpoint

__all__ = [
    "EditFolder", "EditNetworks", "EditResult", "check_networks", "load_networks", "measurement_images", "networks_from_modules", "psnr_summary",
    "run_edit", "save_edit",
]

Batch = tuple[np.ndarray, np.ndarray | None]


# -- networks ------------------------------------------------------------------------------------------


@dataclass
class EditNetworks:
    """The job's networks as the edits call them: the diffusion model (classifier-free guidance and
    bfloat16 applied), the trained process it was trained with, and the guiding classifier (or None)."""

    model: GuidedModel
    diffusion: Any
    classifier: torch.nn.Module | None
    device: torch.device


def check_networks(job: EditJob) -> None:
    """Raise SettingError (model_path or classifier_path) unless each checkpoint's tensors fit the config it
    came with, naming the settings that differ; on the "meta" device: nothing is loaded or allocated."""
    checks: list[tuple[str, str, ModelConfig | ClassifierConfig | None, str]] = [
        ("model_path", job.model_path, job.model, "diffusion"),
        ("classifier_path", job.classifier_path, job.classifier if job.guided else None, "classifier")]
    for setting, path, config, kind in checks:
        if config is None or not path:
            continue
        info = inspect_checkpoint(path, expected=kind)
        assert info.state is not None  # a network checkpoint always has its tensors
        with torch.device("meta"):
            network = config.build()
        problems = diagnose_mismatch(info.state, network) + check_released_flags(str(path), config.to_dict())
        if problems:
            # The settings came from the config saved with the weights, not from flags: say so.
            text = "; ".join(problems).replace("the flags give", "the config gives").replace(
                "the flags build", "the config builds").replace("--", "")
            raise SettingError(setting, f"{setting} {path} does not fit the config saved with it: {text}; fix its "
                                        "config.json, or use the checkpoint that config describes")


def load_networks(job: EditJob, device: torch.device) -> EditNetworks:
    """Build and load the job's networks on `device` (the classifier only when it guides)."""
    network = load_network(job.model, job.model_path, device, bf16=job.bf16)
    autocast_dtype = torch.bfloat16 if job.bf16 else None
    model = GuidedModel(network, class_cond=job.model.class_cond, cfg_scale=job.cfg_scale,
                        null_label=job.model.null_label, autocast_dtype=autocast_dtype,
                        cfg_interval=job.settings.cfg_interval)
    classifier = None
    if job.guided:
        assert job.classifier is not None  # guided says so
        classifier = load_network(job.classifier, job.classifier_path, device, bf16=job.bf16)
    return EditNetworks(model=model, diffusion=job.trained_diffusion(), classifier=classifier, device=device)


def networks_from_modules(job: EditJob, model: torch.nn.Module, classifier: torch.nn.Module | None = None,
                          device: torch.device | None = None) -> EditNetworks:
    """EditNetworks from networks already in memory (a Python caller's), wrapped as `load_networks` does."""
    device = device if device is not None else next(model.parameters()).device
    guided = GuidedModel(model, class_cond=job.model.class_cond, cfg_scale=job.cfg_scale,
                         null_label=job.model.null_label, autocast_dtype=torch.bfloat16 if job.bf16 else None,
                         cfg_interval=job.settings.cfg_interval)
    return EditNetworks(model=guided, diffusion=job.trained_diffusion(),
                        classifier=classifier if job.guided else None, device=device)


# -- results -------------------------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class EditResult:
    """What a job made, in input order.

    images: the edited images (uint8 NHWC), or for invert the round-trip images (None without round trip);
    labels: the labels written with them (`EditJob.output_labels`); latents: invert's noise (float32
    NCHW, else None); psnr: invert's round-trip PSNR per image in dB (inf when identical; else None);
    measurement: what a restoration started from (uint8 NHWC, the measurement's own size), else None.
    """

    images: np.ndarray | None
    labels: np.ndarray | None
    latents: np.ndarray | None = None
    psnr: np.ndarray | None = None
    measurement: np.ndarray | None = None


def measurement_images(job: EditJob) -> np.ndarray | None:
    """The measurement a restoration starts from (uint8 NHWC): the inputs, or with `simulate` the
    task's operator applied to them; None for the other edits."""
    task = job.task
    if not isinstance(task, Restore):
        return None
    if not task.simulate:
        return job.inputs.images
    if task.task == "super_res":
        return downsampled(job.inputs.images, task.downsampling)
    return blurred(job.inputs.images, task.sigma, task.blur_size)  # Restore refuses simulate for inpaint


# -- running -------------------------------------------------------------------------------------------


def _classifier_guidance(job: EditJob, networks: EditNetworks) -> CondFn | None:
    """The classifier's guidance with the run's scaling, interval and schedule (None without guidance)."""
    if networks.classifier is None or not job.guided:
        return None
    cond_fn = classifier_cond_fn(networks.classifier, job.classifier_scale, scaling=job.settings.guidance_scaling,
                                 autocast_dtype=torch.bfloat16 if job.bf16 else None)
    return job.settings.steered(cond_fn, networks.diffusion)


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
        self.classifier = _classifier_guidance(job, networks)
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

    def _operator(self, indices: list[int]) -> Operator:
        task = self.job.task
        if self.job.needs_mask:
            return MaskOperator(torch.from_numpy(self._mask(indices)))
        assert isinstance(task, Restore)
        if task.task == "super_res":
            return DownsampleOperator(task.downsampling)
        return BlurOperator(task.sigma, task.blur_size)

    def _measurement(self, indices: list[int]) -> np.ndarray:
        job, task = self.job, self.job.task
        assert isinstance(task, (Inpaint, Restore)) and job.seed is not None
        operator = self._operator(indices)
        measured = to_model_input(self.measured[indices] if self.measured is not None else job.inputs.images[indices])
        target = operator(measured) if job.needs_mask else measured
        predict_x0 = X0Predictor(self.networks.model, self.networks.diffusion)
        cond_fn = sum_cond_fns(measurement_cond_fn(operator, target, task.scale, predict_x0=predict_x0, step="x0"),
                               self.classifier)
        noise = SampleNoise(job.seed, indices)
        x = noise.randn((len(indices), 3, job.image_size, job.image_size), device=self.device)
        out = SAMPLERS[job.settings.sampler](self.denoiser, x, noise=noise, cond_fn=cond_fn,
                                             model_kwargs=self._kwargs(indices), **job.settings.sampler_kwargs())
        edited = to_uint8_images(out)
        return self._keep_known(indices, edited) if job.needs_mask else edited


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


# -- writing -------------------------------------------------------------------------------------------


def _sheet_columns(job: EditJob, result: EditResult) -> list[np.ndarray]:
    """Input | output for every edit; a masked input shows its unknown pixels grey; a simulated
    restoration shows original | measurement | output."""
    assert result.images is not None
    inputs = job.inputs.images
    if job.needs_mask and job.inputs.mask is not None:
        keep = job.inputs.mask.transpose(0, 2, 3, 1) > 0.5
        return [np.where(keep, inputs, np.uint8(128)), result.images]
    if isinstance(job.task, Restore) and result.measurement is not None:
        if job.task.simulate:
            return [inputs, result.measurement, result.images]
        return [result.measurement, result.images]
    return [inputs, result.images]


def save_edit(job: EditJob, result: EditResult, out_dir: str | Path, *,
              text: dict[str, str] | None = None) -> list[Path]:
    """Write the job's outputs into `out_dir` atomically; returns their paths.

    invert: latents.npz (arr_0 float32 NCHW latents, arr_1 labels when known), and with keep_round_trip
    the round trip as samples_NxHxWx3.npz; the others: samples_NxHxWx3.npz (arr_0 uint8 NHWC edits, arr_1
    their labels). Beside each samples npz, a PNG sheet of every input beside its output, with `text`
    (e.g. the run's settings) in its text chunk.
    """
    out = Path(out_dir)
    written: list[Path] = []
    if isinstance(job.task, Invert):
        assert result.latents is not None
        written.append(save_latents(out / job.output_name, result.latents, result.labels))
        if not job.task.keep_round_trip:
            return written
    assert result.images is not None
    path = save_samples(out, result.images, result.labels)
    written += [path, save_edit_sheet(path.with_suffix(".png"), _sheet_columns(job, result), text=text)]
    return written


class EditFolder(SampleFolder):
    """An edit's output folder, as sampling's (`sampling.resume.SampleFolder`): its lock naming the live
    process, the finished batches kept in `<output>.partial/` as they complete (so a stopped run resumes),
    "nothing to do" when the finished output of this very job is there; `write_outputs` writes the
    settings record (`<output>.json`), the outputs with the settings in the sheet's text chunks
    (`save_edit`), and drops the partial batches. The output npz (written last) means "finished"."""

    def __init__(self, directory: str | Path, job: EditJob, *, command: str = ""):
        super().__init__(directory, job, command=command)
        self.edit = job
        self.lock = FolderLock(self.directory, purpose="editing run", advice="choose another --out_dir")

    def _other_interrupted_runs(self) -> list[int]:
        return []  # an edit's size is its input's: another input is another job, told apart by the fingerprint

    def write_outputs(self, result: EditResult) -> list[Path]:
        record = settings_record(self.edit, self.command)
        summary = {key: value for key, value in record.items() if key != "job"}
        save_record(self.record_path, record)
        text = {"Software": f"guided-diffusion {record['version']}", "Comment": self.command,
                "guided-diffusion settings": json.dumps(summary, sort_keys=True, default=str)}
        written = save_edit(self.edit, result, self.directory, text=text)
        if self.store is not None:
            self.store.discard()
        return [self.record_path, *written]


def psnr_summary(values: np.ndarray) -> tuple[float, float]:
    """Mean and worst of per-image PSNRs, identical images counting as 100 dB."""
    finite = np.minimum(np.asarray(values, dtype=np.float64), 100.0)
    return float(finite.mean()), float(finite.min())

