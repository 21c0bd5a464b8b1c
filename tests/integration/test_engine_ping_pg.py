"""Pooled PostgreSQL connections the server closed, with and without the pre-ping
(``hotline.storage.engine.make_engine``). A Kafka stage process goes without it and relies on
what is checked here: the first transaction on a dead connection fails with an error its
failure policy calls an outage (so the message is retried, never parked), and that one error
drops every other pooled connection of the same age, so the retry gets a fresh one. The web's
engine keeps the ping: its first request after the server closed the connections succeeds."""

from __future__ import annotations

import threading
from collections.abc import Iterator

import pytest
from sqlalchemy import Engine, create_engine, text
from sqlalchemy.exc import OperationalError

from hotline.kernel.failures import Failure, classify
from hotline.storage.engine import make_engine
from tests.integration.scenario import fresh_pg_database

pytestmark = pytest.mark.integration


@pytest.fixture
def url(pg_url: str) -> Iterator[str]:
    with fresh_pg_database(pg_url, "ping") as url:
        yield url


def _pooled_pids(engine: Engine, n: int) -> set[int]:
    """Check ``n`` connections out at once (so the pool holds ``n``), return their backends."""
    conns = [engine.connect() for _ in range(n)]
    try:
        return {c.scalar(text("SELECT pg_backend_pid()")) for c in conns}
    finally:
        for c in conns:
            c.close()


def _terminate(url: str, pids: set[int]) -> None:
    """Close those backends from the server's side, as a restart or an idle timeout does."""
    admin = create_engine(url, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            for pid in pids:
                # With a timeout it returns only once the backend has exited (else a signal
                # sent is all it promises, and the next query could still be answered).
                assert conn.scalar(text("SELECT pg_terminate_backend(:p, 10000)"), {"p": pid}) is True
    finally:
        admin.dispose()


def _backend(engine: Engine) -> int:
    with engine.begin() as conn:
        return int(conn.scalar(text("SELECT pg_backend_pid()")))


def test_without_the_ping_a_dead_connection_fails_once_as_an_outage_and_the_pool_is_renewed(url: str) -> None:
    engine = make_engine(url, pre_ping=False)
    try:
        old = _pooled_pids(engine, 3)
        assert len(old) == 3
        _terminate(url, old)
        with pytest.raises(OperationalError) as failed:
            _backend(engine)
        assert classify(failed.value) is Failure.OUTAGE
        # Every retry after the one error gets a live connection, none of the three old ones.
        after = {_backend(engine) for _ in range(3)} | _pooled_pids(engine, 3)
        assert not after & old
    finally:
        engine.dispose()


def test_with_the_ping_the_first_transaction_after_the_close_succeeds(url: str) -> None:
    engine = make_engine(url)
    try:
        old = _pooled_pids(engine, 2)
        _terminate(url, old)
        results: list[int] = []
        workers = [threading.Thread(target=lambda: results.append(_backend(engine))) for _ in range(2)]
        for w in workers:
            w.start()
        for w in workers:
            w.join(30)
        assert len(results) == 2 and not set(results) & old
    finally:
        engine.dispose()
