"""Streaming .npz reads and atomic .npz writes."""
from __future__ import annotations

import io
import zipfile

import numpy as np
import pytest

from guided_diffusion.evaluation.npz import NpzArrayReader, NpzWriter, npz_keys
from guided_diffusion.runtime.errors import UserError


@pytest.mark.parametrize("save", [np.savez, np.savez_compressed])
def test_reader_streams_rows_in_batches(tmp_path, save):
    images = np.random.default_rng(0).integers(0, 256, size=(23, 5, 4, 3), dtype=np.uint8)
    path = tmp_path / "batch.npz"
    save(path, images, mu=np.zeros(3))
    with NpzArrayReader(path) as reader:
        assert reader.shape == images.shape and reader.dtype == np.uint8 and len(reader) == 23
        blocks = list(reader.iter_batches(10))
    assert [len(b) for b in blocks] == [10, 10, 3]
    np.testing.assert_array_equal(np.concatenate(blocks), images)
    assert all(b.flags.writeable for b in blocks)
    assert npz_keys(path) == {"arr_0", "mu"}


def test_reader_does_not_load_the_member_at_once(tmp_path):
    images = np.zeros((64, 32, 32, 3), dtype=np.uint8)
    path = tmp_path / "batch.npz"
    np.savez(path, images)
    reads = []
    with NpzArrayReader(path) as reader:
        original_readinto = reader._member.readinto

        def counting_readinto(buffer):
            reads.append(len(buffer))
            return original_readinto(buffer)

        reader._member.readinto = counting_readinto
        next(reader.iter_batches(4))
    assert max(reads) == 4 * 32 * 32 * 3


def test_reader_falls_back_to_memory_for_fortran_order(tmp_path):
    array = np.asfortranarray(np.arange(24, dtype=np.float32).reshape(6, 4))
    path = tmp_path / "fortran.npz"
    np.savez(path, array)
    with NpzArrayReader(path) as reader:
        np.testing.assert_array_equal(np.concatenate(list(reader.iter_batches(4))), array)


def test_reader_errors_are_user_errors(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        NpzArrayReader(tmp_path / "missing.npz")
    (tmp_path / "text.npz").write_text("hello")
    with pytest.raises(UserError, match="not a readable .npz"):
        NpzArrayReader(tmp_path / "text.npz")
    np.savez(tmp_path / "other.npz", images=np.zeros(3))
    with pytest.raises(UserError, match="no array named 'arr_0'"):
        NpzArrayReader(tmp_path / "other.npz")
    np.savez(tmp_path / "objects.npz", np.array([{"a": 1}], dtype=object))
    with pytest.raises(UserError, match="Python objects"):
        NpzArrayReader(tmp_path / "objects.npz")


def test_truncated_member_is_reported(tmp_path):
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(header, {"descr": "|u1", "fortran_order": False, "shape": (10, 4)})
    path = tmp_path / "truncated.npz"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("arr_0.npy", header.getvalue() + bytes(5 * 4))
    with NpzArrayReader(path) as reader:
        with pytest.raises(UserError, match="truncated"):
            list(reader.iter_batches(3))


def test_writer_streams_rows_and_is_readable_by_numpy(tmp_path):
    rows = np.random.default_rng(1).integers(0, 256, size=(7, 2, 2, 3), dtype=np.uint8)
    path = tmp_path / "out" / "ref.npz"
    with NpzWriter(path) as writer:
        writer.begin("arr_0", rows.shape, np.uint8)
        writer.append(rows[:3])
        writer.append(rows[3:])
        writer.write("mu", np.arange(4.0))
    with np.load(path) as loaded:
        np.testing.assert_array_equal(loaded["arr_0"], rows)
        np.testing.assert_array_equal(loaded["mu"], np.arange(4.0))
    assert [p.name for p in path.parent.iterdir()] == ["ref.npz"]


def test_writer_leaves_existing_file_untouched_on_failure(tmp_path):
    path = tmp_path / "ref.npz"
    np.savez(path, np.ones(3))
    with pytest.raises(RuntimeError, match="boom"):
        with NpzWriter(path) as writer:
            writer.write("mu", np.zeros(3))
            raise RuntimeError("boom")
    with np.load(path) as loaded:
        np.testing.assert_array_equal(loaded["arr_0"], np.ones(3))
    assert [p.name for p in tmp_path.iterdir()] == ["ref.npz"]
    with pytest.raises(RuntimeError, match="missing 2 rows"):
        with NpzWriter(path) as writer:
            writer.begin("arr_0", (3, 2), np.uint8)
            writer.append(np.zeros((1, 2), np.uint8))
    assert [p.name for p in tmp_path.iterdir()] == ["ref.npz"]
