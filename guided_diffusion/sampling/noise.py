"""Per-sample random streams: sample i draws all of its noise from its own generator seeded by (seed, i).

Because no sample shares a stream with another, sample i is the same image whatever the batch size,
the position in the batch, or the number of processes the samples are split across (the approach
EDM's `StackedRandomGenerator` takes). Noise is drawn on the CPU and moved to the model's device, so a
seed also gives the same starting noise on a CPU and on a GPU.
"""
from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np
import torch

__all__ = ["SampleNoise", "sample_seed", "random_labels", "fresh_seed"]

# Stream tags keep the label draw and the noise draw of one sample independent of each other.
_NOISE_STREAM = 0
_LABEL_STREAM = 1


def sample_seed(seed: int, index: int, stream: int = _NOISE_STREAM) -> int:
    """A 63-bit seed for sample `index` of run `seed`, well mixed so neighbouring indices are unrelated."""
    state = np.random.SeedSequence([int(seed), int(index), int(stream)]).generate_state(2, np.uint32)
    return int((int(state[0]) << 31) ^ int(state[1])) & ((1 << 63) - 1)


def fresh_seed() -> int:
    """A random base seed for runs where the user gave none (printed so the run can be repeated)."""
    return int.from_bytes(os.urandom(4), "little") & 0x7FFFFFFF


def random_labels(seed: int, indices: Sequence[int], num_classes: int) -> np.ndarray:
    """Uniform class labels, label i depending only on (seed, i)."""
    return np.array(
        [np.random.default_rng(sample_seed(seed, i, _LABEL_STREAM)).integers(num_classes) for i in indices],
        dtype=np.int64,
    )


class SampleNoise:
    """Standard normal draws for a batch, row j taken from the generator of sample `indices[j]`.

    Each call to `randn` advances every sample's stream by one draw of one sample's shape, so the k-th
    draw of sample i is the same whichever batch it is in.
    """

    def __init__(self, seed: int, indices: Sequence[int]):
        self.seed = int(seed)
        self.indices = [int(i) for i in indices]
        self.generators = [torch.Generator().manual_seed(sample_seed(seed, i)) for i in self.indices]

    def __len__(self) -> int:
        return len(self.generators)

    def randn(
        self, shape: Sequence[int], *, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32
    ) -> torch.Tensor:
        """A [len(self), *shape[1:]] tensor of N(0, 1) draws (made on the CPU, returned on `device`)."""
        if shape[0] != len(self.generators):
            raise ValueError(f"batch of {shape[0]} rows but noise for {len(self.generators)} samples")
        rows = [torch.randn(tuple(shape[1:]), generator=g, dtype=torch.float32) for g in self.generators]
        return torch.stack(rows).to(device=device, dtype=dtype)

    def randn_like(self, x: torch.Tensor) -> torch.Tensor:
        """Like `torch.randn_like(x)`, from the per-sample streams."""
        return self.randn(x.shape, device=x.device, dtype=x.dtype)
