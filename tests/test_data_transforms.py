"""The original's resize-and-crop arithmetic."""
from __future__ import annotations

import random

import numpy as np
from PIL import Image

from guided_diffusion.data.transforms import center_crop_arr, random_crop_arr, to_model_input


def _gradient_image(width: int, height: int) -> Image.Image:
    yy, xx = np.mgrid[0:height, 0:width]
    arr = np.stack([xx * 255 // width, yy * 255 // height, (xx + yy) % 256], axis=-1).astype(np.uint8)
    return Image.fromarray(arr)


def test_center_crop_halves_with_box_then_bicubic_then_centers():
    image = _gradient_image(300, 200)  # short side 200 >= 2*64: one BOX halving to 150x100
    out = center_crop_arr(image, 64)
    halved = image.resize((150, 100), resample=Image.BOX)
    resized = np.array(halved.resize((96, 64), resample=Image.BICUBIC))  # round(150 * 0.64) = 96
    np.testing.assert_array_equal(out, resized[0:64, 16:80])
    assert out.shape == (64, 64, 3) and out.dtype == np.uint8


def test_center_crop_without_halving_and_odd_offsets():
    image = _gradient_image(51, 70)  # short side 51 < 2*32: straight BICUBIC to 32x44
    out = center_crop_arr(image, 32)
    resized = np.array(image.resize((32, 44), resample=Image.BICUBIC))  # round(70 * 32/51) = 44
    np.testing.assert_array_equal(out, resized[6:38, 0:32])


def test_random_crop_short_side_and_offsets_follow_the_rng():
    image = _gradient_image(120, 90)
    # The same draws by hand: short side in [ceil(64/1.0), ceil(64/0.8)] = [64, 80], then offsets.
    rng = random.Random(7)
    short = rng.randrange(64, 81)
    expected_image = image
    while min(*expected_image.size) >= 2 * short:
        expected_image = expected_image.resize(tuple(x // 2 for x in expected_image.size), resample=Image.BOX)
    scale = short / min(*expected_image.size)
    arr = np.array(expected_image.resize(tuple(round(x * scale) for x in expected_image.size), resample=Image.BICUBIC))
    top = rng.randrange(arr.shape[0] - 64 + 1)
    left = rng.randrange(arr.shape[1] - 64 + 1)
    out = random_crop_arr(image, 64, rng=random.Random(7))
    np.testing.assert_array_equal(out, arr[top : top + 64, left : left + 64])
    assert 64 <= short <= 80


def test_model_input_range_and_layout():
    arr = np.array([[[0, 255, 127]]], dtype=np.uint8)
    out = to_model_input(arr)
    assert out.shape == (3, 1, 1) and out.dtype == np.float32
    np.testing.assert_allclose(out.ravel(), [-1.0, 1.0, 127 / 127.5 - 1], rtol=0, atol=1e-7)
