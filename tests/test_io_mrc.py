"""MRC maps and lazy particle stacks: round trips, modes, bad files, memory use of one-image reads."""

from __future__ import annotations

import os
import pickle
import tracemalloc

import mrcfile
import numpy as np
import pytest
import torch

from cryoscope.errors import InputFormatError, InvalidValueError, MissingDataError
from cryoscope.io.mrc import ParticleStack, read_map, write_map, write_stack
from cryoscope.io.stack_writer import StackWriter


def test_map_round_trip_keeps_data_and_voxel_size(tmp_path):
    vol = torch.randn(8, 10, 12)
    write_map(tmp_path / "v.mrc", vol, 1.7)
    m = read_map(tmp_path / "v.mrc")
    assert m.data.dtype == torch.float32 and m.data.shape == (8, 10, 12)
    assert torch.equal(m.data, vol) and m.voxel_size == pytest.approx(1.7)


@pytest.mark.parametrize("dtype", [np.int8, np.int16, np.float16, np.float32, np.uint16])
def test_read_modes(tmp_path, dtype):
    data = (np.arange(4 * 5 * 6) % 100).reshape(4, 5, 6).astype(dtype)
    with mrcfile.new(tmp_path / "m.mrc") as mrc:
        mrc.set_data(data)
        mrc.voxel_size = 2.0
    m = read_map(tmp_path / "m.mrc")
    assert m.data.dtype == torch.float32
    assert torch.equal(m.data, torch.from_numpy(data.astype(np.float32)))


def test_missing_voxel_size_needs_user_value(tmp_path):
    with mrcfile.new(tmp_path / "m.mrc") as mrc:
        mrc.set_data(np.zeros((4, 4, 4), np.float32))
        mrc.voxel_size = 0.0
    with pytest.raises(MissingDataError, match="voxel size"):
        read_map(tmp_path / "m.mrc")
    assert read_map(tmp_path / "m.mrc", voxel_size=1.2).voxel_size == 1.2


def test_bad_files(tmp_path):
    write_map(tmp_path / "v.mrc", torch.zeros(8, 8, 8), 1.0)
    raw = (tmp_path / "v.mrc").read_bytes()
    (tmp_path / "trunc.mrc").write_bytes(raw[: len(raw) - 100])
    with pytest.raises(InputFormatError, match="trunc"):
        read_map(tmp_path / "trunc.mrc")
    bad = bytearray(raw)
    bad[12:16] = np.int32(5).tobytes()  # mode word
    (tmp_path / "mode.mrc").write_bytes(bytes(bad))
    with pytest.raises(InputFormatError, match="mode 5"):
        read_map(tmp_path / "mode.mrc")
    (tmp_path / "empty.mrc").write_bytes(b"")
    with pytest.raises(InputFormatError, match="empty"):
        read_map(tmp_path / "empty.mrc")
    vol = torch.zeros(4, 4, 4)
    vol[1, 1, 1] = float("nan")
    with pytest.raises(InvalidValueError):
        write_map(tmp_path / "nan.mrc", vol, 1.0)
    assert not (tmp_path / "nan.mrc").exists()


def test_write_never_overwrites_input(tmp_path):
    write_map(tmp_path / "v.mrc", torch.ones(4, 4, 4), 1.0)
    with pytest.raises(InvalidValueError, match="overwrite"):
        write_map(tmp_path / "v.mrc", torch.zeros(4, 4, 4), 1.0, protect=(tmp_path / "v.mrc",))
    assert read_map(tmp_path / "v.mrc").data.sum() == 64


def test_stack_indexing_across_files(tmp_path):
    a, b = torch.randn(5, 6, 6), torch.randn(3, 6, 6)
    write_stack(tmp_path / "a.mrcs", a, 1.5)
    write_stack(tmp_path / "b.mrcs", b, 1.5)
    pairs = [(tmp_path / "b.mrcs", 2), (tmp_path / "a.mrcs", 0), (tmp_path / "a.mrcs", 4), (tmp_path / "b.mrcs", 0)]
    s = ParticleStack.from_pairs(pairs)
    expected = torch.stack([b[2], a[0], a[4], b[0]])
    assert len(s) == 4 and s.box == 6 and s.pixel_size == pytest.approx(1.5)
    assert torch.equal(s[1], a[0])
    assert torch.equal(s[1:3], expected[1:3])
    assert torch.equal(s[np.array([3, 0])], expected[[3, 0]])
    assert torch.equal(s[torch.tensor([2])], expected[[2]])
    with pytest.raises(InvalidValueError, match="index 4 out of range"):
        ParticleStack.from_pairs([(tmp_path / "b.mrcs", 3)])
    with pytest.raises(MissingDataError, match="nothere.mrcs not found"):
        ParticleStack.from_pairs([(tmp_path / "nothere.mrcs", 0)])


def test_stack_reads_any_frame_order_and_byte_order(tmp_path):
    imgs = np.random.default_rng(0).normal(size=(7, 5, 5)).astype(">f4")  # big-endian file
    with mrcfile.new(tmp_path / "be.mrcs") as mrc:
        mrc.set_data(imgs)
        mrc.set_extended_header(np.zeros(16, dtype="V8"))  # data no longer at byte 1024
    s = ParticleStack.open(tmp_path / "be.mrcs")
    rows = np.array([6, 2, 3, 4, 0, 4, 5])  # runs, repeats, reversals
    assert np.array_equal(s[rows].numpy(), imgs[rows].astype(np.float32))
    copy = pickle.loads(pickle.dumps(s))  # as sent to a worker process: opens its own file
    s.close()
    assert np.array_equal(copy[rows].numpy(), imgs[rows].astype(np.float32))


def test_stack_writer_matches_mrcfile_header_statistics(tmp_path):
    imgs = torch.randn(9, 6, 6) * 3 + 1
    with StackWriter(tmp_path / "w.mrcs", 9, 6, 1.25) as w:
        w.write(4, imgs[4:])
        w.write(0, imgs[:4])
    with mrcfile.open(tmp_path / "w.mrcs") as mrc:
        assert np.array_equal(mrc.data, imgs.numpy()) and mrc.voxel_size.x == pytest.approx(1.25)
        written = (float(mrc.header.dmin), float(mrc.header.dmax), float(mrc.header.dmean), float(mrc.header.rms))
    a = imgs.double().numpy()
    expected = (a.min(), a.max(), a.mean(), a.std())  # what mrcfile's update_header_stats writes
    assert written == pytest.approx(expected, rel=1e-5)
    with pytest.raises(InvalidValueError, match="only 4 of 9 images"), StackWriter(tmp_path / "x.mrcs", 9, 6, 1.0) as w:
        w.write(0, imgs[:4])
    assert not list(tmp_path.glob("*x.mrcs*"))


def test_nan_image_raises_on_read(tmp_path):
    imgs = np.zeros((4, 6, 6), np.float32)
    imgs[2, 3, 3] = np.inf
    with mrcfile.new(tmp_path / "s.mrcs") as mrc:
        mrc.set_data(imgs)
    s = ParticleStack.open(tmp_path / "s.mrcs")
    assert s[0:2].shape == (2, 6, 6)
    with pytest.raises(InvalidValueError, match="image 3 .* NaN/Inf"):
        s[1:4]


def _rss_bytes() -> int:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def test_reading_one_image_of_a_large_stack_is_lazy(tmp_path):
    n, box = 100_000, 16
    path = tmp_path / "big.mrcs"
    with mrcfile.new_mmap(path, shape=(n, box, box), mrc_mode=2) as mrc:
        mrc.data[-1] = 7.0  # rest stays zero (sparse file); only header + last image written
        mrc.voxel_size = 1.0
    stack_bytes = n * box * box * 4
    rss0 = _rss_bytes()
    tracemalloc.start()
    s = ParticleStack.open(path)
    img = s[n - 1]
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    rss_growth = _rss_bytes() - rss0
    assert torch.all(img == 7.0) and len(s) == n
    assert peak < 0.1 * stack_bytes
    assert rss_growth < 0.1 * stack_bytes
