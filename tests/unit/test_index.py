"""The matching indexes return exactly what a linear scan returns.

A missed near-match is a missed abuse image, so every HammingIndex answer is
compared with ``brute_force`` on random banks, with queries planted near bank
entries (and some random ones), at the radii that matter: 0, 1, 15, 31 (the
PDQ threshold, inclusive) and 32 for PDQ, 10 for pHash, plus a radius large
enough to force the linear-scan fallback.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from hashing.index import ExactIndex, HammingIndex, brute_force
from hashing.mih import ball_size, flip_masks, split_widths, sub_radii


def _flip(code: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    bits = np.unpackbits(code)
    bits[rng.choice(bits.size, size=k, replace=False)] ^= 1
    return np.packbits(bits)


def _bank(n: int, bits: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    codes = rng.integers(0, 256, size=(n, bits // 8), dtype=np.uint8)
    ids = rng.permutation(10 * n)[:n].astype(np.int64)  # unordered, sparse ids
    return ids, codes


def _queries(codes: np.ndarray, max_flip: int, count: int, seed: int) -> np.ndarray:
    """Bank entries with 0..max_flip bits flipped, plus a few uniformly random codes."""
    rng = np.random.default_rng(seed)
    near = [
        _flip(codes[rng.integers(len(codes))], int(rng.integers(0, max_flip + 1)), rng)
        for _ in range(count)
    ]
    far = rng.integers(0, 256, size=(count // 4, codes.shape[1]), dtype=np.uint8)
    return np.concatenate([np.array(near), far])


def _clustered_bank(n: int, bits: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Bank with near-duplicates (as real banks have), so queries hit many entries at once."""
    rng = np.random.default_rng(seed)
    centres = rng.integers(0, 256, size=(n // 10, bits // 8), dtype=np.uint8)
    codes = np.array(
        [_flip(centres[i % len(centres)], int(rng.integers(0, 20)), rng) for i in range(n)]
    )
    return np.arange(n, dtype=np.int64), codes


@pytest.fixture(scope="module")
def pdq_bank() -> tuple[np.ndarray, np.ndarray, HammingIndex]:
    ids, codes = _bank(4000, 256, seed=1)
    index = HammingIndex(256)
    index.add(ids, codes)
    index.rebuild()  # force the multi-index tables (4000 rows would fit the delta)
    return ids, codes, index


@pytest.mark.parametrize("radius", [0, 1, 15, 31, 32])
def test_pdq_matches_brute_force(pdq_bank, radius: int) -> None:
    ids, codes, index = pdq_bank
    assert index.num_substrings > 1
    queries = _queries(codes, max_flip=40, count=200, seed=radius)
    got = index.query_batch(queries, radius)
    want = [brute_force(codes, ids, q, radius) for q in queries]
    assert got == want
    # Single queries agree with the batch, as bytes and as arrays.
    for q, w in zip(queries[:20], want[:20], strict=True):
        assert index.query(q.tobytes(), radius) == w
        assert index.query(q, radius) == w


def test_pdq_threshold_is_inclusive(pdq_bank) -> None:
    ids, codes, index = pdq_bank
    rng = np.random.default_rng(7)
    for k in (30, 31, 32):
        q = _flip(codes[5], k, rng)
        hits = dict(index.query(q, 31))
        assert (ids[5] in hits) == (k <= 31)
        if k <= 31:
            assert hits[int(ids[5])] == k


def test_every_planted_match_found_at_every_distance(pdq_bank) -> None:
    """Recall: an entry with k ≤ 31 bits flipped is always found, with distance k."""
    ids, codes, index = pdq_bank
    rng = np.random.default_rng(11)
    rows = rng.integers(0, len(codes), size=320)
    ks = np.arange(320) % 32
    queries = np.array([_flip(codes[r], int(k), rng) for r, k in zip(rows, ks, strict=True)])
    for r, k, res in zip(rows, ks, index.query_batch(queries, 31), strict=True):
        assert (int(ids[r]), int(k)) in res


def test_clustered_bank_and_large_radius_fallback() -> None:
    ids, codes = _clustered_bank(3000, 256, seed=3)
    index = HammingIndex(256, max_delta=0)
    index.add(ids, codes)
    queries = _queries(codes, max_flip=31, count=60, seed=4)
    for radius in (31, 100):  # 100: estimated cost exceeds a scan → linear fallback
        want = [brute_force(codes, ids, q, radius) for q in queries]
        assert index.query_batch(queries, radius) == want


def test_bounded_probe_blocks_and_probe_cap(pdq_bank, monkeypatch) -> None:
    """The memory-bounding sub-blocks and the probe cap change speed, never results."""
    import hashing.index as hindex

    ids, codes, index = pdq_bank
    queries = _queries(codes, max_flip=35, count=40, seed=31)
    want = [brute_force(codes, ids, q, 33) for q in queries]
    monkeypatch.setattr(hindex, "_MAX_BLOCK_PROBES", 1000)  # sub-blocks of ~1 query
    assert index.query_batch(queries, 33) == want
    monkeypatch.setattr(hindex, "_MAX_PROBES", 10)  # always scan
    assert index.query_batch(queries, 33) == want


@pytest.mark.parametrize("radius", [0, 10])
def test_phash_matches_brute_force(radius: int) -> None:
    ids, codes = _bank(4000, 64, seed=2)
    index = HammingIndex(64, max_delta=0)
    index.add(ids, codes)
    assert index.num_substrings > 1
    queries = _queries(codes, max_flip=14, count=200, seed=5)
    want = [brute_force(codes, ids, q, radius) for q in queries]
    assert index.query_batch(queries, radius) == want


def test_fixed_substring_counts_are_exact() -> None:
    """Every substring count (not just the auto-chosen one) is exact, including uneven splits."""
    ids, codes = _bank(1500, 256, seed=6)
    queries = _queries(codes, max_flip=33, count=60, seed=6)
    want = [brute_force(codes, ids, q, 31) for q in queries]
    for m in (13, 16, 19, 32):  # 13 and 19 split unevenly (20/19 and 14/13 bits)
        index = HammingIndex(256, substrings=m, max_delta=0)
        index.add(ids, codes)
        assert index.num_substrings == m
        assert index.query_batch(queries, 31) == want


def test_incremental_add_then_query(pdq_bank) -> None:
    ids, codes, _ = pdq_bank
    index = HammingIndex(256, max_delta=500)
    index.add(ids[:3000], codes[:3000])  # > max_delta: goes straight into tables
    assert index.num_substrings > 0
    for lo in range(3000, 4000, 100):  # analysts' additions: delta, then a rebuild
        index.add(ids[lo : lo + 100], codes[lo : lo + 100])
        queries = _queries(codes[: lo + 100], max_flip=31, count=40, seed=lo)
        want = [brute_force(codes[: lo + 100], ids[: lo + 100], q, 31) for q in queries]
        assert index.query_batch(queries, 31) == want
    assert len(index) == 4000
    one = HammingIndex(256)
    one.add([42], [codes[0].tobytes()])  # list of bytes works too
    assert one.query(codes[0], 0) == [(42, 0)]


def test_delta_segment_uses_its_own_tables(pdq_bank) -> None:
    """Rows added below max_delta are searched through the delta's tables, exactly."""
    ids, codes, _ = pdq_bank
    index = HammingIndex(256)  # max_delta 65536: everything stays in the delta
    index.add(ids[:2000], codes[:2000])
    index.add(ids[2000:], codes[2000:])
    assert index.num_substrings == 0 and len(index) == 4000
    assert index._delta.tables is not None and index._delta.tables.m > 1
    queries = _queries(codes, max_flip=32, count=150, seed=21)
    for radius in (0, 31):
        want = [brute_force(codes, ids, q, radius) for q in queries]
        assert index.query_batch(queries, radius) == want
    index.remove(ids[:100])
    keep = np.ones(len(ids), bool)
    keep[:100] = False
    want = [brute_force(codes[keep], ids[keep], q, 31) for q in queries]
    assert index.query_batch(queries, 31) == want


def test_remove(pdq_bank) -> None:
    ids, codes, _ = pdq_bank
    index = HammingIndex(256, max_delta=200)
    index.add(ids[:3900], codes[:3900])
    index.add(ids[3900:], codes[3900:])  # these 100 stay in the delta
    gone = np.concatenate([ids[:50], ids[3950:]])
    assert index.remove(gone) == 100
    assert index.remove(gone) == 0
    assert len(index) == 3900
    keep = ~np.isin(ids, gone)
    queries = _queries(codes, max_flip=31, count=100, seed=9)
    want = [brute_force(codes[keep], ids[keep], q, 31) for q in queries]
    assert index.query_batch(queries, 31) == want
    assert index.query(codes[0], 0) == []
    index.rebuild()  # dead rows dropped
    assert len(index) == 3900
    assert index.query_batch(queries, 31) == want
    index.add(ids[:1], codes[:1])  # a retired entry can come back
    assert index.query(codes[0], 0) == [(int(ids[0]), 0)]


@pytest.mark.parametrize("mmap", [False, True])
def test_save_load_round_trip(pdq_bank, tmp_path: Path, mmap: bool) -> None:
    ids, codes, _ = pdq_bank
    index = HammingIndex(256, max_delta=100)
    index.add(ids[:3000], codes[:3000])
    index.add(ids[3000:3050], codes[3000:3050])  # unmerged delta is merged by save
    index.remove(ids[:10])
    index.save(tmp_path / "pdq")
    loaded = HammingIndex.load(tmp_path / "pdq", mmap=mmap)
    assert len(loaded) == len(index) == 3040
    queries = _queries(codes[:3050], max_flip=32, count=100, seed=12)
    assert loaded.query_batch(queries, 31) == index.query_batch(queries, 31)
    # A loaded (even memory-mapped) index stays mutable.
    loaded.remove(ids[10:20])
    loaded.add(ids[3050:], codes[3050:])
    keep = np.ones(len(ids), bool)
    keep[:20] = False
    want = [brute_force(codes[keep], ids[keep], q, 31) for q in queries]
    assert loaded.query_batch(queries, 31) == want


def test_save_over_a_memory_mapped_copy(pdq_bank, tmp_path: Path) -> None:
    """Re-saving to the directory an index is mapped from must not corrupt (or SIGBUS) it."""
    ids, codes, _ = pdq_bank
    index = HammingIndex(256, max_delta=0)
    index.add(ids[:2000], codes[:2000])
    index.save(tmp_path / "bank")
    mapped = HammingIndex.load(tmp_path / "bank", mmap=True)
    mapped.save(tmp_path / "bank")  # unchanged: rewrites the very files it maps
    mapped.add(ids[2000:], codes[2000:])
    mapped.save(tmp_path / "bank")
    queries = _queries(codes, max_flip=31, count=50, seed=41)
    want = [brute_force(codes, ids, q, 31) for q in queries]
    assert mapped.query_batch(queries, 31) == want
    assert HammingIndex.load(tmp_path / "bank", mmap=True).query_batch(queries, 31) == want
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bank"]  # no temp dirs left

    exact = ExactIndex(16)
    exact.add([1, 2], [b"a" * 16, b"b" * 16])
    exact.save(tmp_path / "md5")
    again = ExactIndex.load(tmp_path / "md5", mmap=True)
    again.save(tmp_path / "md5")
    assert again.lookup_batch([b"a" * 16, b"c" * 16]) == [[1], []]


def test_empty_index_and_bad_input(tmp_path: Path) -> None:
    index = HammingIndex(256)
    assert len(index) == 0
    assert index.query(bytes(32), 31) == []
    assert index.query_batch(np.zeros((3, 32), np.uint8), 31) == [[], [], []]
    index.save(tmp_path / "empty")
    assert HammingIndex.load(tmp_path / "empty").query(bytes(32), 31) == []
    with pytest.raises(ValueError):
        index.query(bytes(31), 31)
    with pytest.raises(ValueError):
        index.query(bytes(32), -1)
    with pytest.raises(ValueError):
        index.add([1, 2], np.zeros((1, 32), np.uint8))
    with pytest.raises(TypeError):
        index.add([1], np.zeros((1, 32), np.int64))


def test_mih_pigeonhole_plan_is_exhaustive() -> None:
    """The sub-radii satisfy Proposition 2 and the flip masks enumerate whole balls."""
    for bits, m in ((256, 11), (256, 8), (64, 3), (64, 4)):
        widths = split_widths(bits, m)
        assert sum(widths) == bits
        for radius in range(0, 40):
            radii = sub_radii(widths, radius, 10_000_000)
            # Any split of `radius` differences over m tables leaves one table within its radius.
            assert sum(r + 1 for r in radii) > radius
    for w, r in ((14, 2), (23, 2), (24, 1)):
        masks = flip_masks(w, r)
        assert len(masks) == len(set(masks.tolist())) == ball_size(w, r)
        assert max(bin(x).count("1") for x in masks.tolist()) == r


# --------------------------------------------------------------------------- ExactIndex


def _digests(n: int, nbytes: int, seed: int) -> list[bytes]:
    rng = np.random.default_rng(seed)
    return [bytes(r) for r in rng.integers(0, 256, size=(n, nbytes), dtype=np.uint8)]


@pytest.mark.parametrize("nbytes", [16, 20, 32])
def test_exact_index_batch_lookup(nbytes: int, tmp_path: Path) -> None:
    keys = _digests(5000, nbytes, seed=nbytes)
    ids = np.arange(5000, dtype=np.int64) + 100
    index = ExactIndex(nbytes, max_delta=1000)
    index.add(ids[:4000], keys[:4000])  # main segment
    index.add(ids[4000:4500], keys[4000:4500])  # delta
    index.add([7], [keys[0]])  # a second id for the same key
    # Same 8-byte prefix, different key: the full key decides.
    twin = keys[1][:8] + bytes(b ^ 0xFF for b in keys[1][8:])
    unknown = _digests(100, nbytes, seed=99)
    queries = keys[:4500] + keys[4500:] + unknown + [twin]
    got = index.lookup_batch(queries)
    assert got[0] == [100, 7]
    assert all(got[i] == [100 + i] for i in range(1, 4500))
    assert all(g == [] for g in got[4500:])
    assert index.lookup(keys[2]) == [102]
    assert len(index) == 4501

    assert index.remove([100, 4100]) == 2
    assert index.lookup(keys[0]) == [7]
    assert index.lookup(keys[4000]) == []
    index.save(tmp_path / "x")
    for loaded in (ExactIndex.load(tmp_path / "x"), ExactIndex.load(tmp_path / "x", mmap=True)):
        assert len(loaded) == 4499
        assert loaded.lookup_batch(queries) == index.lookup_batch(queries)
        loaded.add([1], [unknown[0]])
        assert loaded.lookup(unknown[0]) == [1]
    with pytest.raises(ValueError):
        index.lookup(b"short")


def test_exact_index_bulk_add_numpy() -> None:
    rng = np.random.default_rng(0)
    keys = rng.integers(0, 256, size=(50_000, 20), dtype=np.uint8)
    index = ExactIndex(20)
    index.add(np.arange(50_000), keys)
    got = index.lookup_batch([bytes(k) for k in keys[::7]])
    assert got == [[i] for i in range(0, 50_000, 7)]
