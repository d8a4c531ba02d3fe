"""An edit's results and their files: `EditResult` (what a job made), `save_edit` (its npz files and
the sheet of inputs beside outputs) and `EditFolder`, the resumable output folder that `run_edit` fills
(sampling's `SampleFolder`, with an edit's own outputs).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from guided_diffusion.editing.io import save_latents
from guided_diffusion.editing.job import EditJob, Invert, Restore
from guided_diffusion.editing.sheet import save_edit_sheet
from guided_diffusion.runtime.locks import FolderLock
from guided_diffusion.sampling.output import save_samples
from guided_diffusion.sampling.resume import SampleFolder

__all__ = ["EditFolder", "EditResult", "psnr_summary", "save_edit"]


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


def psnr_summary(values: np.ndarray) -> tuple[float, float]:
    """Mean and worst of per-image PSNRs, identical images counting as 100 dB."""
    finite = np.minimum(np.asarray(values, dtype=np.float64), 100.0)
    return float(finite.mean()), float(finite.min())


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
        return self.complete(lambda text: save_edit(self.edit, result, self.directory, text=text))
