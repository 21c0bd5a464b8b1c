"""Match image hashes against the bank of known material.

Holds one index per hash type of ``hashing.signals.SIGNAL_TYPES``: exact
look-ups for the exact types (MD5/SHA-1/SHA-256) and near-match (Hamming
radius) indexes for the perceptual ones (PDQ, pHash), each type at its one
radius (``hashing.signals.radii``). It is pure and in memory; callers load it
from the database and tell it about added or retired entries, so it can be
shared by classify and the HashCheck API.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from hashing.index import ExactIndex, HammingIndex
from hashing.signals import EXACT_SIGNALS, NEAR_SIGNALS, SIGNAL_TYPES, radii

MATCH_ORDER: tuple[str, ...] = (
    *sorted(EXACT_SIGNALS, key=lambda n: -SIGNAL_TYPES[n].bits),
    *sorted(NEAR_SIGNALS, key=lambda n: -SIGNAL_TYPES[n].bits),
)
"""The order :meth:`BankMatcher.match` tries an image's hashes in: exact types before
perceptual ones, longer hashes first (sha256, sha1, md5, pdq, phash)."""


@dataclass(frozen=True)
class BankRecord:
    """One bank entry; one optional field per hash type of the registry (a test checks)."""

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
    """Args:
        radius: match radius per hash type name; types not named (or ``None``) use the
            registry's ``default_radius`` (see ``hashing.signals.radii``).
    """

    def __init__(self, radius: Mapping[str, int | None] | None = None) -> None:
        self.radius = radii(radius)
        self._lock = threading.RLock()
        self._exact = {t: ExactIndex(SIGNAL_TYPES[t].byte_length) for t in EXACT_SIGNALS}
        self._near = {t: HammingIndex(SIGNAL_TYPES[t].bits) for t in NEAR_SIGNALS}
        self._meta: dict[int, tuple[str, str]] = {}

    def __len__(self) -> int:
        return len(self._meta)

    def add(self, records: Iterable[BankRecord]) -> int:
        records = list(records)
        with self._lock:
            for kind in EXACT_SIGNALS:
                rows = [(r.id, getattr(r, kind)) for r in records if getattr(r, kind)]
                if rows:
                    self._exact[kind].add(
                        np.array([i for i, _ in rows], dtype=np.int64),
                        [bytes.fromhex(h) for _, h in rows],
                    )
            for kind in NEAR_SIGNALS:
                rows = [(r.id, getattr(r, kind)) for r in records if getattr(r, kind)]
                if rows:
                    codes = np.frombuffer(
                        b"".join(bytes.fromhex(h) for _, h in rows), dtype=np.uint8
                    )
                    self._near[kind].add(
                        np.array([i for i, _ in rows], dtype=np.int64),
                        codes.reshape(len(rows), SIGNAL_TYPES[kind].byte_length),
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
            if signal in self._exact:
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
            if signal in self._exact:
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
            if signal in self._exact:
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
        codes = np.frombuffer(bytes.fromhex("".join(values)), dtype=np.uint8)
        return codes.reshape(len(values), SIGNAL_TYPES[signal].byte_length)

    def match(self, **hashes: str | int | None) -> Hit | None:
        """The best hit for one image, given its hashes by type name (``md5=...``,
        ``pdq=...``) and qualities by each type's ``quality_key`` (``pdq_quality=...``);
        any may be missing or None.

        Types are tried in :data:`MATCH_ORDER`; an exact hit wins at once, a perceptual
        one is the closest entry. A hash the registry calls not ``usable`` at its quality
        (PDQ of known quality below 50) is not matched; unknown quality is matched.
        """
        return self.match_batch([hashes])[0]

    def match_batch(self, images: Sequence[Mapping[str, str | int | None]]) -> list[Hit | None]:
        """:meth:`match` for several images at once (a page's gallery), in input order.

        Why: classify matched a page's images one at a time, five index probes per image; one
        probe per type for all of them costs a third less per image for PDQ and pHash (the
        probe's fixed costs are shared), and matching was a sixth of classify's CPU."""
        known = {*SIGNAL_TYPES, *(s.quality_key for s in SIGNAL_TYPES.values() if s.quality_key)}
        for hashes in images:
            unknown = sorted(set(hashes) - known)
            if unknown:
                raise TypeError(f"match() got unknown hash keyword(s) {', '.join(unknown)}")
        best: list[Hit | None] = [None] * len(images)
        pending = list(range(len(images)))
        for name in MATCH_ORDER:
            signal = SIGNAL_TYPES[name]
            asked: list[int] = []
            for i in pending:
                value = images[i].get(name)
                if not value:
                    continue
                quality = images[i].get(signal.quality_key) if signal.quality_key else None
                if signal.usable(None if quality is None else int(quality)):
                    asked.append(i)
            if not asked:
                continue
            found = self.lookup_batch(name, [str(images[i][name]) for i in asked])
            for i, hits in zip(asked, found, strict=True):
                if hits:  # exact hits all have distance 0: the first is the first entry
                    best[i] = min(hits, key=lambda h: h.distance)
            pending = [i for i in pending if best[i] is None]
            if not pending:
                break
        return best
