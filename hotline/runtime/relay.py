"""Outbox relay: moves messages the web process committed to ``bus_messages`` onto Kafka.

The web app (report submissions, analyst decisions) writes its messages with
``store.enqueue`` + ``store.commit``: in the same transaction as the state
change, so a report is never accepted without its message or the other way
round (transactional outbox). This relay publishes them and then *deletes*
the rows. Deleting rather than remembering a position, because PostgreSQL
sequence values become visible out of order across concurrent transactions:
a row with a smaller id may commit after one with a larger id was relayed,
and a position would skip it for ever.

At-least-once: a crash between the broker's acknowledgement and the DELETE
publishes those rows again; every consumer is idempotent on redelivery.
Several relays may run (one per web process). On PostgreSQL a round first takes a
transaction-level advisory lock (``pg_try_advisory_xact_lock``): one relay publishes at a
time, in id order, and the others skip the round. Two relays publishing disjoint rows at
once (``SKIP LOCKED`` alone) could put a later message for a key (an analyst's second
decision on an item, sent through another web process) on Kafka before an earlier one;
with one round at a time the order per key is the commit order, as with one relay.
``FOR UPDATE SKIP LOCKED`` stays as a second guard against publishing the same rows twice.

A round starts as soon as the process commits outbox rows (``after_commit`` on every session of
the process wakes the relay when the transaction wrote to the outbox: the web process's
requests and group commits, a stage process's periodic tasks), so a report's message is on Kafka within a round trip of its 202,
not a poll later; ``poll_seconds`` is the fallback for rows other processes committed.

Rows are read and deleted with Core statements (id, topic, key, value tuples), not ORM
objects: under load a round carries hundreds of rows.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import TYPE_CHECKING, Any, cast

from sqlalchemy import Table, delete, event, select, text
from sqlalchemy.orm import Session, sessionmaker

from hotline.runtime.kafka import kafka_topic
from hotline.storage.models import BusMessage
from hotline.storage.unit_of_work import WROTE_OUTBOX

if TYPE_CHECKING:
    from kafka import KafkaProducer

log = logging.getLogger(__name__)
# The advisory lock one relay round holds on PostgreSQL (any constant no other code uses).
RELAY_LOCK_KEY = 0x686F746C  # "hotl"


class OutboxRelay:
    def __init__(
        self,
        sessions: sessionmaker[Session],
        brokers: str,
        prefix: str = "",
        *,
        batch_size: int = 500,
        poll_seconds: float = 0.5,
        round_seconds: float = 0.02,
        send_timeout_seconds: float = 30.0,
        producer: KafkaProducer | None = None,
    ) -> None:
        self.sessions = sessions
        self.brokers = brokers
        self.prefix = prefix
        self.batch_size = batch_size
        self.poll_seconds = poll_seconds
        # Rounds start at most this often: under load one round carries the rows of many
        # commits (each round is a transaction, a produce and a flush), at the cost of up to
        # this much latency for a lone report.
        self.round_seconds = round_seconds
        self.send_timeout_seconds = send_timeout_seconds
        self._producer = producer
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        self.relayed = 0
        self.last_error: str | None = None

    # -- lifecycle ---------------------------------------------------------
    def start(self) -> None:
        if self._thread is not None and self._thread.is_alive():
            return
        self._stop.clear()
        if not event.contains(Session, "after_commit", self._committed):
            event.listen(Session, "after_commit", self._committed)
        self._thread = threading.Thread(target=self._loop, name="outbox-relay", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        """Stop after the batch in flight; rows not yet deleted are published by the next relay."""
        self._stop.set()
        self._wake.set()
        if event.contains(Session, "after_commit", self._committed):
            event.remove(Session, "after_commit", self._committed)
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None
        if self._producer is not None:
            self._producer.close(timeout=timeout)
            self._producer = None

    def __enter__(self) -> OutboxRelay:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _committed(self, session: Session) -> None:
        """A transaction of this process committed: start a round if it wrote outbox rows
        (``SqlUnitOfWork.commit`` marks it). Other commits (a stage's, the relay's own) do not
        wake it: each would cost an empty round."""
        if session.info.get(WROTE_OUTBOX):
            self._wake.set()

    # -- work --------------------------------------------------------------
    def producer(self) -> KafkaProducer:
        if self._producer is None:
            from kafka import KafkaProducer

            self._producer = KafkaProducer(
                bootstrap_servers=self.brokers.split(","),
                client_id="hotline-outbox-relay",
                acks="all",
                retries=5,
                bootstrap_timeout_ms=int(self.send_timeout_seconds * 1000),
                # Ordering per key must survive a retried batch.
                max_in_flight_requests_per_connection=1,
                # Nothing reads kafka-python's client metrics; kept, they were a few per cent
                # of the web process's CPU (every produce request updates a dozen sensors).
                metrics_enabled=False,
            )
        return self._producer

    def relay_once(self) -> int:
        """Publish one batch and delete it; returns how many rows went out.

        Raises when the broker does not acknowledge: the rows stay for the next attempt.
        """
        with self.sessions() as session:
            table = cast(Table, BusMessage.__table__)
            query = select(table.c.id, table.c.topic, table.c.key, table.c.value).order_by(table.c.id).limit(
                self.batch_size)
            if session.get_bind().dialect.name == "postgresql":
                if not session.scalar(text("SELECT pg_try_advisory_xact_lock(:k)"), {"k": RELAY_LOCK_KEY}):
                    session.rollback()
                    return 0  # another relay's round is under way
                query = query.with_for_update(skip_locked=True)
            rows = session.execute(query).all()
            if not rows:
                session.rollback()
                return 0
            producer = self.producer()
            futures: list[Any] = [
                producer.send(kafka_topic(self.prefix, topic), key=key.encode(), value=value.encode())
                for _, topic, key, value in rows
            ]
            producer.flush(timeout=self.send_timeout_seconds)
            for fut in futures:
                fut.get(timeout=self.send_timeout_seconds)  # raises if the broker refused
            session.execute(delete(table).where(table.c.id.in_([r[0] for r in rows])))
            session.commit()
            self.relayed += len(rows)
            return len(rows)

    def _loop(self) -> None:
        failures = 0
        while not self._stop.is_set():
            started = time.monotonic()
            # Cleared before the round: a commit during it sets the flag again, so its rows
            # get the next round at once (clearing after the wait could drop that wake-up).
            self._wake.clear()
            try:
                sent = self.relay_once()
            except Exception as exc:  # noqa: BLE001 - broker or database away: keep the rows, retry
                failures += 1
                self.last_error = repr(exc)
                log.warning("outbox relay failed (attempt %d), will retry: %r", failures, exc)
                self._stop.wait(min(0.5 * 2 ** (failures - 1), 30.0))
                continue
            failures = 0
            self.last_error = None
            if sent < self.batch_size:
                self._wake.wait(self.poll_seconds)
                self._stop.wait(self.round_seconds - (time.monotonic() - started))
