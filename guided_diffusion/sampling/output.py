"""Sample files in the original formats: `samples_{N}x{H}x{W}x3.npz` (+ a PNG grid), written atomically."""
from __future__ import annotations

import io
import math
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from guided_diffusion.runtime.atomic import atomic_write_path

__all__ = ["to_uint8", "samples_filename", "save_samples", "save_npz", "save_grid"]

GRID_MAX_IMAGES = 64
GRID_MIN_WIDTH = 512  # pixels; smaller grids are enlarged by nearest neighbour


def to_uint8(x: torch.Tensor) -> torch.Tensor:
    """[-1, 1] NCHW floats -> uint8 NHWC by truncation, exactly as the original scripts (not rounding)."""
    return ((x + 1) * 127.5).clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).contiguous()


def samples_filename(images: np.ndarray) -> str:
    n, h, w, c = images.shape
    return f"samples_{n}x{h}x{w}x{c}.npz"


def save_samples(directory: str | Path, images: np.ndarray, labels: np.ndarray | None = None) -> Path:
    """Write `arr_0` (uint8 NHWC) and, when given, `arr_1` (int64 labels) atomically; returns the path."""
    if images.dtype != np.uint8 or images.ndim != 4:
        raise ValueError("images must be a uint8 NHWC array")
    arrays = [images] if labels is None else [images, np.asarray(labels, dtype=np.int64)]
    path = Path(directory) / samples_filename(images)
    atomic_write_path(path, lambda tmp: _savez(tmp, arrays))
    return path


def save_npz(path: str | Path, *arrays: np.ndarray) -> Path:
    """`np.savez(path, *arrays)` (arr_0, arr_1, ...), atomically."""
    return atomic_write_path(path, lambda tmp: _savez(tmp, list(arrays)))


def _savez(path: Path, arrays: list[np.ndarray]) -> None:
    with open(path, "wb") as handle:  # a handle, so numpy does not append ".npz" to the temp name
        np.savez(handle, *arrays)


def save_grid(path: str | Path, images: np.ndarray, max_images: int = GRID_MAX_IMAGES,
              min_width: int = GRID_MIN_WIDTH) -> Path:
    """A PNG contact sheet of the first `max_images` images (rows of ceil(sqrt(n))), each image enlarged
    by a whole factor (nearest neighbour: every pixel stays a visible square) until the sheet is at least
    `min_width` pixels wide, so 8x8 samples are not a 24-pixel thumbnail."""
    images = images[:max_images]
    n, h, w, c = images.shape
    cols = math.ceil(math.sqrt(n))
    rows = math.ceil(n / cols)
    zoom = max(1, math.ceil(min_width / (cols * w)))
    images = images.repeat(zoom, axis=1).repeat(zoom, axis=2)
    h, w = h * zoom, w * zoom
    sheet = np.zeros((rows * h, cols * w, c), dtype=np.uint8)
    for i, image in enumerate(images):
        r, q = divmod(i, cols)
        sheet[r * h : (r + 1) * h, q * w : (q + 1) * w] = image
    buffer = io.BytesIO()
    Image.fromarray(sheet.squeeze(-1) if c == 1 else sheet).save(buffer, format="PNG")
    return atomic_write_path(path, lambda tmp: tmp.write_bytes(buffer.getvalue()))
