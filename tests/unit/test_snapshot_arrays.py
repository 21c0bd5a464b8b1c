"""The snapshot's arrays on disk (``hashing.arrays``): the same contents however they are
loaded, read-only when mapped, and an array read only on hits costs a process the pages it
reads, not the 2 MiB folios its writer left in the page cache."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np
import pytest

from hashing.arrays import load_array, save_array
from hashing.index import ExactIndex


def _rss_file_kb() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("RssFile:"):
            return int(line.split()[1])
    raise AssertionError("no RssFile in /proc/self/status")


@pytest.mark.parametrize("shape,dtype", [((1000,), np.int64), ((257, 20), np.uint8), ((0,), np.uint32), ((0, 16), np.uint8)])
def test_every_way_of_loading_gives_the_saved_array(tmp_path: Path, shape: tuple[int, ...], dtype: type) -> None:
    rng = np.random.default_rng(7)
    array = rng.integers(0, 200, size=shape).astype(dtype)
    path = tmp_path / "a.npy"
    save_array(path, array, sparse=True)
    for mmap in (False, True):
        for sparse in (False, True):
            loaded = load_array(path, mmap=mmap, sparse=sparse)
            assert loaded.dtype == array.dtype and loaded.shape == array.shape
            assert np.array_equal(loaded, array)
            if mmap and loaded.size:
                assert not loaded.flags.writeable  # a snapshot is never changed in place


def test_an_exact_index_mapped_finds_what_it_found_in_memory(tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    keys = rng.integers(0, 256, size=(5000, 20), dtype=np.uint8)
    index = ExactIndex(20, max_delta=0)
    index.add(np.arange(5000), keys)
    index.save(tmp_path / "sha1")
    mapped = ExactIndex.load(tmp_path / "sha1", mmap=True)
    probe = [keys[0].tobytes(), keys[4999].tobytes(), bytes(20)]
    assert mapped.lookup_batch(probe) == index.lookup_batch(probe) == [[0], [4999], []]


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads RssFile from /proc")
def test_a_sparse_array_maps_the_pages_read_not_the_file(tmp_path: Path) -> None:
    # 32 MiB, as an exact index's keys at 1M SHA-256 entries, written as a snapshot written
    # before ``save_array`` (or copied in) was: the page cache holds all of it as the writer
    # left it (in large folios on ext4 since Linux 6.16), written back to disk.
    array = np.random.default_rng(1).integers(0, 2**62, size=4 << 20, dtype=np.int64)
    path = tmp_path / "ids.npy"
    with open(path, "wb") as f:
        np.save(f, array, allow_pickle=False)
        f.flush()
        os.fsync(f.fileno())
    mapped = load_array(path, mmap=True, sparse=True)
    positions = np.random.default_rng(2).integers(0, len(array), size=32).tolist()
    before = _rss_file_kb()
    total = sum(int(mapped[p]) for p in positions)
    grown = _rss_file_kb() - before
    assert total == sum(int(array[p]) for p in positions)
    # 32 reads at random: at most 32 pages (plus the kernel's fault-around, 16 pages each),
    # 2 MiB at most; with the writer's 2 MiB folios mapped whole it was 32 MiB.
    assert grown <= 2048, f"32 reads mapped {grown} KiB of a 32 MiB array"
