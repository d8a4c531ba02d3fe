"""Running a `SamplingJob`: the one builder of the networks and the one loop that draws batches.

`load_network` builds, loads, casts and lays out a network; `guidance_for` wraps the networks the way
the job asks (classifier-free guidance, classifier guidance, autocast); `draw_samples` draws the job's
batches across the torch.distributed ranks and returns them in sample order on rank 0. With a
`PartialRun`, every finished batch is written to disk as soon as it is gathered, so a run that is
stopped keeps what it drew and a rerun with `--resume` draws only the rest (sample i depends only on
(seed, i), so the resumed arrays equal an uninterrupted run's).
"""
from __future__ import annotations

import contextlib
import json
import shutil
import signal
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

from guided_diffusion.diffusion.denoiser import CondFn
from guided_diffusion.runtime.atomic import atomic_write_bytes, remove_stale_temp_files
from guided_diffusion.runtime.performance import optimize_model
from guided_diffusion.sampling.generate import class_labels_for, draw, gather_in_order, to_numpy_uint8
from guided_diffusion.sampling.guidance import GuidedModel, classifier_cond_fn
from guided_diffusion.sampling.job import SamplingJob, low_res_input
from guided_diffusion.sampling.output import save_npz
from guided_diffusion.weights.checkpoints import load_model

__all__ = [
    "load_network", "guidance_for", "draw_batch", "draw_samples", "PartialRun", "ResumeError",
    "SamplingInterrupted", "stop_on_signals",
]

Batch = tuple[np.ndarray, np.ndarray | None]


# -- networks ------------------------------------------------------------------------------------------


def load_network(config: Any, path: str | Path, device: torch.device, *, channels_last: bool = False,
                 flags: dict[str, Any] | None = None) -> torch.nn.Module:
    """`config.build()` with the weights at `path` (a one-line error naming mismatching flags), on
    `device`, in fp16 when the config says so (`use_fp16` / `classifier_use_fp16`), in eval mode."""
    network = config.build()
    load_model(path, model=network, flags=flags if flags is not None else config.to_dict())
    network.to(device)
    if getattr(config, "use_fp16", False) or getattr(config, "classifier_use_fp16", False):
        network.convert_to_fp16()
    network.requires_grad_(False)  # inference: no forward pass may record a graph through the weights
    return optimize_model(network.eval(), channels_last=channels_last)


def guidance_for(job: SamplingJob, model: torch.nn.Module,
                 classifier: torch.nn.Module | None) -> tuple[GuidedModel, CondFn | None]:
    """The model as the samplers call it (classifier-free guidance, autocast) and the classifier
    guidance function (None when the job has no classifier guidance)."""
    model_fn = GuidedModel(model, class_cond=job.model.class_cond, cfg_scale=job.cfg_scale,
                           null_label=job.null_label, autocast_dtype=job.autocast_dtype)
    cond_fn = None
    if job.guided:
        if classifier is None:
            raise ValueError("classifier guidance needs a classifier network")
        cond_fn = classifier_cond_fn(classifier, job.classifier_scale, autocast_dtype=job.autocast_dtype,
                                     scaling=job.settings.guidance_scaling)
    return model_fn, cond_fn


# -- drawing -------------------------------------------------------------------------------------------


def draw_batch(job: SamplingJob, model_fn: GuidedModel, cond_fn: CondFn | None, diffusion: Any, indices: list[int],
               device: torch.device, low_res: np.ndarray | None = None,
               init_noise: np.ndarray | None = None) -> Batch:
    """Samples `indices` of the job as (uint8 NHWC images, int64 labels or None); sample i starts from
    `init_noise[i]` when given (float N x C x H x W), else from its own seeded noise."""
    labels = class_labels_for(indices, job.seed, job.model.num_classes, job.class_labels) if job.with_labels else None
    model_kwargs = {"low_res": low_res_input(low_res, indices, device)} if low_res is not None else {}
    x_init = torch.from_numpy(np.asarray(init_noise[indices], dtype=np.float32)) if init_noise is not None else None
    x = draw(model_fn, diffusion, indices=indices, seed=job.seed, image_shape=job.image_shape, device=device,
             settings=job.settings, labels=labels if job.with_labels else None, cond_fn=cond_fn,
             model_kwargs=model_kwargs, x_init=x_init)
    return to_numpy_uint8(x), labels


def draw_samples(
    job: SamplingJob,
    model_fn: GuidedModel,
    cond_fn: CondFn | None,
    device: torch.device,
    *,
    diffusion: Any = None,
    low_res: np.ndarray | None = None,
    init_noise: np.ndarray | None = None,
    store: PartialRun | None = None,
    split_over_ranks: bool = True,
) -> Batch | None:
    """Draw every batch of `job` split over the ranks (`gather_in_order`); returns (images, labels) in
    sample order on rank 0 and None on the other ranks (split_over_ranks=False: this process draws
    everything and returns it). With `store`, each finished batch is on disk as soon as it is gathered."""
    diffusion = job.build_diffusion() if diffusion is None else diffusion
    return gather_in_order(
        job.num_samples, job.batch_size,
        lambda indices: draw_batch(job, model_fn, cond_fn, diffusion, indices, device, low_res, init_noise),
        progress=job.settings.progress, start_index=job.start_index, store=store, split_over_ranks=split_over_ranks,
    )


# -- surviving a stop ----------------------------------------------------------------------------------


class ResumeError(ValueError):
    """A partial run that cannot be continued with these options (or was not asked to be)."""


class PartialRun:
    """Finished batches of one job in `<output>.partial/` beside the output npz.

    `job.json` holds the job's fingerprint; `batch_{start}.npz` holds the batch starting at sample
    `start`, written atomically, so after any kill every file there is complete.
    """

    FINGERPRINT = "job.json"

    def __init__(self, directory: Path):
        self.directory = directory

    @staticmethod
    def directory_for(out_dir: str | Path, job: SamplingJob) -> Path:
        return Path(out_dir) / (job.output_name.removesuffix(".npz") + ".partial")

    @classmethod
    def stored_fingerprint(cls, directory: Path) -> dict[str, Any] | None:
        """The fingerprint of the job whose batches `directory` holds, or None when there are none."""
        path = directory / cls.FINGERPRINT
        if not path.is_file():
            return None
        try:
            return json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            raise ResumeError(f"{path} is unreadable ({exc}); delete {directory} to start over") from None

    @classmethod
    def open(cls, out_dir: str | Path, job: SamplingJob, *, resume: bool) -> PartialRun:
        """The store for `job` in `out_dir`: continued when `resume` and the fingerprints agree, new when
        there is none (or it holds no finished batch); a different or un-asked-for partial run is refused
        (ResumeError), never overwritten."""
        directory = cls.directory_for(out_dir, job)
        stored = cls.stored_fingerprint(directory)
        fingerprint = job.fingerprint()
        if stored is not None and cls(directory).finished():  # with no finished batch there is nothing to keep
            store = cls(directory)
            count = store.count()
            if not resume:
                raise ResumeError(f"{directory} holds {count} of {job.num_samples} samples of an interrupted run: "
                                  "continue it with --resume, or delete it to start over")
            if stored != fingerprint:
                differ = ", ".join(_differences(stored, fingerprint)) or "the format"
                raise ResumeError(f"cannot resume {directory}: it was drawn with different options ({differ}); "
                                  "rerun with the same flags and seed, or delete it to start over")
            remove_stale_temp_files(directory)
            return store
        directory.mkdir(parents=True, exist_ok=True)
        remove_stale_temp_files(directory)
        atomic_write_bytes(directory / cls.FINGERPRINT, json.dumps(fingerprint, indent=1, sort_keys=True).encode())
        return cls(directory)

    def _path(self, start: int) -> Path:
        return self.directory / f"batch_{start:09d}.npz"

    def finished(self) -> list[int]:
        """Start indices of the batches on disk."""
        return sorted(int(p.stem.split("_")[1]) for p in self.directory.glob("batch_*.npz"))

    def count(self) -> int:
        """Samples on disk."""
        total = 0
        for start in self.finished():
            with np.load(self._path(start)) as data:
                total += len(data["arr_0"])
        return total

    def write(self, start: int, images: np.ndarray, labels: np.ndarray | None) -> None:
        arrays = (images,) if labels is None else (images, labels)
        save_npz(self._path(start), *arrays)

    def read(self, start: int) -> Batch:
        with np.load(self._path(start)) as data:
            return data["arr_0"], (data["arr_1"] if "arr_1" in data.files else None)

    def discard(self) -> None:
        """Remove the folder (once the complete npz is written)."""
        shutil.rmtree(self.directory, ignore_errors=True)


def _differences(old: Any, new: Any, prefix: str = "") -> list[str]:
    if isinstance(old, dict) and isinstance(new, dict):
        out: list[str] = []
        for key in sorted(set(old) | set(new)):
            out += _differences(old.get(key), new.get(key), f"{prefix}{key}.")
        return out
    return [] if old == new else [prefix.rstrip(".")]


class SamplingInterrupted(BaseException):
    """SIGINT or SIGTERM arrived; `signum` says which (a BaseException, so `except Exception` lets it by)."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


@contextlib.contextmanager
def stop_on_signals() -> Iterator[Callable[[], int | None]]:
    """Turn SIGINT and SIGTERM into `SamplingInterrupted` in the main thread while the block runs.

    Yields a function returning the signal received so far (None if none): a signal that arrives while
    this rank waits in a collective surfaces as the collective's error once a peer has stopped, and the
    caller uses it to tell that error from a real one.
    """
    if threading.current_thread() is not threading.main_thread():
        yield lambda: None
        return
    received: list[int] = []

    def handler(signum: int, _frame: Any) -> None:
        first = not received
        received.append(signum)
        if first:  # later signals (a launcher repeating itself) must not interrupt the clean-up
            raise SamplingInterrupted(signum)

    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield lambda: received[0] if received else None
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)

