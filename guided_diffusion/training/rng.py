"""Seeding, capturing and restoring the random number generators a training step uses, and the
per-example random draws that make a step independent of how examples are split over ranks."""
from __future__ import annotations

import random
from typing import Any

import numpy as np
import torch

from guided_diffusion.data.stream import mix_seed


def seed_everything(seed: int) -> None:
    """Seed Python's, NumPy's and torch's global generators (all devices)."""
    random.seed(seed)
    np.random.seed(seed % (1 << 32))
    torch.manual_seed(seed)


def capture_rng_state() -> dict[str, Any]:
    """This process's generator states, in a form `torch.load(weights_only=True)` accepts."""
    version, internal, gauss = random.getstate()
    name, keys, pos, has_gauss, cached = np.random.get_state()
    state: dict[str, Any] = {
        "python": {"version": version, "state": list(internal), "gauss": gauss},
        "numpy": {"name": name, "keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)), "pos": int(pos), "has_gauss": int(has_gauss), "cached": float(cached)},
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


def per_example_draws(seeds: torch.Tensor, shape: tuple[int, ...], device: torch.device, salt: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """For each example seed: a uniform for its timestep, a uniform for label dropout and its noise
    of `shape`. The draws depend on the seed alone, not on the batch or rank the example is in."""
    u_t, u_drop, noise = [], [], []
    for seed in seeds.tolist():
        generator = torch.Generator(device=device).manual_seed(mix_seed(seed, 0x7E57, salt))
        u_t.append(torch.rand((), generator=generator, device=device))
        u_drop.append(torch.rand((), generator=generator, device=device))
        noise.append(torch.randn(shape, generator=generator, device=device))
    return torch.stack(u_t), torch.stack(u_drop), torch.stack(noise)
