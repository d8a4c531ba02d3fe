"""Image discovery, label modes and class maps."""
from __future__ import annotations

import numpy as np
import pytest
from helpers import write_image

from guided_diffusion.data.files import (
    ClassMap,
    build_class_map,
    choose_label_mode,
    labels_for,
    list_image_files,
)
from guided_diffusion.runtime.errors import UserError

PIXELS = np.zeros((8, 8, 3), dtype=np.uint8)


def test_listing_is_recursive_sorted_and_filters_extensions(tmp_path):
    for name in ["b/x_2.JPG", "a/x_1.png", "top_0.jpeg", "deep/er/z_9.webp", "anim_3.gif"]:
        write_image(tmp_path / name, PIXELS)
    (tmp_path / "notes.txt").write_text("not an image")
    (tmp_path / ".hidden.png").write_bytes(b"")
    (tmp_path / "noext").write_bytes(b"")
    found = [p.replace(str(tmp_path) + "/", "") for p in list_image_files(tmp_path)]
    assert found == ["a/x_1.png", "anim_3.gif", "b/x_2.JPG", "deep/er/z_9.webp", "top_0.jpeg"]


def test_empty_or_missing_folder_is_a_one_line_error(tmp_path):
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "readme.txt").write_text("x")
    with pytest.raises(UserError, match="no images found under .*empty") as info:
        list_image_files(tmp_path / "empty")
    assert "\n" not in str(info.value)
    with pytest.raises(UserError, match="does not exist"):
        list_image_files(tmp_path / "nope")
    with pytest.raises(UserError, match="--data_dir"):
        list_image_files("")


def test_filename_labels_match_the_original_rule(tmp_path):
    paths = [str(write_image(tmp_path / n, PIXELS)) for n in ["n02_b.png", "n01_a.png", "n01_c.png", "n03_x_y.png"]]
    paths.sort()
    assert choose_label_mode(paths, tmp_path) == "filename"
    class_map = build_class_map(paths, tmp_path, "filename")
    assert class_map.names == ("n01", "n02", "n03")  # sorted unique prefixes -> 0..K-1
    assert labels_for(paths, tmp_path, class_map) == [0, 0, 1, 2]


def test_folder_labels_are_chosen_automatically_for_one_folder_per_class(tmp_path):
    paths = sorted(str(write_image(tmp_path / n, PIXELS)) for n in ["dog/IMG_1.png", "cat/IMG_2.png", "cat/sub/3.png"])
    assert choose_label_mode(paths, tmp_path) == "folder"
    class_map = build_class_map(paths, tmp_path, "folder")
    assert class_map.names == ("cat", "dog")
    assert labels_for(paths, tmp_path, class_map) == [0, 0, 1]
    # An explicit flag overrides the automatic choice.
    assert choose_label_mode(paths, tmp_path, "filename") == "filename"
    with pytest.raises(UserError, match="label mode"):
        choose_label_mode(paths, tmp_path, "bogus")


def test_missing_labels_name_the_image_and_the_fix(tmp_path):
    paths = sorted(str(write_image(tmp_path / n, PIXELS)) for n in ["a_1.png", "plain.png"])
    with pytest.raises(UserError, match=r"plain\.png has no CLASS_ prefix.*sub-folder per class") as info:
        build_class_map(paths, tmp_path, "filename")
    assert "\n" not in str(info.value)
    with pytest.raises(UserError, match="not inside a class sub-folder"):
        build_class_map(paths, tmp_path, "folder")


def test_class_map_round_trips_and_rejects_unknown_validation_classes(tmp_path):
    train = sorted(str(write_image(tmp_path / "train" / n, PIXELS)) for n in ["cat/1.png", "dog/2.png"])
    class_map = build_class_map(train, tmp_path / "train", "folder")
    class_map.save(tmp_path / "run" / "classes.json")
    loaded = ClassMap.load(tmp_path / "run" / "classes.json")
    assert loaded == class_map
    # Validation with a subset of the classes keeps the training indices.
    val = [str(write_image(tmp_path / "val" / "dog" / "9.png", PIXELS))]
    assert labels_for(val, tmp_path / "val", loaded) == [1]
    # ImageNet-style validation names all share one prefix that is no training class.
    bad = [str(write_image(tmp_path / "val2" / "ILSVRC2012_val_00000001.png", PIXELS))]
    with pytest.raises(UserError, match="'ILSVRC2012', which is not among the 2 training classes"):
        labels_for(bad, tmp_path / "val2", ClassMap(names=("n01", "n02"), label_mode="filename"))
