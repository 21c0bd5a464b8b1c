"""``hotline.storage.sqlite_writer``: SQLite writers take turns on the process's lock and a file
lock shared with the other processes on the database, from their first write to the end of the
transaction, before they ask SQLite for its lock (whose busy handler sleeps up to 100 ms a try)."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from sqlalchemy import text

from hotline.storage.engine import make_engine
from hotline.storage.sqlite_writer import Turn, _is_write, turn_for


def test_what_counts_as_a_write() -> None:
    for sql in ("INSERT INTO t VALUES (1)", "  update t set a=1", "DELETE FROM t", "REPLACE INTO t VALUES (1)",
                "BEGIN IMMEDIATE", "begin exclusive", "CREATE TABLE t (a)"):
        assert _is_write(sql), sql
    for sql in ("SELECT 1", "BEGIN", "BEGIN DEFERRED", "PRAGMA journal_mode=WAL", "WITH x AS (SELECT 1) SELECT * FROM x"):
        assert not _is_write(sql), sql


@pytest.fixture()
def engine(tmp_path: Path):  # type: ignore[no-untyped-def]
    engine = make_engine(f"sqlite:///{tmp_path / 'w.db'}")
    with engine.begin() as conn:
        conn.execute(text("CREATE TABLE t (a INTEGER)"))
    yield engine
    engine.dispose()


def test_the_turn_is_held_from_the_first_write_to_the_end_of_the_transaction(engine, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    turn = turn_for(str((tmp_path / "w.db").resolve()))
    with engine.connect() as conn:
        conn.execute(text("SELECT count(*) FROM t"))
        assert not turn._threads.locked()  # reading takes no turn
        conn.execute(text("INSERT INTO t VALUES (1)"))
        assert turn._threads.locked()
        conn.commit()
        assert not turn._threads.locked()
        conn.execute(text("INSERT INTO t VALUES (2)"))
        conn.rollback()
        assert not turn._threads.locked()


def test_a_second_writer_waits_for_the_turn_not_for_sqlite(engine) -> None:  # type: ignore[no-untyped-def]
    wrote = threading.Event()
    with engine.connect() as first:
        first.execute(text("INSERT INTO t VALUES (1)"))

        def second() -> None:
            with engine.connect() as conn:
                conn.execute(text("INSERT INTO t VALUES (2)"))
                conn.commit()
            wrote.set()

        t = threading.Thread(target=second)
        t.start()
        assert not wrote.wait(0.3)  # the first holds the turn
        first.commit()
    assert wrote.wait(10)
    t.join(10)
    with engine.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM t")).scalar() == 2


HOLD = """
import sys
from hotline.storage.sqlite_writer import Turn
turn = Turn(sys.argv[1])
assert turn.acquire(timeout=5)
print("held", flush=True)
sys.stdin.read()
turn.release()
"""


def test_another_process_holding_the_turn_makes_this_one_wait_bounded(tmp_path: Path) -> None:
    database = str(tmp_path / "p.db")
    holder = subprocess.Popen([sys.executable, "-c", HOLD, database], stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == b"held"
        mine = Turn(database)
        assert mine.acquire(timeout=0.2) is False  # bounded, as SQLite's busy timeout is
        assert not mine._threads.locked()  # and the threads' lock is not left taken
        assert holder.stdin is not None
        holder.stdin.close()
        assert mine.acquire(timeout=10)
        mine.release()
    finally:
        holder.kill()
        holder.wait(10)


def test_the_turn_goes_to_waiters_in_the_order_they_came_even_against_a_greedy_writer() -> None:
    from hotline.storage.sqlite_writer import FairLock

    lock = FairLock()
    assert lock.acquire(timeout=1)
    order: list[str] = []
    stop = threading.Event()

    def greedy() -> None:  # takes the lock again the moment it gave it back, as a stage polling without pause
        while not stop.is_set():
            if lock.acquire(timeout=5):
                lock.release()

    def waiter(name: str) -> None:
        assert lock.acquire(timeout=30), name
        order.append(name)
        lock.release()

    first = threading.Thread(target=waiter, args=("first",))
    first.start()
    while len(lock._waiters) < 1:
        threading.Event().wait(0.001)
    second = threading.Thread(target=waiter, args=("second",))
    second.start()
    while len(lock._waiters) < 2:
        threading.Event().wait(0.001)
    hog = threading.Thread(target=greedy)
    hog.start()
    lock.release()
    first.join(10)
    second.join(10)
    stop.set()
    hog.join(10)
    assert order == ["first", "second"]


def test_a_wait_that_runs_out_leaves_the_lock_to_the_others() -> None:
    from hotline.storage.sqlite_writer import FairLock

    lock = FairLock()
    assert lock.acquire(timeout=1)
    assert lock.acquire(timeout=0.05) is False
    assert not lock._waiters  # the one that gave up is gone from the queue
    lock.release()
    assert not lock.locked()
    assert lock.acquire(timeout=0.05)
    lock.release()


GREEDY = """
import sys, threading, time
from hotline.storage.sqlite_writer import Turn
turn = Turn(sys.argv[1])
stop = time.monotonic() + float(sys.argv[2])
def hog():
    while time.monotonic() < stop:
        if turn.acquire(timeout=5):
            time.sleep(0.003)  # a write transaction
            turn.release()
threads = [threading.Thread(target=hog) for _ in range(4)]
[t.start() for t in threads]
print("hogging", flush=True)
[t.join() for t in threads]
"""


def test_a_process_whose_threads_queue_for_the_turn_lets_another_process_in(tmp_path: Path) -> None:
    database = str(tmp_path / "f.db")
    hog = subprocess.Popen([sys.executable, "-c", GREEDY, database, "20"], stdout=subprocess.PIPE)
    try:
        assert hog.stdout is not None and hog.stdout.readline().strip() == b"hogging"
        mine = Turn(database)
        waits = []
        for _ in range(20):  # four threads of the other process never leave the turn free for long
            began = time.monotonic()
            assert mine.acquire(timeout=10)
            waits.append(time.monotonic() - began)
            mine.release()
        # Most in about one of the other's transactions (3 ms): the other process's threads
        # never shut this one out.
        assert sorted(waits)[10] < 0.5, waits
    finally:
        hog.kill()
        hog.wait(10)
