"""Embedded runtime: every stage in one process, topics as a table in the same database.

Why a table and not ``queue.Queue``: a stage's state changes, the messages it
produces and its consumer position are committed in *one* transaction, so a
crash at any point neither loses a report nor repeats a side effect, and a
restarted process continues where it stopped. One thread per stage, so a slow
fetch in classify never holds up notices.

A ``batchable`` stage (``hotline.kernel.stage``) reads up to ``batch_size`` messages past
its position in one query and handles them in one transaction, the position advanced to
the last of them in the same commit (``StepRunner.process_batch``; a transaction takes no
more messages after ``batch_max_seconds``, so the one SQLite writer lock is not held long
while web requests wait); while a message keeps failing, the stage goes one message at a
time, so retries and parking concern that one.

An ``overlapping`` stage (classify, notify) in a process of its own (``hotline serve --stage
NAME``, ``in_flight`` > 1: ``HOTLINE_STAGE_IN_FLIGHT``, notify's ``HOTLINE_NOTIFY_IN_FLIGHT``)
gets a window of that many messages at once, each handled in its own transactions on a thread
of a pool, messages with the same key (or what the stage says must go in order, notify: one
item's notices) one after another; a place that comes free takes the next message at once
(sliding, not a window waited for as a whole). Exactly once still: a
message's last transaction records it as done (a row of consumer ``<stage>#done``) and moves
the position over every done message in front of it, so the position never passes a message
still in progress, a crash leaves the done ones marked (they are never handled again) and the
others to do. In the one process of plain ``hotline serve`` the stages do not overlap: there
the threads would share one interpreter with every other stage (measured slower).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait

from sqlalchemy import Engine, Table, delete, func, insert, select, update
from sqlalchemy.orm import Session, sessionmaker

from hotline.kernel.failures import FailureHistory, FailurePolicy, Park
from hotline.kernel.messages import Outgoing
from hotline.kernel.ports import UnitOfWork
from hotline.kernel.stage import Periodic, Stage, batchable, order_check, overlapping, quiet_check
from hotline.runtime.periodic import PeriodicRunner
from hotline.runtime.steps import Finish, StepRunner, after_failure, failure_of
from hotline.storage.models import BusMessage, BusOffset
from hotline.storage.unit_of_work import SqlUnitOfWork

log = logging.getLogger(__name__)

# Messages read at once for a stage with quiet inputs: runs of quiet ones are passed over in
# one read, and a needed one found early wastes no more than this many rows read.
QUIET_READ = 32

_MESSAGES: Table = BusMessage.__table__  # type: ignore[assignment]
_OFFSETS: Table = BusOffset.__table__  # type: ignore[assignment]


class EmbeddedRuntime:
    def __init__(
        self,
        sessions: sessionmaker[Session],
        stages: Sequence[Stage],
        poll_seconds: float = 0.05,
        policy: FailurePolicy | None = None,
        periodic: Sequence[Periodic] = (),
        batch_size: int = 100,
        batch_max_seconds: float | None = 0.25,
        yield_to: Callable[[], bool] | None = None,
        yield_max_seconds: float = 0.0,
        in_flight: int = 1,
    ) -> None:
        self.sessions = sessions
        self.stages = list(stages)
        # Timed work (the follow-up scheduler), each in a thread of its own; see runtime.periodic.
        self.periodic = [PeriodicRunner(sessions, task) for task in periodic]
        self.poll_seconds = poll_seconds
        # Messages per transaction for a batchable stage (HOTLINE_BATCH_SIZE); 1 = one each.
        self.batch_size = max(1, batch_size)
        # ... and a batch's transaction stays open at most about this long (SQLite has one
        # writer: the web's submissions wait for it); None: no bound.
        self.batch_max_seconds = batch_max_seconds
        # Stages defer their next step while ``yield_to()`` is true, at most this long in a row
        # (HOTLINE_EMBEDDED_YIELD_SECONDS; 0 or no ``yield_to``: never).
        self.yield_to = yield_to
        self.yield_max_seconds = yield_max_seconds
        # Per stage: the longest run of deferral so far, and how many steps were deferred.
        self.longest_deferral: dict[str, float] = {}
        self.deferrals: dict[str, int] = {}
        self.policy = policy or FailurePolicy(first_delay_seconds=0.2)
        # Messages an overlapping stage works on at once (module docstring); 1 = one at a time.
        self.in_flight = max(1, in_flight)
        self._pool: ThreadPoolExecutor | None = None
        self._windows: dict[str, _Window] = {}
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self.errors: dict[str, str] = {}

    def start(self) -> None:
        self._stop.clear()
        for stage in self.stages:
            t = threading.Thread(target=self._loop, args=(stage,), name=f"stage-{stage.name}", daemon=True)
            t.start()
            self._threads.append(t)
        for runner in self.periodic:
            runner.start()

    def stop(self, timeout: float = 10.0) -> None:
        for runner in self.periodic:
            runner.stop(timeout)
        self._stop.set()
        for t in self._threads:
            t.join(timeout)
        self._threads.clear()
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None

    def __enter__(self) -> EmbeddedRuntime:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _position(self, session: Session, consumer: str) -> int:
        return int(session.scalar(select(func.max(BusOffset.position)).where(BusOffset.consumer == consumer)) or 0)

    def _next(self, stage: Stage) -> tuple[int, str, str] | None:
        """(bus id, topic, value) of the stage's next message, read in a transaction of its own."""
        batch = self._batch(stage, 1)
        return batch[0] if batch else None

    def _batch(self, stage: Stage, limit: int) -> list[tuple[int, str, str]]:
        """Up to ``limit`` (bus id, topic, value) past the stage's position, in order, one query
        (an overlapping stage's: those not done yet)."""
        return [(i, t, v) for i, t, _, v in self._rows(stage, limit)]

    def _rows(self, stage: Stage, limit: int) -> list[tuple[int, str, str, str]]:
        # One statement, so one snapshot: the position and the done markers are read together
        # (a window's commit moves the one and deletes the other; read apart, a message could
        # look neither passed nor done and be handled twice).
        pos = (select(func.coalesce(func.max(BusOffset.position), 0)).where(BusOffset.consumer == stage.name)
               .scalar_subquery())
        query = (select(BusMessage.id, BusMessage.topic, BusMessage.key, BusMessage.value)
                 .where(BusMessage.id > pos, BusMessage.topic.in_(stage.inputs)))
        if _windowed(stage):  # markers of a run with in_flight > 1 are honoured whatever it is now
            query = query.where(BusMessage.id.not_in(
                select(BusOffset.position).where(BusOffset.consumer == _done(stage))))
        with self.sessions() as session:
            # On the session's connection, past the ORM: plain columns need none of it, and the
            # ORM's per-statement work was most of a poll's cost (issue 13).
            rows = session.connection().execute(query.order_by(BusMessage.id).limit(limit)).all()
            return [(int(r[0]), str(r[1]), str(r[2]), str(r[3])) for r in rows]

    def _finisher(self, stage: Stage, position: int) -> Finish:
        """The runtime's part of the last transaction: outputs to the bus, position advanced
        (an overlapping stage's: the message marked done, the position over the done prefix)."""

        def finish(uow: UnitOfWork, outgoing: list[Outgoing]) -> None:
            uow.enqueue(outgoing)
            assert isinstance(uow, SqlUnitOfWork)
            if self.in_flight > 1 and _windowed(stage):
                self._mark_done(uow.session, stage, position)
                return
            _set_position(uow.session, stage, position)

        return finish

    def _mark_done(self, session: Session, stage: Stage, message_id: int) -> None:
        """Mark ``message_id`` done and move the position over the done messages right after it
        (they may have finished before it, in other threads). The marker's insert comes first:
        it is a write, so on SQLite the transaction holds the one write lock before it reads
        the position and the markers, and no other commit changes them under it. Core
        statements on the session's connection: this runs once per message, and through the
        ORM (an object added and flushed, a position loaded and changed) it was a fifth of
        classify's and notify's CPU (issue 13)."""
        done = _done(stage)
        conn = session.connection()
        conn.execute(insert(_OFFSETS).values(consumer=done, topic=str(message_id), position=message_id))
        pos = 0
        marked: set[int] = set()
        for consumer, position in conn.execute(select(_OFFSETS.c.consumer, _OFFSETS.c.position)
                                               .where(_OFFSETS.c.consumer.in_((stage.name, done)))):
            if consumer == done:
                marked.add(int(position))
            else:
                pos = max(pos, int(position))
        marked = {m for m in marked if m > pos}
        ids = conn.execute(select(_MESSAGES.c.id).where(_MESSAGES.c.id > pos, _MESSAGES.c.topic.in_(stage.inputs))
                           .order_by(_MESSAGES.c.id).limit(len(marked) + 1)).scalars()
        new = pos
        for i in ids:
            if i not in marked:
                break
            new = i
        if new == pos:
            return
        _set_position(session, stage, new)
        conn.execute(delete(_OFFSETS).where(_OFFSETS.c.consumer == done, _OFFSETS.c.position <= new))

    def step(self, stage: Stage, history: FailureHistory | None = None) -> bool:
        """Process one message for ``stage``; False when there was nothing to do. With
        ``history`` holding a decision to park, the message is parked instead. A batchable
        stage gets up to ``batch_size`` messages at once, unless ``history`` says a message
        is failing: then one, so the failure policy judges that one alone."""
        fresh = history is None or len(history) == 0
        if self.in_flight > 1 and _windowed(stage) and fresh:
            return self._step_window(stage)
        if self.batch_size > 1 and batchable(stage) and fresh:
            return self._step_batch(stage)
        nxt = self._next_needed(stage)
        if nxt is None:
            return False
        if isinstance(nxt, int):  # only messages the stage needs nothing of: skipped
            self._advance(stage, nxt)
            return True
        position, topic, value = nxt
        runner = StepRunner(stage, self.sessions)
        finish = self._finisher(stage, position)
        if history is not None and isinstance(history.decision, Park) and history.last_error is not None:
            runner.park(topic, value, history.last_error, history.decision.reason, finish)
        else:
            runner.process(topic, value, finish)
        return True

    def _next_needed(self, stage: Stage) -> tuple[int, str, str] | int | None:
        """The stage's next message it needs (``hotline.kernel.stage`` "Quiet inputs"), read with
        up to ``batch_size`` after it in one query; the quiet ones before it are passed over (its
        commit moves the position past them). The bus id of the last of them when all are quiet
        (the position goes there in one commit); None when there is nothing."""
        if not getattr(stage, "quiet_inputs", None):
            return self._next(stage)
        rows = self._batch(stage, min(self.batch_size, QUIET_READ))
        checks: dict[str, Callable[[bytes | str], bool] | None] = {}
        for row in rows:
            _, topic, value = row
            if topic not in checks:
                checks[topic] = quiet_check(stage, topic)
            check = checks[topic]
            if check is None or not check(value):
                return row
        return rows[-1][0] if rows else None

    def _advance(self, stage: Stage, position: int) -> None:
        with self.sessions() as session:
            uow = SqlUnitOfWork(session)
            try:
                self._finisher(stage, position)(uow, [])
                uow.commit()
            except BaseException:
                uow.rollback()
                raise

    def _step_window(self, stage: Stage) -> bool:
        """Keep up to ``in_flight`` messages in progress (module docstring): take what finished,
        start the next ones into the free places, wait a little for one to finish. A message
        whose key (or order) has one in progress waits for it; later ones of other keys go past.
        After a failure nothing new starts; once the others are finished the first failure (in
        bus order) is raised, so the failure policy judges that message alone. False when
        nothing is in progress and nothing is waiting."""
        window = self._windows.setdefault(stage.name, _Window())
        window.reap()
        if window.errors and not window.running:
            errors, window.errors = window.errors, {}
            raise errors[min(errors)]
        started = 0
        free = self.in_flight - len(window.running)
        if free > 0 and not window.errors:
            busy = {key for _, key in window.running.values()}
            # The ones in progress come first (they are not done), then the candidates.
            for row in self._rows(stage, len(window.running) + 2 * free):
                position, topic, key, value = row
                if position in window.running:
                    continue
                chain = window.chain(stage, position, topic, key, value)
                if chain in busy:
                    continue  # after the one in progress, in order
                busy.add(chain)
                window.running[position] = (self._pool_for(stage).submit(self._one, stage, position, topic, value),
                                            chain)
                started += 1
                free -= 1
                if free == 0:
                    break
        if not window.running:
            return started > 0
        wait([f for f, _ in window.running.values()], timeout=self.poll_seconds, return_when=FIRST_COMPLETED)
        return True

    def _one(self, stage: Stage, position: int, topic: str, value: str) -> None:
        StepRunner(stage, self.sessions).process(topic, value, self._finisher(stage, position))

    def _pool_for(self, stage: Stage) -> ThreadPoolExecutor:
        if self._pool is None:
            self._pool = ThreadPoolExecutor(self.in_flight, thread_name_prefix=f"stage-{stage.name}")
        return self._pool

    def _step_batch(self, stage: Stage) -> bool:
        rows = self._batch(stage, self.batch_size)
        if not rows:
            return False
        runner = StepRunner(stage, self.sessions, self.batch_max_seconds)
        outcome = runner.process_batch(
            [(topic, value) for _, topic, value in rows],
            lambda i: self._finisher(stage, rows[i][0]),
        )
        if outcome.error is not None:
            # The messages before it are committed with their position; this one is next.
            raise outcome.error
        return True

    def _defer(self, stage: Stage, since: float | None) -> float | None:
        """Whether ``stage`` waits instead of stepping now: the moment its current run of
        deferral began (it slept a little), or None (step now: no burst, or the bound is
        reached)."""
        if self.yield_to is None or self.yield_max_seconds <= 0 or not self.yield_to():
            return None
        now = time.monotonic()
        if since is None:
            since = now
            self.deferrals[stage.name] = self.deferrals.get(stage.name, 0) + 1
        waited = now - since
        if waited >= self.yield_max_seconds:
            return None
        self._stop.wait(min(self.poll_seconds, self.yield_max_seconds - waited))
        return since

    def _high_water(self) -> int | None:
        """The bus's last message id, read on a raw connection (tens of microseconds, where a
        stage's read of its next messages through the ORM costs a millisecond or more); None
        when the sessions have no engine to read it from (then every poll reads).

        Why: an idle ``hotline serve`` polled every stage's input every 50 ms and spent a
        quarter of a core doing it (measured, issue 13). A stage that found nothing to do at
        high water ``h`` (read *before* its read of the messages) has nothing to do while the
        bus's last id is still ``h``: messages become visible in id order (module docstring of
        ``hotline.runtime.stage_processes``; on PostgreSQL, ``hotline.storage.unit_of_work``'s
        lock), only the stage moves its own position, and its done markers are its own."""
        bind = self.sessions.kw.get("bind")
        if not isinstance(bind, Engine):
            return None
        raw = bind.raw_connection()
        try:
            cursor = raw.cursor()
            try:
                cursor.execute("SELECT max(id) FROM bus_messages")
                row = cursor.fetchone()
            finally:
                cursor.close()
        finally:
            raw.close()
        return int(row[0] or 0) if row is not None else 0

    def _loop(self, stage: Stage) -> None:
        history = FailureHistory(self.policy)
        deferred_since: float | None = None
        idle_at: int | None = None  # the high water at which the last step found nothing
        while not self._stop.is_set():
            since = self._defer(stage, deferred_since)
            if since is None and deferred_since is not None:
                waited = time.monotonic() - deferred_since
                if waited > self.longest_deferral.get(stage.name, 0.0):
                    self.longest_deferral[stage.name] = waited
                    log.info("stage %s deferred to intake for %.2f s, its longest so far", stage.name, waited)
            deferred_since = since
            if since is not None:
                continue
            try:
                water = self._high_water()
                if idle_at is not None and water == idle_at:
                    self._stop.wait(self.poll_seconds)  # nothing new on the bus since
                    continue
                busy = self.step(stage, history)
                history.reset()
                self.errors.pop(stage.name, None)
                idle_at = None if busy else water
            except Exception as exc:  # noqa: BLE001 - the failure policy decides what happens next
                idle_at = None
                delay = after_failure(history, exc)
                self.errors[stage.name] = repr(failure_of(exc))
                log.warning(
                    "stage %s failed (attempt %d), %s: %r", stage.name, len(history),
                    "parking the message" if isinstance(history.decision, Park) else f"retrying in {delay:.1f}s",
                    failure_of(exc),
                )
                self._stop.wait(delay)
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


class _Window:
    """An overlapping stage's messages in progress: bus id -> (its future, its chain)."""

    def __init__(self) -> None:
        self.running: dict[int, tuple[Future[None], str]] = {}
        self.errors: dict[int, Exception] = {}
        self._orders: dict[str, Callable[[bytes | str], str | None] | None] = {}
        self._chains: dict[int, str] = {}

    def chain(self, stage: Stage, position: int, topic: str, key: str, value: str) -> str:
        """What must go one after another (the stage's order, notify: one item's notices; else the
        key), worked out once per message: a waiting message is looked at on every step."""
        found = self._chains.get(position)
        if found is None:
            if topic not in self._orders:
                self._orders[topic] = order_check(stage, topic)
            order = self._orders[topic]
            by = order(value) if order is not None else None
            found = self._chains[position] = f"order:{by}" if by is not None else f"key:{key or position}"
        return found

    def reap(self) -> None:
        for position, (future, _) in list(self.running.items()):
            if future.done():
                del self.running[position]
                self._chains.pop(position, None)
                error = future.exception()
                if isinstance(error, Exception):
                    self.errors[position] = error
                elif error is not None:
                    raise error


def _set_position(session: Session, stage: Stage, position: int) -> None:
    """The stage's consumer position, in the caller's transaction (Core statements, as in
    ``_mark_done``: once per message or batch)."""
    conn = session.connection()
    moved = conn.execute(update(_OFFSETS).where(_OFFSETS.c.consumer == stage.name, _OFFSETS.c.topic == "*")
                         .values(position=position))
    if moved.rowcount == 0:
        conn.execute(insert(_OFFSETS).values(consumer=stage.name, topic="*", position=position))


def _done(stage: Stage) -> str:
    """The consumer name of an overlapping stage's done markers (``bus_offsets`` rows)."""
    return f"{stage.name}#done"


def _windowed(stage: Stage) -> bool:
    """Whether this runtime works on several of ``stage``'s messages at once when ``in_flight``
    allows (then a stage that is batchable too, notify, is not batched: it overlaps, as on Kafka)."""
    return overlapping(stage)
