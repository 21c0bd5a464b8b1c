"""Group commit: many requests share one transaction and one commit (one fsync).

A web process that commits once per request spends most of each request waiting for its own
fsync, one after another (SQLite has one writer; PostgreSQL flushes the WAL per commit). Here
one writer thread per process takes every job waiting in its queue (up to ``max_batch``), runs
them in one unit of work, commits once, and only then answers each job's future: a caller that
was told "done" is in the database. While one batch commits the next one gathers, so the batch
grows with the load by itself and no job waits for a timer.

Failure stays per job: if a job raises, or the commit fails, the batch is rolled back and each
of its jobs is run again alone in its own transaction, so one bad row fails only its own
request. A job that hits an ``IntegrityError`` alone is run once more (a concurrent writer
won a unique-key race; the job's own reads now see that row, e.g. an idempotency key).

The runtime owns the transaction: jobs get the unit of work, write through its repositories
and ``enqueue`` (the outbox), and never commit. Generic on purpose: what a job writes is the
feature's business (``services.ingest.intake``)."""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from hotline.storage.unit_of_work import SqlUnitOfWork

log = logging.getLogger(__name__)
T = TypeVar("T")
Job = Callable[[SqlUnitOfWork], T]


@dataclass
class _Pending(Generic[T]):
    job: Job[T]
    future: Future[T]
    # ``submit_async``: the event loop and the asyncio future that waits there.
    loop: asyncio.AbstractEventLoop | None = None
    waiter: asyncio.Future[T] | None = None


def _wake(pairs: list[tuple[asyncio.Future[Any], Future[Any]]]) -> None:
    """On the event loop: answer each waiter with its job's outcome."""
    for waiter, future in pairs:
        if waiter.done():
            continue
        exc = future.exception() if not future.cancelled() else asyncio.CancelledError()
        if exc is not None:
            waiter.set_exception(exc)
        else:
            waiter.set_result(future.result())


class GroupCommitter:
    """One writer thread; ``submit(job)`` returns a future resolved after the commit that holds
    the job's writes (or with the job's own exception). ``batches`` counts the commits made, for
    tests that check several jobs shared one."""

    def __init__(self, sessions: sessionmaker[Session], max_batch: int = 200, name: str = "group-commit") -> None:
        self.sessions = sessions
        self.max_batch = max(1, max_batch)
        self.batches = 0
        # Jobs handed in so far (both submit paths): a caller samples it for the arrival rate
        # (``services.ingest.intake.IntakePressure``: embedded stages yield during a burst).
        self.submitted = 0
        self._queue: queue.SimpleQueue[_Pending[Any] | None] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._name = name
        self._closed = False

    def _ensure_running(self) -> None:
        """Refuse work once stopped; start the writer thread with the first job."""
        with self._lock:
            if self._closed:
                raise RuntimeError("the group committer is stopped")
            self.submitted += 1
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name=self._name, daemon=True)
                self._thread.start()

    def submit(self, job: Job[T]) -> Future[T]:
        future: Future[T] = Future()
        self._ensure_running()
        self._queue.put(_Pending(job, future))
        return future

    def submit_async(self, job: Job[T]) -> asyncio.Future[T]:
        """``submit`` for a caller on an event loop: an asyncio future, resolved after the
        commit. The waiters of one batch are woken with one ``call_soon_threadsafe`` per loop
        (``asyncio.wrap_future`` costs one each, a wake-up of the loop per request)."""
        loop = asyncio.get_running_loop()
        waiter: asyncio.Future[T] = loop.create_future()
        future: Future[T] = Future()
        # A request that goes away before its batch runs: its job is skipped, as with submit.
        waiter.add_done_callback(lambda w: future.cancel() if w.cancelled() else None)
        self._ensure_running()
        self._queue.put(_Pending(job, future, loop, waiter))
        return waiter

    def stop(self, timeout: float = 10.0) -> None:
        """Finish the jobs already queued, then end the thread."""
        with self._lock:
            self._closed = True
            thread = self._thread
        if thread is not None:
            self._queue.put(None)
            thread.join(timeout)

    def _run(self) -> None:
        while True:
            first = self._queue.get()
            if first is None:
                return
            batch: list[_Pending[Any]] = [first]
            stop = False
            while len(batch) < self.max_batch:
                try:
                    more = self._queue.get_nowait()
                except queue.Empty:
                    break
                if more is None:
                    stop = True
                    break
                batch.append(more)
            try:
                self._commit(batch)
            except BaseException as exc:  # noqa: BLE001 - no waiting request may hang
                log.exception("group commit failed")
                for p in batch:
                    if not p.future.done():
                        p.future.set_exception(exc)
            self._wake_waiters(batch)
            if stop:
                return

    @staticmethod
    def _wake_waiters(batch: list[_Pending[Any]]) -> None:
        by_loop: dict[asyncio.AbstractEventLoop, list[tuple[asyncio.Future[Any], Future[Any]]]] = {}
        for p in batch:
            if p.loop is not None and p.waiter is not None:
                by_loop.setdefault(p.loop, []).append((p.waiter, p.future))
        for loop, pairs in by_loop.items():
            try:
                loop.call_soon_threadsafe(_wake, pairs)
            except RuntimeError:  # that loop is closed: nobody waits there any more
                pass

    def _commit(self, batch: list[_Pending[Any]]) -> None:
        live = [p for p in batch if p.future.set_running_or_notify_cancel()]
        if not live:
            return
        if len(live) > 1:
            results: list[Any] = []
            try:
                with self.sessions() as session:
                    uow = SqlUnitOfWork(session)
                    for p in live:
                        results.append(p.job(uow))
                    uow.commit()
                self.batches += 1
            except Exception:  # noqa: BLE001 - some job or the commit failed: one by one, below
                log.info("group commit of %d jobs failed; running them one by one", len(live), exc_info=True)
            else:
                for p, result in zip(live, results, strict=True):
                    p.future.set_result(result)
                return
        for p in live:
            self._alone(p)

    def _alone(self, p: _Pending[Any]) -> None:
        for attempt in (1, 2):
            try:
                with self.sessions() as session:
                    uow = SqlUnitOfWork(session)
                    result = p.job(uow)
                    uow.commit()
                self.batches += 1
            except IntegrityError as exc:
                if attempt == 2:
                    p.future.set_exception(exc)
                continue
            except Exception as exc:  # noqa: BLE001 - the job's own failure is its caller's answer
                p.future.set_exception(exc)
                return
            p.future.set_result(result)
            return
