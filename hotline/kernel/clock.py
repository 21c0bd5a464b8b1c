"""The one clock: timezone-aware UTC, so SQLite and PostgreSQL rows compare alike.

Controllable: whatever reads the time through ``now()`` (timelines, notices, the
follow-up scheduler, deadlines, removal times) reads the *current* clock, which is the
system clock unless a test installs a ``FakeClock`` (``install``/``installed``). Code that
is handed a clock (``services.followup``) reads that one; with a ``FakeClock`` a test runs a
simulated week in seconds by ``advance``-ing it.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from typing import Protocol


class Clock(Protocol):
    def now(self) -> datetime:
        """The current time, timezone-aware UTC."""
        ...


class SystemClock:
    """The real time."""

    def now(self) -> datetime:
        return datetime.now(UTC)


class FakeClock:
    """A clock that only moves when told to (``set``, ``advance``); thread-safe."""

    def __init__(self, start: datetime | None = None) -> None:
        start = start or datetime(2026, 1, 5, 9, 0, tzinfo=UTC)
        self._now = start if start.tzinfo else start.replace(tzinfo=UTC)
        self._lock = threading.Lock()

    def now(self) -> datetime:
        with self._lock:
            return self._now

    def set(self, when: datetime) -> None:
        with self._lock:
            self._now = when if when.tzinfo else when.replace(tzinfo=UTC)

    def advance(self, seconds: float = 0.0, **delta: float) -> datetime:
        """Move forward by ``seconds`` plus any ``timedelta`` keywords (``hours=2``)."""
        with self._lock:
            self._now += timedelta(seconds=seconds, **delta)
            return self._now


class CurrentClock:
    """Whatever clock is installed now (``install``): hand this to code that should follow a
    test's ``FakeClock`` without being told about it."""

    def now(self) -> datetime:
        return _current.now()


SYSTEM = SystemClock()
CURRENT = CurrentClock()
_current: Clock = SYSTEM


def current() -> Clock:
    return _current


def install(clock: Clock) -> Clock:
    """Make ``clock`` the one ``now()`` reads; returns the one it replaces."""
    global _current
    previous, _current = _current, clock
    return previous


@contextmanager
def installed(clock: Clock) -> Iterator[Clock]:
    """``install`` for the duration of a ``with`` block."""
    previous = install(clock)
    try:
        yield clock
    finally:
        install(previous)


def now() -> datetime:
    return _current.now()
