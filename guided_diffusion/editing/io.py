"""Reading the inputs of the editing commands: images (an npz in the sample format, a folder of image
files, class sub-folders included, or one image file), masks (PNG or npz, white = keep) and latents (the
npz `invert` writes); writing latents.

Image files are decoded by training's reader (`data.transforms.load_rgb`: 16-bit images scaled, sizes
checked before decoding) and npz files by the evaluator's (`evaluation.npz`: cut-short or damaged files
are one-line errors). Library errors are `ValueError`s (`UserError`s) naming the file and what was
expected; the command line turns them into one-line messages.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from guided_diffusion.data.files import ClassMap, build_class_map, choose_label_mode, find_image_files, labels_for
from guided_diffusion.data.transforms import load_rgb
from guided_diffusion.evaluation.npz import npz_keys, read_npz_arrays
from guided_diffusion.sampling.output import save_npz

__all__ = [
    "IMAGE_SUFFIXES",
    "load_images",
    "load_latents",
    "load_mask",
    "read_latents",
    "save_latents",
    "to_model_input",
    "to_uint8_images",
]

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".gif", ".bmp", ".webp", ".tif", ".tiff")
_EXTENSIONS = frozenset(suffix[1:] for suffix in IMAGE_SUFFIXES)


def to_model_input(images: np.ndarray) -> torch.Tensor:
    """uint8 NHWC -> float32 NCHW in [-1, 1], the networks' input convention."""
    return torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).float() / 127.5 - 1.0


def to_uint8_images(x: torch.Tensor) -> np.ndarray:
    """float NCHW in [-1, 1] -> uint8 NHWC, rounding to the nearest level (so an input that went in as
    uint8 comes back unchanged, which truncation would not guarantee)."""
    return ((x.detach().float().cpu() + 1) * 127.5).round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).numpy()


def _is_npz(path: Path) -> bool:
    """An .npz by name, or a zip archive (np.savez's format) under another name."""
    if path.suffix.lower() == ".npz":
        return True
    with open(path, "rb") as handle:
        return handle.read(4) == b"PK\x03\x04"


def _read_npz(path: Path, names: tuple[str, ...], what: str) -> dict[str, np.ndarray]:
    """The arrays of `names` present in an npz (arr_0 required), with damaged files as one-line errors."""
    keys = npz_keys(path)
    if "arr_0" not in keys:
        raise ValueError(f"{what} {path} has no arr_0 (it holds {sorted(keys) or 'no arrays'})")
    return read_npz_arrays(path, [name for name in names if name in keys])


def _read_image(file: str | Path, image_size: int) -> np.ndarray:
    rgb = np.asarray(load_rgb(file))
    if rgb.shape[:2] != (image_size, image_size):
        raise ValueError(f"image {file} is {rgb.shape[1]}x{rgb.shape[0]}, the model takes {image_size}x{image_size}")
    return rgb


def _folder_labels(files: list[str], root: Path, class_map: ClassMap | None) -> np.ndarray | None:
    """Labels as training derives them: from `class_map` (a run's classes.json) when given, else from one
    sub-folder per class (names in sorted order) when every image sits in one of at least two; else None."""
    if class_map is None:
        if choose_label_mode(files, root, "auto") != "folder":
            return None
        class_map = build_class_map(files, root, "folder")
    return np.asarray(labels_for(files, root, class_map), dtype=np.int64)


def load_images(path: str | Path, image_size: int, *,
                class_map: ClassMap | None = None) -> tuple[np.ndarray, np.ndarray | None]:
    """Images as uint8 N x image_size x image_size x 3, and their labels when the input has them.

    `path` is an npz in the sample format (arr_0 uint8 NHWC, optional arr_1 int labels), a folder of image
    files (searched recursively, read in path order; labels from class sub-folders as training derives
    them, or from `class_map`), or one image file. Images of another size are refused rather than
    resized, so nothing is edited at a resolution the user did not choose.
    """
    path = Path(path)
    if path.is_dir():
        files = find_image_files(path, _EXTENSIONS)
        if not files:
            raise ValueError(f"{path} holds no image files ({', '.join(IMAGE_SUFFIXES)}), also in its sub-folders")
        return np.stack([_read_image(file, image_size) for file in files]), _folder_labels(files, path, class_map)
    if not path.is_file():
        raise ValueError(f"{path} does not exist")
    if not _is_npz(path):
        return _read_image(path, image_size)[None], None
    arrays = _read_npz(path, ("arr_0", "arr_1"), "image batch")
    images, labels = arrays["arr_0"], arrays.get("arr_1")
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] != 3 or len(images) == 0:
        raise ValueError(f"{path}: arr_0 is {images.dtype} {images.shape}, expected uint8 N x H x W x 3 images")
    if images.shape[1:3] != (image_size, image_size):
        raise ValueError(f"{path}: images are {images.shape[2]}x{images.shape[1]}, the model takes {image_size}x{image_size}")
    if labels is not None:
        labels = np.asarray(labels).astype(np.int64).reshape(-1)
        if len(labels) != len(images):
            raise ValueError(f"{path}: {len(labels)} labels (arr_1) for {len(images)} images (arr_0)")
    return images, labels


def load_mask(path: str | Path, num_images: int, image_size: int) -> np.ndarray:
    """The keep-mask as float32 N x 1 x H x W of 0/1 (1 = known pixel, kept), one per image.

    A PNG (any mode; white, i.e. >= 128 in grayscale, keeps) applies to every image. An npz's arr_0 may
    be H x W, N x H x W, or N x H x W x C (channels must agree; values > 0.5 keep for floats, >= 128 for
    uint8); a single mask is shared by all images.
    """
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"mask {path} does not exist")
    if _is_npz(path):
        raw = _read_npz(path, ("arr_0",), "mask")["arr_0"]
        keep = raw >= 128 if raw.dtype == np.uint8 else raw.astype(np.float64) > 0.5
        if keep.ndim == 4:
            if not (keep == keep[..., :1]).all():
                raise ValueError(f"mask {path} differs between channels; give one mask per pixel")
            keep = keep[..., 0]
        if keep.ndim == 2:
            keep = keep[None]
        if keep.ndim != 3:
            raise ValueError(f"mask {path}: arr_0 has shape {raw.shape}, expected H x W, N x H x W or N x H x W x C")
    else:
        keep = (np.asarray(load_rgb(path).convert("L")) >= 128)[None]
    if keep.shape[1:] != (image_size, image_size):
        raise ValueError(f"mask {path} is {keep.shape[2]}x{keep.shape[1]}, the images are {image_size}x{image_size}")
    if len(keep) not in (1, num_images):
        raise ValueError(f"mask {path} holds {len(keep)} masks for {num_images} images; give one mask, or one per image")
    keep = np.broadcast_to(keep, (num_images, image_size, image_size))
    return np.ascontiguousarray(keep[:, None].astype(np.float32))


def load_latents(path: str | Path) -> torch.Tensor:
    """The noise `invert` wrote, as a float32 N x C x H x W tensor (e.g. the starting noise of a sampler)."""
    return read_latents(path)[0]


def read_latents(path: str | Path) -> tuple[torch.Tensor, np.ndarray | None]:
    """The noise `invert` wrote and its labels: (float32 N x C x H x W tensor, int64 labels or None)."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"latents {path} do not exist")
    arrays = _read_npz(path, ("arr_0", "arr_1"), "latents")
    latents = arrays["arr_0"]
    labels = arrays["arr_1"].astype(np.int64) if "arr_1" in arrays else None
    if latents.ndim != 4 or not np.issubdtype(latents.dtype, np.floating) or len(latents) == 0:
        raise ValueError(f"latents {path}: arr_0 is {latents.dtype} {latents.shape}, expected float N x C x H x W")
    if not np.isfinite(latents).all():
        raise ValueError(f"latents {path} contain NaN or infinite values")
    return torch.from_numpy(latents.astype(np.float32)), labels


def save_latents(path: str | Path, latents: np.ndarray, labels: np.ndarray | None = None) -> Path:
    """Write arr_0 (float32 NCHW) and arr_1 (int64 labels, when given) atomically."""
    arrays = [np.asarray(latents, dtype=np.float32)]
    if labels is not None:
        arrays.append(np.asarray(labels, dtype=np.int64))
    return save_npz(path, *arrays)
