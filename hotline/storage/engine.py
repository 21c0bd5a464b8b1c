"""Engine and session factory for SQLite (embedded) and PostgreSQL (distributed)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine, event, make_url
from sqlalchemy.orm import Session, sessionmaker


def make_engine(url: str, immediate: bool = False, pre_ping: bool = True) -> Engine:
    """``immediate`` (SQLite only): every transaction starts with ``BEGIN IMMEDIATE``, taking the
    write lock up front and waiting for it (busy timeout) instead of failing at once with
    "database is locked" when a read transaction later tries to write after another writer
    committed. The web app uses it: an HTTP request has no retry loop, the stages do.

    ``pre_ping`` (PostgreSQL): a pooled connection is tested with a round trip before each
    transaction, so one that the server closed (a restart, an idle timeout) is replaced instead
    of failing the transaction. The web app needs that: a request has no retry. A Kafka stage
    process does not (``hotline serve --stage NAME`` turns it off): the dead connection's error
    is an outage to its failure policy (``hotline.kernel.failures``), the message is retried
    after back-off, and SQLAlchemy has by then dropped every connection of the pool older than
    the error; the ping was a statement in every one of its transactions (several per item)."""
    if url.startswith("sqlite"):
        from hotline.storage.sqlite_writer import TurnConnection, turn_for

        database = make_url(url).database or ""
        turn = turn_for(str(Path(database).resolve())) if database not in ("", ":memory:") else None
        engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": 30,
                                                  "factory": TurnConnection})

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_conn, _record):  # type: ignore[no-untyped-def]
            # This process's writers take turns before they wait for SQLite's write lock
            # (hotline.storage.sqlite_writer: why).
            dbapi_conn.turn = turn
            # WAL lets readers run beside the one writer; the stages are many threads.
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA busy_timeout=30000")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.close()
            if immediate:
                dbapi_conn.isolation_level = None  # we emit BEGIN ourselves, below

        if immediate:

            @event.listens_for(engine, "begin")
            def _begin_immediate(conn):  # type: ignore[no-untyped-def]
                conn.exec_driver_sql("BEGIN IMMEDIATE")

        return engine
    return create_engine(url, pool_pre_ping=pre_ping, pool_size=10, max_overflow=10)


def make_sessionmaker(engine: Engine) -> sessionmaker[Session]:
    return sessionmaker(engine, expire_on_commit=False)


def migrate(url: str) -> None:
    """Bring the schema to the newest Alembic revision."""
    from alembic import command
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(Path(__file__).parent / "migrations"))
    cfg.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    command.upgrade(cfg, "head")


def held_row(session: Session, model: type[Any], key: Any) -> Any | None:
    """The ``model`` row ``key`` if ``session`` holds it already (its identity map), without a
    query: a Core statement on that row must then go through the object (or refresh it), else
    the object would be stale."""
    return session.identity_map.get(session.identity_key(model, key))
