"""A bank matcher that stays compact at 10 million entries, and its on-disk snapshot.

Why: ``BankMatcher`` keeps ``id -> (category, source)`` in a dict of tuples and
is fed ``BankRecord`` objects: at 10M entries that is ~2 GB of Python objects
and minutes of work on every start. :class:`CompactBankMatcher` keeps the same
query behaviour (it *is* a ``BankMatcher``) but stores the metadata as numpy
columns (entry id, small integer codes for category and source with a lookup
table) and takes columnar :class:`EntryBatch` es, so loading from the database
never builds one object per entry.

:func:`save_snapshot` writes the matcher (the five indexes, already built, and
the entry table) to a directory; :func:`load_snapshot` maps it back in
seconds. The snapshot carries an opaque ``info`` dict (the database version it
reflects) so the caller can apply only what changed since. Snapshots are
written to a temporary directory and published by an atomic rename of the
``CURRENT`` pointer, so a reader never sees half a snapshot and processes that
still have the previous one memory-mapped keep working.

Nothing here knows about the database: ``services.bank.bank`` does that.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import shutil
import time
import uuid
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from hashing.arrays import load_array, save_array
from hashing.index import ExactIndex, HammingIndex
from hashing.matcher import BankMatcher, BankRecord, Hit
from hashing.signals import EXACT_SIGNALS, NEAR_SIGNALS, SIGNAL_TYPES

__all__ = [
    "HASH_BYTES",
    "CompactBankMatcher",
    "EntryBatch",
    "EntryTable",
    "SnapshotError",
    "current_snapshot",
    "load_snapshot",
    "save_snapshot",
    "snapshot_lock",
]

log = logging.getLogger(__name__)

HASH_BYTES = {name: signal.byte_length for name, signal in SIGNAL_TYPES.items()}
"""Bytes per hash type, in the bank CSV's column order (from ``hashing.signals``)."""

FORMAT = "hotline-bank-snapshot"
VERSION = 1
CURRENT = "CURRENT"

_MAX_CATEGORIES = np.iinfo(np.uint16).max
_MAX_SOURCES = np.iinfo(np.uint32).max


class SnapshotError(Exception):
    """The snapshot directory is missing, incomplete or of another format: rebuild it."""


# --------------------------------------------------------------------------- entries


@dataclass
class EntryBatch:
    """Bank entries in columns, ready for :meth:`CompactBankMatcher.add_batch`.

    ``category``/``source`` are codes in the target :class:`EntryTable`'s
    tables (see :meth:`EntryTable.encode`). ``hashes[kind]`` holds the row
    positions (into ``ids``) that have a hash of that kind and the hashes as
    an ``(k, nbytes)`` uint8 array. Retired rows (``alive`` False) are kept so
    the matcher knows every entry id, which lets the caller detect rows it
    missed (see ``services.bank.bank``).
    """

    ids: np.ndarray
    category: np.ndarray
    source: np.ndarray
    alive: np.ndarray
    hashes: dict[str, tuple[np.ndarray, np.ndarray]]

    def __len__(self) -> int:
        return len(self.ids)

    @classmethod
    def empty(cls) -> EntryBatch:
        return cls(
            np.empty(0, np.int64),
            np.empty(0, np.uint16),
            np.empty(0, np.uint32),
            np.empty(0, bool),
            {},
        )

    @classmethod
    def from_columns(
        cls,
        table: EntryTable,
        ids: Sequence[int],
        categories: Sequence[str],
        sources: Sequence[str],
        retired: Sequence[bool] | None,
        hex_columns: dict[str, Sequence[str | None]],
    ) -> EntryBatch:
        """Encode one chunk of rows (as columns); hex strings must be valid (the DB holds
        only validated hashes). One ``bytes.fromhex`` per column, not per row."""
        n = len(ids)
        ids_a = np.fromiter(ids, dtype=np.int64, count=n)
        alive = (
            np.ones(n, dtype=bool)
            if retired is None
            else ~np.fromiter(retired, dtype=bool, count=n)
        )
        hashes: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        for kind, col in hex_columns.items():
            nbytes = HASH_BYTES[kind]
            pos = [i for i, v in enumerate(col) if v]
            if not pos:
                continue
            try:
                raw = bytes.fromhex("".join([col[i] for i in pos]))  # type: ignore[misc]
            except ValueError:
                raw = b""
            if len(raw) != len(pos) * nbytes:
                # A malformed value (written around the import's validation): drop just
                # that hash, loudly, rather than refuse to load the whole bank.
                pos, raw = _valid_only(kind, nbytes, ids, col, pos)
                if not pos:
                    continue
            codes = np.frombuffer(raw, dtype=np.uint8).reshape(len(pos), nbytes)
            hashes[kind] = (np.asarray(pos, dtype=np.int64), codes)
        cat, src = table.encode(categories, sources)
        return cls(ids_a, cat, src, alive, hashes)

    @classmethod
    def from_records(cls, table: EntryTable, records: Sequence[BankRecord]) -> EntryBatch:
        return cls.from_columns(
            table,
            [r.id for r in records],
            [r.category for r in records],
            [r.source for r in records],
            None,
            {k: [getattr(r, k) for r in records] for k in HASH_BYTES},
        )

    @classmethod
    def concat(cls, batches: Sequence[EntryBatch]) -> EntryBatch:
        """One batch from many chunks (encoded against the same table)."""
        batches = [b for b in batches if len(b)]
        if not batches:
            return cls.empty()
        if len(batches) == 1:
            return batches[0]
        offsets = np.cumsum([0] + [len(b) for b in batches[:-1]])
        hashes: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        for kind in HASH_BYTES:
            parts = [
                (b.hashes[kind], off)
                for b, off in zip(batches, offsets, strict=True)
                if kind in b.hashes
            ]
            if parts:
                hashes[kind] = (
                    np.concatenate([p + off for (p, _), off in parts]),
                    np.concatenate([c for (_, c), _ in parts]),
                )
        return cls(
            np.concatenate([b.ids for b in batches]),
            np.concatenate([b.category for b in batches]),
            np.concatenate([b.source for b in batches]),
            np.concatenate([b.alive for b in batches]),
            hashes,
        )

    def select(self, keep: np.ndarray) -> EntryBatch:
        """The rows where ``keep`` (bool mask) is true."""
        new_pos = np.cumsum(keep) - 1
        hashes = {}
        for kind, (pos, codes) in self.hashes.items():
            ok = keep[pos]
            if ok.any():
                hashes[kind] = (new_pos[pos[ok]], codes[ok])
        return EntryBatch(
            self.ids[keep], self.category[keep], self.source[keep], self.alive[keep], hashes
        )


def _valid_only(
    kind: str, nbytes: int, ids: Sequence[int], col: Sequence[str | None], pos: list[int]
) -> tuple[list[int], bytes]:
    good: list[int] = []
    parts: list[bytes] = []
    for i in pos:
        try:
            b = bytes.fromhex(col[i])  # type: ignore[arg-type]
        except ValueError:
            b = b""
        if len(b) == nbytes:
            good.append(i)
            parts.append(b)
        else:
            log.error(
                "bank entry %s: %s hash %r is malformed; not matched on it", ids[i], kind, col[i]
            )
    return good, b"".join(parts)


class EntryTable:
    """``id -> (category, source, alive)`` for every entry the matcher knows, as numpy columns.

    About 15 bytes per entry (int64 id, uint16 category code, uint32 source
    code, bool) against ~200 for a dict of tuples. Entries are sorted by id in
    a *main* part (looked up with ``np.searchsorted``); small additions go to
    a dict until ``max_delta``, so adding one analyst-confirmed entry does not
    copy 10M rows. Retired entries stay (marked dead): knowing every id lets
    the bank notice rows it has not seen.
    """

    def __init__(self, *, max_delta: int = 65536) -> None:
        self.max_delta = max_delta
        self.categories: list[str] = []
        self.sources: list[str] = []
        self._cat_code: dict[str, int] = {}
        self._src_code: dict[str, int] = {}
        self._ids = np.empty(0, np.int64)
        self._cat = np.empty(0, np.uint16)
        self._src = np.empty(0, np.uint32)
        self._alive = np.empty(0, bool)
        self._n_dead = 0
        self._delta: dict[int, tuple[int, int, bool]] = {}
        self._delta_dead = 0

    # ---- codes

    def encode(
        self, categories: Sequence[str], sources: Sequence[str]
    ) -> tuple[np.ndarray, np.ndarray]:
        """Category and source codes for each row, adding new names to the tables."""
        return (
            self._encode(categories, self.categories, self._cat_code, np.uint16, _MAX_CATEGORIES),
            self._encode(sources, self.sources, self._src_code, np.uint32, _MAX_SOURCES),
        )

    @staticmethod
    def _encode(
        values: Sequence[str], names: list[str], codes: dict[str, int], dtype: Any, limit: int
    ) -> np.ndarray:
        def code(v: str) -> int:
            c = codes.get(v)
            if c is None:
                if len(names) >= limit:
                    raise ValueError(f"more than {limit} distinct names")
                c = codes[v] = len(names)
                names.append(v)
            return c

        get = codes.get
        # Nearly every row repeats a known name: the dict hit is the fast path.
        return np.fromiter(
            ((c if (c := get(v)) is not None else code(v)) for v in values),
            dtype=dtype,
            count=len(values),
        )

    # ---- mutation

    def add(self, batch: EntryBatch) -> None:
        """Add entries whose ids are not known yet (callers filter with :meth:`known`)."""
        n = len(batch)
        if n == 0:
            return
        if len(self._delta) + n <= self.max_delta:
            for i, c, s, a in zip(
                batch.ids.tolist(),
                batch.category.tolist(),
                batch.source.tolist(),
                batch.alive.tolist(),
                strict=True,
            ):
                self._delta[i] = (c, s, a)
                self._delta_dead += not a
            return
        self._merge(batch.ids, batch.category, batch.source, batch.alive)

    def _merge(self, ids: np.ndarray, cat: np.ndarray, src: np.ndarray, alive: np.ndarray) -> None:
        if self._delta:
            d = self._delta
            ids = np.concatenate([ids, np.fromiter(d.keys(), np.int64, len(d))])
            vals = list(d.values())
            cat = np.concatenate([cat, np.array([v[0] for v in vals], np.uint16)])
            src = np.concatenate([src, np.array([v[1] for v in vals], np.uint32)])
            alive = np.concatenate([alive, np.array([v[2] for v in vals], bool)])
        all_ids = np.concatenate([self._ids, ids])
        all_cat = np.concatenate([self._cat, cat])
        all_src = np.concatenate([self._src, src])
        all_alive = np.concatenate([self._alive, alive])
        if len(all_ids) > 1 and not (all_ids[1:] > all_ids[:-1]).all():
            o = np.argsort(all_ids, kind="stable")
            all_ids, all_cat, all_src, all_alive = all_ids[o], all_cat[o], all_src[o], all_alive[o]
        self._ids, self._cat, self._src, self._alive = all_ids, all_cat, all_src, all_alive
        self._n_dead = int(len(all_alive) - np.count_nonzero(all_alive))
        self._delta, self._delta_dead = {}, 0

    def consolidate(self) -> None:
        """Merge the delta into the sorted main part (before saving)."""
        if self._delta:
            self._merge(
                np.empty(0, np.int64),
                np.empty(0, np.uint16),
                np.empty(0, np.uint32),
                np.empty(0, bool),
            )

    def retire(self, ids: np.ndarray) -> int:
        """Mark entries dead; returns how many were alive."""
        pos, found = self._find(ids)
        k = 0
        if found.any():
            p = pos[found]
            p = p[self._alive[p]]
            if len(p):
                if not self._alive.flags.writeable:
                    self._alive = self._alive.copy()
                p = np.unique(p)
                self._alive[p] = False
                self._n_dead += len(p)
                k += len(p)
        for i in ids[~found].tolist():
            v = self._delta.get(i)
            if v is not None and v[2]:
                self._delta[i] = (v[0], v[1], False)
                self._delta_dead += 1
                k += 1
        return k

    # ---- queries

    def _find(self, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(position in main, found in main) for each id."""
        ids = np.asarray(ids, dtype=np.int64)
        n = len(self._ids)
        if n == 0:
            return np.zeros(len(ids), np.int64), np.zeros(len(ids), bool)
        pos = np.searchsorted(self._ids, ids)
        found = pos < n
        found[found] = self._ids[pos[found]] == ids[found]
        return pos, found

    def _delta_arrays(self) -> tuple[np.ndarray, np.ndarray]:
        d = self._delta
        return (
            np.fromiter(d.keys(), np.int64, len(d)),
            np.fromiter((v[2] for v in d.values()), bool, len(d)),
        )

    def known(self, ids: np.ndarray) -> np.ndarray:
        """Bool mask: which ids the table has (alive or retired)."""
        _, found = self._find(ids)
        if self._delta:
            keys, _ = self._delta_arrays()
            found |= np.isin(ids, keys)
        return found

    def alive(self, ids: np.ndarray) -> np.ndarray:
        """Bool mask: which ids are known and not retired."""
        pos, found = self._find(ids)
        out = np.zeros(len(ids), bool)
        out[found] = self._alive[pos[found]]
        if self._delta:
            keys, alive = self._delta_arrays()
            o = np.argsort(keys)
            keys, alive = keys[o], alive[o]
            p = np.minimum(np.searchsorted(keys, ids), len(keys) - 1)
            in_delta = keys[p] == ids
            out |= in_delta & alive[p]
        return out

    def get(self, entry_id: int) -> tuple[str, str] | None:
        """(category, source) of a live entry, else None."""
        n = len(self._ids)
        if n:
            p = int(np.searchsorted(self._ids, entry_id))
            if p < n and self._ids[p] == entry_id:
                if not self._alive[p]:
                    return None
                return self.categories[self._cat[p]], self.sources[self._src[p]]
        v = self._delta.get(entry_id)
        if v is None or not v[2]:
            return None
        return self.categories[v[0]], self.sources[v[1]]

    @property
    def total(self) -> int:
        """Entries known, retired ones included."""
        return len(self._ids) + len(self._delta)

    @property
    def dead(self) -> int:
        return self._n_dead + self._delta_dead

    @property
    def max_id(self) -> int:
        m = int(self._ids[-1]) if len(self._ids) else 0
        return max(m, max(self._delta, default=0))

    def __len__(self) -> int:
        return self.total - self.dead

    # ---- persistence

    def save(self, path: Path) -> None:
        self.consolidate()
        path.mkdir(parents=True, exist_ok=True)
        for name, a in (
            ("ids", self._ids),
            ("category", self._cat),
            ("source", self._src),
            ("alive", self._alive),
        ):
            save_array(path / f"{name}.npy", a, sparse=name != "alive")
        (path / "names.json").write_text(
            json.dumps({"categories": self.categories, "sources": self.sources})
        )

    @classmethod
    def load(cls, path: Path, *, mmap: bool = False) -> EntryTable:
        t = cls()
        names = json.loads((path / "names.json").read_text())
        t.categories, t.sources = list(names["categories"]), list(names["sources"])
        t._cat_code = {c: i for i, c in enumerate(t.categories)}
        t._src_code = {s: i for i, s in enumerate(t.sources)}
        # Read only for hits (``hashing.arrays``: mapped page by page).
        t._ids = load_array(path / "ids.npy", mmap=mmap, sparse=True)
        t._cat = load_array(path / "category.npy", mmap=mmap, sparse=True)
        t._src = load_array(path / "source.npy", mmap=mmap, sparse=True)
        # Retiring writes to ``alive``: 1 byte per entry, so read it rather than map it.
        t._alive = np.load(path / "alive.npy", allow_pickle=False)
        if not (len(t._ids) == len(t._cat) == len(t._src) == len(t._alive)):
            raise SnapshotError(f"{path}: entry columns differ in length")
        t._n_dead = int(len(t._alive) - np.count_nonzero(t._alive))
        return t


# --------------------------------------------------------------------------- matcher


class CompactBankMatcher(BankMatcher):
    """``BankMatcher`` with numpy metadata and columnar bulk adds (see module docstring).

    Queries (``lookup``, ``match``) are inherited unchanged; only storage and
    loading differ.
    """

    def __init__(self, radius: Mapping[str, int | None] | None = None) -> None:
        super().__init__(radius)
        self.entries = EntryTable()

    def __len__(self) -> int:
        """Live (not retired) entries."""
        return len(self.entries)

    def add(self, records: Iterable[BankRecord]) -> int:
        records = list(records)
        with self._lock:
            return self.add_batch(EntryBatch.from_records(self.entries, records))

    def add_batch(self, batch: EntryBatch) -> int:
        """Add a columnar batch; ids already known are skipped (adding twice is harmless).

        Each index gets one ``add`` call, which matters: an index rebuilds once
        per call that overflows its delta, so adding 10M rows in 1,000 chunks
        would rebuild it 1,000 times.
        """
        with self._lock:
            if len(batch) == 0:
                return 0
            fresh = ~self.entries.known(batch.ids)
            if not fresh.all():
                batch = batch.select(fresh)
            self.entries.add(batch)
            for kind, (pos, codes) in batch.hashes.items():
                live = batch.alive[pos]
                ids = batch.ids[pos[live]]
                if len(ids) == 0:
                    continue
                index = self._exact[kind] if kind in self._exact else self._near[kind]
                index.add(ids, codes[live] if not live.all() else codes)
            return int(np.count_nonzero(batch.alive))

    def retire(self, ids: Iterable[int]) -> int:  # type: ignore[override]
        """Stop matching these entries; returns how many were live."""
        ids_a = np.unique(np.fromiter((int(i) for i in ids), dtype=np.int64))
        with self._lock:
            ids_a = ids_a[self.entries.alive(ids_a)]
            if len(ids_a) == 0:
                return 0
            for exact in self._exact.values():
                exact.remove(ids_a)
            for near in self._near.values():
                near.remove(ids_a)
            return self.entries.retire(ids_a)

    def _hit(self, entry_id: int, signal: str, distance: int) -> Hit | None:
        meta = self.entries.get(entry_id)
        if meta is None:
            return None
        return Hit(entry_id, signal, distance, meta[0], meta[1])

    def index_sizes(self) -> dict[str, int]:
        """Live rows per index (for logs and benchmarks)."""
        sizes = {k: len(i) for k, i in self._exact.items()}
        sizes.update({k: len(i) for k, i in self._near.items()})
        return sizes


# --------------------------------------------------------------------------- snapshot


@contextmanager
def snapshot_lock(directory: Path, *, wait: bool = False) -> Iterator[bool]:
    """An advisory lock so that two processes do not write a snapshot at once.

    Yields whether the lock was taken (``wait=False`` does not block).
    """
    # Hash lists of known material are not for everyone on the machine.
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    fd = os.open(directory / ".lock", os.O_CREAT | os.O_RDWR, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
            got = True
        except BlockingIOError:
            got = False
        yield got
    finally:
        os.close(fd)


def current_snapshot(directory: Path) -> Path | None:
    """The directory of the published snapshot, or None."""
    try:
        name = (directory / CURRENT).read_text().strip()
    except FileNotFoundError:
        return None
    p = directory / name
    return p if name and p.is_dir() else None


def save_snapshot(matcher: CompactBankMatcher, directory: Path, info: dict[str, Any]) -> Path:
    """Write ``matcher`` and ``info`` as a new snapshot under ``directory`` and publish it.

    Holds the matcher's lock while writing (indexes merge their deltas first,
    which changes them). Older snapshots are removed after the switch; a
    process that has them memory-mapped keeps its pages (POSIX unlink).
    """
    directory = Path(directory)
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    tmp = directory / f".tmp-{uuid.uuid4().hex}"
    try:
        with matcher._lock:
            for kind, index in matcher._exact.items():
                index.save(tmp / kind)
            for kind, near in matcher._near.items():
                near.save(tmp / kind)
            matcher.entries.save(tmp / "entries")
            manifest = {
                "format": FORMAT,
                "version": VERSION,
                "created": time.time(),
                "entries": matcher.entries.total,
                "live": len(matcher.entries),
                "info": info,
            }
        (tmp / "manifest.json").write_text(json.dumps(manifest, indent=2))
        name = f"snap-{time.strftime('%Y%m%dT%H%M%S')}-{uuid.uuid4().hex[:8]}"
        final = directory / name
        os.replace(tmp, final)
        pointer = directory / f".{CURRENT}.{uuid.uuid4().hex}"
        pointer.write_text(name + "\n")
        os.replace(pointer, directory / CURRENT)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    for old in directory.glob("snap-*"):
        if old.name != name:
            shutil.rmtree(old, ignore_errors=True)
    return final


def read_manifest(path: Path) -> dict[str, Any]:
    """The ``manifest.json`` of one snapshot directory (raises :class:`SnapshotError`)."""
    try:
        manifest = json.loads((path / "manifest.json").read_text())
    except (OSError, ValueError) as exc:
        raise SnapshotError(f"{path}: no readable manifest ({exc})") from exc
    if manifest.get("format") != FORMAT or manifest.get("version") != VERSION:
        raise SnapshotError(f"{path} is not a {FORMAT} v{VERSION} snapshot")
    return manifest


def load_snapshot(
    directory: Path,
    *,
    radius: Mapping[str, int | None] | None = None,
    mmap: bool = True,
) -> tuple[CompactBankMatcher, dict[str, Any]]:
    """The published snapshot as a matcher, and the ``info`` it was saved with.

    ``mmap=True`` maps the big arrays read-only: start-up takes about as long
    as reading the small files, and worker processes share the page cache.
    ``radius`` as for :class:`BankMatcher` (default: the registry's radii).
    Raises :class:`SnapshotError` when there is no usable snapshot.
    """
    path = current_snapshot(Path(directory))
    if path is None:
        raise SnapshotError(f"no snapshot in {directory}")
    manifest = read_manifest(path)
    m = CompactBankMatcher(radius)
    try:
        for kind in EXACT_SIGNALS:
            m._exact[kind] = ExactIndex.load(path / kind, mmap=mmap)
        for kind in NEAR_SIGNALS:
            m._near[kind] = HammingIndex.load(path / kind, mmap=mmap)
        m.entries = EntryTable.load(path / "entries", mmap=mmap)
    except (OSError, ValueError, KeyError) as exc:
        raise SnapshotError(f"{path}: {exc}") from exc
    if m.entries.total != manifest["entries"]:
        raise SnapshotError(f"{path}: entry count does not match the manifest")
    return m, dict(manifest["info"])
