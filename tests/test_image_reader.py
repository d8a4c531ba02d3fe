"""One image reader for training and editing (issue 20 items 10, 18, 21): `data.transforms.load_rgb`
scales 16-bit images, refuses oversized ones from their header before decoding, and names the file in
one line; editing's --input reads npz batches robustly, image folders with class sub-folders (labels as
training derives them) and single image files."""
from __future__ import annotations

import struct
import time
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import error_of, randomise_zero_layers
from PIL import Image

from guided_diffusion.cli import main
from guided_diffusion.config import DiffusionConfig, ModelConfig, config_to_dict
from guided_diffusion.data.dataset import ImageFolderDataset
from guided_diffusion.data.transforms import MAX_IMAGE_PIXELS, ImageReadError, load_rgb
from guided_diffusion.editing.io import load_images, load_mask, read_latents
from guided_diffusion.weights.checkpoints import save_checkpoint, write_config_json


def _sixteen_bit_png(path: Path, values: np.ndarray) -> Path:
    Image.fromarray(values.astype(np.uint16)).save(path)  # mode I;16
    assert Image.open(path).mode.startswith("I;16")
    return path


def _png_claiming(path: Path, width: int, height: int) -> Path:
    """A small PNG whose header announces width x height (what a decompression bomb, or a huge photo,
    shows before any pixel is decoded)."""
    Image.new("L", (8, 8)).save(path)
    data = bytearray(path.read_bytes())
    struct.pack_into(">II", data, 16, width, height)  # IHDR's width and height follow the signature and chunk head
    struct.pack_into(">I", data, 29, zlib.crc32(bytes(data[12:29])) & 0xFFFFFFFF)
    path.write_bytes(bytes(data))
    return path


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("model")
    config = ModelConfig(image_size=8, num_channels=32, num_res_blocks=1, channel_mult="1,1", attention_resolutions="",
                         num_head_channels=32, learn_sigma=True, num_classes=10, class_cond=False)
    torch.manual_seed(0)
    save_checkpoint(root / "model.pt", randomise_zero_layers(config.build(), 0).state_dict())
    write_config_json(root, config_to_dict(config, DiffusionConfig(learn_sigma=True, diffusion_steps=100, noise_schedule="cosine")))
    return root / "model.pt"


def _invert(model: Path, source: Path, out: Path) -> int:
    return main(["invert", "--model_path", str(model), "--input", str(source), "--steps", "2", "--out_dir", str(out),
                 "--batch_size", "4"])


# -- the reader ------------------------------------------------------------------------------------------


def test_sixteen_bit_images_are_scaled_not_clipped(tmp_path):
    values = np.linspace(0, 65535, 64).reshape(8, 8)
    rgb = np.asarray(load_rgb(_sixteen_bit_png(tmp_path / "deep.png", values)))
    np.testing.assert_array_equal(rgb[..., 0], np.rint(values / 257).astype(np.uint8))
    assert (rgb[..., 0] == rgb[..., 2]).all() and 0 < rgb.mean() < 255


def test_images_too_large_are_refused_from_the_header_before_decoding(tmp_path, monkeypatch):
    sizes = ((12000, 12000), (30000, 30000))  # above PIL's warning, then above its own error
    paths = [_png_claiming(tmp_path / f"big_{width}.png", width, height) for width, height in sizes]
    decoded = []
    from PIL import ImageFile

    monkeypatch.setattr(ImageFile.ImageFile, "load", lambda self: decoded.append(self) or None)
    for path, (width, height) in zip(paths, sizes):
        start = time.perf_counter()
        with pytest.raises(ImageReadError) as info:
            load_rgb(path)
        assert time.perf_counter() - start < 1.0
        message = str(info.value)
        assert message.startswith(f"cannot read image {path}") and "\n" not in message
        assert f"{width}x{height}" in message or "decompression bomb" in message
    assert not decoded
    assert 12000 * 12000 > MAX_IMAGE_PIXELS > 8000 * 8000


def test_training_dataset_reports_the_readers_reason(tmp_path):
    good = tmp_path / "a_good.png"
    Image.new("RGB", (8, 8), (10, 20, 30)).save(good)
    big = _png_claiming(tmp_path / "b_big.png", 12000, 12000)
    sample = ImageFolderDataset([str(big), str(good)], 8, random_flip=False, skip_bad_images=True)[(0, 0)]
    assert not sample.failed and sample.bad_files[0][0] == str(big)
    assert sample.bad_files[0][1].startswith("it is 12000x12000")


# -- editing inputs --------------------------------------------------------------------------------------


def test_editing_reads_a_sixteen_bit_png_as_training_does(model, tmp_path, capsys):
    values = np.linspace(0, 65535, 64).reshape(8, 8)
    folder = tmp_path / "deep"
    folder.mkdir()
    _sixteen_bit_png(folder / "x.png", values)
    images, labels = load_images(folder, 8)
    np.testing.assert_array_equal(images[0], np.asarray(load_rgb(folder / "x.png")))
    assert labels is None
    # Through the command: the same latents as the equivalent 8-bit image (the clipped read was white).
    eight = tmp_path / "eight"
    eight.mkdir()
    Image.fromarray(np.asarray(load_rgb(folder / "x.png"))).save(eight / "x.png")
    assert _invert(model, folder, tmp_path / "o16") == 0
    assert _invert(model, eight, tmp_path / "o8") == 0
    capsys.readouterr()
    assert torch.equal(read_latents(tmp_path / "o16" / "latents.npz")[0], read_latents(tmp_path / "o8" / "latents.npz")[0])


def _class_folders(root: Path) -> Path:
    rng = np.random.default_rng(0)
    for name, count in (("cat", 2), ("dog", 3)):
        (root / name).mkdir(parents=True)
        for i in range(count):
            Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)).save(root / name / f"{i}.png")
    return root


def test_input_folder_with_class_sub_folders_gives_training_labels(model, tmp_path, capsys):
    root = _class_folders(tmp_path / "classes")
    images, labels = load_images(root, 8)
    assert images.shape == (5, 8, 8, 3) and labels.tolist() == [0, 0, 1, 1, 1]
    np.testing.assert_array_equal(images[2], np.asarray(Image.open(root / "dog" / "0.png")))
    from guided_diffusion.data.files import ClassMap

    given = ClassMap(names=("ant", "cat", "dog"), label_mode="folder")  # a run's classes.json
    assert load_images(root, 8, class_map=given)[1].tolist() == [1, 1, 2, 2, 2]
    assert _invert(model, root, tmp_path / "out") == 0
    latents, saved = read_latents(tmp_path / "out" / "latents.npz")
    assert latents.shape == (5, 3, 8, 8) and saved.tolist() == [0, 0, 1, 1, 1]


def test_input_can_be_a_single_image_file(model, tmp_path, capsys):
    one = tmp_path / "one.png"
    Image.fromarray(np.full((8, 8, 3), 90, np.uint8)).save(one)
    images, labels = load_images(one, 8)
    assert images.shape == (1, 8, 8, 3) and labels is None and (images == 90).all()
    assert _invert(model, one, tmp_path / "out") == 0
    assert read_latents(tmp_path / "out" / "latents.npz")[0].shape == (1, 3, 8, 8)


@pytest.mark.parametrize("case", ["garbage_png", "truncated_npz", "bomb_png", "big_in_folder"])
def test_unreadable_inputs_are_one_line_naming_the_problem(model, tmp_path, capsys, case):
    good = tmp_path / "good.npz"
    np.savez(good, np.zeros((16, 8, 8, 3), np.uint8))
    if case == "garbage_png":
        source = tmp_path / "broken.png"
        source.write_bytes(b"this is not an image at all" * 10)
        expected = "cannot read image"
    elif case == "truncated_npz":
        source = tmp_path / "cut.npz"
        source.write_bytes(good.read_bytes()[:600])
        expected = "cut short"
    elif case == "bomb_png":
        source = _png_claiming(tmp_path / "bomb.png", 40000, 40000)
        expected = "cannot read image"
    else:
        source = tmp_path / "folder"
        source.mkdir()
        _png_claiming(source / "huge.png", 12000, 12000)
        expected = "12000x12000"
    line = error_of(capsys, ["invert", "--model_path", str(model), "--input", str(source), "--steps", "2",
                             "--out_dir", str(tmp_path / "out")])
    assert line.startswith("error: --input") and expected in line and source.name in line
    assert "pickle" not in line


def test_masks_use_the_same_reader(tmp_path):
    mask = np.zeros((8, 8), np.uint16)
    mask[:4] = 65535  # a 16-bit mask: white must keep, not read as 255 clipped from 65535 (same here) nor as 0
    mask[4:6] = 30000  # 30000 / 257 = 117: below half, not kept (a clipped read makes it 255: kept)
    path = _sixteen_bit_png(tmp_path / "mask.png", mask)
    keep = load_mask(path, 2, 8)
    assert keep.shape == (2, 1, 8, 8)
    assert keep[0, 0, :4].all() and not keep[0, 0, 4:].any()
    (tmp_path / "cut.npz").write_bytes(b"PK\x03\x04 cut")
    with pytest.raises(ValueError, match="cut short"):
        load_mask(tmp_path / "cut.npz", 2, 8)
