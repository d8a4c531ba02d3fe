"""The 2015 TensorFlow Inception-v3 graph used by OpenAI's evaluator, as a PyTorch module.

Module and parameter names equal those of pytorch-fid's port (torchvision's Inception3 naming, 1008-way
`fc`, no auxiliary head), so its `pt_inception-2015-12-05-6726825d.pth` state dict loads directly. The
blocks differ from torchvision's Inception3 where the TF graph does: average pools in Mixed_5*/6*/7b
exclude padding, Mixed_7c max-pools in its pool branch, and batch norm uses eps=0.001.
"""
from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["InceptionV3", "InceptionOutput", "resize_bilinear_tf1", "INPUT_SIZE", "SPATIAL_CHANNELS"]

INPUT_SIZE = 299  # the TF graph resizes every input to 299x299
SPATIAL_CHANNELS = 7  # sFID keeps the first 7 channels of mixed_6/conv (17x17 map -> 2023 values)


class InceptionOutput(NamedTuple):
    """Features of one batch: `pool` (N, 2048) pool_3, `spatial` (N, 7, 17, 17) the first channels of
    mixed_6/conv, `logits` (N, 1008) = pool @ fc.weight.T without bias (the evaluator's IS logits)."""

    pool: torch.Tensor
    spatial: torch.Tensor
    logits: torch.Tensor


def _tf1_sample_points(in_size: int, out_size: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Lower/upper source indices and interpolation weights of TF1's legacy bilinear scaler.

    TF1 (align_corners=False, no half-pixel centres) maps output index i to source coordinate
    i * (in_size / out_size), with the scale and the product rounded to float32.
    """
    scale = torch.tensor(in_size, dtype=torch.float32) / torch.tensor(out_size, dtype=torch.float32)
    source = torch.arange(out_size, dtype=torch.float32) * scale
    floor = torch.floor(source)
    lower = floor.long().clamp(min=0)
    upper = torch.ceil(source).long().clamp(max=in_size - 1)
    return lower.to(device), upper.to(device), (source - floor).to(device)


def resize_bilinear_tf1(images: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Resize float NCHW `images` to `size` (height, width) exactly as TF1's `resize_bilinear` does.

    Interpolates along width within the upper and lower source rows, then along height, in float32,
    in the same operation order as TensorFlow's kernel.
    """
    height, width = images.shape[-2:]
    out_height, out_width = size
    if (height, width) == (out_height, out_width):
        return images
    images = images.float()
    y_low, y_high, y_weight = _tf1_sample_points(height, out_height, images.device)
    x_low, x_high, x_weight = _tf1_sample_points(width, out_width, images.device)
    top = images.index_select(-2, y_low)
    bottom = images.index_select(-2, y_high)
    top_left, top_right = top.index_select(-1, x_low), top.index_select(-1, x_high)
    bottom_left, bottom_right = bottom.index_select(-1, x_low), bottom.index_select(-1, x_high)
    upper_row = top_left + (top_right - top_left) * x_weight
    lower_row = bottom_left + (bottom_right - bottom_left) * x_weight
    return upper_row + (lower_row - upper_row) * y_weight[:, None]


class BasicConv2d(nn.Module):
    """Convolution without bias, batch norm (eps 0.001), ReLU."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size, stride=1, padding=0) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size, stride=stride, padding=padding, bias=False)
        self.bn: nn.Module = nn.BatchNorm2d(out_channels, eps=0.001)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.bn(self.conv(x)))

    @torch.no_grad()
    def fuse_batchnorm(self) -> None:
        """Fold the (inference-mode) batch norm into the convolution: one op instead of two."""
        if not isinstance(self.bn, nn.BatchNorm2d):
            return
        bn, conv = self.bn, self.conv
        assert bn.running_var is not None and bn.running_mean is not None  # built with running statistics
        scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
        padding = conv.padding if isinstance(conv.padding, str) else (conv.padding[0], conv.padding[1])
        fused = nn.Conv2d(
            conv.in_channels, conv.out_channels, (conv.kernel_size[0], conv.kernel_size[1]),
            stride=(conv.stride[0], conv.stride[1]), padding=padding, bias=True,
        ).to(conv.weight.device, conv.weight.dtype)
        assert fused.bias is not None
        fused.weight.copy_(conv.weight * scale[:, None, None, None])
        fused.bias.copy_(bn.bias - bn.running_mean * scale)
        self.conv, self.bn = fused, nn.Identity()


def _avg_pool_3x3(x: torch.Tensor) -> torch.Tensor:
    # TF's SAME average pool divides by the number of real (non-padding) inputs.
    return F.avg_pool2d(x, kernel_size=3, stride=1, padding=1, count_include_pad=False)


class InceptionA(nn.Module):
    """Mixed_5b/5c/5d (35x35)."""

    def __init__(self, in_channels: int, pool_features: int) -> None:
        super().__init__()
        self.branch1x1 = BasicConv2d(in_channels, 64, 1)
        self.branch5x5_1 = BasicConv2d(in_channels, 48, 1)
        self.branch5x5_2 = BasicConv2d(48, 64, 5, padding=2)
        self.branch3x3dbl_1 = BasicConv2d(in_channels, 64, 1)
        self.branch3x3dbl_2 = BasicConv2d(64, 96, 3, padding=1)
        self.branch3x3dbl_3 = BasicConv2d(96, 96, 3, padding=1)
        self.branch_pool = BasicConv2d(in_channels, pool_features, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        branch5x5 = self.branch5x5_2(self.branch5x5_1(x))
        branch3x3dbl = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
        return torch.cat([self.branch1x1(x), branch5x5, branch3x3dbl, self.branch_pool(_avg_pool_3x3(x))], 1)


class InceptionB(nn.Module):
    """Mixed_6a (35x35 -> 17x17)."""

    def __init__(self, in_channels: int) -> None:
        super().__init__()
        self.branch3x3 = BasicConv2d(in_channels, 384, 3, stride=2)
        self.branch3x3dbl_1 = BasicConv2d(in_channels, 64, 1)
        self.branch3x3dbl_2 = BasicConv2d(64, 96, 3, padding=1)
        self.branch3x3dbl_3 = BasicConv2d(96, 96, 3, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        branch3x3dbl = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
        return torch.cat([self.branch3x3(x), branch3x3dbl, F.max_pool2d(x, kernel_size=3, stride=2)], 1)


class InceptionC(nn.Module):
    """Mixed_6b..6e (17x17); Mixed_6d's 1x1 branch is the TF graph's `mixed_6/conv` (sFID)."""

    def __init__(self, in_channels: int, channels_7x7: int) -> None:
        super().__init__()
        c7 = channels_7x7
        self.branch1x1 = BasicConv2d(in_channels, 192, 1)
        self.branch7x7_1 = BasicConv2d(in_channels, c7, 1)
        self.branch7x7_2 = BasicConv2d(c7, c7, (1, 7), padding=(0, 3))
        self.branch7x7_3 = BasicConv2d(c7, 192, (7, 1), padding=(3, 0))
        self.branch7x7dbl_1 = BasicConv2d(in_channels, c7, 1)
        self.branch7x7dbl_2 = BasicConv2d(c7, c7, (7, 1), padding=(3, 0))
        self.branch7x7dbl_3 = BasicConv2d(c7, c7, (1, 7), padding=(0, 3))
        self.branch7x7dbl_4 = BasicConv2d(c7, c7, (7, 1), padding=(3, 0))
        self.branch7x7dbl_5 = BasicConv2d(c7, 192, (1, 7), padding=(0, 3))
        self.branch_pool = BasicConv2d(in_channels, 192, 1)

    def forward_with_branch1x1(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Block output and the output of its 1x1 branch."""
        branch1x1 = self.branch1x1(x)
        branch7x7 = self.branch7x7_3(self.branch7x7_2(self.branch7x7_1(x)))
        branch7x7dbl = x
        for layer in (self.branch7x7dbl_1, self.branch7x7dbl_2, self.branch7x7dbl_3, self.branch7x7dbl_4,
                      self.branch7x7dbl_5):
            branch7x7dbl = layer(branch7x7dbl)
        out = torch.cat([branch1x1, branch7x7, branch7x7dbl, self.branch_pool(_avg_pool_3x3(x))], 1)
        return out, branch1x1

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_with_branch1x1(x)[0]


class InceptionD(nn.Module):
    """Mixed_7a (17x17 -> 8x8)."""

    def __init__(self, in_channels: int) -> None:
        super().__init__()
        self.branch3x3_1 = BasicConv2d(in_channels, 192, 1)
        self.branch3x3_2 = BasicConv2d(192, 320, 3, stride=2)
        self.branch7x7x3_1 = BasicConv2d(in_channels, 192, 1)
        self.branch7x7x3_2 = BasicConv2d(192, 192, (1, 7), padding=(0, 3))
        self.branch7x7x3_3 = BasicConv2d(192, 192, (7, 1), padding=(3, 0))
        self.branch7x7x3_4 = BasicConv2d(192, 192, 3, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        branch3x3 = self.branch3x3_2(self.branch3x3_1(x))
        branch7x7x3 = self.branch7x7x3_4(self.branch7x7x3_3(self.branch7x7x3_2(self.branch7x7x3_1(x))))
        return torch.cat([branch3x3, branch7x7x3, F.max_pool2d(x, kernel_size=3, stride=2)], 1)


class InceptionE(nn.Module):
    """Mixed_7b (average-pool branch) and Mixed_7c (max-pool branch), 8x8."""

    def __init__(self, in_channels: int, pool: str) -> None:
        super().__init__()
        if pool not in ("avg", "max"):
            raise ValueError(f"pool must be 'avg' or 'max', got {pool!r}")
        self.pool = pool
        self.branch1x1 = BasicConv2d(in_channels, 320, 1)
        self.branch3x3_1 = BasicConv2d(in_channels, 384, 1)
        self.branch3x3_2a = BasicConv2d(384, 384, (1, 3), padding=(0, 1))
        self.branch3x3_2b = BasicConv2d(384, 384, (3, 1), padding=(1, 0))
        self.branch3x3dbl_1 = BasicConv2d(in_channels, 448, 1)
        self.branch3x3dbl_2 = BasicConv2d(448, 384, 3, padding=1)
        self.branch3x3dbl_3a = BasicConv2d(384, 384, (1, 3), padding=(0, 1))
        self.branch3x3dbl_3b = BasicConv2d(384, 384, (3, 1), padding=(1, 0))
        self.branch_pool = BasicConv2d(in_channels, 192, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        branch3x3 = self.branch3x3_1(x)
        branch3x3 = torch.cat([self.branch3x3_2a(branch3x3), self.branch3x3_2b(branch3x3)], 1)
        branch3x3dbl = self.branch3x3dbl_2(self.branch3x3dbl_1(x))
        branch3x3dbl = torch.cat([self.branch3x3dbl_3a(branch3x3dbl), self.branch3x3dbl_3b(branch3x3dbl)], 1)
        if self.pool == "avg":
            pooled = _avg_pool_3x3(x)
        else:
            pooled = F.max_pool2d(x, kernel_size=3, stride=1, padding=1)
        return torch.cat([self.branch1x1(x), branch3x3, branch3x3dbl, self.branch_pool(pooled)], 1)


class InceptionV3(nn.Module):
    """FID Inception-v3. Input: float NCHW RGB images in [0, 255] of any size; output: `InceptionOutput`."""

    def __init__(self, num_classes: int = 1008) -> None:
        super().__init__()
        self.Conv2d_1a_3x3 = BasicConv2d(3, 32, 3, stride=2)
        self.Conv2d_2a_3x3 = BasicConv2d(32, 32, 3)
        self.Conv2d_2b_3x3 = BasicConv2d(32, 64, 3, padding=1)
        self.Conv2d_3b_1x1 = BasicConv2d(64, 80, 1)
        self.Conv2d_4a_3x3 = BasicConv2d(80, 192, 3)
        self.Mixed_5b = InceptionA(192, pool_features=32)
        self.Mixed_5c = InceptionA(256, pool_features=64)
        self.Mixed_5d = InceptionA(288, pool_features=64)
        self.Mixed_6a = InceptionB(288)
        self.Mixed_6b = InceptionC(768, channels_7x7=128)
        self.Mixed_6c = InceptionC(768, channels_7x7=160)
        self.Mixed_6d = InceptionC(768, channels_7x7=160)
        self.Mixed_6e = InceptionC(768, channels_7x7=192)
        self.Mixed_7a = InceptionD(768)
        self.Mixed_7b = InceptionE(1280, pool="avg")
        self.Mixed_7c = InceptionE(2048, pool="max")
        # Only the weight enters the IS logits (the TF graph's softmax/logits/MatMul has no bias); the
        # bias exists so pytorch-fid's state dict loads unchanged.
        self.fc = nn.Linear(2048, num_classes)

    def fuse_batchnorm(self) -> InceptionV3:
        """Fold every batch norm into its convolution (inference only; changes the state dict keys)."""
        for module in self.modules():
            if isinstance(module, BasicConv2d):
                module.fuse_batchnorm()
        return self

    def forward(self, images: torch.Tensor) -> InceptionOutput:
        x = resize_bilinear_tf1(images, (INPUT_SIZE, INPUT_SIZE))
        x = (x - 128.0) / 128.0
        if self.Conv2d_1a_3x3.conv.weight.is_contiguous(memory_format=torch.channels_last):
            x = x.contiguous(memory_format=torch.channels_last)  # match the weights' layout (faster convs)
        x = self.Conv2d_2b_3x3(self.Conv2d_2a_3x3(self.Conv2d_1a_3x3(x)))
        x = F.max_pool2d(x, kernel_size=3, stride=2)
        x = self.Conv2d_4a_3x3(self.Conv2d_3b_1x1(x))
        x = F.max_pool2d(x, kernel_size=3, stride=2)
        x = self.Mixed_5d(self.Mixed_5c(self.Mixed_5b(x)))
        x = self.Mixed_6c(self.Mixed_6b(self.Mixed_6a(x)))
        x, mixed_6_conv = self.Mixed_6d.forward_with_branch1x1(x)
        x = self.Mixed_7c(self.Mixed_7b(self.Mixed_7a(self.Mixed_6e(x))))
        pool = x.mean(dim=(2, 3))
        logits = pool @ self.fc.weight.t()
        return InceptionOutput(pool=pool, spatial=mixed_6_conv[:, :SPATIAL_CHANNELS], logits=logits)
