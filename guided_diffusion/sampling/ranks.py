"""Rank gathering: a run's batches split over the torch.distributed ranks and put back in sample order.

Rank r of W takes the r-th batch of every round of W batches still to draw, and one gather per round
brings them to rank 0 in order; rank 0 keeps them (or writes each to a `BatchStore` at once, so a
stopped run keeps what it drew).
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

import numpy as np
import torch.distributed as dist

from guided_diffusion.runtime import distributed
from guided_diffusion.runtime.errors import SettingError
from guided_diffusion.runtime.logs import ProgressReporter

__all__ = ["BatchStore", "gather_in_order"]

Batch = tuple[np.ndarray, np.ndarray | None]


class BatchStore(Protocol):
    """Where finished batches go as they are gathered (see `resume.PartialRun`)."""

    def finished(self) -> list[int]: ...
    def write(self, start: int, images: np.ndarray, labels: np.ndarray | None) -> None: ...
    def read(self, start: int) -> Batch: ...


def gather_in_order(
    num_samples: int,
    batch_size: int,
    make_batch: Callable[[list[int]], Batch],
    *,
    progress: bool | None = False,
    start_index: int = 0,
    store: BatchStore | None = None,
    split_over_ranks: bool = True,
    label: str = "samples",
) -> Batch | None:
    """Run `make_batch(indices) -> (uint8 NHWC images, labels or None)` over samples start_index ..
    start_index + num_samples - 1 in batches of `batch_size`, split over the torch.distributed ranks.
    Returns everything, in sample order, on rank 0; None elsewhere (split_over_ranks=False: this process
    does every batch and returns them).

    Round k gives rank r the (k * world + r)-th batch still to draw, so one gather per round keeps the
    order. With a `store`, batches it already holds are skipped, and rank 0 writes each gathered batch
    there at once (so a stopped run keeps them) instead of keeping it in memory. `progress` is the
    `--progress` value (`runtime.logs.ProgressReporter`: False silent; None or True a bar in a terminal,
    plain lines elsewhere), shown on rank 0 under `label`.
    """
    for name, value in (("num_samples", num_samples), ("batch_size", batch_size)):
        if value < 1:
            raise SettingError(name, f"{name} must be at least 1, got {value}")
    rank, world = (distributed.get_rank(), distributed.get_world_size()) if split_over_ranks else (0, 1)
    end = start_index + num_samples
    batches = [list(range(s, min(s + batch_size, end))) for s in range(start_index, end, batch_size)]
    done = set(store.finished()) if store is not None and rank == 0 else set()
    if world > 1:
        box = [sorted(done)]
        dist.broadcast_object_list(box, src=0)
        done = set(box[0])
    todo = [b for b in batches if b[0] not in done]
    kept: dict[int, Batch] = {}
    already = sum(len(b) for b in batches if b[0] in done)
    reporter = ProgressReporter(num_samples, "images", progress=progress if rank == 0 else False, label=label,
                                initial=already)
    try:
        for round_start in range(0, len(todo), world):
            mine = todo[round_start + rank] if round_start + rank < len(todo) else None
            result = (mine[0], *make_batch(mine)) if mine else None
            parts = [result]
            if world > 1:
                parts = [None] * world
                dist.all_gather_object(parts, result)
            if rank == 0:
                for part in parts:
                    if part is None:
                        continue
                    start, images, labels = part
                    if store is not None:
                        store.write(start, images, labels)
                    else:
                        kept[start] = (images, labels)
            reporter.update(sum(len(b) for b in todo[round_start:round_start + world]))
    except BaseException:
        reporter.close(line=False)  # the error (or the stop) is the last word, not a progress line
        raise
    reporter.close()
    if rank != 0:
        return None
    ordered = [kept[b[0]] if b[0] in kept else _read(store, b[0]) for b in batches]
    label_parts = [part_labels for _, part_labels in ordered if part_labels is not None]
    return np.concatenate([images for images, _ in ordered]), (np.concatenate(label_parts) if label_parts else None)


def _read(store: BatchStore | None, start: int) -> Batch:
    assert store is not None  # a batch not kept in memory was written to the store
    return store.read(start)
