"""An endless, resumable stream of training batches, sharded over ranks.

Order: each epoch is a permutation of all images drawn from (seed, epoch). Global batch k of an
epoch is the slice [k*G, (k+1)*G) of that permutation (G = batch_size * world_size) and rank r
takes every world_size-th element of it. The images a step sees, and each image's augmentation
seed, are therefore the same for 1 rank with batch 2B as for 2 ranks with batch B, and a stream
can be restarted at any step without reading the skipped images.
"""
from __future__ import annotations

import os
import signal
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
from torch.utils.data import DataLoader, Sampler

from guided_diffusion.data.dataset import ImageBatch, ImageFolderDataset, collate_samples
from guided_diffusion.data.files import (
    CLASS_MAP_NAME,
    ClassMap,
    build_class_map,
    choose_label_mode,
    labels_for,
    list_image_files,
)
from guided_diffusion.runtime import distributed, logs
from guided_diffusion.runtime.errors import UserError
from guided_diffusion.runtime.rng import mix_seed


class GlobalBatchSampler(Sampler[list[tuple[int, int]]]):
    """Yields, forever, this rank's share of each global batch as (index, sample_seed) pairs."""

    def __init__(self, num_items: int, batch_size: int, *, rank: int, world_size: int, shuffle: bool, seed: int, start_batch: int = 0):
        self.num_items = num_items
        self.batch_size = batch_size
        self.rank = rank
        self.world_size = world_size
        self.shuffle = shuffle
        self.seed = seed
        self.start_batch = start_batch
        self.global_batch = batch_size * world_size
        self.batches_per_epoch = num_items // self.global_batch

    def _order(self, epoch: int) -> torch.Tensor:
        if not self.shuffle:
            return torch.arange(self.num_items)
        generator = torch.Generator().manual_seed(mix_seed(self.seed, epoch, 0x5EED))
        return torch.randperm(self.num_items, generator=generator)

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        position = self.start_batch
        epoch, order = -1, torch.empty(0, dtype=torch.long)
        while True:
            current_epoch, k = divmod(position, self.batches_per_epoch)
            if current_epoch != epoch:
                epoch, order = current_epoch, self._order(current_epoch)
            chunk = order[k * self.global_batch : (k + 1) * self.global_batch][self.rank :: self.world_size].tolist()
            yield [(index, mix_seed(self.seed, epoch, index)) for index in chunk]
            position += 1

    def __len__(self) -> int:  # an endless sampler; DataLoader only needs this for len()
        return sys.maxsize


@dataclass
class StreamSpec:
    """What an `ImageStream` reads and how."""

    data_dir: str
    batch_size: int
    image_size: int
    class_cond: bool = False
    deterministic: bool = False
    random_crop: bool = False
    random_flip: bool = True
    label_mode: str = "auto"
    num_workers: int = -1
    skip_bad_images: bool = False
    seed: int = 0


def ignore_stop_signals(worker_id: int) -> None:  # DataLoader's worker_init_fn signature
    """Make a data-loader worker ignore SIGINT and SIGTERM.

    `timeout`, SLURM, Kubernetes and Ctrl-C signal the whole process group; the main process owns the
    shutdown (finish the step, save, stop) and ends the workers itself, so a worker that died first
    would only turn a clean save into a crash.
    """
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, signal.SIG_IGN)


def default_num_workers() -> int:
    """A few workers per rank, bounded by the CPUs this process may use."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cpus = os.cpu_count() or 1
    local_world = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
    return max(0, min(8, cpus // max(1, local_world) - 1))


class ImageStream:
    """Endless iterator of `ImageBatch` for this rank; `position` counts global batches consumed.

    `state_dict()`/`load_state_dict()` save and restore the position, so a resumed run sees the
    batches it would have seen had it not stopped."""

    def __init__(
        self,
        spec: StreamSpec,
        class_map: ClassMap | None = None,
        *,
        rank: int | None = None,
        world_size: int | None = None,
        paths: list[str] | None = None,
    ):
        self.spec = spec
        self.rank = distributed.get_rank() if rank is None else rank
        self.world_size = distributed.get_world_size() if world_size is None else world_size
        self.paths = paths if paths is not None else list_image_files(spec.data_dir)
        if spec.batch_size < 1:
            raise UserError(f"--batch_size must be at least 1 (got {spec.batch_size})")
        need = spec.batch_size * self.world_size
        if len(self.paths) < need:
            raise UserError(
                f"{spec.data_dir} has {len(self.paths)} images but one step needs {need} "
                f"(--batch_size {spec.batch_size} on {self.world_size} ranks), so a rank's shard is smaller than its batch: "
                "add images or lower --batch_size"
            )
        self.class_map = None
        labels = None
        if spec.class_cond:
            if class_map is None:
                mode = choose_label_mode(self.paths, spec.data_dir, spec.label_mode)
                class_map = build_class_map(self.paths, spec.data_dir, mode)
            self.class_map = class_map
            labels = labels_for(self.paths, spec.data_dir, class_map)
        self.dataset = ImageFolderDataset(
            self.paths,
            spec.image_size,
            labels,
            random_crop=spec.random_crop,
            random_flip=spec.random_flip,
            skip_bad_images=spec.skip_bad_images,
        )
        self.num_workers = default_num_workers() if spec.num_workers < 0 else spec.num_workers
        self.position = 0
        self.skipped_files: set[str] = set()
        self._iterator: Iterator[ImageBatch] | None = None

    @property
    def global_batch(self) -> int:
        return self.spec.batch_size * self.world_size

    def _make_iterator(self) -> Iterator[ImageBatch]:
        sampler = GlobalBatchSampler(
            len(self.paths),
            self.spec.batch_size,
            rank=self.rank,
            world_size=self.world_size,
            shuffle=not self.spec.deterministic,
            seed=self.spec.seed,
            start_batch=self.position,
        )
        loader = DataLoader(
            self.dataset,
            batch_sampler=sampler,
            num_workers=self.num_workers,
            collate_fn=collate_samples,
            pin_memory=torch.cuda.is_available(),
            prefetch_factor=4 if self.num_workers > 0 else None,
            worker_init_fn=ignore_stop_signals if self.num_workers > 0 else None,
            # Its own generator: creating an iterator must not consume draws of the global one,
            # or a resumed run's dropout would diverge from an uninterrupted run's.
            generator=torch.Generator().manual_seed(mix_seed(self.spec.seed, self.rank, self.position)),
        )
        return iter(loader)

    def __iter__(self) -> ImageStream:
        return self

    def __next__(self) -> ImageBatch:
        if self._iterator is None:
            self._iterator = self._make_iterator()
        batch = next(self._iterator)
        if batch.bad_files:
            self._report_bad(batch)
        self.position += 1
        return batch

    def _report_bad(self, batch: ImageBatch) -> None:
        if batch.failed:
            path, reason = batch.bad_files[-1]
            self.close()
            if self.spec.skip_bad_images:
                raise UserError(f"{len(batch.bad_files)} images in a row could not be read, the last {path} ({reason}): check the data folder")
            raise UserError(f"cannot read image {path} ({reason}): fix or delete it, or pass --skip_bad_images True")
        for path, reason in batch.bad_files:
            if path not in self.skipped_files:
                self.skipped_files.add(path)
                logs.log(f"skipping unreadable image {path} ({reason}); {len(self.skipped_files)} skipped so far")

    def state_dict(self) -> dict:
        """The position, in samples, so it survives a change of world size."""
        return {"samples": self.position * self.global_batch, "seed": self.spec.seed, "num_images": len(self.paths)}

    def load_state_dict(self, state: dict) -> None:
        """Continue after the samples recorded in `state`."""
        self.close()
        samples = int(state.get("samples", 0))
        self.position = samples // self.global_batch
        if samples % self.global_batch:
            logs.log(f"data position {samples} samples is not a multiple of the global batch {self.global_batch}; "
                     f"continuing from batch {self.position}")

    def close(self) -> None:
        """Stop the worker processes."""
        self._iterator = None


def resolve_class_map(spec: StreamSpec, paths: list[str], run_dir: str | os.PathLike | None) -> ClassMap | None:
    """The class map of a class-conditional run: the one saved in `run_dir` when it exists (so a
    resumed run and its validation data use the same indices), else built from `paths`."""
    if not spec.class_cond:
        return None
    saved = Path(run_dir) / CLASS_MAP_NAME if run_dir else None
    if saved is not None and saved.is_file():
        return ClassMap.load(saved)
    mode = choose_label_mode(paths, spec.data_dir, spec.label_mode)
    return build_class_map(paths, spec.data_dir, mode)
