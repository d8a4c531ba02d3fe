"""Measurements made from clean images: what `restore --simulate` restores from, and the example inputs
of the editing commands (`guided-diffusion make_inputs`).

A measurement is the restoration task's operator applied to clean images and rounded to uint8, as a
camera or a file would store it: a box-downsampled copy (`super_res`), a Gaussian-blurred one (`deblur`),
or the image itself with a keep-mask (`inpaint`).
"""
from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image

from guided_diffusion.editing.io import to_model_input, to_uint8_images
from guided_diffusion.editing.measurement import BlurOperator, DownsampleOperator
from guided_diffusion.runtime.atomic import atomic_write_path
from guided_diffusion.runtime.errors import SettingError
from guided_diffusion.sampling.output import save_npz

__all__ = ["EXAMPLE_FILES", "blurred", "downsampled", "example_inputs", "top_half_mask", "write_example_inputs"]

# The files `write_example_inputs` writes (for 8x8 images), and what each one is.
EXAMPLE_FILES = {
    "digits.npz": "the images (arr_0 uint8 NHWC) and their labels (arr_1)",
    "top_half.png": "a mask keeping the top half (white = keep)",
    "small_4x4.npz": "the images box-downsampled by 2 (for restore --task super_res --factor 2)",
    "blurred.npz": "the images blurred by a Gaussian of sigma 1 pixel (for restore --task deblur --blur_sigma 1)",
}


def downsampled(images: np.ndarray, factor: int) -> np.ndarray:
    """uint8 NHWC images box-downsampled by `factor` (each pixel the mean of a factor x factor block),
    rounded to uint8: the measurement `restore --task super_res --factor F` inverts."""
    if factor < 1 or images.shape[1] % factor or images.shape[2] % factor:
        raise SettingError("factor", f"factor {factor} does not divide the images' size {images.shape[1]}")
    return to_uint8_images(DownsampleOperator(factor)(to_model_input(images)))


def blurred(images: np.ndarray, sigma: float, size: int | None = None) -> np.ndarray:
    """uint8 NHWC images blurred by a Gaussian of `sigma` pixels (odd kernel width `size`, default
    2 ceil(2 sigma) + 1, reflected borders), rounded to uint8: what `restore --task deblur` inverts."""
    try:
        operator = BlurOperator(sigma, size)
    except ValueError as exc:
        raise SettingError("blur_sigma", str(exc)) from None
    return to_uint8_images(operator(to_model_input(images)))


def top_half_mask(size: int) -> np.ndarray:
    """A size x size uint8 mask, white (255, keep) in the top half and black below."""
    mask = np.zeros((size, size), dtype=np.uint8)
    mask[: size // 2] = 255
    return mask


def example_inputs(images: np.ndarray, labels: np.ndarray | None) -> dict[str, list[np.ndarray]]:
    """The arrays of the files `write_example_inputs` writes, by file name (a .png holds one image)."""
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[1] != images.shape[2] or images.shape[1] % 2:
        raise SettingError("images", f"images are {images.dtype} {images.shape}, expected uint8 N x S x S x 3 with S even")
    extra = [] if labels is None else [np.asarray(labels, dtype=np.int64)]
    small = downsampled(images, 2)
    return {
        "digits.npz": [images, *extra],
        "top_half.png": [top_half_mask(images.shape[1])],
        f"small_{small.shape[1]}x{small.shape[2]}.npz": [small, *extra],
        "blurred.npz": [blurred(images, 1.0), *extra],
    }


def _holds(path: Path, arrays: list[np.ndarray]) -> bool:
    """Whether the file at `path` already holds exactly `arrays`."""
    try:
        if path.suffix == ".png":
            with Image.open(path) as image:
                return np.array_equal(np.asarray(image), arrays[0])
        with np.load(path) as data:
            return len(data.files) == len(arrays) and all(
                np.array_equal(data[f"arr_{i}"], array) for i, array in enumerate(arrays))
    except (OSError, ValueError, KeyError):
        return False


def write_example_inputs(out_dir: str | Path, images: np.ndarray, labels: np.ndarray | None, *,
                         overwrite: bool = False) -> dict[str, Path]:
    """Write the inputs the editing commands of docs/editing.md take (`EXAMPLE_FILES`, from `example_inputs`) for
    `images` (uint8 NHWC, square, even size) into `out_dir`, atomically; returns {name: path} of the files
    written. A file that already holds the same arrays is left as it is; one with other content is refused
    (SettingError naming `overwrite`) unless `overwrite`, before anything is written."""
    out = Path(out_dir)
    wanted = example_inputs(images, labels)
    changed = {name: arrays for name, arrays in wanted.items() if not _holds(out / name, arrays)}
    clashes = [name for name in changed if (out / name).exists()]
    if clashes and not overwrite:
        raise SettingError("overwrite", f"{out / clashes[0]} exists and holds something else: pass overwrite to "
                                        "replace it, or choose another folder")
    written = {}
    for name, arrays in changed.items():
        written[name] = _write_png(out / name, arrays[0]) if name.endswith(".png") else save_npz(out / name, *arrays)
    return written


def _write_png(path: Path, image: np.ndarray) -> Path:
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG")
    return atomic_write_path(path, lambda tmp: tmp.write_bytes(buffer.getvalue()))
