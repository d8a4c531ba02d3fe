"""Map-style dataset over a list of image files, with per-sample deterministic augmentation."""
from __future__ import annotations

import random
from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.data import Dataset

from guided_diffusion.data.transforms import ImageReadError, prepare_image

# Decoders of corrupt files raise many exception types (OSError, SyntaxError, struct.error, PIL's
# DecompressionBombError...); the message names the type, so a genuine bug still shows.
_IMAGE_ERRORS = (Exception,)
MAX_REPLACEMENT_TRIES = 16


@dataclass
class Sample:
    """One prepared image and what the loop needs to know about it."""

    image: np.ndarray  # CHW float32 in [-1, 1]
    label: int
    seed: int  # drives this sample's augmentation, noise and timestep
    bad_files: list[tuple[str, str]]  # (path, reason) of unreadable files met while loading it
    failed: bool  # True when no readable image could be produced


class ImageFolderDataset(Dataset):
    """`dataset[(index, seed)]` loads image `index`, cropped and flipped by an RNG seeded with
    `seed`, so augmentation is reproducible whatever the worker layout.

    An unreadable file is reported in `Sample.bad_files`; with `skip_bad_images` the next files are
    tried in its place, otherwise the sample is marked `failed` (the consumer raises a clean error:
    exceptions raised in worker processes arrive wrapped in a traceback)."""

    def __init__(
        self,
        paths: list[str],
        image_size: int,
        labels: list[int] | None = None,
        *,
        random_crop: bool = False,
        random_flip: bool = True,
        skip_bad_images: bool = False,
    ):
        self.paths = list(paths)
        self.image_size = int(image_size)
        self.labels = None if labels is None else np.asarray(labels, dtype=np.int64)
        self.random_crop = random_crop
        self.random_flip = random_flip
        self.skip_bad_images = skip_bad_images

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, key: tuple[int, int] | int) -> Sample:
        index, seed = key if isinstance(key, tuple) else (int(key), int(key))
        bad: list[tuple[str, str]] = []
        tries = MAX_REPLACEMENT_TRIES if self.skip_bad_images else 1
        for attempt in range(tries):
            current = (index + attempt) % len(self.paths)
            rng = random.Random(seed)
            try:
                image = prepare_image(
                    self.paths[current], self.image_size, random_crop=self.random_crop, random_flip=self.random_flip, rng=rng
                )
            except ImageReadError as exc:
                bad.append((self.paths[current], exc.reason))
                continue
            except _IMAGE_ERRORS as exc:
                reason = f"{type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc).strip() else 'unreadable'}"
                bad.append((self.paths[current], reason))
                continue
            label = int(self.labels[current]) if self.labels is not None else 0
            return Sample(image=image, label=label, seed=seed, bad_files=bad, failed=False)
        blank = np.zeros((3, self.image_size, self.image_size), dtype=np.float32)
        return Sample(image=blank, label=0, seed=seed, bad_files=bad, failed=True)


@dataclass
class ImageBatch:
    """A collated batch: images NCHW float32, labels int64, per-sample seeds int64."""

    images: torch.Tensor
    labels: torch.Tensor
    seeds: torch.Tensor
    bad_files: list[tuple[str, str]]
    failed: bool

    def pin_memory(self) -> ImageBatch:
        self.images = self.images.pin_memory()
        self.labels = self.labels.pin_memory()
        self.seeds = self.seeds.pin_memory()
        return self


def collate_samples(samples: list[Sample]) -> ImageBatch:
    """Stack samples into an `ImageBatch`."""
    return ImageBatch(
        images=torch.from_numpy(np.stack([s.image for s in samples])),
        labels=torch.tensor([s.label for s in samples], dtype=torch.int64),
        seeds=torch.tensor([s.seed for s in samples], dtype=torch.int64),
        bad_files=[item for s in samples for item in s.bad_files],
        failed=any(s.failed for s in samples),
    )
