"""The outbox relay on PostgreSQL publishes one round at a time across relays (the advisory
lock in ``hotline.runtime.relay``): while another relay's round holds the lock a relay
publishes nothing and leaves the rows; after it, every row goes out once, in id order."""

from __future__ import annotations

import pytest
from sqlalchemy import func, select, text

from hotline.runtime.relay import RELAY_LOCK_KEY, OutboxRelay
from hotline.storage.engine import make_engine, make_sessionmaker, migrate
from hotline.storage.models import BusMessage
from tests.integration import scenario

pytestmark = pytest.mark.integration


class _Sent:
    def get(self, timeout: float | None = None) -> None:
        return None


class RecordingProducer:
    def __init__(self) -> None:
        self.sent: list[tuple[str, bytes, bytes]] = []

    def send(self, topic: str, key: bytes, value: bytes) -> _Sent:
        self.sent.append((topic, key, value))
        return _Sent()

    def flush(self, timeout: float | None = None) -> None:
        return None

    def close(self, timeout: float | None = None) -> None:
        return None


def test_one_round_at_a_time_in_id_order(pg_url: str) -> None:
    with scenario.fresh_pg_database(pg_url, "relay") as url:
        migrate(url)
        engine = make_engine(url)
        sessions = make_sessionmaker(engine)
        try:
            with sessions() as s:
                s.add_all([BusMessage(topic="reports.submitted", key=f"k{i % 3}", value=f"v{i}") for i in range(7)])
                s.commit()
            producer = RecordingProducer()
            relay = OutboxRelay(sessions, "unused:9092", "p.", producer=producer)  # type: ignore[arg-type]
            with engine.connect() as other:  # another relay's round, in progress
                assert other.scalar(text("SELECT pg_try_advisory_xact_lock(:k)"), {"k": RELAY_LOCK_KEY})
                assert relay.relay_once() == 0
                assert producer.sent == []
                other.rollback()  # that round ends
            assert relay.relay_once() == 7
            assert [v for _, _, v in producer.sent] == [f"v{i}".encode() for i in range(7)]
            assert {t for t, _, _ in producer.sent} == {"p.reports.submitted"}
            with sessions() as s:
                assert s.scalar(select(func.count()).select_from(BusMessage)) == 0
        finally:
            engine.dispose()


def test_a_commit_wakes_the_relay_without_waiting_for_its_poll(pg_url: str) -> None:
    """A report's message leaves when its transaction commits, not a poll later: with a poll of
    an hour, each row committed through a unit of work is still published (the relay's
    ``after_commit`` wake-up), whichever sessionmaker of the process it came from."""
    import time

    from hotline.storage.unit_of_work import WROTE_OUTBOX, SqlUnitOfWork

    with scenario.fresh_pg_database(pg_url, "relaywake") as url:
        migrate(url)
        engine = make_engine(url)
        sessions = make_sessionmaker(engine)
        producer = RecordingProducer()
        relay = OutboxRelay(sessions, "unused:9092", "p.", producer=producer,  # type: ignore[arg-type]
                            poll_seconds=3600.0)
        try:
            relay.start()
            deadline = time.monotonic() + 60  # far below the poll: only a wake-up meets it
            other_sessions = make_sessionmaker(engine)  # a request's sessions, not the relay's
            for i in range(3):
                with (sessions if i % 2 else other_sessions)() as s:
                    uow = SqlUnitOfWork(s)
                    uow.enqueue_raw("reports.submitted", "k", f"v{i}")
                    uow.commit()
                    assert WROTE_OUTBOX not in s.info  # the flag is one commit's
                while len(producer.sent) < i + 1 and time.monotonic() < deadline:
                    time.sleep(0.01)
                assert [v for _, _, v in producer.sent] == [f"v{j}".encode() for j in range(i + 1)]
        finally:
            relay.stop()
            engine.dispose()
        assert not event_listening(relay)


def test_only_a_commit_that_wrote_outbox_rows_wakes_the_relay() -> None:
    """A stage's or the relay's own commit (no outbox row) must not start a round: every stage
    process runs a relay, and a round per stage commit cost escalate a fifth of its CPU."""
    from sqlalchemy.orm import Session

    from hotline.storage.unit_of_work import WROTE_OUTBOX

    relay = OutboxRelay(None, "unused:9092", "p.", producer=RecordingProducer())  # type: ignore[arg-type]
    session = Session()
    relay._committed(session)
    assert not relay._wake.is_set()
    session.info[WROTE_OUTBOX] = True
    relay._committed(session)
    assert relay._wake.is_set()


def event_listening(relay: OutboxRelay) -> bool:
    from sqlalchemy import event
    from sqlalchemy.orm import Session

    return event.contains(Session, "after_commit", relay._committed)
