"""Random streams: seed mixing, per-sample generators and their draws, and the global generators' state.

A sample (or a training example) owns a generator seeded from (run seed, index), and a draw for a batch
takes row i from row i's generator, so a sample's random numbers do not depend on the batch size, its
position in the batch or how a batch is split over processes (the approach of EDM's
`StackedRandomGenerator`).

Two seed mixers stay, because each defines streams that published results and saved runs depend on:
`sample_seed` (NumPy's SeedSequence) seeds the noise and labels of sampling and editing, and `mix_seed`
(splitmix64) seeds the data order, augmentations and the training step's draws.
"""
from __future__ import annotations

import os
import random
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch

from guided_diffusion.runtime.distributed import decide_on_rank0

__all__ = [
    "Generators", "mix_seed", "sample_seed", "fresh_seed", "choose_seed", "seeded_generators", "per_sample", "randn",
    "GeneratorNoise", "SampleNoise", "random_labels", "per_example_draws", "seed_everything",
    "capture_rng_state", "restore_rng_state",
]

# None (the global generator), one generator for the whole batch, or one per row.
Generators = torch.Generator | Sequence[torch.Generator] | None

# -- seed mixing ------------------------------------------------------------------------------------

_MASK64 = (1 << 64) - 1
# Stream tags keep the label draw and the noise draw of one sample independent of each other.
_NOISE_STREAM = 0
_LABEL_STREAM = 1
# Salt of the training step's per-example draws (`per_example_draws`).
_TRAIN_STEP_STREAM = 0x7E57


def _splitmix64(x: int) -> int:
    x = (x + 0x9E3779B97F4A7C15) & _MASK64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _MASK64
    return x ^ (x >> 31)


def mix_seed(*parts: int) -> int:
    """A well-spread non-negative 63-bit seed from integers (order matters); splitmix64."""
    state = 0x2545F4914F6CDD1D
    for part in parts:
        state = _splitmix64(state ^ (int(part) & _MASK64))
    return state >> 1


def sample_seed(seed: int, index: int, stream: int = _NOISE_STREAM) -> int:
    """A 63-bit seed for sample `index` of run `seed`, well mixed so neighbouring indices are unrelated."""
    state = np.random.SeedSequence([int(seed), int(index), int(stream)]).generate_state(2, np.uint32)
    return int((int(state[0]) << 31) ^ int(state[1])) & ((1 << 63) - 1)


def fresh_seed() -> int:
    """A random base seed for runs where the user gave none (printed so the run can be repeated)."""
    return int.from_bytes(os.urandom(4), "little") & 0x7FFFFFFF


def choose_seed(given: int | None) -> tuple[int, bool]:
    """The run's base seed and whether it was chosen here: `given` when not None, else a fresh one drawn
    on rank 0 and shared with every rank (so the caller prints it once, for repeating the run)."""
    if given is not None:
        return int(given), False
    return decide_on_rank0(fresh_seed), True


# -- per-sample generators and batch draws ----------------------------------------------------------


def seeded_generators(seeds: Sequence[int], device: torch.device | str = "cpu") -> list[torch.Generator]:
    """One torch generator per seed, on `device`."""
    return [torch.Generator(device=device).manual_seed(int(seed)) for seed in seeds]


def per_sample(
    draw: Callable[..., torch.Tensor], generators: Sequence[torch.Generator], shape: Sequence[int], *,
    device: torch.device | str | None = None, dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """A batch of `shape` whose row i is `draw(shape[1:])` (torch.randn, torch.rand) from generators[i],
    drawn on that generator's device in `dtype` and returned on `device`."""
    if len(generators) != shape[0]:
        raise ValueError(f"got {len(generators)} generators for a batch of {shape[0]}: pass one per sample")
    return torch.stack(
        [draw(tuple(shape[1:]), generator=g, device=g.device, dtype=dtype).to(device) for g in generators]
    )


def randn(shape: Sequence[int], generator: Generators = None, device: torch.device | str | None = None,
          dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Standard normal noise from the global generator, from one generator, or, with a list of
    generators, row i from generators[i]."""
    if generator is None:
        return torch.randn(*shape, device=device, dtype=dtype)
    if isinstance(generator, torch.Generator):
        return torch.randn(*shape, generator=generator, device=generator.device, dtype=dtype).to(device)
    return per_sample(torch.randn, generator, shape, device=device, dtype=dtype)


class GeneratorNoise:
    """A sampler's noise source (`randn_like`) over `Generators`: None draws from the global torch
    generator (`torch.randn_like`, as the original samplers do)."""

    def __init__(self, generator: Generators = None):
        self.generator = generator

    def randn_like(self, x: torch.Tensor) -> torch.Tensor:
        if self.generator is None:
            return torch.randn_like(x)
        return randn(x.shape, self.generator, device=x.device, dtype=x.dtype)


class SampleNoise(GeneratorNoise):
    """Noise for samples `indices` of run `seed`: row j comes from the CPU generator of sample
    `indices[j]`, seeded by `sample_seed(seed, indices[j])`.

    Each draw advances every sample's stream by one sample's shape, so the k-th draw of sample i is the
    same whichever batch it is in. Draws are made in float32 on the CPU and then cast and moved, so a
    seed gives the same noise on a CPU and a GPU and in every precision.
    """

    def __init__(self, seed: int, indices: Sequence[int]):
        self.seed = int(seed)
        self.indices = [int(i) for i in indices]
        super().__init__(seeded_generators([sample_seed(self.seed, i) for i in self.indices]))

    def __len__(self) -> int:
        return len(self.indices)

    def randn(
        self, shape: Sequence[int], *, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32
    ) -> torch.Tensor:
        """A [len(self), *shape[1:]] tensor of N(0, 1) draws (made on the CPU, returned on `device`)."""
        return randn(shape, self.generator, dtype=torch.float32).to(device=device, dtype=dtype)

    def randn_like(self, x: torch.Tensor) -> torch.Tensor:
        """Like `torch.randn_like(x)`, from the per-sample streams."""
        return self.randn(x.shape, device=x.device, dtype=x.dtype)


def random_labels(seed: int, indices: Sequence[int], num_classes: int) -> np.ndarray:
    """Uniform class labels, label i depending only on (seed, i)."""
    return np.array(
        [np.random.default_rng(sample_seed(seed, i, _LABEL_STREAM)).integers(num_classes) for i in indices],
        dtype=np.int64,
    )


def per_example_draws(
    seeds: torch.Tensor, shape: tuple[int, ...], device: torch.device, salt: int = 0
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """A training step's draws for each example seed: a uniform for its timestep, a uniform for label
    dropout and its noise of `shape`, in that order from the example's own generator. They depend on the
    seed alone, not on the batch or rank the example is in."""
    generators = seeded_generators([mix_seed(seed, _TRAIN_STEP_STREAM, salt) for seed in seeds.tolist()], device)
    batch = len(generators)
    u_t = per_sample(torch.rand, generators, (batch,), device=device)
    u_drop = per_sample(torch.rand, generators, (batch,), device=device)
    noise = per_sample(torch.randn, generators, (batch, *shape), device=device)
    return u_t, u_drop, noise


# -- the global generators --------------------------------------------------------------------------


def seed_everything(seed: int) -> None:
    """Seed Python's, NumPy's and torch's global generators (all devices)."""
    random.seed(seed)
    np.random.seed(seed % (1 << 32))
    torch.manual_seed(seed)


def capture_rng_state() -> dict[str, Any]:
    """This process's global generator states, in a form `torch.load(weights_only=True)` accepts."""
    version, internal, gauss = random.getstate()
    name, keys, pos, has_gauss, cached = np.random.get_state()
    state: dict[str, Any] = {
        "python": {"version": version, "state": list(internal), "gauss": gauss},
        "numpy": {"name": name, "keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "cached": float(cached)},
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def restore_rng_state(state: dict[str, Any]) -> None:
    """Inverse of `capture_rng_state`."""
    py = state["python"]
    random.setstate((py["version"], tuple(py["state"]), py["gauss"]))
    npy = state["numpy"]
    np.random.set_state((npy["name"], npy["keys"].numpy().astype(np.uint32), npy["pos"], npy["has_gauss"], npy["cached"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])
