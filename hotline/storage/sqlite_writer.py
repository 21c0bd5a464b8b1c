"""SQLite writers of one process take turns on a Python lock before they ask SQLite for its one.

Why: SQLite has one write lock per database, and a connection that finds it taken waits in
SQLite's busy handler, which sleeps 1, 2, 5, 10, 15, 20, 25, 25, 25, 50, 50, 100 ms between
tries: a writer that has tried a few times sleeps 25-100 ms at a go, however soon the lock is
free. With the web's group committer and five stages writing in one process that is most of
the waiting: a py-spy record of the embedded ``hotline serve`` at 50 reports/s found the group
committer waiting at ``BEGIN IMMEDIATE`` 60 % of the time and the stages as long in their first
write (issue 13). A lock in the process hands the turn over when it is released, so inside a
process only the holder ever waits in SQLite's busy handler (for another process: the
classify and notify children of ``hotline.runtime.stage_processes``, whose writers take the
same turn through a file lock: one writer of all the processes on the database asks SQLite).

What counts as a write is what makes SQLite take its lock: ``INSERT``, ``UPDATE``, ``DELETE``,
``REPLACE`` (the ``sqlite3`` module opens its implicit transaction right before them) and an
explicit ``BEGIN IMMEDIATE``/``EXCLUSIVE`` (the web's sessions, ``make_engine(immediate=True)``)
or DDL. The turn is held from there until the transaction ends (commit, rollback, close, or the
statement ran in autocommit), so it is the same span as SQLite's lock. A statement this does not
recognize as a write just waits for SQLite's lock the old way. Waiting for the turn is bounded
like SQLite's busy timeout, and ends in the same error ("database is locked"), which the stages'
failure policy retries as an outage.
"""

from __future__ import annotations

import contextlib
import fcntl
import mmap
import os
import sqlite3
import threading
import time
from collections import deque
from collections.abc import Iterator
from typing import Any

WRITES = ("INSERT", "UPDATE", "DELETE", "REPLACE", "CREATE", "DROP", "ALTER")


class FairLock:
    """A lock that goes to its waiters in the order they came. ``threading.Lock`` does not: a
    thread that releases it and asks again at once (a stage polling without pause) nearly always
    wins over one that has been waiting, which can then wait out the whole timeout."""

    def __init__(self) -> None:
        self._guard = threading.Lock()
        self._waiters: deque[threading.Lock] = deque()
        self._held = False

    def acquire(self, timeout: float) -> bool:
        with self._guard:
            if not self._held and not self._waiters:
                self._held = True
                return True
            mine = threading.Lock()
            mine.acquire()
            self._waiters.append(mine)
        if mine.acquire(timeout=timeout):
            return True  # handed over by ``release``
        with self._guard:
            try:
                self._waiters.remove(mine)
            except ValueError:
                return True  # handed over just as the wait ran out: it is ours
            return False

    def release(self) -> None:
        with self._guard:
            if self._waiters:
                self._waiters.popleft().release()  # straight to the next: it stays held
            else:
                self._held = False

    def locked(self) -> bool:
        return self._held


class Turn:
    """The writers' turn on one database file: a ``FairLock`` for this process's threads,
    then an exclusive ``flock`` on ``<database>.write-turn`` for the other processes on it (the
    embedded runtime's stage children). The file lock is tried without blocking, then again
    after 0.1 ms, doubling to 0.5 ms: a turn handed over is taken within about that, where
    SQLite's busy handler may sleep 100 ms; and a wait stays bounded (``acquire``'s timeout)
    as SQLite's busy timeout is.

    Between processes the file lock alone is not fair: a process whose threads queue for the
    turn takes it again the instant it let go, before another process's next try, and a busy
    child held the web's group committer off for seconds (intake fell from ~1,000 to ~100
    reports/s in one measured burst). So a process waiting for the file lock says so in the
    file (a byte of its own, at its pid modulo ``SLOTS``), and a process that let go while
    another one waits leaves the lock alone for ``YIELD_SECONDS``: long enough for the waiter's
    next try."""

    SLOTS = 4096
    YIELD_SECONDS = 0.001

    def __init__(self, database: str) -> None:
        self.path = f"{database}.write-turn"
        self._threads = FairLock()
        self._fd: int | None = None
        self._waiting: mmap.mmap | None = None
        self._slot = os.getpid() % self.SLOTS
        self._yield_until = 0.0

    def _open(self) -> int:
        if self._fd is None:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
            if os.fstat(fd).st_size < self.SLOTS:
                os.ftruncate(fd, self.SLOTS)  # zeros; growing it twice at once is harmless
            self._waiting = mmap.mmap(fd, self.SLOTS)
            self._fd = fd
        return self._fd

    def _others_waiting(self) -> bool:
        """Any byte set: this process's own is clear while it holds the turn."""
        assert self._waiting is not None
        return self._waiting.find(b"\x01") != -1

    def acquire(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        if not self._threads.acquire(timeout=timeout):
            return False
        try:
            fd = self._open()
            assert self._waiting is not None
            pause = 0.0001
            marked = False
            try:
                while True:
                    now = time.monotonic()
                    if now >= self._yield_until:
                        try:
                            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                            return True
                        except BlockingIOError:
                            pass
                    if now >= deadline:
                        self._threads.release()
                        return False
                    if not marked:
                        self._waiting[self._slot] = 1
                        marked = True
                    time.sleep(pause)
                    pause = min(pause * 2, 0.0005)
            finally:
                if marked:
                    self._waiting[self._slot] = 0
        except BaseException:
            self._threads.release()
            raise

    def release(self) -> None:
        try:
            if self._fd is not None:
                fcntl.flock(self._fd, fcntl.LOCK_UN)
                if self._others_waiting():
                    self._yield_until = time.monotonic() + self.YIELD_SECONDS
        finally:
            self._threads.release()


_turns: dict[str, Turn] = {}
_turns_lock = threading.Lock()


def turn_for(database: str) -> Turn:
    """The one writers' turn of this process for the database file ``database``."""
    with _turns_lock:
        return _turns.setdefault(database, Turn(database))


def _is_write(sql: str) -> bool:
    head = sql.lstrip()[:16].upper()
    if head.startswith("BEGIN"):
        return "IMMEDIATE" in head or "EXCLUSIVE" in head
    return head.startswith(WRITES)


class TurnConnection(sqlite3.Connection):
    """An ``sqlite3`` connection whose writes take the process's turn first (``sqlite3.connect(
    factory=TurnConnection)``; ``turn`` set right after, by ``make_engine``)."""

    turn: Turn | None = None
    timeout_seconds: float = 30.0
    _holding = False

    def cursor(self, factory: Any = None) -> Any:  # noqa: D102 - same as sqlite3's
        return super().cursor(factory or TurnCursor)

    def _enter(self, sql: str) -> None:
        if self._holding or self.turn is None or not _is_write(sql):
            return
        if not self.turn.acquire(timeout=self.timeout_seconds):
            raise sqlite3.OperationalError("database is locked (waited for this process's other writers)")
        self._holding = True

    def _settle(self) -> None:
        """Give the turn back once no transaction is open (committed, rolled back, autocommit)."""
        if self._holding and not self.in_transaction:
            self._holding = False
            assert self.turn is not None
            self.turn.release()

    def commit(self) -> None:
        try:
            super().commit()
        finally:
            self._settle()

    def rollback(self) -> None:
        try:
            super().rollback()
        finally:
            self._settle()

    def close(self) -> None:
        try:
            super().close()
        finally:
            if self._holding:
                self._holding = False
                assert self.turn is not None
                self.turn.release()


class TurnCursor(sqlite3.Cursor):
    def execute(self, sql: str, parameters: Any = (), /) -> Any:  # noqa: D102
        with _turn_around(self, sql):
            return super().execute(sql, parameters)

    def executemany(self, sql: str, seq_of_parameters: Any, /) -> Any:  # noqa: D102
        with _turn_around(self, sql):
            return super().executemany(sql, seq_of_parameters)


@contextlib.contextmanager
def _turn_around(cursor: sqlite3.Cursor, sql: str) -> Iterator[None]:
    """The turn taken before a write statement, and given back after any statement that left no
    transaction open."""
    conn: TurnConnection = cursor.connection  # type: ignore[assignment]
    conn._enter(sql)
    try:
        yield
    finally:
        conn._settle()
