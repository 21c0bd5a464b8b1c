"""The hosting cache: DNS and RDAP answers kept for a time to live, with when they were
looked up, so classify asks a registry once per address per TTL rather than once per image.

Unlike the other repositories this one owns its (small, short) transactions: look-ups run
in a stage's *act* step, outside any unit of work (no transaction may stay open while a
registry answers), and also outside any stage (the fetcher's name resolution, the analyst's
live view). That is safe because the cache is no state of any item: a lost write is one more
look-up later, two writers of one key write the same kind of fact (the last one wins), and
the facts a decision was made on are recorded with the item's classification (with their
``looked_up_at``) in the stage's record step, in its own transaction.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import delete
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from hotline.kernel import clock as clocks
from hotline.kernel.clock import Clock
from hotline.storage.models import HostingCacheEntry


@dataclass(frozen=True)
class CachedFact:
    value: dict[str, Any]
    source: str
    looked_up_at: datetime


class SqlHostingCache:
    """The ``hosting_cache`` table. ``clock`` decides what "expired" means (a test's
    ``FakeClock`` moves past the TTL); default: whatever clock is installed.

    In front of the table, each process keeps what it read or wrote for at most
    ``memory_seconds`` (and never past the row's own expiry), at most ``memory_entries`` keys:
    classify asks for the same few hosts' facts for every item (three keys per host), and a
    database round trip per key per item was most of attribution's cost. Another process's
    newer answer for a key is seen within ``memory_seconds``; both are facts within their TTL,
    recorded with their ``looked_up_at``. ``memory_seconds`` 0: always the table."""

    def __init__(self, sessions: sessionmaker[Session], clock: Clock | None = None,
                 memory_seconds: float = 60.0, memory_entries: int = 4096) -> None:
        self.sessions = sessions
        self.clock = clock or clocks.CURRENT
        self.memory_seconds = memory_seconds
        self.memory_entries = memory_entries
        self._memory: dict[str, tuple[CachedFact, datetime]] = {}  # key -> (fact, kept until)
        self._memory_lock = threading.Lock()

    def _remember(self, key: str, fact: CachedFact, expires_at: datetime) -> None:
        if self.memory_seconds <= 0:
            return
        until = min(expires_at, self.clock.now() + timedelta(seconds=self.memory_seconds))
        with self._memory_lock:
            if key not in self._memory and len(self._memory) >= self.memory_entries:
                self._memory.pop(next(iter(self._memory)))  # the oldest entry goes first
            self._memory[key] = (fact, until)

    def get(self, key: str) -> CachedFact | None:
        with self._memory_lock:
            kept = self._memory.get(key)
        if kept is not None:
            if kept[1] > self.clock.now():
                return CachedFact(dict(kept[0].value), kept[0].source, kept[0].looked_up_at)
            with self._memory_lock:
                if self._memory.get(key) is kept:
                    del self._memory[key]
        with self.sessions() as session:
            row = session.get(HostingCacheEntry, key)
            if row is None or row.expires_at <= self.clock.now():
                return None
            fact = CachedFact(dict(row.value), row.source, row.looked_up_at)
            self._remember(key, fact, row.expires_at)
            return CachedFact(dict(fact.value), fact.source, fact.looked_up_at)

    def put(self, key: str, value: dict[str, Any], source: str, ttl_seconds: float,
            looked_up_at: datetime | None = None) -> None:
        at = looked_up_at or self.clock.now()
        expires = at + timedelta(seconds=ttl_seconds)
        fields = {"value": value, "source": source, "looked_up_at": at, "expires_at": expires}
        for _attempt in range(2):  # a concurrent insert of the same key: update it instead
            with self.sessions() as session:
                row = session.get(HostingCacheEntry, key)
                if row is None:
                    session.add(HostingCacheEntry(key=key, **fields))
                else:
                    for name, v in fields.items():
                        setattr(row, name, v)
                try:
                    session.commit()
                except IntegrityError:
                    session.rollback()
                    continue
            self._remember(key, CachedFact(dict(value), source, at), expires)
            return

    def purge_expired(self) -> int:
        """Delete what has expired (a maintenance task may call it; reads ignore expired rows)."""
        with self.sessions() as session:
            result = session.execute(delete(HostingCacheEntry).where(HostingCacheEntry.expires_at <= self.clock.now()))
            session.commit()
            with self._memory_lock:
                self._memory.clear()
            return int(getattr(result, "rowcount", 0) or 0)


class MemoryHostingCache:
    """The same in a dictionary (unit tests, and a process without a database)."""

    def __init__(self, clock: Clock | None = None) -> None:
        self.clock = clock or clocks.CURRENT
        self.rows: dict[str, tuple[CachedFact, datetime]] = {}
        self._lock = threading.Lock()

    def get(self, key: str) -> CachedFact | None:
        with self._lock:
            found = self.rows.get(key)
        if found is None or found[1] <= self.clock.now():
            return None
        return found[0]

    def put(self, key: str, value: dict[str, Any], source: str, ttl_seconds: float,
            looked_up_at: datetime | None = None) -> None:
        at = looked_up_at or self.clock.now()
        with self._lock:
            self.rows[key] = (CachedFact(dict(value), source, at), at + timedelta(seconds=ttl_seconds))
