"""The bank of known hashes as the rest of the system sees it: database rows kept in sync
with an in-memory ``BankMatcher``, plus CSV import and export.

Several processes may change the bank (analysts confirming material, imports),
so the matcher checks a cheap version stamp at most once a ``refresh_seconds``
and reloads what changed.
"""

from __future__ import annotations

import csv
import io
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TextIO

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from hashing.matcher import BankMatcher, BankRecord, Hit
from hashing.signals import InvalidHash, get_signal_type
from hotline.db.models import BankEntry
from hotline.store import Store, now

HASH_COLUMNS = ("md5", "sha1", "sha256", "pdq", "phash")
CSV_COLUMNS = (*HASH_COLUMNS, "category", "source")


def record_of(entry: BankEntry) -> BankRecord:
    return BankRecord(
        id=entry.id,
        category=entry.category,
        source=entry.source,
        md5=entry.md5,
        sha1=entry.sha1,
        sha256=entry.sha256,
        pdq=entry.pdq,
        phash=entry.phash,
    )


class Bank:
    def __init__(
        self,
        sessions: sessionmaker[Session],
        pdq_radius: int = 31,
        phash_radius: int = 8,
        refresh_seconds: float = 1.0,
    ) -> None:
        self.sessions = sessions
        self.matcher = BankMatcher(pdq_radius=pdq_radius, phash_radius=phash_radius)
        self.refresh_seconds = refresh_seconds
        self._version: tuple[int, int, int] | None = None
        self._loaded_max_id = 0
        self._checked = 0.0
        self._lock = threading.Lock()

    def refresh(self, force: bool = False) -> None:
        if not force and time.monotonic() - self._checked < self.refresh_seconds:
            return
        with self._lock:
            with self.sessions() as session:
                version = Store(session).bank_version()
                if version == self._version:
                    self._checked = time.monotonic()
                    return
                if self._version is not None and version[2] == self._version[2]:
                    # Only additions since last time: add incrementally.
                    rows = session.scalars(
                        select(BankEntry).where(BankEntry.id > self._loaded_max_id, BankEntry.retired_at.is_(None))
                    ).all()
                    self.matcher.add(record_of(r) for r in rows)
                else:
                    fresh = BankMatcher(self.matcher.radius["pdq"], self.matcher.radius["phash"])
                    fresh.add(record_of(r) for r in Store(session).active_bank_entries())
                    self.matcher = fresh
                self._version = version
                self._loaded_max_id = version[0]
                self._checked = time.monotonic()

    def match(self, **hashes: str | int | None) -> Hit | None:
        self.refresh()
        return self.matcher.match(**hashes)  # type: ignore[arg-type]


def validate_row(row: dict[str, str]) -> dict[str, str | None]:
    """Normalize one CSV row; raise ``ValueError`` naming the column and the problem."""
    hashes: dict[str, str | None] = {}
    for col in HASH_COLUMNS:
        value = (row.get(col) or "").strip()
        if value:
            try:
                hashes[col] = get_signal_type(col).validate(value)
            except InvalidHash as exc:
                raise ValueError(f"column {col}: {exc}") from exc
    if not hashes:
        raise ValueError("row has no hash in any of the columns " + ", ".join(HASH_COLUMNS))
    return hashes


def import_csv(
    stream: TextIO,
    store: Store,
    default_category: str = "baseline",
    default_source: str = "import",
    progress: Callable[[int], None] | None = None,
    batch_size: int = 5000,
) -> tuple[int, list[str]]:
    """Load bank rows from CSV (columns md5,sha1,sha256,pdq,phash,category,source; any subset of
    hash columns). Returns (rows added, errors); bad rows are reported, never silently skipped."""
    reader = csv.DictReader(stream)
    if reader.fieldnames is None:
        return 0, ["the file is empty"]
    unknown = [c for c in reader.fieldnames if c not in CSV_COLUMNS]
    if unknown:
        return 0, [f"unknown column(s) {', '.join(unknown)}; expected any of {', '.join(CSV_COLUMNS)}"]
    added = 0
    errors: list[str] = []
    batch: list[BankEntry] = []
    stamp = now()
    for lineno, row in enumerate(reader, start=2):
        try:
            hashes = validate_row(row)
        except ValueError as exc:
            errors.append(f"line {lineno}: {exc}")
            continue
        batch.append(
            BankEntry(
                category=(row.get("category") or default_category).strip(),
                source=(row.get("source") or default_source).strip(),
                added_at=stamp,
                **hashes,
            )
        )
        if len(batch) >= batch_size:
            store.session.add_all(batch)
            store.flush()
            added += len(batch)
            if progress:
                progress(len(batch))
            batch = []
    if batch:
        store.session.add_all(batch)
        store.flush()
        added += len(batch)
        if progress:
            progress(len(batch))
    store.audit("cli", "bank_import", "bank", f"{added} entries added, {len(errors)} rows refused")
    return added, errors


def export_csv(store: Store, out: TextIO, include_retired: bool = False) -> int:
    writer = csv.writer(out)
    writer.writerow(CSV_COLUMNS)
    n = 0
    q = select(BankEntry).order_by(BankEntry.id)
    if not include_retired:
        q = q.where(BankEntry.retired_at.is_(None))
    for e in store.session.scalars(q):
        writer.writerow([e.md5 or "", e.sha1 or "", e.sha256 or "", e.pdq or "", e.phash or "", e.category, e.source])
        n += 1
    return n


def retire(store: Store, entry_id: int, reason: str, actor: str) -> bool:
    entry = store.session.get(BankEntry, entry_id)
    if entry is None or entry.retired_at is not None:
        return False
    entry.retired_at = now()
    entry.retired_reason = reason
    store.audit(actor, "bank_retire", str(entry_id), reason)
    return True


def rows_from_text(text: str) -> Iterator[dict[str, str]]:
    yield from csv.DictReader(io.StringIO(text))
