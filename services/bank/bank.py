"""The bank of known hashes as the rest of the system sees it: database rows kept in sync
with an in-memory matcher, plus CSV import and export.

Why it looks like this: banks hold 10 million entries and more, and the
matcher must be ready seconds after a process starts, stay in step with
additions and retirements made by other processes, and never match a retired
entry for long. So:

* the matcher (:class:`hashing.snapshot.CompactBankMatcher`) keeps metadata
  in numpy columns and is loaded from the database by streaming rows into
  arrays in chunks, never one Python object per entry;
* with ``index_dir`` set, a snapshot of the built matcher is saved to disk
  with the database position it reflects; at start it is memory-mapped and
  only what changed since is applied; when much has changed it is re-saved;
* changes are found cheaply: new rows by ``id > the highest id seen`` (the
  primary key), retirements through the ``bank_retire`` rows that
  :func:`retire` writes to the audit log (also by primary key). A periodic
  :meth:`Bank.verify` compares counts with the database and repairs what those
  two could miss (rows committed out of id order on PostgreSQL, retirements
  made behind the application's back);
* imports use bulk inserts (PostgreSQL: ``COPY``) and report every bad row by
  line and column.
"""

from __future__ import annotations

import csv
import hashlib
import logging
import re
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO, cast

import numpy as np
from sqlalchemy import Connection, Table, func, insert, select
from sqlalchemy.orm import Session, sessionmaker

from hashing.matcher import Hit
from hashing.signals import SIGNAL_TYPES, InvalidHash, radii
from hashing.snapshot import (
    CompactBankMatcher,
    EntryBatch,
    EntryTable,
    SnapshotError,
    current_snapshot,
    load_snapshot,
    read_manifest,
    save_snapshot,
    snapshot_lock,
)
from hotline.kernel.clock import now
from hotline.operator_files import undecodable
from hotline.storage.models import AuditLog, BankEntry
from hotline.storage.unit_of_work import SqlUnitOfWork

if TYPE_CHECKING:
    from hotline.config import Settings

log = logging.getLogger(__name__)

HASH_COLUMNS: tuple[str, ...] = tuple(SIGNAL_TYPES)
"""One column per hash type of the registry (``hashing.signals``), in its order."""
CSV_COLUMNS = (*HASH_COLUMNS, "category", "source")
_N_HASHES = len(HASH_COLUMNS)
SQLITE_IMPORT_CACHE_KIB = 1 << 20
"""SQLite page cache of the importing connection (KiB): the hash indexes of a 10M bank are
~1.5 GB and inserts of random keys into them are only fast while they fit."""
RETIRE_ACTION = "bank_retire"
"""Audit action written by :func:`retire`; its subject is the entry id. The bank's
processes learn about retirements from these rows (see module docstring)."""

_T = cast(Table, BankEntry.__table__)
_FAST_HEX = {
    c: re.compile(f"[0-9a-fA-F]{{{SIGNAL_TYPES[c].hex_length}}}").fullmatch for c in HASH_COLUMNS
}
"""Per hash column: does a value need no normalising beyond lowercase (fast path of the import)."""
_CATEGORY_MAX: int = getattr(_T.c.category.type, "length", None) or 32
_SOURCE_MAX: int = getattr(_T.c.source.type, "length", None) or 200


# --------------------------------------------------------------------------- loading


def stream_batches(
    conn: Connection, table: EntryTable, *where: Any, chunk: int = 100_000
) -> Iterator[EntryBatch]:
    """Bank rows matching ``where`` (retired ones included), as columnar batches of ``chunk``.

    Core ``select`` with ``yield_per`` (a server-side cursor on PostgreSQL), so
    memory holds one chunk of row tuples at a time.
    """
    stmt = (
        select(
            _T.c.id,
            *(_T.c[k] for k in HASH_COLUMNS),
            _T.c.category,
            _T.c.source,
            _T.c.retired_at.is_not(None),
        )
        .where(*where)
        .order_by(_T.c.id)
    )
    result = conn.execution_options(yield_per=chunk).execute(stmt)
    n = _N_HASHES
    for part in result.partitions(chunk):
        cols = list(zip(*part, strict=True))
        yield EntryBatch.from_columns(
            table,
            cols[0],
            cols[1 + n],
            cols[2 + n],
            cols[3 + n],
            {k: cols[1 + i] for i, k in enumerate(HASH_COLUMNS)},
        )


def stream_ids(conn: Connection, *where: Any, chunk: int = 500_000) -> np.ndarray:
    """Ids of the rows matching ``where`` as one int64 array (8 bytes per row)."""
    result = conn.execution_options(yield_per=chunk).execute(
        select(_T.c.id).where(*where).order_by(_T.c.id)
    )
    parts = [
        np.fromiter((r[0] for r in part), np.int64, len(part)) for part in result.partitions(chunk)
    ]
    return np.concatenate(parts) if parts else np.empty(0, np.int64)


@dataclass
class SyncState:
    """How far the matcher reflects the database.

    Every bank row with ``id <= max_id`` is known to the matcher (alive or
    retired), and every ``bank_retire`` audit row with ``id <= audit_id`` has
    been applied. ``changes`` counts rows added and retired since the snapshot
    on disk was written (None: no snapshot).
    """

    max_id: int
    audit_id: int
    changes: int | None = None

    def info(self, database: str, fingerprint: str) -> dict[str, Any]:
        return {
            "max_id": self.max_id,
            "audit_id": self.audit_id,
            "database": database,
            "fingerprint": fingerprint,
        }


def fingerprint(session: Session, max_id: int) -> str:
    """A digest of the first row and the row ``max_id``: tells a snapshot of this bank from
    one of a bank that was deleted and re-imported under the same URL with as many rows."""
    rows = session.execute(
        select(_T.c.id, *(_T.c[k] for k in HASH_COLUMNS), _T.c.added_at)
        .where(_T.c.id.in_([select(func.min(_T.c.id)).scalar_subquery(), max_id]))
        .order_by(_T.c.id)
    ).all()
    n = _N_HASHES
    body = repr([(r[0], *r[1 : 1 + n], r[1 + n].isoformat() if r[1 + n] else None) for r in rows])
    return hashlib.sha256(body.encode()).hexdigest()


class Bank:
    """The matcher kept in step with the ``bank_entries`` table (see module docstring).

    Args:
        sessions: the session factory of the bank's database.
        radius: match radius per hash type name (settings); types not named use the
            registry's default (``hashing.signals.radii``).
        refresh_seconds: how often :meth:`match` looks for changes.
        index_dir: where the snapshot lives (``HOTLINE_INDEX_DIR``); None: no snapshot,
            the matcher is built from the database at start.
        mmap: map the snapshot's arrays instead of reading them (shared page cache).
        verify_seconds: how often a background thread cross-checks counts with the
            database (None: only at start and when asked).
        resave_min, resave_fraction: re-save the snapshot once more than
            ``max(resave_min, resave_fraction * entries)`` rows were added or retired
            since it was written, so a start never has to replay much.
        chunk_rows: rows per chunk when streaming from the database.
    """

    def __init__(
        self,
        sessions: sessionmaker[Session],
        radius: Mapping[str, int | None] | None = None,
        refresh_seconds: float = 1.0,
        index_dir: Path | None = None,
        *,
        mmap: bool = True,
        verify_seconds: float | None = 300.0,
        resave_min: int = 50_000,
        resave_fraction: float = 0.05,
        chunk_rows: int = 100_000,
    ) -> None:
        self.sessions = sessions
        self.radius = radii(radius)
        self.refresh_seconds = refresh_seconds
        self.index_dir = Path(index_dir) if index_dir is not None else None
        self.mmap = mmap
        self.verify_seconds = verify_seconds
        self.resave_min = resave_min
        self.resave_fraction = resave_fraction
        self.chunk_rows = chunk_rows
        self.matcher = CompactBankMatcher(self.radius)
        self.state: SyncState | None = None
        self.loaded_from: str | None = None
        # True once the first load is complete, snapshot *and* the changes since: until then
        # every match waits for it (a match against the bare snapshot would miss the rows added
        # after it and route known material to an analyst).
        self._ready = False
        self._checked = 0.0
        self._verified = 0.0
        self._lock = threading.RLock()
        self._maintenance: threading.Thread | None = None

    @classmethod
    def from_settings(
        cls, settings: Settings, sessions: sessionmaker[Session], **kwargs: Any
    ) -> Bank:
        """The bank as configured (radii, ``HOTLINE_INDEX_DIR``)."""
        return cls(
            sessions,
            radius=settings.radii(),
            index_dir=settings.index_path(),
            **kwargs,
        )

    # ---- identity

    def _database(self) -> str:
        """Which database a snapshot belongs to (a snapshot of another one is never used)."""
        bind = self.sessions.kw.get("bind")
        url = getattr(bind, "url", None)
        return url.render_as_string(hide_password=True) if url is not None else ""

    # ---- loading

    def load(self) -> str:
        """(Re)load the matcher: from the snapshot plus what changed since, else from the
        database (then save a snapshot). Returns ``"snapshot"`` or ``"database"``."""
        with self._lock:
            loaded = self._load_snapshot()
            if loaded is None:
                self.rebuild(save=self.index_dir is not None)
                self.loaded_from = "database"
            else:
                self.loaded_from = "snapshot"
            self._checked = self._verified = time.monotonic()
            self._ready = True
            return self.loaded_from

    def _load_snapshot(self) -> SyncState | None:
        if self.index_dir is None:
            return None
        t0 = time.perf_counter()
        try:
            matcher, info = load_snapshot(
                self.index_dir,
                radius=self.radius,
                mmap=self.mmap,
            )
        except SnapshotError as exc:
            log.info("bank snapshot not used: %s", exc)
            return None
        if info.get("database") != self._database():
            log.warning(
                "bank snapshot in %s is of another database (%s); rebuilding",
                self.index_dir,
                info.get("database"),
            )
            return None
        state = SyncState(int(info["max_id"]), int(info["audit_id"]), changes=0)
        with self.sessions() as session:
            db_max = session.scalar(select(func.max(_T.c.id))) or 0
            if db_max < state.max_id:
                log.warning(
                    "bank snapshot is ahead of the database (id %d > %d); rebuilding",
                    state.max_id,
                    db_max,
                )
                return None
            if info.get("fingerprint") != fingerprint(session, state.max_id):
                log.warning("bank snapshot does not fit the rows in the database; rebuilding")
                return None
        t1 = time.perf_counter()
        # Caught up before it is swapped in: a match in another thread uses the matcher it
        # finds, and the bare snapshot lacks what was added or retired since it was saved.
        self._catch_up(matcher, state)
        self.matcher, self.state = matcher, state
        repaired = self.verify()
        log.info(
            "bank: snapshot of %d entries loaded in %.2fs, %d changes since applied in %.2fs%s",
            len(matcher),
            t1 - t0,
            state.changes,
            time.perf_counter() - t1,
            f", {repaired} repaired" if repaired else "",
        )
        if self._resave_due():
            self.save_snapshot()
        return state

    def rebuild(self, save: bool = True) -> CompactBankMatcher:
        """Build the matcher from the database (streamed, columnar) and swap it in;
        ``save`` also writes a fresh snapshot."""
        with self._lock:
            t0 = time.perf_counter()
            fresh = CompactBankMatcher(self.radius)
            with self.sessions() as session:
                conn = session.connection()
                # Audit position first: a retirement racing with the read is re-applied later.
                audit_id = session.scalar(select(func.max(AuditLog.id))) or 0
                max_id = session.scalar(select(func.max(_T.c.id))) or 0
                batches = list(
                    stream_batches(conn, fresh.entries, _T.c.id <= max_id, chunk=self.chunk_rows)
                )
            fresh.add_batch(EntryBatch.concat(batches))
            del batches
            self.matcher = fresh
            self.state = SyncState(max_id, audit_id, changes=None)
            self._ready = True
            log.info(
                "bank: %d entries loaded from the database in %.1fs",
                len(fresh),
                time.perf_counter() - t0,
            )
            if save and self.index_dir is not None:
                self.save_snapshot(force=True)
            return fresh

    def save_snapshot(self, force: bool = False) -> Path | None:
        """Write the matcher and its database position to ``index_dir``.

        Skipped (returns None) when another process is writing one right now,
        or, unless ``force``, when the published snapshot is already at least
        as far along as this matcher (another process saved it), so a process
        that lags behind never replaces a newer snapshot with an older one.
        """
        if self.index_dir is None:
            raise ValueError("no index directory configured (HOTLINE_INDEX_DIR)")
        with self._lock:
            if self.state is None:
                self.load()
            assert self.state is not None
            with snapshot_lock(self.index_dir) as got:
                if not got:
                    log.info("bank: another process is writing a snapshot; skipped")
                    return None
                if not force and self._published_is_newer():
                    log.info("bank: the published snapshot is as new as this matcher; kept")
                    self.state.changes = 0
                    return None
                t0 = time.perf_counter()
                with self.sessions() as session:
                    print_ = fingerprint(session, self.state.max_id)
                path = save_snapshot(
                    self.matcher, self.index_dir, self.state.info(self._database(), print_)
                )
                self.state.changes = 0
                log.info(
                    "bank: snapshot of %d entries saved to %s in %.1fs",
                    len(self.matcher),
                    path,
                    time.perf_counter() - t0,
                )
                return path

    def _published_info(self) -> tuple[Path, dict[str, Any]] | None:
        """The current published snapshot and its manifest info, if there is a readable one."""
        if self.index_dir is None:
            return None
        path = current_snapshot(self.index_dir)
        if path is None:
            return None
        try:
            return path, read_manifest(path)["info"]
        except SnapshotError:
            return None

    def _published_is_newer(self) -> bool:
        assert self.state is not None and self.index_dir is not None
        published = self._published_info()
        if published is None:
            return False
        _, info = published
        return (
            info.get("database") == self._database()
            and int(info.get("max_id", -1)) >= self.state.max_id
            and int(info.get("audit_id", -1)) >= self.state.audit_id
        )

    # ---- keeping up

    def refresh(self, force: bool = False) -> None:
        """Apply what changed in the database since the last look (two primary-key queries).

        Never waits for a refresh or verification already running in another
        thread (matching goes on against the current matcher), except the
        first load, which everyone needs.
        """
        if not self._ready:
            with self._lock:
                if not self._ready:
                    self.load()
                    return
        if not force and time.monotonic() - self._checked < self.refresh_seconds:
            return
        if not self._lock.acquire(blocking=force):
            return
        try:
            self._adopt_newer_snapshot()
            self._catch_up()
            self._checked = time.monotonic()
        finally:
            self._lock.release()
        self._maybe_maintain()

    def _adopt_newer_snapshot(self) -> bool:
        """After a big import, map the snapshot the import published instead of streaming
        millions of rows from the database into this process (seconds, not minutes)."""
        state = self.state
        published = self._published_info()
        if state is None or published is None:
            return False
        path, info = published
        ahead = int(info.get("max_id", 0)) - state.max_id
        if ahead <= self._resave_threshold() or info.get("database") != self._database():
            return False
        if self._load_snapshot() is None:
            return False
        log.info("bank: adopted the newer snapshot %s (%d rows ahead)", path, ahead)
        return True

    def _catch_up(
        self, matcher: CompactBankMatcher | None = None, state: SyncState | None = None
    ) -> int:
        """Add rows with ids beyond ``max_id``, apply newer ``bank_retire`` audit rows (to the
        matcher in use, or to ``matcher`` at ``state``, one not swapped in yet)."""
        matcher = self.matcher if matcher is None else matcher
        state = self.state if state is None else state
        assert state is not None
        changed = 0
        with self.sessions() as session:
            conn = session.connection()
            max_id = session.scalar(select(func.max(_T.c.id))) or 0
            audit_id = session.scalar(select(func.max(AuditLog.id))) or 0
            if max_id > state.max_id:
                entries = matcher.entries
                batches = list(
                    stream_batches(
                        conn,
                        entries,
                        _T.c.id > state.max_id,
                        _T.c.id <= max_id,
                        chunk=self.chunk_rows,
                    )
                )
                batch = EntryBatch.concat(batches)
                matcher.add_batch(batch)
                changed += len(batch)
                state.max_id = max_id
            if audit_id > state.audit_id:
                subjects = conn.execute(
                    select(AuditLog.subject).where(
                        AuditLog.id > state.audit_id,
                        AuditLog.id <= audit_id,
                        AuditLog.action == RETIRE_ACTION,
                    )
                ).scalars()
                ids = [int(s) for s in subjects if s.isdigit()]
                if ids:
                    changed += matcher.retire(ids)
                state.audit_id = audit_id
        if state.changes is not None:
            state.changes += changed
        return changed

    def verify(self) -> int:
        """Cross-check with the database; repair and return how many entries were wrong.

        Finds rows with ``id <= max_id`` the matcher has not seen (PostgreSQL
        hands out ids at insert, so a long transaction can commit below ids
        already read) and retirements that did not come through the audit
        log. Costs two counts over the table: seconds at 10M rows on SQLite.
        """
        with self._lock:
            state = self.state
            if state is None:
                self.load()
                return 0
            entries = self.matcher.entries
            repaired = 0
            with self.sessions() as session:
                conn = session.connection()
                total, retired = conn.execute(
                    select(func.count(_T.c.id), func.count(_T.c.retired_at)).where(
                        _T.c.id <= state.max_id
                    )
                ).one()
                if total < entries.total:
                    log.warning(
                        "bank: %d rows known but only %d in the database; rebuilding",
                        entries.total,
                        total,
                    )
                    self.rebuild(save=self.index_dir is not None)
                    return entries.total - total
                if total > entries.total:
                    ids = stream_ids(conn, _T.c.id <= state.max_id)
                    missing = ids[~entries.known(ids)]
                    log.warning(
                        "bank: %d rows committed out of id order found; adding", len(missing)
                    )
                    for lo in range(0, len(missing), 10_000):
                        part = missing[lo : lo + 10_000].tolist()
                        self.matcher.add_batch(
                            EntryBatch.concat(
                                list(stream_batches(conn, entries, _T.c.id.in_(part)))
                            )
                        )
                    repaired += len(missing)
                if retired != entries.dead:
                    ids = stream_ids(conn, _T.c.id <= state.max_id, _T.c.retired_at.is_not(None))
                    k = self.matcher.retire(ids.tolist())
                    log.warning("bank: %d retirements not seen in the audit log; applied", k)
                    repaired += k
                    if entries.dead != retired:
                        # An entry came back (retired_at cleared by hand): start over.
                        self.rebuild(save=self.index_dir is not None)
            if state.changes is not None:
                state.changes += repaired
            self._verified = time.monotonic()
            return repaired

    def _resave_due(self) -> bool:
        s = self.state
        if self.index_dir is None or s is None:
            return False
        if s.changes is None:
            return True
        return s.changes > self._resave_threshold()

    def _resave_threshold(self) -> float:
        return max(self.resave_min, self.resave_fraction * self.matcher.entries.total)

    def _maybe_maintain(self) -> None:
        """Verify and re-save in a background thread when due, so matching never waits."""
        verify_due = (
            self.verify_seconds is not None
            and time.monotonic() - self._verified >= self.verify_seconds
        )
        if not (verify_due or self._resave_due()):
            return
        if self._maintenance is not None and self._maintenance.is_alive():
            return

        def work() -> None:
            try:
                if verify_due:
                    self.verify()
                if self._resave_due():
                    self.save_snapshot()
            except Exception:  # noqa: BLE001 - maintenance must not kill the process; next round retries
                log.exception("bank maintenance failed")
                self._verified = time.monotonic()

        self._maintenance = threading.Thread(target=work, name="bank-maintenance", daemon=True)
        self._maintenance.start()

    # ---- use

    def match(self, **hashes: str | int | None) -> Hit | None:
        self.refresh()
        return self.matcher.match(**hashes)  # type: ignore[arg-type]

    def match_batch(self, images: Sequence[Mapping[str, str | int | None]]) -> list[Hit | None]:
        """``match`` for a page's images at once (``BankMatcher.match_batch``)."""
        self.refresh()
        return self.matcher.match_batch(images)

    def forget(self, entry_ids: list[int]) -> None:
        """Stop matching entries at once in this process, after the caller committed their
        retirement (``retire``); other processes learn of it on their next refresh."""
        self.matcher.retire(entry_ids)


# --------------------------------------------------------------------------- CSV


class _Writer:
    """Bulk insert of validated rows, in the caller's transaction.

    PostgreSQL: ``COPY ... FROM STDIN`` with the batch pre-formatted as COPY
    text (one ``write`` per batch; ``write_row`` per row costs more than the
    database). Elsewhere: one DBAPI ``executemany`` of tuples per batch, the
    statement compiled once by SQLAlchemy Core; going below Core saves the
    per-row parameter processing, a fifth of the import time at 10M rows.
    """

    def __init__(self, conn: Connection, stamp: Any) -> None:
        self.conn = conn
        dialect = conn.dialect
        self.postgres = dialect.name == "postgresql"
        process = _T.c.added_at.type.dialect_impl(dialect).bind_processor(dialect)
        self.stamp = process(stamp) if process else stamp
        self._sqlite_cache: Any = None
        if self.postgres:
            self._copy_sql = f"COPY {_T.name} ({', '.join((*CSV_COLUMNS, 'added_at'))}) FROM STDIN"
            self._stamp_text = stamp.isoformat()
        else:
            compiled = insert(_T).compile(dialect=dialect, column_keys=[*CSV_COLUMNS, "added_at"])
            self._sql = str(compiled)
            self._order = list(compiled.positiontup or [])
            if sorted(self._order) != sorted([*CSV_COLUMNS, "added_at"]):
                self._sql = ""  # a dialect with named parameters: use Core as is
        if dialect.name == "sqlite":
            # Random hashes land all over the md5/sha1/sha256 index b-trees: a big page
            # cache (1 GiB here, for this import only) keeps those inserts in memory.
            self._sqlite_cache = conn.exec_driver_sql("PRAGMA cache_size").scalar()
            conn.exec_driver_sql(f"PRAGMA cache_size=-{SQLITE_IMPORT_CACHE_KIB}")

    def write(self, rows: list[tuple[str | None, ...]]) -> None:
        raw: Any = self.conn.connection.driver_connection  # the DBAPI connection
        if self.postgres:
            tail = f"\t{self._stamp_text}\n"
            text = "".join("\t".join([_copy_text(v) for v in r]) + tail for r in rows)
            with raw.cursor() as cur, cur.copy(self._copy_sql) as copy:
                copy.write(text)
        elif self._sql:
            pos = {c: i for i, c in enumerate(CSV_COLUMNS)}
            idx = [pos.get(c, -1) for c in self._order]
            stamp = self.stamp
            params = [tuple(stamp if i < 0 else r[i] for i in idx) for r in rows]
            cur = raw.cursor()
            try:
                cur.executemany(self._sql, params)
            finally:
                cur.close()
        else:
            keys = (*CSV_COLUMNS,)
            self.conn.execute(
                insert(_T),
                [{**dict(zip(keys, r, strict=True)), "added_at": self.stamp} for r in rows],
            )

    def close(self) -> None:
        if self._sqlite_cache is not None:
            self.conn.exec_driver_sql(f"PRAGMA cache_size={int(self._sqlite_cache)}")


def _copy_text(v: str | None) -> str:
    """One value in PostgreSQL COPY text format."""
    if v is None:
        return "\\N"
    if "\\" in v or "\t" in v or "\n" in v or "\r" in v:
        return (
            v.replace("\\", "\\\\").replace("\t", "\\t").replace("\n", "\\n").replace("\r", "\\r")
        )
    return v


BANK_CATEGORIES = ("baseline", "national", "A1", "A2", "B1", "B2")
"""What a bank entry's category may be: INTERPOL baseline, illegal under national law, or an
ICCAM class (services.notify.xarf_report maps each onto X-ARF). Compared case-insensitively."""
_CATEGORY_SPELLING = {c.lower(): c for c in BANK_CATEGORIES}


def degenerate_hash(kind: str, value: str) -> str | None:
    """Why a hash (valid hex of the right length) is useless or harmful in the bank, or None.

    One repeated digit (all zeros, all ``f``) is what a blank or failed hasher writes, not a
    file's hash; a PDQ or pHash with very few or very many bits set comes from a flat image
    (both hashes threshold at the median, so a real picture's is near half ones) and would
    match every other flat picture within the radius."""
    if len(set(value)) == 1:
        return f"degenerate hash (every digit {value[0]!r})"
    signal = SIGNAL_TYPES[kind]
    if not signal.exact:
        ones = bin(int(value, 16)).count("1")
        if not signal.bits // 8 <= ones <= 7 * signal.bits // 8:
            return (f"degenerate {kind} hash ({ones} of {signal.bits} bits set; an image's has about "
                    "half): it would match unrelated flat images")
    return None


def import_csv(
    stream: TextIO,
    store: SqlUnitOfWork,
    default_category: str = "baseline",
    default_source: str = "import",
    progress: Callable[[int], None] | None = None,
    batch_size: int = 10_000,
) -> tuple[int, list[str]]:
    """Load bank rows from CSV (columns :data:`CSV_COLUMNS`: one per hash type of the registry,
    then category, source; any subset of hash columns, in any order). Returns (rows added,
    errors).

    Every refused row is reported as ``line N: column C: reason``, never
    silently skipped; blank lines are not rows. Good rows go to the database
    in bulk (``batch_size`` rows per insert) in the caller's transaction, so
    the caller's commit makes the import visible at once. ``progress`` is
    called with the number of rows read since the last call.
    """
    reader = csv.reader(stream)
    try:
        header = next(reader)
    except StopIteration:
        return 0, ["the file is empty"]
    except csv.Error as exc:
        return 0, [f"line 1: not CSV: {exc}"]
    names = [h.strip().lower() for h in header]
    unknown = [h for h in names if h not in CSV_COLUMNS]
    if unknown:
        return 0, [
            f"line 1: unknown column(s) {', '.join(unknown)}; expected any of {', '.join(CSV_COLUMNS)}"
        ]
    dupes = sorted({h for h in names if names.count(h) > 1})
    if dupes:
        return 0, [f"line 1: column(s) {', '.join(dupes)} appear more than once"]
    hash_pos = [
        (names.index(c), c, SIGNAL_TYPES[c], _FAST_HEX[c]) for c in HASH_COLUMNS if c in names
    ]
    if not hash_pos:
        return 0, ["line 1: no hash column; expected at least one of " + ", ".join(HASH_COLUMNS)]
    cat_pos = names.index("category") if "category" in names else None
    src_pos = names.index("source") if "source" in names else None
    width = len(names)
    slot = {c: i for i, c in enumerate(HASH_COLUMNS)}

    writer = _Writer(store.session.connection(), now())
    added = 0
    errors: list[str] = []
    batch: list[tuple[str | None, ...]] = []
    read = 0
    try:
        while True:
            try:
                row = next(reader)
            except StopIteration:
                break
            except csv.Error as exc:
                errors.append(f"line {reader.line_num}: not CSV: {exc}")
                continue
            read += 1
            if progress and read % batch_size == 0:
                progress(batch_size)
            if not row or (len(row) == 1 and not row[0].strip()):
                continue
            lineno = reader.line_num
            if len(row) != width:
                errors.append(
                    f"line {lineno}: expected {width} fields ({', '.join(names)}), got {len(row)}"
                )
                continue
            out: list[str | None] = [None] * len(CSV_COLUMNS)
            bad = None
            for pos, col, sig, fast in hash_pos:
                value = row[pos]
                if not value:
                    continue
                if fast(value):  # the common case, one C call; validate() explains failures
                    out[slot[col]] = value.lower()
                elif not value.isspace():
                    try:
                        out[slot[col]] = sig.validate(value)
                    except InvalidHash as exc:
                        bad = f"line {lineno}: column {col}: {exc}"
                        break
            if bad is None:
                for col, cell in zip(HASH_COLUMNS, out[:_N_HASHES], strict=True):
                    reason = degenerate_hash(col, cell) if cell is not None else None
                    if reason is not None:
                        bad = f"line {lineno}: column {col}: {reason}"
                        break
            if bad is None and (why := undecodable("".join(row))):
                bad = f"line {lineno}: {why}"
            if bad is None and all(v is None for v in out[:_N_HASHES]):
                bad = f"line {lineno}: no hash in any of the columns {', '.join(h[1] for h in hash_pos)}"
            if bad is None:
                category = (row[cat_pos].strip() if cat_pos is not None else "") or default_category
                source = (row[src_pos].strip() if src_pos is not None else "") or default_source
                if len(category) > _CATEGORY_MAX:
                    bad = f"line {lineno}: column category: longer than {_CATEGORY_MAX} characters"
                elif category.lower() not in _CATEGORY_SPELLING:
                    bad = (f"line {lineno}: column category: unknown category {category!r}; "
                           f"expected one of {', '.join(BANK_CATEGORIES)}")
                elif len(source) > _SOURCE_MAX:
                    bad = f"line {lineno}: column source: longer than {_SOURCE_MAX} characters"
                else:
                    out[_N_HASHES], out[_N_HASHES + 1] = _CATEGORY_SPELLING[category.lower()], source
            if bad is not None:
                errors.append(bad)
                continue
            batch.append(tuple(out))
            if len(batch) >= batch_size:
                writer.write(batch)
                added += len(batch)
                batch = []
        if batch:
            writer.write(batch)
            added += len(batch)
        if progress and read % batch_size:
            progress(read % batch_size)
    finally:
        writer.close()
    store.audit.append("cli", "bank_import", "bank", f"{added} entries added, {len(errors)} rows refused")
    return added, errors


def export_csv(store: SqlUnitOfWork, out: TextIO, include_retired: bool = False) -> int:
    """Write the bank as CSV (same columns as the import). Streams: constant memory at 10M rows."""
    writer = csv.writer(out)
    writer.writerow(CSV_COLUMNS)
    q = select(*(_T.c[c] for c in CSV_COLUMNS)).order_by(_T.c.id)
    if not include_retired:
        q = q.where(_T.c.retired_at.is_(None))
    n = 0
    result = store.session.connection().execution_options(yield_per=50_000).execute(q)
    for part in result.partitions():
        writer.writerows([("" if v is None else v) for v in r] for r in part)
        n += len(part)
    return n


def retire(store: SqlUnitOfWork, entry_id: int, reason: str, actor: str) -> bool:
    """Retire an entry: it stops matching, the reason stays on record.

    The ``bank_retire`` audit row is also how every running :class:`Bank`
    learns of the retirement, cheaply.
    """
    entry = store.session.get(BankEntry, entry_id)
    if entry is None or entry.retired_at is not None:
        return False
    entry.retired_at = now()
    entry.retired_reason = reason
    store.audit.append(actor, RETIRE_ACTION, str(entry_id), reason)
    return True
