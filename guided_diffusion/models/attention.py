"""Self-attention over flattened spatial positions, in the two head layouts of the released models.

Both layouts read the same [N, 3*H*C, T] qkv tensor but slice it differently, so a checkpoint loads in
either and only the matching one gives the trained function. The product itself runs through
`scaled_dot_product_attention` (fused, memory-efficient kernels; bfloat16 on a CPU takes two bfloat16
GEMMs instead, which are faster there); `attention_backend("math")` switches to the explicit
softmax(q k^T / sqrt(C)) v of the original, for baselines and debugging.

The default path keeps q, k and v token-major ([N, T, 3*H*C], unit stride along each head's channels):
the fused kernels require that layout and fall back to the unfused math otherwise.
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
        if q.dtype == torch.bfloat16 and q.device.type == "cpu":
            # PyTorch's fused CPU kernel gains nothing from bfloat16: at the 64x64 model's shapes it ran
            # no faster than in float32 and slower than two bfloat16 GEMMs, its backward most of all.
            # The softmax between them still accumulates in float32 inside its kernel.
            weight = torch.matmul(q * q.shape[-1] ** -0.5, k.transpose(-1, -2))
            return torch.matmul(torch.softmax(weight, dim=-1), v)
        return F.scaled_dot_product_attention(q, k, v)
    # The original scales q and k by C^-1/4 each (fp16 headroom) and takes the softmax in float32.
    scale = 1 / math.sqrt(math.sqrt(q.shape[-1]))
    weight = torch.einsum("bhtc,bhsc->bhts", q * scale, k * scale)
    weight = torch.softmax(weight.float(), dim=-1).type(weight.dtype)
    return torch.einsum("bhts,bhsc->bhtc", weight, v)


class _QKVAttention(nn.Module):
    """Multi-head attention over a fused qkv tensor; subclasses say how its channels are sliced.

    `forward` takes the original's channel-major [N, 3*H*C, T]; `attend_tokens` takes token-major
    [N, T, 3*H*C] and returns [N, T, H*C]. In token-major layout every head's q, k and v have unit stride
    along C, which the fused SDPA kernels need (with C strided they fall back to the unfused math path).
    """

    def __init__(self, n_heads: int):
        super().__init__()
        self.n_heads = n_heads

    def _split(self, qkv: torch.Tensor, ch: int) -> tuple[torch.Tensor, ...]:
        """Channel-major [N, 3*H*C, T] -> q, k, v of shape [N, H, T, C] (the original's slicing)."""
        raise NotImplementedError

    def _split_tokens(self, qkv: torch.Tensor, ch: int) -> tuple[torch.Tensor, ...]:
        """Token-major [N, T, 3*H*C] -> q, k, v of shape [N, H, T, C], views with unit stride along C."""
        raise NotImplementedError

    def forward(self, qkv: torch.Tensor) -> torch.Tensor:
        if _BACKEND == "sdpa":
            return self.attend_tokens(qkv.transpose(1, 2).contiguous()).transpose(1, 2)
        bs, width, length = qkv.shape
        q, k, v = self._split(qkv, width // (3 * self.n_heads))  # each [N, H, T, C]
        return attend(q, k, v).transpose(-1, -2).reshape(bs, -1, length)

    def attend_tokens(self, qkv: torch.Tensor) -> torch.Tensor:
        """Attention over token-major qkv [N, T, 3*H*C]; the result is [N, T, H*C] (heads outermost)."""
        bs, length, width = qkv.shape
        q, k, v = self._split_tokens(qkv, width // (3 * self.n_heads))
        return attend(q, k, v).transpose(1, 2).reshape(bs, length, -1)


class QKVAttentionLegacy(_QKVAttention):
    """Heads split before q/k/v: qkv viewed as [N, H, 3C, T] (the 128x128 and 64->256 checkpoints)."""

    def _split(self, qkv: torch.Tensor, ch: int) -> tuple[torch.Tensor, ...]:
        bs, _, length = qkv.shape
        return torch.split(qkv.reshape(bs, self.n_heads, 3 * ch, length).transpose(-1, -2), ch, dim=-1)

    def _split_tokens(self, qkv: torch.Tensor, ch: int) -> tuple[torch.Tensor, ...]:
        bs, length, _ = qkv.shape
        return qkv.view(bs, length, self.n_heads, 3, ch).permute(3, 0, 2, 1, 4).unbind(0)


class QKVAttention(_QKVAttention):
    """q/k/v split before heads: qkv viewed as [N, 3, H, C, T] (the 64x64 model and attention pooling)."""

    def _split(self, qkv: torch.Tensor, ch: int) -> tuple[torch.Tensor, ...]:
        bs, _, length = qkv.shape
        return qkv.reshape(bs, 3, self.n_heads, ch, length).transpose(-1, -2).unbind(1)

    def _split_tokens(self, qkv: torch.Tensor, ch: int) -> tuple[torch.Tensor, ...]:
        bs, length, _ = qkv.shape
        return qkv.view(bs, length, 3, self.n_heads, ch).permute(2, 0, 3, 1, 4).unbind(0)


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
        self.qkv = nn.Conv1d(channels, channels * 3, 1)
        self.attention: _QKVAttention = (
            QKVAttention(self.num_heads) if use_new_attention_order else QKVAttentionLegacy(self.num_heads)
        )
        self.proj_out = zero_module(nn.Conv1d(channels, channels, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # The original always checkpointed attention; here only when asked (same numbers, less compute).
        return checkpoint(self._forward, (x,), self.parameters(), self.use_checkpoint)

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        if _BACKEND == "math":
            b, c, *spatial = x.shape
            x = x.reshape(b, c, -1)
            h: torch.Tensor = self.proj_out(self.attention(self.qkv(self.norm(x))))
            return (x + h).reshape(b, c, *spatial)
        # Token-major: the 1x1 convolutions become matmuls over [N, T, C] tokens, and the heads reach SDPA
        # with unit stride along C. A channels-last input makes every transpose here a view.
        normed: torch.Tensor = self.norm(x)
        tokens = normed.flatten(2).transpose(1, 2)
        qkv = F.linear(tokens, self.qkv.weight.squeeze(-1), self.qkv.bias)
        h = F.linear(self.attention.attend_tokens(qkv), self.proj_out.weight.squeeze(-1), self.proj_out.bias)
        return x + h.transpose(1, 2).reshape(x.shape)


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
