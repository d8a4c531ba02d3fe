"""Sharded, resumable batch streams and the `load_data` compat function."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from helpers import make_blob_dataset, write_image

from guided_diffusion.data import ImageStream, StreamSpec
from guided_diffusion.image_datasets import load_data
from guided_diffusion.runtime.errors import UserError


def _spec(data_dir, **kw) -> StreamSpec:
    base = dict(data_dir=str(data_dir), batch_size=4, image_size=8, class_cond=True, num_workers=0, seed=123, random_flip=True, random_crop=True)
    base.update(kw)
    return StreamSpec(**base)


def _take(stream, n):
    return [next(stream) for _ in range(n)]


def test_two_ranks_with_batch_b_see_what_one_rank_with_batch_2b_sees(tmp_path):
    data = make_blob_dataset(tmp_path / "d", count=20, size=12)
    single = _take(ImageStream(_spec(data, batch_size=4), rank=0, world_size=1), 7)  # crosses epochs (5 per epoch)
    ranks = [_take(ImageStream(_spec(data, batch_size=2), rank=r, world_size=2), 7) for r in range(2)]
    for step in range(7):
        merged_seeds = torch.cat([ranks[0][step].seeds, ranks[1][step].seeds])
        order, order_single = torch.argsort(merged_seeds), torch.argsort(single[step].seeds)
        assert torch.equal(merged_seeds[order], single[step].seeds[order_single])
        merged_images = torch.cat([ranks[0][step].images, ranks[1][step].images])
        # Same images with the same augmentation, whichever rank loaded them.
        assert torch.equal(merged_images[order], single[step].images[order_single])
        merged_labels = torch.cat([ranks[0][step].labels, ranks[1][step].labels])
        assert torch.equal(merged_labels[order], single[step].labels[order_single])


def test_each_epoch_visits_every_image_once_in_a_new_order(tmp_path):
    data = make_blob_dataset(tmp_path / "d", count=12, size=8)
    stream = ImageStream(_spec(data, batch_size=4, random_crop=False, random_flip=False), rank=0, world_size=1)
    epochs = [torch.cat([b.images for b in _take(stream, 3)]) for _ in range(2)]
    flat = [sorted(e.reshape(12, -1).sum(1).tolist()) for e in epochs]
    assert flat[0] == pytest.approx(flat[1])  # same images
    assert not torch.equal(epochs[0], epochs[1])  # different order


def test_restored_position_continues_the_same_stream(tmp_path):
    data = make_blob_dataset(tmp_path / "d", count=10, size=8)
    reference = _take(ImageStream(_spec(data), rank=0, world_size=1), 6)
    first = ImageStream(_spec(data), rank=0, world_size=1)
    _take(first, 3)
    state = first.state_dict()
    assert state["samples"] == 12
    resumed = ImageStream(_spec(data), rank=0, world_size=1)
    resumed.load_state_dict(state)
    for expected, got in zip(reference[3:], _take(resumed, 3)):
        assert torch.equal(expected.images, got.images)
        assert torch.equal(expected.seeds, got.seeds)


def test_worker_processes_give_identical_batches(tmp_path):
    data = make_blob_dataset(tmp_path / "d", count=8, size=8)
    inline = _take(ImageStream(_spec(data, num_workers=0), rank=0, world_size=1), 3)
    workers = ImageStream(_spec(data, num_workers=2), rank=0, world_size=1)
    for expected, got in zip(inline, _take(workers, 3)):
        assert torch.equal(expected.images, got.images)
    workers.close()


def test_shard_smaller_than_batch_is_an_error_not_a_hang(tmp_path):
    data = make_blob_dataset(tmp_path / "d", count=5, size=8)
    with pytest.raises(UserError, match=r"has 5 images but one step needs 6 .*--batch_size 3 on 2 ranks.*lower --batch_size") as info:
        ImageStream(_spec(data, batch_size=3), rank=1, world_size=2)
    assert "\n" not in str(info.value)


def test_unreadable_image_is_named_or_skipped_and_counted(tmp_path):
    data = make_blob_dataset(tmp_path / "d", count=8, size=8)
    (data / "c0_broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    spec = _spec(data, batch_size=9, deterministic=True)
    with pytest.raises(UserError, match=r"cannot read image .*c0_broken\.png .*--skip_bad_images True") as info:
        next(ImageStream(spec, rank=0, world_size=1))
    assert "\n" not in str(info.value)
    stream = ImageStream(_spec(data, batch_size=9, deterministic=True, skip_bad_images=True), rank=0, world_size=1)
    batch = next(stream)
    assert batch.images.shape == (9, 3, 8, 8)
    assert stream.skipped_files == {str(data / "c0_broken.png")}


def test_class_cond_without_labels_is_an_error(tmp_path):
    for i in range(4):
        write_image(tmp_path / "d" / f"img{i}.png", np.zeros((8, 8, 3), dtype=np.uint8))
    with pytest.raises(UserError, match="no CLASS_ prefix"):
        ImageStream(_spec(tmp_path / "d"), rank=0, world_size=1)
    # Unconditional training does not need labels.
    assert next(ImageStream(_spec(tmp_path / "d", class_cond=False), rank=0, world_size=1)).images.shape[0] == 4


def test_load_data_has_the_original_output(tmp_path):
    data = make_blob_dataset(tmp_path / "d", count=6, size=12)
    images, cond = next(load_data(data_dir=str(data), batch_size=3, image_size=8, class_cond=True, num_workers=0))
    assert images.shape == (3, 3, 8, 8) and images.dtype == torch.float32
    assert images.min() >= -1 and images.max() <= 1
    assert set(cond) == {"y"} and cond["y"].dtype == torch.int64 and set(cond["y"].tolist()) <= {0, 1}
    _, cond = next(load_data(data_dir=str(data), batch_size=3, image_size=8, num_workers=0))
    assert cond == {}
    with pytest.raises(UserError):
        load_data(data_dir=str(tmp_path / "missing"), batch_size=1, image_size=8)
