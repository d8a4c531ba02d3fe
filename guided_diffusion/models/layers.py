"""Small building blocks shared by the UNet and the classifier: norms, N-d convs, embeddings."""
from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from typing import Any, TypeVar

import torch
import torch.nn as nn
import torch.nn.functional as F

ModuleT = TypeVar("ModuleT", bound=nn.Module)

_CONV_TYPES = (nn.Conv1d, nn.Conv2d, nn.Conv3d)


class GroupNorm32(nn.GroupNorm):
    """GroupNorm with float32 statistics whatever the input dtype (fp16 torsos stay stable).

    fp16 inputs are upcast and the result cast back, as in the original. bfloat16 inputs go to the
    native kernel, which already accumulates in float32 and (on CPU) takes float32 affine parameters:
    the same values without two full-size casts per norm.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dtype == torch.float32:
            return super().forward(x)
        if x.dtype == torch.bfloat16:
            weight: torch.Tensor | None = self.weight
            bias: torch.Tensor | None = self.bias
            if x.device.type != "cpu" and weight is not None and weight.dtype != x.dtype:
                # Mixed input/parameter dtypes are a CPU kernel feature; elsewhere cast the (small) affine.
                weight, bias = weight.to(x.dtype), bias.to(x.dtype) if bias is not None else None
            return F.group_norm(x, self.num_groups, weight, bias, self.eps)
        return super().forward(x.float()).type(x.dtype)


def normalization(channels: int) -> nn.Module:
    """The UNet's standard norm: 32-group GroupNorm in float32."""
    return GroupNorm32(32, channels)


def _of_dims(dims: int, modules: tuple[type[nn.Module], type[nn.Module], type[nn.Module]]) -> type[nn.Module]:
    """The 1-D, 2-D or 3-D module class of `modules` for `dims`."""
    if dims not in (1, 2, 3):
        raise ValueError(f"unsupported dimensions: {dims}")
    return modules[dims - 1]


def conv_nd(dims: int, *args: Any, **kwargs: Any) -> nn.Module:
    """A 1-D, 2-D or 3-D convolution."""
    return _of_dims(dims, _CONV_TYPES)(*args, **kwargs)


def linear(*args: Any, **kwargs: Any) -> nn.Module:
    """An nn.Linear (kept as a function for the original's public name)."""
    return nn.Linear(*args, **kwargs)


def avg_pool_nd(dims: int, *args: Any, **kwargs: Any) -> nn.Module:
    """A 1-D, 2-D or 3-D average pool."""
    return _of_dims(dims, (nn.AvgPool1d, nn.AvgPool2d, nn.AvgPool3d))(*args, **kwargs)


def zero_module(module: ModuleT) -> ModuleT:
    """Zero a module's parameters in place (output layers start as the identity residual)."""
    for p in module.parameters():
        p.detach().zero_()
    return module


def scale_module(module: ModuleT, scale: float) -> ModuleT:
    """Scale a module's parameters in place."""
    for p in module.parameters():
        p.detach().mul_(scale)
    return module


def mean_flat(tensor: torch.Tensor) -> torch.Tensor:
    """Mean over every dimension but the batch."""
    return tensor.mean(dim=list(range(1, tensor.ndim)))


def timestep_embedding(timesteps: torch.Tensor, dim: int, max_period: int = 10000) -> torch.Tensor:
    """Sinusoidal embedding of (possibly fractional) timesteps, [N] -> [N, dim], ordered [cos, sin]
    as the released checkpoints expect."""
    half = dim // 2
    freqs = torch.exp(
        -math.log(max_period) * torch.arange(start=0, end=half, dtype=torch.float32, device=timesteps.device) / half
    )
    args = timesteps[:, None].float() * freqs[None]
    embedding = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    if dim % 2:
        embedding = torch.cat([embedding, torch.zeros_like(embedding[:, :1])], dim=-1)
    return embedding


def checkpoint(func: Callable[..., torch.Tensor], inputs: tuple[torch.Tensor, ...], params: Iterable[torch.Tensor],
               flag: bool) -> torch.Tensor:
    """Run func(*inputs), recomputing activations in backward when flag is set.

    Unlike the original's hand-written version this uses torch.utils.checkpoint, which restores the RNG
    (dropout masks match) and supports autocast; `params` is accepted for signature compatibility.
    """
    if flag and torch.is_grad_enabled():
        recomputed: torch.Tensor = torch.utils.checkpoint.checkpoint(func, *inputs, use_reentrant=False)
        return recomputed
    return func(*inputs)


def upsample_nearest(x: torch.Tensor, dims: int) -> torch.Tensor:
    """Nearest x2 upsampling; for 3-D data only the inner two dimensions grow."""
    if dims == 3:
        return F.interpolate(x, (x.shape[2], x.shape[3] * 2, x.shape[4] * 2), mode="nearest")
    return F.interpolate(x, scale_factor=2, mode="nearest")


def _cast_convolution(module: nn.Module, dtype: torch.dtype) -> None:
    """Cast a convolution's weight and bias to `dtype` in place; other modules are left alone (the
    precision boundary of the original's fp16: the torso's convolutions only)."""
    if isinstance(module, _CONV_TYPES):
        module.weight.data = module.weight.data.to(dtype)
        if module.bias is not None:
            module.bias.data = module.bias.data.to(dtype)


def convert_module_to_f16(module: nn.Module) -> None:
    """Cast a convolution's weights to float16 (the original's fp16 boundary: torso convs only)."""
    _cast_convolution(module, torch.float16)


def convert_module_to_bf16(module: nn.Module) -> None:
    """Cast a convolution's weights to bfloat16 (the same boundary as convert_module_to_f16)."""
    _cast_convolution(module, torch.bfloat16)


def convert_module_to_f32(module: nn.Module) -> None:
    """Undo convert_module_to_f16."""
    _cast_convolution(module, torch.float32)
