"""Matching indexes for the hash bank: exact (MD5/SHA-1/SHA-256) and near-match (PDQ/pHash).

Why: every fetched image is checked against a bank of 10 million known
hashes and more. A missed match is a missed abuse image, so the near-match
index must have 100 % recall inside the radius (PDQ: distance ≤ 31,
inclusive; pHash: ≈ 10), while answering ≥ 1,000 queries/s on one core.

* :class:`HammingIndex` — exact Hamming range search by multi-index hashing
  (see :mod:`hashing.mih` for the scheme and why it is exact). Rows live in a
  *main* segment (multi-index tables, rebuilt in bulk) plus a small *delta*
  segment scanned linearly, so analysts can add entries one at a time without
  a rebuild; when the delta outgrows ``max_delta`` both are merged and the
  tables rebuilt. Removal marks rows dead (a tombstone mask checked at query
  time) and dead rows are dropped at the next rebuild.
* :class:`ExactIndex` — cryptographic hashes: a sorted array of 64-bit key
  prefixes searched with ``np.searchsorted`` (queries sorted first, which
  makes the binary searches cache friendly), full keys compared afterwards.
  Key length + 17 bytes per entry (a Python dict needs ~200), loads by mmap,
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
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np

from hashing.mih import MultiIndexTables, choose_substrings, estimated_cost

__all__ = ["HammingIndex", "ExactIndex", "brute_force", "hamming_distances"]

Match = tuple[int, int]
"""(bank entry id, Hamming distance)."""

_FORMAT = "hotline-hamming-index"
_EXACT_FORMAT = "hotline-exact-index"
_VERSION = 1


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


class HammingIndex:
    """Exact Hamming range search over ``bits``-bit codes (PDQ: 256, pHash: 64).

    ``query`` returns *every* live entry within the radius (inclusive): the
    multi-index tables only narrow the candidates, the full distance decides.

    Args:
        bits: code length in bits (a multiple of 8).
        substrings: number of multi-index substrings; ``None`` (default)
            re-chooses it at every rebuild from the bank size, which is what
            you want unless benchmarking.
        design_radius: the radius the substring count is tuned for (default
            31 for 256-bit PDQ, else ``bits // 6``, 10 for pHash); any radius
            can be queried, large ones fall back to a linear scan.
        max_delta: entries kept in the linearly scanned delta segment before
            a rebuild; bigger means cheaper single adds, slower queries.
    """

    def __init__(
        self,
        bits: int,
        *,
        substrings: int | None = None,
        design_radius: int | None = None,
        max_delta: int = 16384,
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
        self._codes = np.empty((0, self._padded), dtype=np.uint8)  # main segment
        self._ids = np.empty(0, dtype=np.int64)
        self._alive = np.ones(0, dtype=bool)
        self._n_dead = 0
        self._tables: MultiIndexTables | None = None
        self._delta_codes: list[np.ndarray] = []
        self._delta_ids: list[np.ndarray] = []
        self._delta_cache: tuple[np.ndarray, np.ndarray] | None = None

    # ---- mutation

    def add(self, ids: np.ndarray | Iterable[int], codes: np.ndarray | Sequence[bytes]) -> None:
        """Add entries. Small additions go to the delta segment; large ones trigger a rebuild.

        Ids need not be unique (two hashes of one bank entry are fine); ``remove``
        removes every row with the id.
        """
        ids_a = _as_ids(ids)
        codes_a = _pad(_as_codes(codes, self.nbytes), self._padded)
        if len(ids_a) != len(codes_a):
            raise ValueError(f"{len(ids_a)} ids for {len(codes_a)} codes")
        if len(ids_a) == 0:
            return
        self._delta_ids.append(ids_a)
        self._delta_codes.append(codes_a.copy())
        self._delta_cache = None
        if self._delta_len() > self.max_delta:
            self.rebuild()

    def remove(self, ids: np.ndarray | Iterable[int]) -> int:
        """Retire entries by id; returns how many rows were removed."""
        ids_a = _as_ids(ids)
        if len(ids_a) == 0:
            return 0
        removed = 0
        if len(self._ids):
            dead = np.isin(self._ids, ids_a) & self._alive
            k = int(dead.sum())
            if k:
                if not self._alive.flags.writeable:  # memory-mapped read-only
                    self._alive = self._alive.copy()
                self._alive[dead] = False
                self._n_dead += k
                removed += k
        if self._delta_ids:
            d_ids, d_codes = self._delta()
            keep = ~np.isin(d_ids, ids_a)
            removed += int((~keep).sum())
            self._delta_ids, self._delta_codes = [d_ids[keep]], [d_codes[keep]]
            self._delta_cache = None
        return removed

    def rebuild(self) -> None:
        """Merge the delta into the main segment, drop removed rows, rebuild the tables."""
        d_ids, d_codes = self._delta()
        keep = self._alive
        codes = np.concatenate([self._codes[keep], d_codes]) if len(d_ids) else self._codes[keep]
        ids = np.concatenate([self._ids[keep], d_ids]) if len(d_ids) else self._ids[keep]
        self._codes, self._ids = np.ascontiguousarray(codes), ids
        self._alive = np.ones(len(ids), dtype=bool)
        self._n_dead = 0
        self._delta_ids, self._delta_codes, self._delta_cache = [], [], None
        self._tables = None
        if len(ids):
            m = self.substrings or choose_substrings(self.bits, len(ids), self.design_radius)
            self._tables = MultiIndexTables.build(self._codes, self.bits, m)

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
            out.extend(self._query_block(q[lo : lo + block], int(radius)))
        return out

    def _query_block(self, q: np.ndarray, radius: int) -> list[list[Match]]:
        b = len(q)
        q64 = q.view(np.uint64)
        parts_q: list[np.ndarray] = []
        parts_i: list[np.ndarray] = []
        parts_d: list[np.ndarray] = []
        if self._tables is not None and len(self._ids):
            qi, rows, d = self._main_hits(q, q64, radius)
            parts_q.append(qi)
            parts_i.append(self._ids[rows])
            parts_d.append(d)
        if self._delta_ids:
            d_ids, d_codes = self._delta()
            d64 = d_codes.view(np.uint64)
            # (b, nd) distances; the delta is bounded by max_delta so this stays small.
            dist = np.bitwise_count(q64[:, None, :] ^ d64[None, :, :]).sum(axis=2, dtype=np.int32)
            qi, j = np.nonzero(dist <= radius)
            parts_q.append(qi.astype(np.int64))
            parts_i.append(d_ids[j])
            parts_d.append(dist[qi, j])
        if not parts_q:
            return [[] for _ in range(b)]
        return _group(b, np.concatenate(parts_q), np.concatenate(parts_i), np.concatenate(parts_d))

    def _main_hits(
        self, q: np.ndarray, q64: np.ndarray, radius: int
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(query index, main row, distance) of every live main row within ``radius``."""
        tables = self._tables
        assert tables is not None
        n = len(self._ids)
        codes64 = self._codes.view(np.uint64)
        if estimated_cost(tables.widths.tolist(), radius, n) >= n / 4:
            # Radius too large for the tables to help: scan (still exact).
            qs, rs, ds = [], [], []
            for i, row in enumerate(q):
                dist = hamming_distances(self._codes, row)
                r = np.flatnonzero(dist <= radius)
                qs.append(np.full(len(r), i, dtype=np.int64))
                rs.append(r)
                ds.append(dist[r])
            qi, rows, d = np.concatenate(qs), np.concatenate(rs), np.concatenate(ds)
        else:
            rows, per_query = tables.candidates(q.view(">u8").astype(np.uint64), radius)
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
        if self._n_dead and len(rows):
            ok = self._alive[rows]
            qi, rows, d = qi[ok], rows[ok], d[ok]
        return qi.astype(np.int64), rows.astype(np.int64), d

    # ---- bookkeeping

    def _delta_len(self) -> int:
        return sum(len(i) for i in self._delta_ids)

    def _delta(self) -> tuple[np.ndarray, np.ndarray]:
        if self._delta_cache is None:
            if self._delta_ids:
                ids = np.concatenate(self._delta_ids)
                codes = np.concatenate(self._delta_codes)
            else:
                ids = np.empty(0, dtype=np.int64)
                codes = np.empty((0, self._padded), dtype=np.uint8)
            self._delta_ids, self._delta_codes = [ids], [codes]
            self._delta_cache = (ids, codes)
        return self._delta_cache

    def __len__(self) -> int:
        """Live entries (rows) in the index."""
        return len(self._ids) - self._n_dead + self._delta_len()

    @property
    def num_substrings(self) -> int:
        """Substrings of the current main segment's tables (0 before the first rebuild)."""
        return self._tables.m if self._tables is not None else 0

    # ---- persistence

    def save(self, path: str | Path) -> None:
        """Write the index to directory ``path`` as ``.npy`` files (delta merged first).

        Saving the built tables (not just the codes) is what makes ``load``
        take seconds at 10M entries instead of a rebuild.
        """
        if self._delta_ids or self._n_dead:
            self.rebuild()
        p = Path(path)
        p.mkdir(parents=True, exist_ok=True)
        arrays: dict[str, np.ndarray] = {"codes": self._codes, "ids": self._ids}
        t = self._tables
        if t is not None:
            arrays.update(
                starts=t.starts, widths=t.widths, bases=t.bases, offsets=t.offsets, order=t.order
            )
        for name, arr in arrays.items():
            np.save(p / f"{name}.npy", arr, allow_pickle=False)
        meta = {
            "format": _FORMAT,
            "version": _VERSION,
            "bits": self.bits,
            "substrings": self.substrings,
            "design_radius": self.design_radius,
            "max_delta": self.max_delta,
            "n": int(len(self._ids)),
            "tables": t is not None,
        }
        (p / "meta.json").write_text(json.dumps(meta, indent=2))

    @classmethod
    def load(cls, path: str | Path, *, mmap: bool = False) -> HammingIndex:
        """Read an index written by ``save``.

        ``mmap=True`` maps the arrays read-only instead of reading them: instant,
        and several worker processes then share one copy in the page cache
        (the first queries are slower while pages fault in).
        """
        p = Path(path)
        meta = json.loads((p / "meta.json").read_text())
        if meta.get("format") != _FORMAT or meta.get("version") != _VERSION:
            raise ValueError(f"{p} is not a {_FORMAT} v{_VERSION} directory")
        mode = "r" if mmap else None

        def arr(name: str) -> np.ndarray:
            return np.load(p / f"{name}.npy", mmap_mode=mode, allow_pickle=False)

        idx = cls(
            meta["bits"],
            substrings=meta["substrings"],
            design_radius=meta["design_radius"],
            max_delta=meta["max_delta"],
        )
        idx._codes, idx._ids = arr("codes"), arr("ids")
        if idx._codes.shape != (meta["n"], idx._padded) or idx._ids.shape != (meta["n"],):
            raise ValueError(f"{p}: arrays do not match meta.json")
        idx._alive = np.ones(meta["n"], dtype=bool)
        if meta["tables"]:
            idx._tables = MultiIndexTables(
                bits=idx.bits,
                n=meta["n"],
                starts=np.array(arr("starts")),
                widths=np.array(arr("widths")),
                bases=np.array(arr("bases")),
                offsets=arr("offsets"),
                order=arr("order"),
            )
        return idx


# --------------------------------------------------------------------------- ExactIndex


class ExactIndex:
    """Exact lookup of fixed-length cryptographic hashes (MD5 16, SHA-1 20, SHA-256 32 bytes).

    Main segment: keys sorted by their first 8 bytes (as a big-endian uint64),
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
        self._prefix = np.empty(0, dtype=np.uint64)
        self._ids = np.empty(0, dtype=np.int64)
        self._alive = np.ones(0, dtype=bool)
        self._n_dead = 0
        self._delta: dict[bytes, list[int]] = {}
        self._delta_n = 0

    def _prefixes(self, keys: np.ndarray) -> np.ndarray:
        k = min(8, self.nbytes)
        buf = np.zeros((len(keys), 8), dtype=np.uint8)
        buf[:, :k] = keys[:, :k]
        return buf.view(">u8").ravel().astype(np.uint64)

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
        q = _as_codes(list(keys) if not isinstance(keys, np.ndarray) else keys, self.nbytes)
        b = len(q)
        out: list[list[int]] = [[] for _ in range(b)]
        if len(self._prefix) and b:
            qp = self._prefixes(q)
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
                ok = (self._keys[pos] == q[qi]).all(axis=1) & self._alive[pos]
                qi, pos = qi[ok], pos[ok]
                srt = np.lexsort((pos, qi))  # stable, input-independent order of ids
                for i, ident in zip(qi[srt].tolist(), self._ids[pos[srt]].tolist(), strict=True):
                    out[i].append(ident)
        if self._delta:
            get = self._delta.get
            for i, k in enumerate(q):
                hit = get(k.tobytes())
                if hit:
                    out[i].extend(hit)
        return out

    def __len__(self) -> int:
        return len(self._ids) - self._n_dead + self._delta_n

    def save(self, path: str | Path) -> None:
        """Write to directory ``path`` as ``.npy`` files (delta merged first)."""
        if self._delta_n or self._n_dead:
            self._merge(np.empty(0, np.int64), np.empty((0, self.nbytes), np.uint8))
        p = Path(path)
        p.mkdir(parents=True, exist_ok=True)
        for name, a in (("keys", self._keys), ("prefix", self._prefix), ("ids", self._ids)):
            np.save(p / f"{name}.npy", a, allow_pickle=False)
        meta = {
            "format": _EXACT_FORMAT,
            "version": _VERSION,
            "nbytes": self.nbytes,
            "max_delta": self.max_delta,
            "n": int(len(self._ids)),
        }
        (p / "meta.json").write_text(json.dumps(meta, indent=2))

    @classmethod
    def load(cls, path: str | Path, *, mmap: bool = False) -> ExactIndex:
        """Read an index written by ``save`` (``mmap=True``: map instead of read)."""
        p = Path(path)
        meta = json.loads((p / "meta.json").read_text())
        if meta.get("format") != _EXACT_FORMAT or meta.get("version") != _VERSION:
            raise ValueError(f"{p} is not a {_EXACT_FORMAT} v{_VERSION} directory")
        mode = "r" if mmap else None
        idx = cls(meta["nbytes"], max_delta=meta["max_delta"])
        idx._keys = np.load(p / "keys.npy", mmap_mode=mode, allow_pickle=False)
        idx._prefix = np.load(p / "prefix.npy", mmap_mode=mode, allow_pickle=False)
        idx._ids = np.load(p / "ids.npy", mmap_mode=mode, allow_pickle=False)
        if idx._keys.shape != (meta["n"], meta["nbytes"]):
            raise ValueError(f"{p}: arrays do not match meta.json")
        idx._alive = np.ones(meta["n"], dtype=bool)
        return idx
