"""Resize-and-crop arithmetic of the original loader, and conversion to model input.

Both crops first halve the image with a BOX filter while its short side is at least twice the
target, then resize with BICUBIC so the short side hits the target exactly; this matches the
original pixel for pixel, which matters when fine-tuning released checkpoints.
"""
from __future__ import annotations

import math
import os
import random
import warnings

import numpy as np
from PIL import Image

from guided_diffusion.runtime.errors import UserError

# Larger images are refused from their header, before decoding: 12000x12000 RGB would take 430 MB decoded
# (more in PIL's working copies), and a small file announcing such a size is a decompression bomb. The
# value is PIL's own warning threshold (0.25 GiB as 32-bit pixels).
MAX_IMAGE_PIXELS = 89_478_485


class ImageReadError(UserError):
    """An image file that cannot be used. `reason` says why without the path, for messages that name the
    file themselves."""

    def __init__(self, path: str | os.PathLike, reason: str):
        super().__init__(f"cannot read image {path}: {reason}")
        self.path = str(path)
        self.reason = reason


def _resize_short_side(pil_image: Image.Image, short_side: int) -> Image.Image:
    while min(*pil_image.size) >= 2 * short_side:
        width, height = pil_image.size
        pil_image = pil_image.resize((width // 2, height // 2), resample=Image.Resampling.BOX)
    scale = short_side / min(*pil_image.size)
    width, height = pil_image.size
    return pil_image.resize((round(width * scale), round(height * scale)), resample=Image.Resampling.BICUBIC)


def center_crop_arr(pil_image: Image.Image, image_size: int) -> np.ndarray:
    """Resize the short side to `image_size` and take the central square (HWC uint8)."""
    arr = np.array(_resize_short_side(pil_image, image_size))
    top = (arr.shape[0] - image_size) // 2
    left = (arr.shape[1] - image_size) // 2
    return arr[top : top + image_size, left : left + image_size]


def random_crop_arr(
    pil_image: Image.Image,
    image_size: int,
    min_crop_frac: float = 0.8,
    max_crop_frac: float = 1.0,
    rng: random.Random | None = None,
) -> np.ndarray:
    """Resize the short side to a random size in [S/max_frac, S/min_frac], then crop a random
    `image_size` square (HWC uint8). `rng` defaults to Python's global `random`, as the original."""
    rng = rng if rng is not None else random._inst
    smallest = math.ceil(image_size / max_crop_frac)
    largest = math.ceil(image_size / min_crop_frac)
    short_side = rng.randrange(smallest, largest + 1)
    arr = np.array(_resize_short_side(pil_image, short_side))
    top = rng.randrange(arr.shape[0] - image_size + 1)
    left = rng.randrange(arr.shape[1] - image_size + 1)
    return arr[top : top + image_size, left : left + image_size]


def to_model_input(arr: np.ndarray) -> np.ndarray:
    """HWC uint8 -> CHW float32 in [-1, 1]."""
    return np.ascontiguousarray((arr.astype(np.float32) / 127.5 - 1.0).transpose(2, 0, 1))


def _open_checked(path: str | os.PathLike) -> Image.Image:
    """`Image.open` (which reads only the header) with the size checked before anything is decoded."""
    try:
        with warnings.catch_warnings():  # PIL's own size warning: the size is judged below, in one line
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = Image.open(path)
    except Image.DecompressionBombError as exc:  # beyond twice PIL's threshold: refused by PIL itself
        raise ImageReadError(path, f"its header announces a decompression bomb ({exc}); it is not decoded") from None
    except FileNotFoundError:
        raise ImageReadError(path, "it does not exist") from None
    except IsADirectoryError:
        raise ImageReadError(path, "it is a folder") from None
    except Exception as exc:  # PIL raises many types for files it cannot identify or parse
        raise ImageReadError(path, _reason(exc)) from None
    width, height = image.size
    if width * height > MAX_IMAGE_PIXELS:
        image.close()
        raise ImageReadError(path, f"it is {width}x{height} ({width * height / 1e6:.0f} Mpixels), more than the "
                                   f"{MAX_IMAGE_PIXELS / 1e6:.0f} Mpixels read without decoding gigabytes (or a "
                                   "decompression bomb); shrink it first")
    return image


def _reason(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def load_rgb(path: str | os.PathLike) -> Image.Image:
    """Open an image file fully (first frame of animations) as RGB: the one image reader of training,
    evaluation data and the editing commands.

    The size is checked from the header before decoding (`MAX_IMAGE_PIXELS`). 16-bit images (modes I;16*,
    and I holding values above 255) are scaled to 8 bits, v8 = round(v16 / 257) so 65535 maps to 255;
    PIL's own conversion would clip every value above 255 to white. Palette, gray, alpha and CMYK images
    go through PIL's conversion to RGB. Any failure is an `ImageReadError` naming the file.
    """
    image = _open_checked(path)
    try:
        with image:
            image.load()
            if image.mode.startswith("I;16") or image.mode == "I":
                values = np.asarray(image, dtype=np.float64)
                if image.mode.startswith("I;16") or values.max(initial=0) > 255:
                    values = values / 257.0
                gray = np.clip(np.rint(values), 0, 255).astype(np.uint8)
                return Image.fromarray(gray).convert("RGB")
            return image.convert("RGB")
    except ImageReadError:
        raise
    except Exception as exc:  # a truncated or corrupt file fails while decoding
        raise ImageReadError(path, _reason(exc)) from None


def prepare_image(
    path: str, image_size: int, *, random_crop: bool, random_flip: bool, rng: random.Random
) -> np.ndarray:
    """Read `path` and return the augmented CHW float32 array the model trains on."""
    image = load_rgb(path)
    arr = random_crop_arr(image, image_size, rng=rng) if random_crop else center_crop_arr(image, image_size)
    if random_flip and rng.random() < 0.5:
        arr = arr[:, ::-1]
    return to_model_input(arr)
