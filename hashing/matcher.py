"""Match image hashes against the bank of known material.

Holds one index per hash type: exact look-ups for MD5/SHA-1/SHA-256 and
near-match (Hamming radius) indexes for PDQ and pHash. It is pure and in
memory; callers load it from the database and tell it about added or retired
entries, so it can be shared by classify and the HashCheck API.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np

from hashing.index import ExactIndex, HammingIndex

EXACT_TYPES = {"md5": 16, "sha1": 20, "sha256": 32}
NEAR_TYPES = {"pdq": 256, "phash": 64}
PDQ_MIN_QUALITY = 50


@dataclass(frozen=True)
class BankRecord:
    id: int
    category: str
    source: str
    md5: str | None = None
    sha1: str | None = None
    sha256: str | None = None
    pdq: str | None = None
    phash: str | None = None


@dataclass(frozen=True)
class Hit:
    entry_id: int
    signal: str
    distance: int
    category: str
    source: str


class BankMatcher:
    def __init__(self, pdq_radius: int = 31, phash_radius: int = 8) -> None:
        self.radius = {"pdq": pdq_radius, "phash": phash_radius}
        self._lock = threading.RLock()
        self._exact = {t: ExactIndex(n) for t, n in EXACT_TYPES.items()}
        self._near = {t: HammingIndex(bits) for t, bits in NEAR_TYPES.items()}
        self._meta: dict[int, tuple[str, str]] = {}

    def __len__(self) -> int:
        return len(self._meta)

    def add(self, records: Iterable[BankRecord]) -> int:
        records = list(records)
        with self._lock:
            for kind in EXACT_TYPES:
                rows = [(r.id, getattr(r, kind)) for r in records if getattr(r, kind)]
                if rows:
                    self._exact[kind].add(
                        np.array([i for i, _ in rows], dtype=np.int64),
                        [bytes.fromhex(h) for _, h in rows],
                    )
            for kind, bits in NEAR_TYPES.items():
                rows = [(r.id, getattr(r, kind)) for r in records if getattr(r, kind)]
                if rows:
                    codes = np.frombuffer(
                        b"".join(bytes.fromhex(h) for _, h in rows), dtype=np.uint8
                    )
                    self._near[kind].add(
                        np.array([i for i, _ in rows], dtype=np.int64),
                        codes.reshape(len(rows), bits // 8),
                    )
            for r in records:
                self._meta[r.id] = (r.category, r.source)
        return len(records)

    def retire(self, ids: Iterable[int]) -> None:
        ids = np.array(list(ids), dtype=np.int64)
        with self._lock:
            for exact in self._exact.values():
                exact.remove(ids)
            for near in self._near.values():
                near.remove(ids)
            for i in ids.tolist():
                self._meta.pop(int(i), None)

    def _hit(self, entry_id: int, signal: str, distance: int) -> Hit | None:
        meta = self._meta.get(entry_id)
        if meta is None:
            return None
        return Hit(entry_id, signal, distance, meta[0], meta[1])

    def lookup(self, signal: str, value: str, radius: int | None = None) -> list[Hit]:
        """All bank entries matching one hash of one type (exact, or within the radius)."""
        with self._lock:
            if signal in EXACT_TYPES:
                ids = self._exact[signal].lookup_batch([bytes.fromhex(value)])[0]
                return [h for i in ids if (h := self._hit(int(i), signal, 0))]
            r = self.radius[signal] if radius is None else radius
            found = self._near[signal].query(bytes.fromhex(value), r)
            return [h for i, d in found if (h := self._hit(int(i), signal, int(d)))]

    def lookup_batch(
        self, signal: str, values: Sequence[str] | np.ndarray, radius: int | None = None
    ) -> list[list[Hit]]:
        """``lookup`` for many hashes of one type at once, in input order.

        Why: the HashCheck API answers batches of 10,000 hashes; one vectorised
        index probe per type is ~100x cheaper than a Python call per hash.
        ``values`` are *validated* lowercase hex strings (see ``hashing.signals``)
        or an ``(n, bytes)`` uint8 array of the same hashes in byte form.
        """
        codes = self._codes(signal, values)
        if len(codes) == 0:
            return []
        with self._lock:
            if signal in EXACT_TYPES:
                return [
                    [h for i in ids if (h := self._hit(i, signal, 0))] if ids else []
                    for ids in self._exact[signal].lookup_batch(codes)
                ]
            r = self.radius[signal] if radius is None else radius
            return [
                [h for i, d in found if (h := self._hit(int(i), signal, int(d)))] if found else []
                for found in self._near[signal].query_batch(codes, r)
            ]

    def distances_batch(
        self, signal: str, values: Sequence[str] | np.ndarray, radius: int | None = None
    ) -> list[int | None]:
        """For each hash, the distance to the nearest live bank entry (0 for exact types), or
        ``None`` when none is within the radius; in input order.

        Why besides ``lookup_batch``: the HashCheck API may reveal nothing but "known, how
        far", so it never needs ``Hit`` objects; skipping them halves the cost of a batch.
        """
        codes = self._codes(signal, values)
        if len(codes) == 0:
            return []
        # The indexes alone decide: ``add`` and ``retire`` change them and the entry metadata
        # together under the lock (here and in subclasses), and asking the metadata per hit
        # costs more than the whole index probe on a compact matcher.
        with self._lock:
            if signal in EXACT_TYPES:
                return [0 if ids else None for ids in self._exact[signal].lookup_batch(codes)]
            r = self.radius[signal] if radius is None else radius
            # Matches come sorted by distance: the first is the nearest.
            return [
                int(found[0][1]) if found else None
                for found in self._near[signal].query_batch(codes, r)
            ]

    @staticmethod
    def _codes(signal: str, values: Sequence[str] | np.ndarray) -> np.ndarray:
        """Validated hex strings (or their bytes as a uint8 array) -> an (n, bytes) array."""
        if isinstance(values, np.ndarray):
            return values
        nbytes = EXACT_TYPES[signal] if signal in EXACT_TYPES else NEAR_TYPES[signal] // 8
        codes = np.frombuffer(bytes.fromhex("".join(values)), dtype=np.uint8)
        return codes.reshape(len(values), nbytes)

    def match(
        self,
        *,
        md5: str | None = None,
        sha1: str | None = None,
        sha256: str | None = None,
        pdq: str | None = None,
        pdq_quality: int | None = None,
        phash: str | None = None,
    ) -> Hit | None:
        """The best hit for one image: an exact hash first, then the closest PDQ, then pHash.

        PDQ hashes of quality below 50 are not matched (too flat to be meaningful).
        """
        for signal, value in (("sha256", sha256), ("sha1", sha1), ("md5", md5)):
            if value:
                hits = self.lookup(signal, value)
                if hits:
                    return hits[0]
        if pdq and (pdq_quality is None or pdq_quality >= PDQ_MIN_QUALITY):
            hits = self.lookup("pdq", pdq)
            if hits:
                return min(hits, key=lambda h: h.distance)
        if phash:
            hits = self.lookup("phash", phash)
            if hits:
                return min(hits, key=lambda h: h.distance)
        return None
