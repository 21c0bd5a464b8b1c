"""Matching indexes for the hash bank: exact (MD5/SHA-1/SHA-256) and near-match (PDQ/pHash).

Why: every fetched image is checked against a bank of 10 million known
hashes and more. A missed match is a missed abuse image, so the near-match
index must have 100 % recall inside the radius (PDQ: distance ≤ 31,
inclusive; pHash: ≈ 10), while answering ≥ 1,000 queries/s on one core.

* :class:`HammingIndex` — exact Hamming range search by multi-index hashing
  (see :mod:`hashing.mih` for the scheme and why it is exact). Rows live in a
  large *main* segment (rebuilt in bulk) and a small *delta* segment of
  recent additions (rebuilt on each ``add``, milliseconds), both with
  multi-index tables, so analysts can add entries one at a time without a
  10M rebuild and without slowing queries. Removal marks rows dead (a
  tombstone mask checked at query time); dead rows go at the next rebuild.
* :class:`ExactIndex` — cryptographic hashes: a sorted array of 32-bit key
  prefixes (64-bit in format v1) searched with ``np.searchsorted`` (queries sorted first, which
  makes the binary searches cache friendly), full keys compared afterwards.
  Key length + 13 bytes per entry (a Python dict needs ~200), loads by mmap,
  ~1.6M lookups/s at 10M entries including building the result lists.
* :func:`brute_force` — the reference every test compares against and the
  benchmark baseline.

Why not faiss: ``IndexBinaryMultiHash`` implements the same pigeonhole
scheme (exact when ``nhash * (nflip + 1) > radius``; its ``range_search``
counts ``d < radius``, so pass ``radius + 1``) but keeps one
``unordered_map`` of ``vector`` per table (+715 MB RSS at 1M for 8 tables),
builds single-threaded, re-inserts every map on load, has no removal, and
probes one hash lookup per key. Measured on one core
(``docs/benchmarks-index.md``): 178-814 queries/s at 1M against ~6,500/s for
this index at 10M. ``IndexBinaryFlat`` (exact scan) does 83 queries/s at 10M.

Nothing here does I/O except ``save``/``load``: indexes are plain in-memory
structures the classify stage and the HashCheck API wrap.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np

from hashing.arrays import load_array, save_array
from hashing.mih import MultiIndexTables, choose_substrings, estimated_cost

__all__ = ["HammingIndex", "ExactIndex", "brute_force", "hamming_distances"]

Match = tuple[int, int]
"""(bank entry id, Hamming distance)."""

# Above this many bucket probes per query a scan is cheaper than enumerating them.
_MAX_PROBES = 1 << 18
# Bound on queries × probes per vectorised step (≈ 8 bytes × a few arrays each).
_MAX_BLOCK_PROBES = 1 << 20

_FORMAT = "hotline-hamming-index"
_EXACT_FORMAT = "hotline-exact-index"
_VERSION = 1
# HammingIndex v2: compact multi-index tables (``hashing.mih``, "Compact layout").
_HAMMING_VERSION = 2
# ExactIndex v2: 4-byte key prefixes instead of 8.
_EXACT_VERSION = 2
_READABLE = (1, 2)
_HAMMING_SPARSE = frozenset({"ids"})
_EXACT_SPARSE = frozenset({"keys", "ids"})
"""The arrays a query reads only for its hits (``hashing.arrays``): a Hamming index's ids (its
codes and tables are scanned by every query), an exact index's keys and ids (its prefixes are
searched by every lookup; a key is read when its prefix matches)."""


# --------------------------------------------------------------------------- helpers


def _padded_nbytes(bits: int) -> int:
    """Codes are stored zero padded to whole 64-bit words so popcount works on uint64."""
    return -(-bits // 64) * 8


def _as_codes(codes: np.ndarray | bytes | Sequence[bytes], nbytes: int) -> np.ndarray:
    """Validate and convert codes to a C-contiguous (n, nbytes) uint8 array."""
    if isinstance(codes, bytes | bytearray | memoryview):
        arr = np.frombuffer(bytes(codes), dtype=np.uint8)
        if arr.size != nbytes:
            raise ValueError(f"expected a {nbytes}-byte code, got {arr.size} bytes")
        return arr.reshape(1, nbytes)
    if isinstance(codes, list | tuple):
        if any(len(c) != nbytes for c in codes):
            raise ValueError(f"every code must be {nbytes} bytes")
        return np.frombuffer(b"".join(codes), dtype=np.uint8).reshape(len(codes), nbytes)
    arr = np.asarray(codes)
    if arr.dtype != np.uint8:
        raise TypeError(f"codes must be uint8, got {arr.dtype}")
    if arr.ndim == 1:
        arr = arr.reshape(1, -1)
    if arr.ndim != 2 or arr.shape[1] != nbytes:
        raise ValueError(f"codes must have shape (n, {nbytes}), got {arr.shape}")
    return np.ascontiguousarray(arr)


def _pad(codes: np.ndarray, padded: int) -> np.ndarray:
    if codes.shape[1] == padded:
        return codes
    out = np.zeros((codes.shape[0], padded), dtype=np.uint8)
    out[:, : codes.shape[1]] = codes
    return out


def _as_ids(ids: np.ndarray | Iterable[int]) -> np.ndarray:
    arr = np.asarray(ids if isinstance(ids, np.ndarray) else list(ids))
    if arr.size == 0:
        return np.empty(0, dtype=np.int64)
    if arr.dtype.kind not in "iu":
        raise TypeError(f"ids must be integers, got {arr.dtype}")
    return arr.astype(np.int64).ravel()


def hamming_distances(codes: np.ndarray, query: np.ndarray) -> np.ndarray:
    """Hamming distance of each row of ``codes`` (n, nbytes) uint8 to ``query`` (nbytes,)."""
    if codes.shape[1] % 8 == 0:
        a = np.ascontiguousarray(codes).view(np.uint64)
        q = np.ascontiguousarray(query).view(np.uint64)
    else:
        a, q = codes, query
    # Column by column: 2-3x faster than ``.sum(axis=1)`` over a 4-wide axis.
    counts = np.bitwise_count(a ^ q)
    dist = counts[:, 0].astype(np.int32)
    for j in range(1, counts.shape[1]):
        dist += counts[:, j]
    return dist


def brute_force(
    codes: np.ndarray, ids: np.ndarray, query: np.ndarray | bytes, radius: int
) -> list[Match]:
    """Every ``(id, distance)`` with distance ≤ ``radius``, sorted by distance then id.

    The reference implementation: a linear numpy scan (XOR + ``np.bitwise_count``),
    chunked so a 10M bank needs no more than a few MB of temporaries.
    """
    codes = np.asarray(codes, dtype=np.uint8)
    q = _as_codes(query, codes.shape[1])[0]
    ids = np.asarray(ids, dtype=np.int64)
    hit_ids: list[np.ndarray] = []
    hit_dist: list[np.ndarray] = []
    chunk = 1 << 18
    for lo in range(0, codes.shape[0], chunk):
        d = hamming_distances(codes[lo : lo + chunk], q)
        sel = np.flatnonzero(d <= radius)
        hit_ids.append(ids[lo + sel])
        hit_dist.append(d[sel])
    if not hit_ids:
        return []
    i, d = np.concatenate(hit_ids), np.concatenate(hit_dist)
    o = np.lexsort((i, d))
    return list(zip(i[o].tolist(), d[o].tolist(), strict=True))


def _write_dir(path: Path, arrays: dict[str, np.ndarray], meta: dict[str, object],
               sparse: frozenset[str] = frozenset()) -> None:
    """Write ``arrays`` as ``.npy`` plus ``meta.json`` into a fresh directory, then swap it in
    (``sparse``: the arrays read only on hits, ``hashing.arrays``).

    Never overwrite files in place: a process (this one included) may have the
    old index memory-mapped, and truncating a mapped file crashes it with
    SIGBUS. Renaming leaves old mappings valid and readers see either the old
    or the new directory, never a half-written one.
    """
    path = path.absolute()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
    try:
        for name, arr in arrays.items():
            save_array(tmp / f"{name}.npy", arr, sparse=name in sparse)
        (tmp / "meta.json").write_text(json.dumps(meta, indent=2))
        old = None
        if path.exists():
            old = path.with_name(f".{path.name}.old-{os.getpid()}-{tmp.name[-8:]}")
            path.rename(old)
        tmp.rename(path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def _group(b: int, qidx: np.ndarray, ids: np.ndarray, dist: np.ndarray) -> list[list[Match]]:
    """Split flat hits into one list per query, each sorted by distance then id."""
    out: list[list[Match]] = [[] for _ in range(b)]
    if len(qidx) == 0:
        return out
    o = np.lexsort((ids, dist, qidx))
    for q, i, d in zip(qidx[o].tolist(), ids[o].tolist(), dist[o].tolist(), strict=True):
        out[q].append((i, d))
    return out


# --------------------------------------------------------------------------- HammingIndex


class _Segment:
    """Rows plus their multi-index tables: the unit that is built, queried and saved.

    ``alive`` is the tombstone mask ``remove`` clears; dead rows are dropped
    when the segment is rebuilt.
    """

    def __init__(
        self,
        codes: np.ndarray,
        ids: np.ndarray,
        tables: MultiIndexTables | None,
        alive: np.ndarray | None = None,
    ) -> None:
        self.codes = codes  # (n, padded) uint8
        self.ids = ids  # (n,) int64
        self.tables = tables
        self.alive = np.ones(len(ids), dtype=bool) if alive is None else alive
        self.n_dead = int(len(ids) - self.alive.sum()) if alive is not None else 0

    @classmethod
    def build(
        cls, codes: np.ndarray, ids: np.ndarray, bits: int, substrings: int | None, radius: int
    ) -> _Segment:
        tables = None
        if len(ids):
            m = substrings or choose_substrings(bits, len(ids), radius)
            tables = MultiIndexTables.build(codes, bits, m)
        return cls(codes, ids, tables)

    @classmethod
    def empty(cls, padded: int) -> _Segment:
        return cls(np.empty((0, padded), np.uint8), np.empty(0, np.int64), None)

    def __len__(self) -> int:
        return len(self.ids) - self.n_dead

    def live(self) -> tuple[np.ndarray, np.ndarray]:
        """(codes, ids) of the live rows."""
        if self.n_dead == 0:
            return self.codes, self.ids
        return self.codes[self.alive], self.ids[self.alive]

    def remove(self, ids: np.ndarray) -> int:
        if len(self.ids) == 0:
            return 0
        dead = np.isin(self.ids, ids) & self.alive
        k = int(dead.sum())
        if k:
            if not self.alive.flags.writeable:  # memory-mapped or loaded read-only
                self.alive = self.alive.copy()
            self.alive[dead] = False
            self.n_dead += k
        return k

    def hits(self, q: np.ndarray, radius: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(query index, id, distance) of every live row within ``radius`` of rows of ``q``."""
        n = len(self.ids)
        if n == 0 or self.tables is None:
            e = np.empty(0, dtype=np.int64)
            return e, e, e.astype(np.int32)
        q64 = q.view(np.uint64)
        codes64 = self.codes.view(np.uint64)
        probes = self.tables.probe_count(radius)
        if probes > _MAX_PROBES or estimated_cost(self.tables.widths.tolist(), radius, n) >= n / 4:
            # Radius too large (or segment too small) for the tables to help: scan, still exact.
            qs, rs, ds = [], [], []
            for i, row in enumerate(q):
                dist = hamming_distances(self.codes, row)
                r = np.flatnonzero(dist <= radius)
                qs.append(np.full(len(r), i, dtype=np.int64))
                rs.append(r)
                ds.append(dist[r])
            qi, rows, d = np.concatenate(qs), np.concatenate(rs), np.concatenate(ds)
        elif len(q) * probes > _MAX_BLOCK_PROBES and len(q) > 1:
            # Keep the (queries × probes) temporaries bounded at large radii.
            step = max(1, _MAX_BLOCK_PROBES // probes)
            parts = [self.hits(q[lo : lo + step], radius) for lo in range(0, len(q), step)]
            qi = np.concatenate(
                [p[0] + lo for p, lo in zip(parts, range(0, len(q), step), strict=True)]
            )
            return qi, np.concatenate([p[1] for p in parts]), np.concatenate([p[2] for p in parts])
        else:
            rows, per_query = self.tables.candidates(q.view(">u8").astype(np.uint64), radius)
            qi = np.repeat(np.arange(len(q), dtype=np.int64), per_query)
            # np.take and np.repeat: several times faster than fancy indexing here.
            counts = np.bitwise_count(
                np.take(codes64, rows, axis=0) ^ np.repeat(q64, per_query, axis=0)
            )
            d = counts[:, 0].astype(np.int32)
            for j in range(1, counts.shape[1]):
                d += counts[:, j]
            ok = d <= radius
            qi, rows, d = qi[ok], rows[ok], d[ok]
            if len(qi):
                # A true match is usually found through several tables: dedupe.
                _, first = np.unique(qi * n + rows, return_index=True)
                qi, rows, d = qi[first], rows[first], d[first]
        if self.n_dead and len(rows):
            ok = self.alive[rows]
            qi, rows, d = qi[ok], rows[ok], d[ok]
        return qi.astype(np.int64), self.ids[rows], d


class HammingIndex:
    """Exact Hamming range search over ``bits``-bit codes (PDQ: 256, pHash: 64).

    ``query`` returns *every* live entry within the radius (inclusive): the
    multi-index tables only narrow the candidates, the full distance decides.

    Two segments, both with multi-index tables: the large *main* one, rebuilt
    only in bulk, and a small *delta* holding recent additions, rebuilt on
    every ``add`` (~70 ms at 60k rows). So analysts' one-at-a-time additions
    never trigger a 10M rebuild and are never scanned linearly (a full delta
    costs a second, small probe per query); once the delta exceeds
    ``max_delta`` rows it is merged into the main segment.

    Args:
        bits: code length in bits (a multiple of 8).
        substrings: number of multi-index substrings; ``None`` (default)
            chooses it at every build from the segment size, which is what
            you want unless benchmarking.
        design_radius: the radius the substring count is tuned for (default
            31 for 256-bit PDQ, else ``bits // 6``, 10 for pHash); any radius
            can be queried, large ones fall back to a linear scan.
        max_delta: rows kept in the delta segment before a merge into the
            main one (a merge rebuilds the main tables: ~16 s at 10M).

    Not thread-safe for concurrent mutation; concurrent queries are fine.
    """

    def __init__(
        self,
        bits: int,
        *,
        substrings: int | None = None,
        design_radius: int | None = None,
        max_delta: int = 65536,
    ) -> None:
        if bits <= 0 or bits % 8:
            raise ValueError("bits must be a positive multiple of 8")
        self.bits = bits
        self.nbytes = bits // 8
        self._padded = _padded_nbytes(bits)
        self.substrings = substrings
        self.design_radius = (
            design_radius if design_radius is not None else (31 if bits == 256 else bits // 6)
        )
        self.max_delta = max_delta
        self._v1_tables = False  # loaded dense (format v1) tables: save() rebuilds them
        self._main = _Segment.empty(self._padded)
        self._delta = _Segment.empty(self._padded)

    # ---- mutation

    def add(self, ids: np.ndarray | Iterable[int], codes: np.ndarray | Sequence[bytes]) -> None:
        """Add entries: into the delta segment, or straight into the main one when large.

        Ids need not be unique (two hashes of one bank entry are fine); ``remove``
        removes every row with the id.
        """
        ids_a = _as_ids(ids)
        codes_a = _pad(_as_codes(codes, self.nbytes), self._padded)
        if len(ids_a) != len(codes_a):
            raise ValueError(f"{len(ids_a)} ids for {len(codes_a)} codes")
        if len(ids_a) == 0:
            return
        d_codes, d_ids = self._delta.live()
        codes_all = np.concatenate([d_codes, codes_a])
        ids_all = np.concatenate([d_ids, ids_a])
        if len(ids_all) > self.max_delta:
            self._delta = _Segment(codes_all, ids_all, None)
            self.rebuild()
        else:
            self._delta = self._build(codes_all, ids_all)

    def remove(self, ids: np.ndarray | Iterable[int]) -> int:
        """Retire entries by id (tombstones; rows are dropped at the next rebuild).

        Returns how many rows were removed.
        """
        ids_a = _as_ids(ids)
        if len(ids_a) == 0:
            return 0
        return self._main.remove(ids_a) + self._delta.remove(ids_a)

    def rebuild(self) -> None:
        """Merge the delta into the main segment, drop removed rows, rebuild the tables."""
        m_codes, m_ids = self._main.live()
        d_codes, d_ids = self._delta.live()
        codes = np.ascontiguousarray(np.concatenate([m_codes, d_codes]))
        ids = np.concatenate([m_ids, d_ids])
        self._main = _Segment.empty(self._padded)  # free the old tables before building
        self._delta = _Segment.empty(self._padded)
        self._main = self._build(codes, ids)

    def _build(self, codes: np.ndarray, ids: np.ndarray) -> _Segment:
        return _Segment.build(codes, ids, self.bits, self.substrings, self.design_radius)

    # ---- queries

    def query(self, code: bytes | np.ndarray, radius: int) -> list[Match]:
        """All live ``(id, distance)`` with distance ≤ ``radius``, sorted by distance then id."""
        return self.query_batch(_as_codes(code, self.nbytes), radius)[0]

    def query_batch(
        self, codes: np.ndarray | Sequence[bytes], radius: int, *, block: int = 16
    ) -> list[list[Match]]:
        """``query`` for each row of ``codes`` (q, nbytes); vectorised in blocks of ``block``.

        Blocks of 8-64 queries run fastest at 10M (~7k queries/s on one core):
        large enough to amortise numpy's per-call overhead, small enough that
        the candidate arrays stay in cache.
        """
        if radius < 0:
            raise ValueError("radius must be >= 0")
        q = _pad(_as_codes(codes, self.nbytes), self._padded)
        out: list[list[Match]] = []
        for lo in range(0, len(q), block):
            blk = q[lo : lo + block]
            parts = [s.hits(blk, int(radius)) for s in (self._main, self._delta) if len(s.ids)]
            if not parts:
                out.extend([] for _ in range(len(blk)))
                continue
            qi, ids, d = (np.concatenate(p) for p in zip(*parts, strict=True))
            out.extend(_group(len(blk), qi, ids, d))
        return out

    # ---- bookkeeping

    def __len__(self) -> int:
        """Live entries (rows) in the index."""
        return len(self._main) + len(self._delta)

    @property
    def num_substrings(self) -> int:
        """Substrings of the main segment's tables (0 while it is empty)."""
        t = self._main.tables
        return t.m if t is not None else 0

    # ---- persistence

    def save(self, path: str | Path) -> None:
        """Write the index to directory ``path`` as ``.npy`` files (delta merged first).

        Saving the built tables (not just the codes) is what makes ``load``
        take a second at 10M entries instead of a rebuild.
        """
        if len(self._delta.ids) or self._main.n_dead or self._v1_tables:
            self.rebuild()
        main = self._main
        arrays: dict[str, np.ndarray] = {"codes": main.codes, "ids": main.ids}
        t = main.tables
        if t is not None:
            arrays.update(
                starts=t.starts, widths=t.widths, bases=t.bases, offsets=t.offsets, order=t.order
            )
            if t.local is not None:
                arrays["local"] = t.local
        meta = {
            "format": _FORMAT,
            "version": _HAMMING_VERSION,
            "bits": self.bits,
            "substrings": self.substrings,
            "design_radius": self.design_radius,
            "max_delta": self.max_delta,
            "n": int(len(main.ids)),
            "tables": t is not None,
            "shift": t.shift if t is not None else 0,
        }
        _write_dir(Path(path), arrays, meta, _HAMMING_SPARSE)

    @classmethod
    def load(cls, path: str | Path, *, mmap: bool = False) -> HammingIndex:
        """Read an index written by ``save``.

        ``mmap=True`` maps the arrays read-only instead of reading them: instant,
        and several worker processes then share one copy in the page cache
        (the first queries are slower while pages fault in). Either way the
        loaded index accepts ``add`` and ``remove``.
        """
        p = Path(path)
        meta = json.loads((p / "meta.json").read_text())
        # v1 (dense bucket boundaries, one uint32 row per ``order`` entry) is still read:
        # snapshots written before the compact layout keep working until the next save.
        if meta.get("format") != _FORMAT or meta.get("version") not in _READABLE:
            raise ValueError(f"{p} is not a {_FORMAT} v1 or v2 directory")
        def arr(name: str) -> np.ndarray:
            return load_array(p / f"{name}.npy", mmap=mmap, sparse=name in _HAMMING_SPARSE)

        idx = cls(
            meta["bits"],
            substrings=meta["substrings"],
            design_radius=meta["design_radius"],
            max_delta=meta["max_delta"],
        )
        n = meta["n"]
        codes, ids = arr("codes"), arr("ids")
        if codes.shape != (n, idx._padded) or ids.shape != (n,):
            raise ValueError(f"{p}: arrays do not match meta.json")
        tables = None
        if meta["tables"]:
            tables = MultiIndexTables(
                bits=idx.bits,
                n=n,
                starts=np.array(arr("starts")),
                widths=np.array(arr("widths")),
                bases=np.array(arr("bases")),
                offsets=arr("offsets"),
                order=arr("order"),
                local=arr("local") if meta.get("shift", 0) else None,
                shift=int(meta.get("shift", 0)),
            )
        idx._main = _Segment(codes, ids, tables)
        idx._v1_tables = meta["version"] == 1  # the next save rebuilds them compact
        return idx


# --------------------------------------------------------------------------- ExactIndex


class ExactIndex:
    """Exact lookup of fixed-length cryptographic hashes (MD5 16, SHA-1 20, SHA-256 32 bytes).

    Main segment: keys sorted by their first 4 bytes (as a big-endian uint32; 8 in v1),
    looked up with ``np.searchsorted``; the full key is compared afterwards,
    so prefix collisions are harmless. Recent additions sit in a dict (the
    delta) until ``max_delta`` is reached; removals are a tombstone mask.
    """

    def __init__(self, nbytes: int, *, max_delta: int = 65536) -> None:
        if nbytes < 1:
            raise ValueError("nbytes must be positive")
        self.nbytes = nbytes
        self.max_delta = max_delta
        self._keys = np.empty((0, nbytes), dtype=np.uint8)
        # 4-byte prefixes (format v2; v1 had 8): the binary search touches every page of this
        # array after a few hundred lookups, so its size is the index's working set, and the
        # full-key comparison below makes prefix collisions harmless (rare: ~n / 2**32).
        self._prefix = np.empty(0, dtype=np.uint32)
        self._ids = np.empty(0, dtype=np.int64)
        self._alive = np.ones(0, dtype=bool)
        self._n_dead = 0
        self._delta: dict[bytes, list[int]] = {}
        self._delta_n = 0

    def _prefixes(self, keys: np.ndarray, width: int = 4) -> np.ndarray:
        """The first ``width`` (4, or 8 for a v1 index) bytes of each key, big-endian."""
        k = min(width, self.nbytes)
        buf = np.zeros((len(keys), width), dtype=np.uint8)
        buf[:, :k] = keys[:, :k]
        if width == 8:
            return buf.view(">u8").ravel().astype(np.uint64)
        return buf.view(">u4").ravel().astype(np.uint32)

    def add(self, ids: np.ndarray | Iterable[int], keys: np.ndarray | Sequence[bytes]) -> None:
        """Add ``keys`` (list of bytes or (n, nbytes) uint8) under ``ids``."""
        ids_a = _as_ids(ids)
        keys_a = _as_codes(keys, self.nbytes)
        if len(ids_a) != len(keys_a):
            raise ValueError(f"{len(ids_a)} ids for {len(keys_a)} keys")
        if self._delta_n + len(ids_a) > self.max_delta:
            self._merge(ids_a, keys_a)
            return
        for i, k in zip(ids_a.tolist(), keys_a, strict=True):
            self._delta.setdefault(k.tobytes(), []).append(i)
        self._delta_n += len(ids_a)

    def _merge(self, ids: np.ndarray, keys: np.ndarray) -> None:
        d_keys = [k for k, v in self._delta.items() for _ in v]
        d_ids = [i for v in self._delta.values() for i in v]
        all_keys = np.concatenate([self._keys[self._alive], _as_codes(d_keys, self.nbytes), keys])
        all_ids = np.concatenate([self._ids[self._alive], np.asarray(d_ids, np.int64), ids])
        prefix = self._prefixes(all_keys)
        o = np.argsort(prefix, kind="stable")
        self._keys, self._prefix, self._ids = all_keys[o], prefix[o], all_ids[o]
        self._alive = np.ones(len(o), dtype=bool)
        self._n_dead = 0
        self._delta, self._delta_n = {}, 0

    def remove(self, ids: np.ndarray | Iterable[int]) -> int:
        """Retire entries by id; returns how many (key, id) pairs were removed."""
        ids_a = _as_ids(ids)
        removed = 0
        if len(self._ids) and len(ids_a):
            dead = np.isin(self._ids, ids_a) & self._alive
            k = int(dead.sum())
            if k:
                if not self._alive.flags.writeable:
                    self._alive = self._alive.copy()
                self._alive[dead] = False
                self._n_dead += k
                removed += k
        if self._delta_n and len(ids_a):
            gone = set(ids_a.tolist())
            for key in list(self._delta):
                kept = [i for i in self._delta[key] if i not in gone]
                removed += len(self._delta[key]) - len(kept)
                self._delta_n -= len(self._delta[key]) - len(kept)
                if kept:
                    self._delta[key] = kept
                else:
                    del self._delta[key]
        return removed

    def lookup(self, key: bytes) -> list[int]:
        """Ids stored under ``key`` (empty list if unknown)."""
        return self.lookup_batch([key])[0]

    def lookup_batch(self, keys: Sequence[bytes] | np.ndarray) -> list[list[int]]:
        """Ids for each key, in input order; vectorised (millions of keys/s)."""
        raw = keys if isinstance(keys, np.ndarray) else list(keys)
        q = _as_codes(raw, self.nbytes)
        b = len(q)
        out: list[list[int]] = [[] for _ in range(b)]
        if len(self._prefix) and b:
            qp = self._prefixes(q, self._prefix.dtype.itemsize)
            o = np.argsort(qp)  # sorted probes keep the binary searches in cache
            qs = qp[o]
            lo = np.searchsorted(self._prefix, qs, "left")
            hi = np.searchsorted(self._prefix, qs, "right")
            counts = hi - lo
            total = int(counts.sum())
            if total:
                ends = np.cumsum(counts)
                pos = np.arange(total) + np.repeat(lo - (ends - counts), counts)
                qi = np.repeat(o, counts)
                same = np.take(self._keys, pos, axis=0) == np.take(q, qi, axis=0)
                ok = same.all(axis=1) & self._alive[pos]
                qi, pos = qi[ok], pos[ok]
                srt = np.lexsort((pos, qi))  # stable, input-independent order of ids
                for i, ident in zip(qi[srt].tolist(), self._ids[pos[srt]].tolist(), strict=True):
                    out[i].append(ident)
        if self._delta:
            get = self._delta.get
            as_bytes = raw if isinstance(raw, list) else (k.tobytes() for k in q)
            for i, k in enumerate(as_bytes):
                hit = get(bytes(k))
                if hit:
                    out[i].extend(hit)
        return out

    def __len__(self) -> int:
        return len(self._ids) - self._n_dead + self._delta_n

    def save(self, path: str | Path) -> None:
        """Write to directory ``path`` as ``.npy`` files (delta merged first)."""
        if self._delta_n or self._n_dead:
            self._merge(np.empty(0, np.int64), np.empty((0, self.nbytes), np.uint8))
        arrays: dict[str, np.ndarray] = {
            "keys": self._keys,
            "prefix": self._prefix,
            "ids": self._ids,
        }
        meta = {
            "format": _EXACT_FORMAT,
            "version": _EXACT_VERSION,
            "nbytes": self.nbytes,
            "max_delta": self.max_delta,
            "n": int(len(self._ids)),
        }
        _write_dir(Path(path), arrays, meta, _EXACT_SPARSE)

    @classmethod
    def load(cls, path: str | Path, *, mmap: bool = False) -> ExactIndex:
        """Read an index written by ``save`` (``mmap=True``: map instead of read)."""
        p = Path(path)
        meta = json.loads((p / "meta.json").read_text())
        # v1 (8-byte prefixes) is still read; the next merge writes 4-byte ones.
        if meta.get("format") != _EXACT_FORMAT or meta.get("version") not in _READABLE:
            raise ValueError(f"{p} is not a {_EXACT_FORMAT} v1 or v2 directory")
        idx = cls(meta["nbytes"], max_delta=meta["max_delta"])
        idx._keys = load_array(p / "keys.npy", mmap=mmap, sparse=True)
        idx._prefix = load_array(p / "prefix.npy", mmap=mmap)
        idx._ids = load_array(p / "ids.npy", mmap=mmap, sparse=True)
        if idx._keys.shape != (meta["n"], meta["nbytes"]):
            raise ValueError(f"{p}: arrays do not match meta.json")
        idx._alive = np.ones(meta["n"], dtype=bool)
        return idx
