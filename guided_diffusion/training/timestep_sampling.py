"""Timestep samplers for training: which t each example is noised to, and its importance weight.

`uniform` draws t uniformly. `loss-second-moment` (improved-diffusion's L_vlb recipe) draws t with
probability proportional to the root mean square of the last 10 losses seen at t, mixed with a
little uniform mass, once every t has 10 recorded losses. Weights are 1 / (T * p_t), so the
expected weighted loss is unchanged.
"""
from __future__ import annotations

from abc import ABC, abstractmethod

import numpy as np
import torch
import torch.distributed as dist

from guided_diffusion.runtime.errors import SettingError

SAMPLER_NAMES = ("uniform", "loss-second-moment")


def create_named_schedule_sampler(name: str, diffusion) -> ScheduleSampler:
    """The sampler called `name` for `diffusion` (`uniform` or `loss-second-moment`)."""
    if name == "uniform":
        return UniformSampler(diffusion)
    if name == "loss-second-moment":
        return LossSecondMomentResampler(diffusion)
    raise SettingError("schedule_sampler", f"unknown schedule sampler {name!r}: schedule_sampler is one of {', '.join(SAMPLER_NAMES)}")


class ScheduleSampler(ABC):
    """A distribution over timesteps, possibly reweighting the loss to stay unbiased."""

    @abstractmethod
    def weights(self) -> np.ndarray:
        """Unnormalised positive weight per timestep."""

    def probabilities(self) -> np.ndarray:
        weights = np.asarray(self.weights(), dtype=np.float64)
        return weights / np.sum(weights)

    def sample(self, batch_size: int, device: torch.device | str) -> tuple[torch.Tensor, torch.Tensor]:
        """Draw `batch_size` timesteps with NumPy's global RNG (as the original); returns
        (timesteps int64, importance weights float32)."""
        p = self.probabilities()
        indices_np = np.random.choice(len(p), size=(batch_size,), p=p)
        weights_np = 1.0 / (len(p) * p[indices_np])
        return torch.from_numpy(indices_np).long().to(device), torch.from_numpy(weights_np).float().to(device)

    def sample_from_uniform(self, u: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Timesteps for given uniforms `u` in [0, 1) by inverting the CDF (lets each example draw
        its timestep from its own seed); returns (timesteps int64, weights float32) on u's device."""
        # On the host in NumPy float64: no float64 tensor on the device (Apple's MPS has none).
        p = np.asarray(self.probabilities(), dtype=np.float64)
        cdf = np.cumsum(p)
        draws = u.detach().cpu().numpy().astype(np.float64)
        indices = np.minimum(np.searchsorted(cdf, draws * cdf[-1], side="right"), len(p) - 1)
        weights = 1.0 / (len(p) * p[indices])
        return (torch.from_numpy(indices.astype(np.int64)).to(u.device),
                torch.from_numpy(weights.astype(np.float32)).to(u.device))

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        del state


class UniformSampler(ScheduleSampler):
    """Every timestep equally likely; all weights 1."""

    def __init__(self, diffusion):
        self.diffusion = diffusion
        self._weights = np.ones([diffusion.num_timesteps])

    def weights(self) -> np.ndarray:
        return self._weights


class LossAwareSampler(ScheduleSampler):
    """A sampler that learns from the training losses of every rank."""

    def update_with_local_losses(self, local_ts: torch.Tensor, local_losses: torch.Tensor) -> None:
        """Share this rank's (timestep, loss) pairs with every rank, then update. A collective
        when several ranks run: all ranks must call it, with any local batch sizes."""
        ts = local_ts.detach().reshape(-1)
        losses = local_losses.detach().reshape(-1).float()
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            world = dist.get_world_size()
            size = torch.tensor([ts.numel()], device=ts.device, dtype=torch.int64)
            sizes = [torch.zeros_like(size) for _ in range(world)]
            dist.all_gather(sizes, size)
            sizes_list = [int(s.item()) for s in sizes]
            longest = max(sizes_list)
            # all_gather needs equal shapes: pad to the longest batch, then trim.
            padded_ts = torch.zeros(longest, device=ts.device, dtype=ts.dtype)
            padded_losses = torch.zeros(longest, device=losses.device, dtype=losses.dtype)
            padded_ts[: ts.numel()] = ts
            padded_losses[: losses.numel()] = losses
            gathered_ts = [torch.zeros_like(padded_ts) for _ in range(world)]
            gathered_losses = [torch.zeros_like(padded_losses) for _ in range(world)]
            dist.all_gather(gathered_ts, padded_ts)
            dist.all_gather(gathered_losses, padded_losses)
            ts = torch.cat([g[:n] for g, n in zip(gathered_ts, sizes_list)])
            losses = torch.cat([g[:n] for g, n in zip(gathered_losses, sizes_list)])
        self.update_with_all_losses(ts.cpu().tolist(), losses.cpu().tolist())

    @abstractmethod
    def update_with_all_losses(self, ts: list[int], losses: list[float]) -> None:
        """Update from the losses of every rank (same call on every rank)."""


class LossSecondMomentResampler(LossAwareSampler):
    """p_t proportional to sqrt(E[loss_t^2]) over the last `history_per_term` losses at t."""

    def __init__(self, diffusion, history_per_term: int = 10, uniform_prob: float = 0.001):
        self.diffusion = diffusion
        self.history_per_term = history_per_term
        self.uniform_prob = uniform_prob
        self._loss_history = np.zeros([diffusion.num_timesteps, history_per_term], dtype=np.float64)
        self._loss_counts = np.zeros([diffusion.num_timesteps], dtype=np.int64)

    def weights(self) -> np.ndarray:
        if not self._warmed_up():
            return np.ones([self.diffusion.num_timesteps], dtype=np.float64)
        weights = np.sqrt(np.mean(self._loss_history**2, axis=-1))
        weights /= np.sum(weights)
        weights *= 1 - self.uniform_prob
        weights += self.uniform_prob / len(weights)
        return weights

    def update_with_all_losses(self, ts: list[int], losses: list[float]) -> None:
        for t, loss in zip(ts, losses):
            t = int(t)
            if self._loss_counts[t] == self.history_per_term:
                # Full: drop the oldest loss.
                self._loss_history[t, :-1] = self._loss_history[t, 1:]
                self._loss_history[t, -1] = loss
            else:
                self._loss_history[t, self._loss_counts[t]] = loss
                self._loss_counts[t] += 1

    def _warmed_up(self) -> bool:
        return bool((self._loss_counts == self.history_per_term).all())

    def state_dict(self) -> dict:
        return {"loss_history": torch.from_numpy(self._loss_history.copy()), "loss_counts": torch.from_numpy(self._loss_counts.copy())}

    def load_state_dict(self, state: dict) -> None:
        if "loss_history" not in state:
            return
        history = state["loss_history"].numpy().astype(np.float64)
        if history.shape != self._loss_history.shape:
            raise SettingError(
                "diffusion_steps",
                f"saved loss-second-moment history has shape {tuple(history.shape)}, this run needs {self._loss_history.shape}: "
                "resume with the same diffusion_steps",
            )
        self._loss_history = history
        self._loss_counts = state["loss_counts"].numpy().astype(np.int64)
