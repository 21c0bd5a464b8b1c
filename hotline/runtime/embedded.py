"""Embedded runtime: every stage in one process, topics as a table in the same database.

Why a table and not ``queue.Queue``: a stage's state changes, the messages it
produces and its consumer position are committed in *one* transaction, so a
crash at any point neither loses a report nor repeats a side effect, and a
restarted process continues where it stopped. One thread per stage, so a slow
fetch in classify never holds up notices.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Sequence

from sqlalchemy import func, select
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session, sessionmaker

from hotline.db.models import BusMessage, BusOffset
from hotline.stage import MAX_UNEXPECTED_FAILURES, Stage, is_infrastructure_error, park, run_stage
from hotline.store import Store

log = logging.getLogger(__name__)


class EmbeddedRuntime:
    def __init__(
        self,
        sessions: sessionmaker[Session],
        stages: Sequence[Stage],
        poll_seconds: float = 0.05,
        retry_base_seconds: float = 0.2,
    ) -> None:
        self.sessions = sessions
        self.stages = list(stages)
        self.poll_seconds = poll_seconds
        self.retry_base_seconds = retry_base_seconds
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self.errors: dict[str, str] = {}

    def start(self) -> None:
        self._stop.clear()
        for stage in self.stages:
            t = threading.Thread(target=self._loop, args=(stage,), name=f"stage-{stage.name}", daemon=True)
            t.start()
            self._threads.append(t)

    def stop(self, timeout: float = 10.0) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(timeout)
        self._threads.clear()

    def __enter__(self) -> EmbeddedRuntime:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _position(self, session: Session, consumer: str) -> int:
        return int(session.scalar(select(func.max(BusOffset.position)).where(BusOffset.consumer == consumer)) or 0)

    def _next(self, session: Session, stage: Stage) -> BusMessage | None:
        pos = self._position(session, stage.name)
        return session.scalar(
            select(BusMessage)
            .where(BusMessage.id > pos, BusMessage.topic.in_(stage.inputs))
            .order_by(BusMessage.id)
            .limit(1)
        )

    def step(self, stage: Stage) -> bool:
        """Process one message for ``stage``; False when there was nothing to do."""
        with self.sessions() as session:
            row = self._next(session, stage)
            if row is None:
                return False
            store = Store(session)
            outgoing = run_stage(stage, row.topic, row.value, store)
            store.enqueue(outgoing)
            self._advance(session, stage, row.id)
            store.commit()
            return True

    def _park(self, stage: Stage, exc: BaseException, attempts: int) -> None:
        with self.sessions() as session:
            row = self._next(session, stage)
            if row is None:
                return
            store = Store(session)
            store.enqueue(park(stage, row.topic, row.value, store, exc, attempts))
            self._advance(session, stage, row.id)
            store.commit()

    def _advance(self, session: Session, stage: Stage, position: int) -> None:
        offset = session.get(BusOffset, (stage.name, "*"))
        if offset is None:
            session.add(BusOffset(consumer=stage.name, topic="*", position=position))
        else:
            offset.position = position

    def _loop(self, stage: Stage) -> None:
        failures = 0
        while not self._stop.is_set():
            try:
                busy = self.step(stage)
                failures = 0
                self.errors.pop(stage.name, None)
            except OperationalError as exc:  # database busy: simply try again
                log.debug("stage %s: database busy (%s), retrying", stage.name, exc)
                busy = False
            except Exception as exc:  # noqa: BLE001 - retried with backoff, parked if it is no outage
                failures += 1
                self.errors[stage.name] = repr(exc)
                if failures >= MAX_UNEXPECTED_FAILURES and not is_infrastructure_error(exc):
                    try:
                        self._park(stage, exc, failures)
                        failures = 0
                        continue
                    except Exception as park_exc:  # noqa: BLE001 - e.g. database down: keep retrying
                        log.warning("stage %s could not park a message: %r", stage.name, park_exc)
                log.warning("stage %s failed (attempt %d), will retry: %r", stage.name, failures, exc)
                self._stop.wait(min(self.retry_base_seconds * 2**failures, 30.0))
                continue
            if not busy:
                self._stop.wait(self.poll_seconds)

    def idle(self) -> bool:
        """True when every stage has consumed every message on its input topics."""
        with self.sessions() as session:
            for stage in self.stages:
                last = session.scalar(select(func.max(BusMessage.id)).where(BusMessage.topic.in_(stage.inputs)))
                if last is not None and self._position(session, stage.name) < last:
                    return False
        return True

    def wait_idle(self, timeout: float = 60.0) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.idle():
                return True
            time.sleep(0.05)
        return False
