"""Sampling with fewer steps: keep a subset of the training timesteps and rebuild the betas so the
marginals q(x_t | x_0) of the kept steps are unchanged (Nichol & Dhariwal 2021, sec. 4)."""
from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any

import numpy as np
import torch

from guided_diffusion.diffusion.gaussian import GaussianDiffusion, Model
from guided_diffusion.runtime.errors import SettingError


def space_timesteps(num_timesteps: int, section_counts: str | Iterable[int]) -> set[int]:
    """The timesteps of a T-step process to keep.

    `section_counts` is a comma list such as "10,15,20" (split [0, T) into equal sections and take that
    many evenly strided steps from each) or "ddimN" (the fixed integer stride of the DDIM paper, which
    starts at 0 and never includes T-1; kept as is because published FIDs use it).
    """
    if isinstance(section_counts, str):
        if section_counts.startswith("ddim"):
            desired_count = int(section_counts[len("ddim"):])
            for stride in range(1, num_timesteps):
                if len(range(0, num_timesteps, stride)) == desired_count:
                    return set(range(0, num_timesteps, stride))
            raise ValueError(f"cannot create exactly {desired_count} steps with an integer stride")
        section_counts = [int(x) for x in section_counts.split(",")]
    section_counts = list(section_counts)
    size_per = num_timesteps // len(section_counts)
    extra = num_timesteps % len(section_counts)
    start_idx = 0
    all_steps: list[int] = []
    for i, section_count in enumerate(section_counts):
        size = size_per + (1 if i < extra else 0)
        if size < section_count:
            raise ValueError(f"cannot divide section of {size} steps into {section_count}")
        frac_stride = 1 if section_count <= 1 else (size - 1) / (section_count - 1)
        cur_idx = 0.0
        taken = []
        for _ in range(section_count):
            taken.append(start_idx + round(cur_idx))
            cur_idx += frac_stride
        all_steps += taken
        start_idx += size
    return set(all_steps)


class _WrappedModel:
    """Calls the model with original timesteps when the sampler counts in respaced indices."""

    def __init__(self, model: Callable[..., torch.Tensor], timestep_map: Sequence[float], rescale_timesteps: bool,
                 original_num_steps: int):
        self.model = model
        self.timestep_map = timestep_map
        self.rescale_timesteps = rescale_timesteps
        self.original_num_steps = original_num_steps
        self._maps: dict[torch.device, torch.Tensor] = {}

    def __call__(self, x: torch.Tensor, ts: torch.Tensor, **kwargs: Any) -> torch.Tensor:
        map_tensor = self._maps.get(ts.device)
        if map_tensor is None:
            # A grid of fractional timesteps (GridDiffusion) hands the model float t.
            integral = all(float(t).is_integer() for t in self.timestep_map)
            map_tensor = torch.tensor(self.timestep_map, device=ts.device, dtype=torch.long if integral else torch.float32)
            self._maps[ts.device] = map_tensor
        new_ts = map_tensor[ts]
        if self.rescale_timesteps:
            new_ts = new_ts.float() * (1000.0 / self.original_num_steps)
        return self.model(x, new_ts, **kwargs)


class SpacedDiffusion(GaussianDiffusion):
    """A diffusion over a subset of a base process's steps. Methods count in the respaced indices;
    the model and `cond_fn` always receive original timesteps."""

    def __init__(self, use_timesteps: Iterable[int], **kwargs: Any):
        # float: a GridDiffusion's levels may fall between trained steps (ints here)
        self.use_timesteps: set[float] = set(use_timesteps)
        self.timestep_map: list[float] = []
        self.original_num_steps = len(kwargs["betas"])
        base_diffusion = GaussianDiffusion(**kwargs)
        last_alpha_cumprod = 1.0
        new_betas = []
        for i, alpha_cumprod in enumerate(base_diffusion.alphas_cumprod):
            if i in self.use_timesteps:
                new_betas.append(1 - alpha_cumprod / last_alpha_cumprod)
                last_alpha_cumprod = alpha_cumprod
                self.timestep_map.append(i)
        kwargs["betas"] = np.array(new_betas)
        self._wrapped: tuple[Callable[..., torch.Tensor], _WrappedModel] | None = None
        super().__init__(**kwargs)

    def p_mean_variance(self, model: Model, *args: Any, **kwargs: Any) -> dict[str, torch.Tensor]:
        return super().p_mean_variance(self._wrap_model(model), *args, **kwargs)

    def training_losses(self, model: Model, *args: Any, **kwargs: Any) -> dict[str, torch.Tensor]:
        return super().training_losses(self._wrap_model(model), *args, **kwargs)

    def condition_mean(self, cond_fn: Model, *args: Any, **kwargs: Any) -> torch.Tensor:
        return super().condition_mean(self._wrap_model(cond_fn), *args, **kwargs)

    def condition_score(self, cond_fn: Model, *args: Any, **kwargs: Any) -> dict[str, torch.Tensor]:
        return super().condition_score(self._wrap_model(cond_fn), *args, **kwargs)

    def _wrap_model(self, model: Model) -> Model:
        if isinstance(model, _WrappedModel):
            return model
        # Reuse the wrapper (and its device map) while the same model is passed step after step.
        if self._wrapped is not None and self._wrapped[0] is model:
            return self._wrapped[1]
        wrapped = _WrappedModel(model, self.timestep_map, self.rescale_timesteps, self.original_num_steps)
        self._wrapped = (model, wrapped)
        return wrapped

    def _scale_timesteps(self, t: torch.Tensor) -> torch.Tensor:
        return t  # the wrapper scales

    def timestep_table(self) -> tuple[np.ndarray, np.ndarray]:
        return np.asarray(self.timestep_map, dtype=np.float64), np.asarray(self.alphas_cumprod, dtype=np.float64)


class GridDiffusion(SpacedDiffusion):
    """A diffusion over any grid of noise levels of a base process, fractional timesteps allowed.

    Grid step k has `alphas_cumprod[k]` (ascending noise) and model timestep `timesteps[k]` in the base
    process's 0..T-1 (a float when the level falls between two trained steps); betas are rebuilt from the
    grid as SpacedDiffusion does, so p_sample's posterior and learned-variance interpolation apply on any
    grid. The model and `cond_fn` receive `timesteps[k]` (times 1000 / T under rescale_timesteps).
    `base_timesteps`/`base_alphas_cumprod` keep the base schedule, for evaluations between grid points.
    """

    def __init__(self, timesteps: Sequence[float] | np.ndarray, alphas_cumprod: np.ndarray, *, base_timesteps: np.ndarray,
                 base_alphas_cumprod: np.ndarray, original_num_steps: int, **kwargs: Any):
        abar = np.asarray(alphas_cumprod, dtype=np.float64)
        if len(abar) < 2 or not (np.diff(abar) < 0).all():
            raise ValueError("a grid needs at least 2 levels with strictly increasing noise")
        self.timestep_map = [float(t) for t in timesteps]
        self.use_timesteps = set(self.timestep_map)
        self.original_num_steps = int(original_num_steps)
        self.base_timesteps = np.asarray(base_timesteps, dtype=np.float64)
        self.base_alphas_cumprod = np.asarray(base_alphas_cumprod, dtype=np.float64)
        self._wrapped = None
        kwargs["betas"] = 1.0 - abar / np.concatenate([[1.0], abar[:-1]])
        GaussianDiffusion.__init__(self, **kwargs)

    def timestep_table(self) -> tuple[np.ndarray, np.ndarray]:
        return self.base_timesteps, self.base_alphas_cumprod


def parse_respacing(num_timesteps: int, timestep_respacing: str) -> set[int]:
    """space_timesteps for a timestep_respacing setting ("" keeps every step), with a one-line error."""
    if not timestep_respacing:
        return set(range(num_timesteps))
    try:
        return space_timesteps(num_timesteps, timestep_respacing)
    except ValueError as exc:
        raise SettingError(
            "timestep_respacing",
            f"timestep_respacing {timestep_respacing!r} does not fit {num_timesteps} diffusion steps ({exc}); "
            "use a comma list of counts such as 250 or 10,15,20, or ddimN with N dividing the steps evenly",
        ) from None
