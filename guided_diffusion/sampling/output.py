"""Sample files in the original formats, `samples_{N}x{H}x{W}x3.npz`, with a PNG grid and a settings record
beside them, all written atomically."""
from __future__ import annotations

import io
import json
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from PIL.PngImagePlugin import PngInfo

from guided_diffusion.runtime.atomic import atomic_write_path

__all__ = ["to_uint8", "samples_filename", "save_samples", "save_npz", "grid_layout", "save_grid", "save_record"]

GRID_MAX_IMAGES = 64
GRID_MIN_WIDTH = 512  # pixels; smaller grids are enlarged by nearest neighbour
GRID_MAX_CLASS_ROWS = 16  # more classes among the shown images: rows in sample order instead
GRID_BORDER = 1  # pixels around every image
GRID_BACKGROUND = 200  # light grey: borders and the empty end of a short row


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


def grid_layout(count: int, labels: np.ndarray | None = None) -> list[list[int]]:
    """Rows of image indices for a contact sheet of `count` images: one row per class (classes in
    order, the images meant to show each in sample order) when `labels` are given and there are at most
    GRID_MAX_CLASS_ROWS classes among them, else rows of ceil(sqrt(count)) in sample order."""
    if labels is not None and 0 < len(set(labels[:count].tolist())) <= GRID_MAX_CLASS_ROWS:
        shown = labels[:count]
        return [[int(i) for i in np.flatnonzero(shown == c)] for c in sorted(set(shown.tolist()))]
    cols = max(1, math.ceil(math.sqrt(count)))
    return [list(range(start, min(start + cols, count))) for start in range(0, count, cols)]


def save_grid(path: str | Path, images: np.ndarray, labels: np.ndarray | None = None, *,
              max_images: int = GRID_MAX_IMAGES, min_width: int = GRID_MIN_WIDTH,
              text: Mapping[str, str] | None = None) -> Path:
    """A PNG contact sheet of the first `max_images` images (`grid_layout`: one row per class when
    `labels` are given), each image enlarged by a whole factor (nearest neighbour: every pixel stays a
    visible square) until the sheet is at least `min_width` pixels wide, so 8x8 samples are not a
    24-pixel thumbnail. Images are framed by GRID_BORDER-pixel light lines; places a short row leaves
    empty are the same light grey, never black. `text` goes into the PNG's text chunks (e.g. the
    settings that drew the images)."""
    images = images[:max_images]
    n, h, w, c = images.shape
    rows = grid_layout(n, labels)
    cols = max(len(row) for row in rows)
    border = GRID_BORDER
    zoom = max(1, math.ceil((min_width - border * (cols + 1)) / (cols * w)))
    h, w = h * zoom, w * zoom
    sheet = np.full((len(rows) * (h + border) + border, cols * (w + border) + border, c), GRID_BACKGROUND, dtype=np.uint8)
    for r, row in enumerate(rows):
        for q, index in enumerate(row):
            top, left = border + r * (h + border), border + q * (w + border)
            sheet[top : top + h, left : left + w] = images[index].repeat(zoom, axis=0).repeat(zoom, axis=1)
    info = PngInfo()
    for key, value in (text or {}).items():
        info.add_itxt(key, value)
    buffer = io.BytesIO()
    Image.fromarray(sheet.squeeze(-1) if c == 1 else sheet).save(buffer, format="PNG", pnginfo=info)
    return atomic_write_path(path, lambda tmp: tmp.write_bytes(buffer.getvalue()))


def save_record(path: str | Path, record: Mapping[str, Any]) -> Path:
    """Write a run's settings record (JSON, keys sorted) atomically."""
    data = (json.dumps(record, indent=1, sort_keys=True, default=str) + "\n").encode()
    return atomic_write_path(path, lambda tmp: tmp.write_bytes(data))
