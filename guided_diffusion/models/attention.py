"""Self-attention over flattened spatial positions, in the two head layouts of the released models.

Both layouts read the same [N, 3*H*C, T] qkv tensor but slice it differently, so a checkpoint loads in
either and only the matching one gives the trained function. The product itself runs through
`scaled_dot_product_attention` (fused, memory-efficient kernels); `attention_backend("math")` switches
to the explicit softmax(q k^T / sqrt(C)) v of the original, for baselines and debugging.
"""
from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator

import torch
import torch.nn as nn
import torch.nn.functional as F

from guided_diffusion.models.layers import checkpoint, conv_nd, normalization, zero_module
from guided_diffusion.runtime.errors import SettingError

_BACKEND = "sdpa"


@contextlib.contextmanager
def attention_backend(name: str) -> Iterator[None]:
    """Temporarily choose how attention is computed: "sdpa" (default) or "math" (explicit, as the original)."""
    global _BACKEND
    if name not in ("sdpa", "math"):
        raise ValueError(f"unknown attention backend {name!r}; use 'sdpa' or 'math'")
    previous, _BACKEND = _BACKEND, name
    try:
        yield
    finally:
        _BACKEND = previous


def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """softmax(q k^T / sqrt(C)) v for q, k, v of shape [B, heads, T, C]."""
    if _BACKEND == "sdpa":
        return F.scaled_dot_product_attention(q, k, v)
    # The original scales q and k by C^-1/4 each (fp16 headroom) and takes the softmax in float32.
    scale = 1 / math.sqrt(math.sqrt(q.shape[-1]))
    weight = torch.einsum("bhtc,bhsc->bhts", q * scale, k * scale)
    weight = torch.softmax(weight.float(), dim=-1).type(weight.dtype)
    return torch.einsum("bhts,bhsc->bhtc", weight, v)


class _QKVAttention(nn.Module):
    """Multi-head attention over a fused [N, 3*H*C, T] qkv tensor; subclasses say how it is sliced."""

    def __init__(self, n_heads: int):
        super().__init__()
        self.n_heads = n_heads

    def _split(self, qkv: torch.Tensor, ch: int) -> tuple[torch.Tensor, ...]:
        raise NotImplementedError

    def forward(self, qkv: torch.Tensor) -> torch.Tensor:
        bs, width, length = qkv.shape
        q, k, v = self._split(qkv, width // (3 * self.n_heads))  # each [N, H, T, C]
        return attend(q, k, v).transpose(-1, -2).reshape(bs, -1, length)


class QKVAttentionLegacy(_QKVAttention):
    """Heads split before q/k/v: qkv viewed as [N, H, 3C, T] (the 128x128 and 64->256 checkpoints)."""

    def _split(self, qkv, ch):
        bs, _, length = qkv.shape
        return qkv.reshape(bs, self.n_heads, 3 * ch, length).transpose(-1, -2).split(ch, dim=-1)


class QKVAttention(_QKVAttention):
    """q/k/v split before heads: qkv viewed as [N, 3, H, C, T] (the 64x64 model and attention pooling)."""

    def _split(self, qkv, ch):
        bs, _, length = qkv.shape
        return qkv.reshape(bs, 3, self.n_heads, ch, length).transpose(-1, -2).unbind(1)


class AttentionBlock(nn.Module):
    """Residual self-attention over all spatial positions: x + proj_out(attention(qkv(norm(x))))."""

    def __init__(
        self,
        channels: int,
        num_heads: int = 1,
        num_head_channels: int = -1,
        use_checkpoint: bool = False,
        use_new_attention_order: bool = False,
    ):
        super().__init__()
        self.channels = channels
        if num_head_channels == -1:
            self.num_heads = num_heads
        else:
            if channels % num_head_channels != 0:
                raise SettingError("num_head_channels", f"channels {channels} is not divisible by num_head_channels {num_head_channels}")
            self.num_heads = channels // num_head_channels
        self.use_checkpoint = use_checkpoint
        self.norm = normalization(channels)
        self.qkv = conv_nd(1, channels, channels * 3, 1)
        self.attention = QKVAttention(self.num_heads) if use_new_attention_order else QKVAttentionLegacy(self.num_heads)
        self.proj_out = zero_module(conv_nd(1, channels, channels, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # The original always checkpointed attention; here only when asked (same numbers, less compute).
        return checkpoint(self._forward, (x,), self.parameters(), self.use_checkpoint)

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, *spatial = x.shape
        x = x.reshape(b, c, -1)
        h = self.attention(self.qkv(self.norm(x)))
        h = self.proj_out(h)
        return (x + h).reshape(b, c, *spatial)


class AttentionPool2d(nn.Module):
    """CLIP-style pooling: attend from the mean token over all positions (with learned positions, which
    fix the input resolution), return the projected mean token."""

    def __init__(self, spacial_dim: int, embed_dim: int, num_heads_channels: int, output_dim: int | None = None):
        super().__init__()
        self.positional_embedding = nn.Parameter(torch.randn(embed_dim, spacial_dim**2 + 1) / embed_dim**0.5)
        self.qkv_proj = conv_nd(1, embed_dim, 3 * embed_dim, 1)
        self.c_proj = conv_nd(1, embed_dim, output_dim or embed_dim, 1)
        self.num_heads = embed_dim // num_heads_channels
        self.attention = QKVAttention(self.num_heads)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, *_ = x.shape
        x = x.reshape(b, c, -1)
        x = torch.cat([x.mean(dim=-1, keepdim=True), x], dim=-1)
        x = x + self.positional_embedding[None, :, :].to(x.dtype)
        x = self.qkv_proj(x)
        x = self.attention(x)
        x = self.c_proj(x)
        return x[:, :, 0]
