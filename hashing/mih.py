"""Multi-index hashing tables: the exact candidate generator behind ``HammingIndex``.

Why this exists: a missed near-match is a missed abuse image, so the PDQ/pHash
index must return *every* bank entry within the Hamming radius (100 % recall),
at 10 million entries and more, at ≥ 1,000 queries/s on one core. A linear
scan cannot do that (~700 q/s at 10M even with compiled popcount), and
approximate indexes (LSH, IVF, HNSW) cannot promise recall. Multi-index
hashing (Norouzi, Punjani & Fleet, "Fast Exact Search in Hamming Space with
Multi-Index Hashing", TPAMI 2014) can:

* Split the ``bits``-bit code into ``m`` disjoint contiguous substrings of
  ``w_t`` bits (widths differ by at most one bit, all bits covered).
* Pigeonhole: if ``d(q, x) <= r`` and ``r = s*m + a`` (``0 <= a < m``), then
  at least one of any chosen ``a + 1`` substrings is within ``s`` of the
  query's substring, or one of the remaining ``m - a - 1`` substrings is
  within ``s - 1`` (otherwise the total distance would be at least
  ``(a+1)(s+1) + (m-a-1)s = r + 1``). This is the paper's Proposition 2; it
  is tighter than probing every table at ``floor(r/m)``.
* So probing, in table ``t``, every bucket whose key is within the table's
  sub-radius of the query's key (``sum_{k<=s} C(w_t, k)`` keys) yields a
  candidate set that provably contains every true match. Candidates are then
  verified with the full Hamming distance, so the result is exact.

Cost per query ≈ probes + candidates, with ``probes = sum_t V(w_t, r_t)`` and
``candidates ≈ sum_t V(w_t, r_t) * n / 2**w_t``. :func:`choose_substrings`
picks ``m`` minimising that for the bank size and a design radius; for PDQ
(256 bit, r = 31) at 10M it picks m = 11 (3×24 + 8×23 bits; ten tables at
sub-radius 2, one at 1): ~2,870 probes and ~2,870 candidates per query,
against 43,912 probes for m = 8 (32-bit tables at sub-radius 3) or ~41,500
candidates for m = 16 (16-bit buckets of ~150 entries). The widths differ by
at most one bit, so no "tail" bits are left out of the pigeonhole argument.
Measured: ~6,500 queries/s on one core at 10M, 100 % recall
(``docs/benchmarks-index.md``).

Each table is stored as flat numpy arrays so it can be saved as ``.npy`` and
memory-mapped: ``order`` (bank rows sorted by the table's key) and the bucket
boundaries, so a probe is two array reads, not a binary search. All probes of a
batch of queries are issued as a single vectorised gather.

Compact layout (why): a query at the design radius probes ~2,700 buckets spread
over every table, so after a few dozen queries every page of the tables is
resident in each process that maps them; the tables' *size* is the process's
working set (at 1M PDQ entries: 45 MB of boundaries and 50 MB of ``order``,
one uint32 each). So the boundaries are stored in blocks of ``2**shift``
buckets: one ``offsets`` entry (uint32) per block plus a ``local`` uint8 (or
uint16) per bucket counting from the block's start, ~1.1 byte per bucket
instead of 4; and ``order`` holds rows in 3 bytes (``(m*n, 3)`` uint8, little
endian) when the bank has fewer than 2**24 rows. At 1M entries that is 12 + 39
MB instead of 45 + 50, for the same candidates. The dense layout (one
``offsets`` entry per bucket, ``local`` None) is still read, for tables saved
before (``HammingIndex`` format v1), and used when a block would overflow
uint16 (a very skewed bank).

Bit order: bit 0 is the most significant bit of byte 0 (the order of the hex
string), so substrings are contiguous runs of the hex digits.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from functools import lru_cache
from math import comb

import numpy as np

# A table has a dense array of 2**width + 1 bucket boundaries: 28 bits is
# already 1 GiB per table, wider would not fit in memory.
MAX_WIDTH = 28
_BUILD_CHUNK = 1 << 21
BLOCK_SHIFT = 6
"""Buckets per block of the compact layout: ``2**6``; at ~1-2 rows per bucket a block
holds ~60-130 rows, so ``local`` fits uint8 for random-looking codes."""
PACKED_ROWS = 1 << 24
"""Banks with fewer rows store ``order`` in 3 bytes per entry."""


@lru_cache(maxsize=4096)
def ball_size(width: int, radius: int) -> int:
    """Number of ``width``-bit keys within Hamming ``radius`` of a key (0 if radius < 0).
    Cached: query planning asks for the same few (width, radius) pairs for every query."""
    if radius < 0:
        return 0
    return sum(comb(width, k) for k in range(min(radius, width) + 1))


def split_widths(bits: int, m: int) -> list[int]:
    """Widths of ``m`` substrings covering ``bits`` bits, wider ones first."""
    base, extra = divmod(bits, m)
    return [base + 1] * extra + [base] * (m - extra)


def sub_radii(widths: list[int], radius: int, n: int) -> list[int]:
    """Per-table probe radius (-1 = skip the table) guaranteeing exact recall.

    Proposition 2 lets us pick *which* ``a + 1`` tables get radius ``s``; we
    pick those where the extra radius costs least.
    """
    m = len(widths)
    s, a = divmod(radius, m)
    extra = [(_table_cost(w, s, n) - _table_cost(w, s - 1, n), t) for t, w in enumerate(widths)]
    extra.sort()
    radii = [s - 1] * m
    for _, t in extra[: a + 1]:
        radii[t] = s
    return radii


def _table_cost(width: int, radius: int, n: int) -> float:
    probes = ball_size(width, radius)
    return probes * (1.0 + n / 2.0**width)


def estimated_cost(widths: list[int], radius: int, n: int) -> float:
    """Estimated probes + candidates per query (uniformly random codes)."""
    return sum(
        _table_cost(w, r, n) for w, r in zip(widths, sub_radii(widths, radius, n), strict=True)
    )


def choose_substrings(bits: int, n: int, design_radius: int) -> int:
    """Number of substrings minimising the estimated query cost at ``design_radius``.

    The dense bucket arrays are bounded to about two entries per bank row and
    table, so small banks get narrow tables (and many of them) and large banks
    wide ones: the optimum lands near ``m ≈ bits / log2(n)`` as in the paper.
    """
    n_eff = max(n, 1024)
    best: tuple[float, int] | None = None
    for m in range(1, bits + 1):
        widths = split_widths(bits, m)
        if widths[0] > MAX_WIDTH:
            continue
        if sum(2**w for w in widths) > 2 * m * n_eff:
            continue
        cost = estimated_cost(widths, design_radius, n_eff)
        if best is None or cost < best[0]:
            best = (cost, m)
    if best is None:  # unreachable for bits >= 1, kept for type checkers
        return bits
    return best[1]


@lru_cache(maxsize=256)
def flip_masks(width: int, radius: int) -> np.ndarray:
    """All ``width``-bit values with at most ``radius`` bits set (probe offsets), as int64."""
    out: list[int] = []
    for k in range(min(radius, width) + 1):
        for pos in itertools.combinations(range(width), k):
            v = 0
            for p in pos:
                v |= 1 << p
            out.append(v)
    arr = np.array(out, dtype=np.int64)
    arr.setflags(write=False)
    return arr


def to_be_words(codes: np.ndarray) -> np.ndarray:
    """(n, 8*W) uint8 codes → (n, W) native uint64 holding the big-endian words."""
    return np.ascontiguousarray(codes).view(">u8").astype(np.uint64)


def extract_key(words: np.ndarray, start: int, width: int) -> np.ndarray:
    """Bits ``[start, start+width)`` (MSB-first) of each row of big-endian ``words``, as int64."""
    i, off = divmod(start, 64)
    if off + width <= 64:
        key = words[:, i] >> np.uint64(64 - off - width)
        if width < 64:
            key = key & np.uint64((1 << width) - 1)
    else:
        hi_bits = 64 - off
        lo_bits = width - hi_bits
        hi = words[:, i] & np.uint64((1 << hi_bits) - 1)
        lo = words[:, i + 1] >> np.uint64(64 - lo_bits)
        key = (hi << np.uint64(lo_bits)) | lo
    return key.astype(np.int64)


@dataclass
class MultiIndexTables:
    """Frozen multi-index tables over ``n`` rows; see the module docstring.

    Table ``t``'s buckets are the slots ``bases[t] + key``; slot ``s`` starts at
    position ``offsets[s >> shift] + local[s]`` of ``order`` (compact layout) or
    ``offsets[s]`` (dense layout: ``local`` None, ``shift`` 0), and a bucket ends
    where the next slot starts. ``order`` concatenates each table's rows sorted
    by key (table ``t`` occupies positions ``[t*n, (t+1)*n)``), one integer per
    position or, packed, three little-endian bytes (an ``(m*n, 3)`` uint8 array).
    """

    bits: int
    n: int
    starts: np.ndarray  # int64 (m,) first bit of each substring
    widths: np.ndarray  # int64 (m,)
    bases: np.ndarray  # int64 (m,) first slot of each table
    offsets: np.ndarray  # uint32 or int64: per block (compact) or per slot (dense)
    order: np.ndarray  # uint32 or int64 rows, or (m*n, 3) uint8 packed rows
    local: np.ndarray | None = None  # uint8 or uint16 per slot (compact layout)
    shift: int = 0  # log2 of the slots per block (compact layout)
    _plans: dict[int, tuple[np.ndarray, np.ndarray, np.ndarray]] = field(
        default_factory=dict, repr=False, compare=False
    )

    @property
    def m(self) -> int:
        return len(self.widths)

    @property
    def compact(self) -> bool:
        """Blocked bucket boundaries (format v2) rather than one integer per slot."""
        return self.local is not None

    @classmethod
    def build(
        cls, codes: np.ndarray, bits: int, m: int, *, compact: bool = True
    ) -> MultiIndexTables:
        """Build tables for ``codes`` ((n, 8*W) uint8, zero padded) with ``m`` substrings.

        ``compact=False`` builds the dense layout (what format v1 stored), kept for
        comparison in tests and benchmarks.
        """
        n = int(codes.shape[0])
        widths = split_widths(bits, m)
        if widths[0] > MAX_WIDTH:
            raise ValueError(f"{m} substrings of {bits} bits are wider than {MAX_WIDTH} bits")
        starts = np.concatenate([[0], np.cumsum(widths)[:-1]]).astype(np.int64)
        block = 1 << BLOCK_SHIFT
        # Whole blocks per table (so no block spans two tables); slots past 2**w are
        # never probed except 2**w itself, the end of the last bucket.
        sizes = [-(-(2**w + 1) // block) * block for w in widths]
        bases = np.concatenate([[0], np.cumsum(sizes)[:-1]]).astype(np.int64)
        idx_dtype = np.uint32 if m * n < 2**32 - 1 else np.int64
        bounds = np.empty(int(sum(sizes)), dtype=idx_dtype)
        packed = compact and n < PACKED_ROWS
        order = np.empty((m * n, 3), np.uint8) if packed else np.empty(m * n, dtype=idx_dtype)
        for t, (start, width) in enumerate(zip(starts.tolist(), widths, strict=True)):
            keys = np.empty(n, dtype=np.uint32)
            for lo in range(0, n, _BUILD_CHUNK):
                words = to_be_words(codes[lo : lo + _BUILD_CHUNK])
                keys[lo : lo + _BUILD_CHUNK] = extract_key(words, start, width)
            perm = np.argsort(keys)
            if packed:
                order[t * n : (t + 1) * n] = (
                    perm.astype("<u4").view(np.uint8).reshape(n, 4)[:, :3]
                )
            else:
                order[t * n : (t + 1) * n] = perm
            # Bucket boundaries by a sorted searchsorted (fast: both sides sorted).
            b = np.searchsorted(keys[perm], np.arange(sizes[t], dtype=np.int64), "left")
            bounds[bases[t] : bases[t] + sizes[t]] = b + t * n
        tables = cls(bits, n, starts, np.asarray(widths, np.int64), bases, bounds, order)
        if compact:
            first = bounds[::block]
            local = bounds - np.repeat(first, block)
            top = int(local.max()) if len(local) else 0
            if top < 2**16:
                tables.offsets = np.ascontiguousarray(first)
                tables.local = local.astype(np.uint8 if top < 2**8 else np.uint16)
                tables.shift = BLOCK_SHIFT
        return tables

    def _starts_at(self, slots: np.ndarray) -> np.ndarray:
        """Position in ``order`` where each slot's bucket starts, as int64."""
        if self.local is None:
            return np.take(self.offsets, slots).astype(np.int64)
        pos = np.take(self.offsets, slots >> self.shift).astype(np.int64)
        pos += np.take(self.local, slots)
        return pos

    def _rows_at(self, pos: np.ndarray) -> np.ndarray:
        """Rows at positions ``pos`` of ``order``, as int64."""
        if self.order.ndim == 1:
            return np.take(self.order, pos).astype(np.int64)
        wide = np.zeros((len(pos), 4), np.uint8)
        wide[:, :3] = np.take(self.order, pos, axis=0)
        return wide.view("<u4").ravel().astype(np.int64)

    def probe_plan(self, radius: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """For ``radius``: (table of each probe, XOR mask of each probe, bucket base of each probe)."""
        cached = self._plans.get(radius)
        if cached is not None:
            return cached
        widths = self.widths.tolist()
        radii = sub_radii(widths, radius, self.n)
        tbl, masks = [], []
        for t, (w, r) in enumerate(zip(widths, radii, strict=True)):
            if r < 0:
                continue
            fm = flip_masks(w, r)
            masks.append(fm)
            tbl.append(np.full(len(fm), t, dtype=np.int64))
        if masks:
            tbl_a, masks_a = np.concatenate(tbl), np.concatenate(masks)
        else:
            tbl_a = masks_a = np.empty(0, dtype=np.int64)
        plan = (tbl_a, masks_a, self.bases[tbl_a])
        self._plans[radius] = plan
        return plan

    def probe_count(self, radius: int) -> int:
        """Bucket probes per query at ``radius`` (computed without building the plan)."""
        widths = self.widths.tolist()
        radii = sub_radii(widths, radius, self.n)
        return sum(ball_size(w, r) for w, r in zip(widths, radii, strict=True))

    def candidates(self, qwords: np.ndarray, radius: int) -> tuple[np.ndarray, np.ndarray]:
        """Candidate rows for big-endian query words ``(B, W)``, grouped by query.

        Returns ``(rows, per_query)``: the first ``per_query[0]`` rows are query
        0's candidates, and so on. Every row within ``radius`` of a query is
        among its candidates (with duplicates and non-matches: the caller
        verifies).
        """
        tbl, masks, base = self.probe_plan(radius)
        b = qwords.shape[0]
        if len(tbl) == 0 or b == 0 or self.n == 0:
            return np.empty(0, dtype=np.int64), np.zeros(b, dtype=np.int64)
        keys = np.empty((b, self.m), dtype=np.int64)
        for t, (start, width) in enumerate(
            zip(self.starts.tolist(), self.widths.tolist(), strict=True)
        ):
            keys[:, t] = extract_key(qwords, start, width)
        slots = (keys[:, tbl] ^ masks) + base  # (B, P) bucket slots in ``offsets``
        lo = self._starts_at(slots).ravel()
        hi = self._starts_at(slots + 1).ravel()
        counts = hi - lo
        per_query = counts.reshape(b, -1).sum(axis=1)
        total = int(per_query.sum())
        if total == 0:
            return np.empty(0, dtype=np.int64), per_query
        # Expand the [lo, hi) ranges into one flat list of positions in ``order``.
        ends = np.cumsum(counts)
        shift = np.repeat(lo - (ends - counts), counts)
        pos = np.arange(total, dtype=np.int64) + shift
        rows = self._rows_at(pos)
        return rows, per_query
