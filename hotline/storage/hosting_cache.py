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
    ``FakeClock`` moves past the TTL); default: whatever clock is installed."""

    def __init__(self, sessions: sessionmaker[Session], clock: Clock | None = None) -> None:
        self.sessions = sessions
        self.clock = clock or clocks.CURRENT

    def get(self, key: str) -> CachedFact | None:
        with self.sessions() as session:
            row = session.get(HostingCacheEntry, key)
            if row is None or row.expires_at <= self.clock.now():
                return None
            return CachedFact(dict(row.value), row.source, row.looked_up_at)

    def put(self, key: str, value: dict[str, Any], source: str, ttl_seconds: float,
            looked_up_at: datetime | None = None) -> None:
        at = looked_up_at or self.clock.now()
        fields = {"value": value, "source": source, "looked_up_at": at,
                  "expires_at": at + timedelta(seconds=ttl_seconds)}
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
                    return
                except IntegrityError:
                    session.rollback()

    def purge_expired(self) -> int:
        """Delete what has expired (a maintenance task may call it; reads ignore expired rows)."""
        with self.sessions() as session:
            result = session.execute(delete(HostingCacheEntry).where(HostingCacheEntry.expires_at <= self.clock.now()))
            session.commit()
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
