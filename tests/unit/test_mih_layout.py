"""The compact multi-index layout (blocked boundaries, 3-byte rows) answers exactly as the
dense one did, and indexes saved in the dense v1 format still load and answer the same.

Why: the compact layout exists to shrink a classify process's working set (issue 13); a
layout bug would silently drop candidates, i.e. miss near-matches. So candidates are compared
row for row with the dense layout, and answers with ``brute_force``, on random and on heavily
duplicated banks (which push ``local`` from uint8 to uint16 and, past 65,535 rows in one
block, back to the dense layout).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hashing import mih
from hashing.index import HammingIndex, brute_force
from hashing.mih import MultiIndexTables, extract_key, split_widths, to_be_words


def _near(codes: np.ndarray, rng: np.random.Generator, count: int, max_flip: int) -> np.ndarray:
    bits = codes.shape[1] * 8
    out = codes[rng.integers(0, len(codes), count)].copy()
    for row in out:
        for b in rng.choice(bits, size=int(rng.integers(0, max_flip + 1)), replace=False):
            row[b // 8] ^= np.uint8(1 << (7 - b % 8))
    return out


def _candidate_sets(t: MultiIndexTables, q: np.ndarray, radius: int) -> list[list[int]]:
    rows, per = t.candidates(q.view(">u8").astype(np.uint64), radius)
    ends = np.cumsum(per)
    return [sorted(rows[e - c : e].tolist()) for e, c in zip(ends, per, strict=True)]


@st.composite
def banks(draw: st.DrawFn) -> tuple[int, np.ndarray, int]:
    """(bits, codes, m): random codes with a drawn share of exact duplicates and near copies."""
    bits = draw(st.sampled_from([64, 256]))
    n = draw(st.integers(1, 400))
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    codes = rng.integers(0, 256, size=(n, bits // 8), dtype=np.uint8)
    dup = draw(st.floats(0, 0.9))
    k = int(n * dup)
    if k:  # duplicates of a few rows: big buckets, some blocks crowded
        codes[:k] = codes[-1 - rng.integers(0, max(1, n // 20), k)]
    m = draw(st.integers(4, 10) if bits == 64 else st.integers(18, 32))
    return bits, codes, m


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(banks(), st.integers(0, 2**32 - 1))
def test_compact_candidates_equal_dense(bank: tuple[int, np.ndarray, int], seed: int) -> None:
    bits, codes, m = bank
    rng = np.random.default_rng(seed)
    queries = np.concatenate([
        _near(codes, rng, 12, bits // 6),
        rng.integers(0, 256, size=(4, bits // 8), dtype=np.uint8),
    ])
    radius = 31 if bits == 256 else 10
    compact = MultiIndexTables.build(codes, bits, m)
    dense = MultiIndexTables.build(codes, bits, m, compact=False)
    assert compact.compact and not dense.compact
    assert _candidate_sets(compact, queries, radius) == _candidate_sets(dense, queries, radius)
    # And the index built on them answers what a linear scan answers.
    ids = np.arange(len(codes), dtype=np.int64) * 7 + 3
    index = HammingIndex(bits, substrings=m, max_delta=0)
    index.add(ids, codes)
    for q in queries:
        assert index.query(q.tobytes(), radius) == brute_force(codes, ids, q, radius)


def test_local_widens_then_falls_back_to_dense() -> None:
    """uint8 for spread codes, uint16 when a block holds 256+ rows, dense past 65,535."""
    rng = np.random.default_rng(5)
    spread = rng.integers(0, 256, size=(3000, 8), dtype=np.uint8)
    t8 = MultiIndexTables.build(spread, 64, 4)
    assert t8.local is not None and t8.local.dtype == np.uint8
    crowded = spread.copy()
    crowded[:600] = crowded[0]
    t16 = MultiIndexTables.build(crowded, 64, 4)
    assert t16.local is not None and t16.local.dtype == np.uint16
    same = np.repeat(spread[:1], 70_000, axis=0)  # 70,000 rows in one bucket per table
    td = MultiIndexTables.build(same, 64, 4)
    assert td.local is None and td.shift == 0
    q = np.concatenate([spread[:3], crowded[:2], same[:1]])
    for tables, codes in ((t8, spread), (t16, crowded), (td, same)):
        dense = MultiIndexTables.build(codes, 64, 4, compact=False)
        assert _candidate_sets(tables, q, 10) == _candidate_sets(dense, q, 10)


def test_unpacked_rows_above_the_packing_limit(monkeypatch) -> None:
    """Banks of 2**24 rows or more keep one integer per ``order`` entry (3 bytes cannot hold them)."""
    rng = np.random.default_rng(9)
    codes = rng.integers(0, 256, size=(2000, 32), dtype=np.uint8)
    packed = MultiIndexTables.build(codes, 256, 20)
    monkeypatch.setattr(mih, "PACKED_ROWS", 1000)
    plain = MultiIndexTables.build(codes, 256, 20)
    assert packed.order.shape == (20 * 2000, 3) and plain.order.ndim == 1
    q = _near(codes, rng, 20, 31)
    assert _candidate_sets(packed, q, 31) == _candidate_sets(plain, q, 31)


def _write_v1(path: Path, codes: np.ndarray, ids: np.ndarray, bits: int, m: int) -> None:
    """An index directory as format v1 wrote it: dense ``2**w + 1`` boundaries per table
    (tables not padded to blocks), ``order`` one uint32 per entry, no ``local``."""
    n = len(codes)
    widths = split_widths(bits, m)
    starts = np.concatenate([[0], np.cumsum(widths)[:-1]]).astype(np.int64)
    sizes = [2**w + 1 for w in widths]
    bases = np.concatenate([[0], np.cumsum(sizes)[:-1]]).astype(np.int64)
    offsets = np.empty(sum(sizes), np.uint32)
    order = np.empty(m * n, np.uint32)
    words = to_be_words(codes)
    for t, (s, w) in enumerate(zip(starts.tolist(), widths, strict=True)):
        keys = extract_key(words, s, w)
        perm = np.argsort(keys, kind="stable")
        order[t * n : (t + 1) * n] = perm
        offsets[bases[t] : bases[t] + sizes[t]] = (
            np.searchsorted(keys[perm], np.arange(2**w + 1), "left") + t * n
        )
    path.mkdir(parents=True)
    arrays = {"codes": codes, "ids": ids, "starts": starts, "widths": np.asarray(widths, np.int64),
              "bases": bases, "offsets": offsets, "order": order}
    for name, a in arrays.items():
        np.save(path / f"{name}.npy", a)
    meta = {"format": "hotline-hamming-index", "version": 1, "bits": bits, "substrings": m,
            "design_radius": 31, "max_delta": 65536, "n": n, "tables": True}
    (path / "meta.json").write_text(json.dumps(meta))


def test_v1_directory_still_loads_and_answers_the_same(tmp_path: Path) -> None:
    rng = np.random.default_rng(11)
    codes = rng.integers(0, 256, size=(3000, 32), dtype=np.uint8)
    ids = rng.permutation(30_000)[:3000].astype(np.int64)
    _write_v1(tmp_path / "v1", codes, ids, 256, 20)
    queries = _near(codes, rng, 60, 33)
    want = [brute_force(codes, ids, q, 31) for q in queries]
    for mmap in (False, True):
        old = HammingIndex.load(tmp_path / "v1", mmap=mmap)
        assert old._main.tables is not None and not old._main.tables.compact
        assert old.query_batch(queries, 31) == want
    # Saving it again writes the compact v2 layout, with the same answers.
    HammingIndex.load(tmp_path / "v1", mmap=True).save(tmp_path / "v2")
    assert json.loads((tmp_path / "v2" / "meta.json").read_text())["version"] == 2
    new = HammingIndex.load(tmp_path / "v2", mmap=True)
    assert new._main.tables is not None and new._main.tables.compact
    assert new.query_batch(queries, 31) == want


def _exact_truth(keys: np.ndarray, ids: np.ndarray, queries: np.ndarray) -> list[list[int]]:
    table: dict[bytes, list[int]] = {}
    for k, i in zip(keys, ids.tolist(), strict=True):
        table.setdefault(k.tobytes(), []).append(i)
    return [table.get(q.tobytes(), []) for q in queries]


def test_exact_index_short_prefixes_with_collisions(tmp_path: Path) -> None:
    """4-byte prefixes (ExactIndex v2): keys sharing their first 4 (or 8) bytes are told apart
    by the full key; a v1 directory (8-byte prefixes) still answers the same."""
    from hashing.index import ExactIndex

    rng = np.random.default_rng(21)
    keys = rng.integers(0, 256, size=(3000, 20), dtype=np.uint8)
    keys[1000:1500, :4] = keys[0, :4]  # 500 keys with one 4-byte prefix
    keys[1500:1600, :8] = keys[1, :8]  # 100 with one 8-byte prefix
    keys[1600:1700] = keys[2]  # exact duplicates under different ids
    ids = rng.permutation(100_000)[:3000].astype(np.int64)
    queries = np.concatenate([keys[rng.integers(0, 3000, 300)], keys[:1].copy()])
    queries[-1, -1] ^= 1  # same prefix as a stored key, different key
    want = _exact_truth(keys, ids, queries)
    index = ExactIndex(20, max_delta=0)
    index.add(ids, keys)
    assert index._prefix.dtype == np.uint32
    assert index.lookup_batch(queries) == want
    index.save(tmp_path / "v2")
    assert ExactIndex.load(tmp_path / "v2", mmap=True).lookup_batch(queries) == want
    # As v1 wrote it: 8-byte prefixes, version 1.
    order = np.argsort(keys[:, :8].copy().view(">u8").ravel(), kind="stable")
    v1 = tmp_path / "v1"
    v1.mkdir()
    np.save(v1 / "keys.npy", keys[order])
    np.save(v1 / "prefix.npy", keys[order, :8].copy().view(">u8").ravel().astype(np.uint64))
    np.save(v1 / "ids.npy", ids[order])
    (v1 / "meta.json").write_text(json.dumps(
        {"format": "hotline-exact-index", "version": 1, "nbytes": 20, "max_delta": 0, "n": 3000}))
    old = ExactIndex.load(v1, mmap=True)
    assert old._prefix.dtype == np.uint64
    assert old.lookup_batch(queries) == want
    old.add([999_999], [bytes(20)])  # a merge rewrites it with 4-byte prefixes
    assert old._prefix.dtype == np.uint32
    assert old.lookup_batch(queries) == want
