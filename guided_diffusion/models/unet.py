"""The ADM networks: the diffusion UNet, its super-resolution variant, and the encoder-only noisy
classifier. Module tree and parameter names match the released checkpoints exactly."""
from __future__ import annotations

from abc import abstractmethod
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from guided_diffusion.models.attention import AttentionBlock, AttentionPool2d
from guided_diffusion.models.layers import (
    avg_pool_nd,
    checkpoint,
    conv_nd,
    convert_module_to_bf16,
    convert_module_to_f16,
    convert_module_to_f32,
    linear,
    normalization,
    timestep_embedding,
    upsample_nearest,
    zero_module,
)
from guided_diffusion.runtime.errors import SettingError


class TimestepBlock(nn.Module):
    """A module whose forward takes the timestep embedding as a second argument."""

    @abstractmethod
    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        """Apply the module to x given the timestep embedding emb."""


class TimestepEmbedSequential(nn.Sequential, TimestepBlock):
    """A Sequential that hands the timestep embedding to the children that take one."""

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:  # type: ignore[override]  # takes emb too
        for layer in self:
            x = layer(x, emb) if isinstance(layer, TimestepBlock) else layer(x)
        return x


class Upsample(nn.Module):
    """Nearest-neighbour x2 upsampling, optionally followed by a 3x3 convolution."""

    def __init__(self, channels: int, use_conv: bool, dims: int = 2, out_channels: int | None = None):
        super().__init__()
        self.channels = channels
        self.out_channels = out_channels or channels
        self.use_conv = use_conv
        self.dims = dims
        if use_conv:
            self.conv = conv_nd(dims, self.channels, self.out_channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        assert x.shape[1] == self.channels
        x = upsample_nearest(x, self.dims)
        return self.conv(x) if self.use_conv else x


class Downsample(nn.Module):
    """x2 downsampling by a strided 3x3 convolution or by average pooling (inner two dims for 3-D)."""

    def __init__(self, channels: int, use_conv: bool, dims: int = 2, out_channels: int | None = None):
        super().__init__()
        self.channels = channels
        self.out_channels = out_channels or channels
        self.use_conv = use_conv
        stride = 2 if dims != 3 else (1, 2, 2)
        if use_conv:
            self.op = conv_nd(dims, self.channels, self.out_channels, 3, stride=stride, padding=1)
        else:
            assert self.channels == self.out_channels
            self.op = avg_pool_nd(dims, kernel_size=stride, stride=stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        assert x.shape[1] == self.channels
        out: torch.Tensor = self.op(x)
        return out


class ResBlock(TimestepBlock):
    """Residual block conditioned on the timestep embedding, either added to the features or applied as
    a FiLM scale and shift after the second norm (use_scale_shift_norm); optionally resamples (up/down)."""

    def __init__(
        self,
        channels: int,
        emb_channels: int,
        dropout: float,
        out_channels: int | None = None,
        use_conv: bool = False,
        use_scale_shift_norm: bool = False,
        dims: int = 2,
        use_checkpoint: bool = False,
        up: bool = False,
        down: bool = False,
    ):
        super().__init__()
        self.channels = channels
        self.emb_channels = emb_channels
        self.dropout = dropout
        self.out_channels = out_channels or channels
        self.use_conv = use_conv
        self.use_checkpoint = use_checkpoint
        self.use_scale_shift_norm = use_scale_shift_norm

        self.in_layers = nn.Sequential(
            normalization(channels), nn.SiLU(), conv_nd(dims, channels, self.out_channels, 3, padding=1)
        )
        self.updown = up or down
        self.h_upd: nn.Module
        self.x_upd: nn.Module
        if up:
            self.h_upd, self.x_upd = Upsample(channels, False, dims), Upsample(channels, False, dims)
        elif down:
            self.h_upd, self.x_upd = Downsample(channels, False, dims), Downsample(channels, False, dims)
        else:
            self.h_upd = self.x_upd = nn.Identity()
        self.emb_layers = nn.Sequential(
            nn.SiLU(), linear(emb_channels, 2 * self.out_channels if use_scale_shift_norm else self.out_channels)
        )
        self.out_layers = nn.Sequential(
            normalization(self.out_channels),
            nn.SiLU(),
            nn.Dropout(p=dropout),
            zero_module(conv_nd(dims, self.out_channels, self.out_channels, 3, padding=1)),
        )
        self.skip_connection: nn.Module
        if self.out_channels == channels:
            self.skip_connection = nn.Identity()
        elif use_conv:
            self.skip_connection = conv_nd(dims, channels, self.out_channels, 3, padding=1)
        else:
            self.skip_connection = conv_nd(dims, channels, self.out_channels, 1)

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        return checkpoint(self._forward, (x, emb), self.parameters(), self.use_checkpoint)

    def _forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        h: torch.Tensor
        if self.updown:
            # Resample between the activation and the conv, and the skip path alike.
            h = self.in_layers[:-1](x)
            h = self.h_upd(h)
            x = self.x_upd(x)
            h = self.in_layers[-1](h)
        else:
            h = self.in_layers(x)
        emb_out: torch.Tensor = self.emb_layers(emb).type(h.dtype)
        emb_out = emb_out.reshape(*emb_out.shape, *([1] * (h.ndim - emb_out.ndim)))
        if self.use_scale_shift_norm:
            scale, shift = emb_out.chunk(2, dim=1)
            h = self.out_layers[0](h) * (1 + scale) + shift
            h = self.out_layers[1:](h)
        else:
            h = self.out_layers(h + emb_out)
        skip: torch.Tensor = self.skip_connection(x)
        return skip + h


def _attention(ch: int, use_checkpoint: bool, num_heads: int, num_head_channels: int,
               use_new_attention_order: bool) -> AttentionBlock:
    return AttentionBlock(
        ch,
        use_checkpoint=use_checkpoint,
        num_heads=num_heads,
        num_head_channels=num_head_channels,
        use_new_attention_order=use_new_attention_order,
    )


class _Encoder(nn.Module):
    """The encoder and middle block shared by UNetModel and EncoderUNetModel (built in place so the
    parameter names stay `input_blocks.*` and `middle_block.*`)."""

    _HYPERPARAMETERS = (
        "image_size", "in_channels", "model_channels", "out_channels", "num_res_blocks", "attention_resolutions",
        "dropout", "channel_mult", "conv_resample", "num_classes", "use_checkpoint", "num_heads",
        "num_head_channels", "num_heads_upsample",
    )
    model_channels: int  # set by _record_hyperparameters, like the other names above
    num_classes: int | None

    def _record_hyperparameters(self, values: dict[str, Any]) -> None:
        """Keep the constructor arguments as attributes, as the original does (code reads model.num_classes)."""
        for name in self._HYPERPARAMETERS:
            if name in values:
                setattr(self, name, values[name])
        self.dtype = torch.float16 if values["use_fp16"] else torch.float32

    def _torso(self) -> tuple[nn.Module, ...]:
        """The blocks that run in the network's dtype (the UNet adds its decoder)."""
        return self.input_blocks, self.middle_block

    def convert_to_fp16(self) -> None:
        """Cast the torso's convolutions to float16 (embeddings, norms and the output head stay float32)."""
        for part in self._torso():
            part.apply(convert_module_to_f16)

    def convert_to_bf16(self) -> None:
        """Run the torso in bfloat16: its convolutions (attention's included) hold bfloat16 weights and
        activations enter it as bfloat16. Embeddings, norm parameters and the output head stay float32."""
        for part in self._torso():
            part.apply(convert_module_to_bf16)
        self.dtype = torch.bfloat16

    def convert_to_fp32(self) -> None:
        """Undo convert_to_fp16 or convert_to_bf16."""
        for part in self._torso():
            part.apply(convert_module_to_f32)
        self.dtype = torch.float32

    def _build_time_embed(self, model_channels: int) -> None:
        emb_dim = model_channels * 4
        self.time_embed = nn.Sequential(linear(model_channels, emb_dim), nn.SiLU(), linear(emb_dim, emb_dim))

    def _build_encoder(
        self,
        in_channels: int,
        model_channels: int,
        num_res_blocks: int,
        attention_resolutions: Sequence[int],
        dropout: float,
        channel_mult: Sequence[float],
        conv_resample: bool,
        dims: int,
        use_checkpoint: bool,
        num_heads: int,
        num_head_channels: int,
        use_scale_shift_norm: bool,
        resblock_updown: bool,
        use_new_attention_order: bool,
    ) -> tuple[int, int, list[int]]:
        emb_dim = model_channels * 4

        def res(ch_in: int, ch_out: int | None = None, **kw: bool) -> ResBlock:
            return ResBlock(
                ch_in, emb_dim, dropout, out_channels=ch_out, dims=dims, use_checkpoint=use_checkpoint,
                use_scale_shift_norm=use_scale_shift_norm, **kw,
            )

        def attn(ch: int) -> AttentionBlock:
            return _attention(ch, use_checkpoint, num_heads, num_head_channels, use_new_attention_order)

        self._res, self._attn = res, attn  # reused by the UNet decoder
        ch = int(channel_mult[0] * model_channels)
        self.input_blocks = nn.ModuleList([TimestepEmbedSequential(conv_nd(dims, in_channels, ch, 3, padding=1))])
        self._feature_size = ch
        block_channels = [ch]
        ds = 1
        for level, mult in enumerate(channel_mult):
            for _ in range(num_res_blocks):
                layers: list[nn.Module] = [res(ch, int(mult * model_channels))]
                ch = int(mult * model_channels)
                if ds in attention_resolutions:
                    layers.append(attn(ch))
                self.input_blocks.append(TimestepEmbedSequential(*layers))
                self._feature_size += ch
                block_channels.append(ch)
            if level != len(channel_mult) - 1:
                down = res(ch, ch, down=True) if resblock_updown else Downsample(ch, conv_resample, dims, ch)
                self.input_blocks.append(TimestepEmbedSequential(down))
                block_channels.append(ch)
                ds *= 2
                self._feature_size += ch
        self.middle_block = TimestepEmbedSequential(res(ch), attn(ch), res(ch))
        self._feature_size += ch
        return ch, ds, block_channels


class UNetModel(_Encoder):
    """The ADM diffusion UNet. `attention_resolutions` are downsample factors (the CLI converts)."""

    def __init__(
        self,
        image_size: int,
        in_channels: int,
        model_channels: int,
        out_channels: int,
        num_res_blocks: int,
        attention_resolutions: Sequence[int],
        dropout: float = 0,
        channel_mult: Sequence[float] = (1, 2, 4, 8),
        conv_resample: bool = True,
        dims: int = 2,
        num_classes: int | None = None,
        use_checkpoint: bool = False,
        use_fp16: bool = False,
        num_heads: int = 1,
        num_head_channels: int = -1,
        num_heads_upsample: int = -1,
        use_scale_shift_norm: bool = False,
        resblock_updown: bool = False,
        use_new_attention_order: bool = False,
    ):
        super().__init__()
        if num_heads_upsample == -1:
            num_heads_upsample = num_heads
        self._record_hyperparameters(locals())

        # Registration order = state-dict key order of the released checkpoints.
        self._build_time_embed(model_channels)
        if num_classes is not None:
            self.label_emb = nn.Embedding(num_classes, model_channels * 4)
        ch, ds, block_channels = self._build_encoder(
            in_channels, model_channels, num_res_blocks, attention_resolutions, dropout, channel_mult,
            conv_resample, dims, use_checkpoint, num_heads, num_head_channels, use_scale_shift_norm,
            resblock_updown, use_new_attention_order,
        )
        res = self._res

        def attn_up(ch: int) -> AttentionBlock:
            return _attention(ch, use_checkpoint, num_heads_upsample, num_head_channels, use_new_attention_order)

        self.output_blocks = nn.ModuleList([])
        for level, mult in list(enumerate(channel_mult))[::-1]:
            for i in range(num_res_blocks + 1):
                skip_ch = block_channels.pop()
                layers: list[nn.Module] = [res(ch + skip_ch, int(model_channels * mult))]
                ch = int(model_channels * mult)
                if ds in attention_resolutions:
                    layers.append(attn_up(ch))
                if level and i == num_res_blocks:
                    layers.append(res(ch, ch, up=True) if resblock_updown else Upsample(ch, conv_resample, dims, ch))
                    ds //= 2
                self.output_blocks.append(TimestepEmbedSequential(*layers))
                self._feature_size += ch
        input_ch = int(channel_mult[0] * model_channels)
        self.out = nn.Sequential(
            normalization(ch), nn.SiLU(), zero_module(conv_nd(dims, input_ch, out_channels, 3, padding=1))
        )
        del self._res, self._attn

    def _torso(self) -> tuple[nn.Module, ...]:
        return self.input_blocks, self.middle_block, self.output_blocks

    def forward(self, x: torch.Tensor, timesteps: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        """Predict from noisy x at timesteps [N] (and class labels y [N] if class-conditional)."""
        if (y is not None) != (self.num_classes is not None):
            raise ValueError("pass y (class labels) if and only if the model is class-conditional")
        emb = self.time_embed(timestep_embedding(timesteps, self.model_channels))
        if self.num_classes is not None:
            assert y is not None and y.shape == (x.shape[0],)
            emb = emb + self.label_emb(y)
        skips = []
        h = x.type(self.dtype)
        for module in self.input_blocks:
            h = module(h, emb)
            skips.append(h)
        h = self.middle_block(h, emb)
        for module in self.output_blocks:
            h = module(torch.cat([h, skips.pop()], dim=1), emb)
        out: torch.Tensor = self.out(h.type(x.dtype))
        return out


class SuperResModel(UNetModel):
    """A UNet conditioned on a low-resolution image, upsampled bilinearly and stacked on the channels."""

    def __init__(self, image_size: int, in_channels: int, *args: Any, **kwargs: Any):
        super().__init__(image_size, in_channels * 2, *args, **kwargs)

    def forward(  # type: ignore[override]  # the original's order: low_res is the third argument
        self, x: torch.Tensor, timesteps: torch.Tensor, low_res: torch.Tensor | None = None, **kwargs: Any
    ) -> torch.Tensor:
        """Predict from noisy x given the low-resolution image (and y, as keyword, if class-conditional)."""
        if low_res is None:
            raise ValueError("SuperResModel needs the low-resolution image: pass low_res")
        _, _, new_height, new_width = x.shape
        upsampled = F.interpolate(low_res, (new_height, new_width), mode="bilinear")
        return super().forward(torch.cat([x, upsampled], dim=1), timesteps, **kwargs)


class EncoderUNetModel(_Encoder):
    """The UNet's encoder and middle block with a pooling head: the noisy classifier of ADM-G."""

    def __init__(
        self,
        image_size: int,
        in_channels: int,
        model_channels: int,
        out_channels: int,
        num_res_blocks: int,
        attention_resolutions: Sequence[int],
        dropout: float = 0,
        channel_mult: Sequence[float] = (1, 2, 4, 8),
        conv_resample: bool = True,
        dims: int = 2,
        use_checkpoint: bool = False,
        use_fp16: bool = False,
        num_heads: int = 1,
        num_head_channels: int = -1,
        num_heads_upsample: int = -1,
        use_scale_shift_norm: bool = False,
        resblock_updown: bool = False,
        use_new_attention_order: bool = False,
        pool: str = "adaptive",
    ):
        super().__init__()
        self._record_hyperparameters(locals())

        self._build_time_embed(model_channels)
        ch, ds, _ = self._build_encoder(
            in_channels, model_channels, num_res_blocks, attention_resolutions, dropout, channel_mult,
            conv_resample, dims, use_checkpoint, num_heads, num_head_channels, use_scale_shift_norm,
            resblock_updown, use_new_attention_order,
        )
        del self._res, self._attn
        self.pool = pool
        if pool == "adaptive":
            self.out = nn.Sequential(
                normalization(ch), nn.SiLU(), nn.AdaptiveAvgPool2d((1, 1)),
                zero_module(conv_nd(dims, ch, out_channels, 1)), nn.Flatten(),
            )
        elif pool == "attention":
            if num_head_channels == -1:
                raise SettingError("num_head_channels", "attention pooling needs num_head_channels (-1 leaves it unset)")
            self.out = nn.Sequential(
                normalization(ch), nn.SiLU(), AttentionPool2d(image_size // ds, ch, num_head_channels, out_channels)
            )
        elif pool == "spatial":
            self.out = nn.Sequential(nn.Linear(self._feature_size, 2048), nn.ReLU(), nn.Linear(2048, out_channels))
        elif pool == "spatial_v2":
            self.out = nn.Sequential(
                nn.Linear(self._feature_size, 2048), normalization(2048), nn.SiLU(), nn.Linear(2048, out_channels)
            )
        else:
            raise NotImplementedError(f"Unexpected {pool} pooling")

    def forward(self, x: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
        """Class logits [N, out_channels] for noisy x at timesteps."""
        emb = self.time_embed(timestep_embedding(timesteps, self.model_channels))
        spatial = self.pool.startswith("spatial")
        pooled = []
        h = x.type(self.dtype)
        for module in self.input_blocks:
            h = module(h, emb)
            if spatial:
                pooled.append(h.type(x.dtype).mean(dim=(2, 3)))
        h = self.middle_block(h, emb)
        if spatial:
            pooled.append(h.type(x.dtype).mean(dim=(2, 3)))
            logits: torch.Tensor = self.out(torch.cat(pooled, dim=-1))
        else:
            logits = self.out(h.type(x.dtype))
        return logits
