"""Contact sheets of edits: each input beside its output, readable for 8x8 images.

Every image is enlarged by one whole factor (nearest neighbour, so each pixel stays a visible square)
until the sheet is at least `min_width` pixels wide. Images are separated by 1-pixel lines: light grey
between the images of one edit (input | output), dark grey between edits, so the pairs read as units;
cells past the last edit take the background colour, not black.
"""
from __future__ import annotations

import io
import math
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
from PIL import Image, PngImagePlugin

from guided_diffusion.runtime.atomic import atomic_write_path

__all__ = ["SHEET_MAX_EDITS", "edit_sheet", "save_edit_sheet"]

SHEET_MAX_EDITS = 64
SHEET_MIN_WIDTH = 512  # pixels
_WITHIN = 200  # the line between the images of one edit
_BETWEEN = 90  # the line between edits
_BACKGROUND = 200


def _at_size(images: np.ndarray, size: int) -> np.ndarray:
    """uint8 NHWC images enlarged by nearest neighbour to size x size (a measurement smaller than the output)."""
    factor = size // images.shape[1]
    if factor * images.shape[1] != size or images.shape[1] != images.shape[2]:
        raise ValueError(f"images of {images.shape[1]}x{images.shape[2]} do not enlarge to {size}x{size}")
    return images.repeat(factor, axis=1).repeat(factor, axis=2) if factor > 1 else images


def edit_sheet(columns: Sequence[np.ndarray], *, max_edits: int = SHEET_MAX_EDITS,
               min_width: int = SHEET_MIN_WIDTH) -> np.ndarray:
    """The sheet as a uint8 H x W x 3 array: edit i is columns[0][i] | columns[1][i] | ... (e.g. input |
    output), the first `max_edits` edits in rows of about sqrt(n) edits. Smaller images (a 4x4
    measurement beside 8x8 outputs) are enlarged to the largest size first."""
    if not columns:
        raise ValueError("a sheet needs at least one column of images")
    size = max(int(column.shape[1]) for column in columns)
    parts = [_at_size(np.asarray(column[:max_edits], dtype=np.uint8), size) for column in columns]
    count = len(parts[0])
    if any(len(part) != count for part in parts):
        raise ValueError(f"columns hold {[len(p) for p in parts]} images; each needs one per edit")
    per_edit = len(parts)
    edits_per_row = max(1, math.ceil(math.sqrt(count)))
    rows = math.ceil(count / edits_per_row)
    line = 1
    lines_across = edits_per_row * per_edit + 1  # the 1-pixel lines of a row of the sheet, which do not zoom
    zoom = max(1, math.ceil((min_width - lines_across * line) / (edits_per_row * per_edit * size)))
    cell = size * zoom
    width = edits_per_row * (per_edit * cell + (per_edit - 1) * line) + (edits_per_row + 1) * line
    height = rows * cell + (rows + 1) * line
    sheet = np.full((height, width, 3), _BETWEEN, dtype=np.uint8)
    for i in range(rows * edits_per_row):
        row, position = divmod(i, edits_per_row)
        top = line + row * (cell + line)
        left = line + position * (per_edit * cell + (per_edit - 1) * line + line)
        span = per_edit * cell + (per_edit - 1) * line
        if i >= count:
            sheet[top:top + cell, left:left + span] = _BACKGROUND
            continue
        sheet[top:top + cell, left:left + span] = _WITHIN
        for j, part in enumerate(parts):
            x = left + j * (cell + line)
            sheet[top:top + cell, x:x + cell] = part[i].repeat(zoom, axis=0).repeat(zoom, axis=1)
    return sheet


def save_edit_sheet(path: str | Path, columns: Sequence[np.ndarray], *, text: Mapping[str, str] | None = None) -> Path:
    """Write `edit_sheet(columns)` as a PNG atomically, with `text` in its text chunks (e.g. the settings)."""
    info = PngImagePlugin.PngInfo()
    for key, value in (text or {}).items():
        info.add_itxt(key, value)
    buffer = io.BytesIO()
    Image.fromarray(edit_sheet(columns)).save(buffer, format="PNG", pnginfo=info)
    return atomic_write_path(path, lambda tmp: tmp.write_bytes(buffer.getvalue()))
