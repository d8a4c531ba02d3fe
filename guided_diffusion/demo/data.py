"""The demo's data: scikit-learn's 8x8 handwritten digits as 3-channel images, split and batched in memory."""
from __future__ import annotations

import importlib
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch

from guided_diffusion.runtime.errors import UserError

__all__ = ["Digits", "require_demo_extras", "load_digits_dataset", "to_model_input", "InMemoryBatches"]

NUM_CLASSES = 10
IMAGE_SIZE = 8
_MAX_INK = 16  # load_digits pixel values are ink counts 0..16


@dataclass
class Digits:
    """uint8 NHWC RGB images (ink dark on white, as on paper) with labels, split into train and test."""

    images: np.ndarray  # (N, 8, 8, 3) uint8
    labels: np.ndarray  # (N,) int64
    train: np.ndarray  # indices of the training split
    test: np.ndarray  # indices of the held-out split

    def subset(self, indices: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return self.images[indices], self.labels[indices]


def require_demo_extras() -> None:
    """Fail at the start, not after minutes of training, when the `[demo]` extra is not installed."""
    missing = []
    for module, package in (("sklearn.datasets", "scikit-learn"), ("matplotlib", "matplotlib")):
        try:
            importlib.import_module(module)
        except ImportError:
            missing.append(package)
    if missing:
        raise UserError(f"the demo needs {' and '.join(missing)}: pip install -c constraints.txt -e '.[demo]'")


def load_digits_dataset(test_fraction: float = 0.2, split_seed: int = 0) -> Digits:
    """The 1797 digits of `sklearn.datasets.load_digits` as uint8 RGB, with a stratified held-out split
    (the same for every run seed, so runs differ only in what they train and sample)."""
    require_demo_extras()
    from sklearn.datasets import load_digits

    bunch = load_digits()
    ink = np.asarray(bunch.images, dtype=np.float64)  # (N, 8, 8) in 0..16
    gray = np.rint(255.0 * (1.0 - ink / _MAX_INK)).astype(np.uint8)
    images = np.repeat(gray[..., None], 3, axis=-1)
    labels = np.asarray(bunch.target, dtype=np.int64)
    rng = np.random.default_rng(split_seed)
    test: list[np.ndarray] = []
    for c in range(NUM_CLASSES):
        members = np.flatnonzero(labels == c)
        test.extend(rng.permutation(members)[: int(round(test_fraction * len(members)))])
    test_idx = np.sort(np.asarray(test, dtype=np.int64))
    train_idx = np.setdiff1d(np.arange(len(labels)), test_idx)
    return Digits(images=images, labels=labels, train=train_idx, test=test_idx)


def to_model_input(images: np.ndarray) -> torch.Tensor:
    """uint8 NHWC -> float32 NCHW in [-1, 1], the networks' input convention."""
    return torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).float() / 127.5 - 1.0


class InMemoryBatches(Iterator[tuple[torch.Tensor, dict[str, torch.Tensor]]]):
    """Endless `(images, {"y": labels})` batches in the training loop's tuple form: each epoch a fresh
    permutation drawn from the seed, so the batch sequence depends on the seed alone."""

    def __init__(self, images: np.ndarray, labels: np.ndarray, batch_size: int, seed: int, with_labels: bool = True):
        if batch_size < 1 or batch_size > len(images):
            raise UserError(f"batch size {batch_size} must be between 1 and the {len(images)} training images")
        self.images = to_model_input(images)
        self.labels = torch.as_tensor(labels, dtype=torch.long)
        self.batch_size = batch_size
        self.with_labels = with_labels
        self.generator = torch.Generator().manual_seed(int(seed))
        self._order = torch.empty(0, dtype=torch.long)
        self._position = 0

    def __next__(self) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        if self._position + self.batch_size > len(self._order):
            self._order = torch.randperm(len(self.images), generator=self.generator)
            self._position = 0
        chunk = self._order[self._position : self._position + self.batch_size]
        self._position += self.batch_size
        cond = {"y": self.labels[chunk]} if self.with_labels else {}
        return self.images[chunk], cond
