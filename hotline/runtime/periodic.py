"""Periodic tasks (``hotline.kernel.stage.Periodic``) in a thread, for both runtimes.

Every ``interval_seconds`` the task ticks in a transaction of its own; what it changed and
the messages it returned are committed together through the transactional outbox
(``SqlUnitOfWork.enqueue``): embedded, the outbox is the bus; on Kafka, an ``OutboxRelay``
in the same process publishes the rows (``FOR UPDATE SKIP LOCKED``: several relays never
publish the same row at once). So a crash never loses a message a tick decided on, nor
publishes one whose claim was rolled back. A failing tick is logged and tried again at
the next interval (a busy or unavailable database is an outage like any other).
"""

from __future__ import annotations

import logging
import threading

from sqlalchemy.orm import Session, sessionmaker

from hotline.kernel.stage import Periodic
from hotline.storage.unit_of_work import SqlUnitOfWork

log = logging.getLogger(__name__)


class PeriodicRunner:
    def __init__(self, sessions: sessionmaker[Session], task: Periodic, interval_seconds: float | None = None) -> None:
        self.sessions = sessions
        self.task = task
        self.interval_seconds = interval_seconds if interval_seconds is not None else task.interval_seconds
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.ticks = 0
        self.last_error: str | None = None

    def tick(self) -> int:
        """One tick, committed; how many messages it published."""
        with self.sessions() as session:
            uow = SqlUnitOfWork(session)
            try:
                out = self.task.tick(uow)
                uow.enqueue(out)
                uow.commit()
            except BaseException:
                uow.rollback()
                raise
        self.ticks += 1
        return len(out)

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                self.tick()
                self.last_error = None
            except Exception as exc:  # noqa: BLE001 - tried again at the next tick
                self.last_error = repr(exc)
                log.warning("periodic task %s failed, trying again in %.1fs: %r", self.task.name,
                            self.interval_seconds, exc)
            self._stop.wait(self.interval_seconds)

    def start(self) -> PeriodicRunner:
        self._stop.clear()
        self._thread = threading.Thread(target=self._loop, name=f"periodic-{self.task.name}", daemon=True)
        self._thread.start()
        return self

    def stop(self, timeout: float = 10.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None
