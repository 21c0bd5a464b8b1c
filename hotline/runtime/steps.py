"""One message through one stage, the same way in both runtimes: the runtime owns every
transaction, the stage only decides (see ``hotline.kernel.stage``).

    handle ──commit──▶ act (no transaction) ──▶ done / failed ──commit──▶ outputs

``finish`` is the runtime's part of the last transaction: the embedded runtime writes
the outputs to its bus table and advances its consumer position there (one commit for
all of it); the Kafka runtime writes nothing and produces the outputs after the commit.

``process_batch`` runs several messages of a ``batchable`` stage through one transaction:

    handle m1, handle m2, ... ──commit (with finish for the last)──▶ outputs of all

until a message returns a ``SideEffect``: what has accumulated commits together with its
reservation, it acts and is recorded as above, and the batch goes on in a new transaction.
Any error rolls the open transaction back whole; the messages before the failing one are
processed again one at a time (``process``) and the failing one is handed back to the
runtime as a failed attempt, which its failure policy retries alone (or parks).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from sqlalchemy.orm import Session, sessionmaker

from hotline.kernel.failures import FailureHistory, Park
from hotline.kernel.messages import REJECTED, InvalidMessage, Outgoing, decode
from hotline.kernel.parking import park
from hotline.kernel.ports import UnitOfWork
from hotline.kernel.stage import RetryLater, SideEffect, Stage, run_stage
from hotline.storage.unit_of_work import SqlUnitOfWork

log = logging.getLogger(__name__)

Finish = Callable[[UnitOfWork, list[Outgoing]], None]


def _nothing(uow: UnitOfWork, outgoing: list[Outgoing]) -> None:
    return None


def _finish_nothing(index: int) -> Finish:
    return _nothing


@dataclass
class BatchOutcome:
    """What ``process_batch`` did: ``outputs`` holds, in order, what each message of a prefix
    of the batch produced (all of them committed); ``error``, when set, is why the next
    message is not done: one failed attempt at it (in the batch, rolled back whole; or alone,
    leaving what its own attempt would have left, such as a side effect's reservation). The
    runtime retries it alone under its failure policy; the messages after it were not done."""

    outputs: list[list[Outgoing]] = field(default_factory=list)
    error: Exception | None = None

    def flat(self) -> list[Outgoing]:
        return [o for out in self.outputs for o in out]


class _SegmentFailed(Exception):
    """A batch's open transaction failed at message ``index`` (rolled back)."""

    def __init__(self, index: int, cause: Exception) -> None:
        super().__init__(f"message {index} of the batch failed: {cause!r}")
        self.index = index
        self.cause = cause


class RetryRequested(Exception):
    """A side effect failed in a way its stage recorded and wants retried (``RetryLater``);
    the runtime applies the failure policy to ``error``."""

    def __init__(self, error: BaseException, after_seconds: float | None) -> None:
        super().__init__(f"retry requested after {type(error).__name__}: {error}")
        self.error = error
        self.after_seconds = after_seconds


def failure_of(exc: BaseException) -> BaseException:
    """The error the failure policy judges (the stage's own, for a requested retry)."""
    return exc.error if isinstance(exc, RetryRequested) else exc


def after_failure(history: FailureHistory, exc: BaseException) -> float:
    """Record a failed attempt at the current message and return how long to wait before
    the next one, which parks the message when ``history.decision`` says so (then at once).
    A failure while parking (the database is down?) is an outage of its own: the next
    attempt parks again after a pause, the history stays as it was."""
    if isinstance(history.decision, Park):
        return history.policy.max_delay_seconds / 10
    decision = history.record(failure_of(exc))
    if isinstance(decision, Park):
        return 0.0
    hint = exc.after_seconds if isinstance(exc, RetryRequested) else None
    return hint if hint is not None else decision.delay_seconds


def in_flight_of(stage: Stage, default: int) -> int:
    """How many messages an overlapping stage works on at once in one process: the stage's own
    number when it has one (notify: ``HOTLINE_NOTIFY_IN_FLIGHT``, set by the bootstrap), else
    ``default`` (``HOTLINE_STAGE_IN_FLIGHT``)."""
    own = getattr(stage, "in_flight", None)
    return own if isinstance(own, int) and own > 0 else default


def keep_rejections(uow: SqlUnitOfWork, out: list[Outgoing]) -> None:
    """The operators' copy of every ``reports.rejected`` message a stage produced (bad input, a
    parked message), in the stage's transaction: every stage's output passes here on either
    runtime, so the operators' page (services/operations) misses none."""
    for o in out:
        if o.topic == REJECTED:
            uow.rejections.record(o.message)


class StepRunner:
    def __init__(
        self, stage: Stage, sessions: sessionmaker[Session], max_transaction_seconds: float | None = None
    ) -> None:
        self.stage = stage
        self.sessions = sessions
        # A batch's transaction takes no further message once it has been open this long (None:
        # no bound): on SQLite it holds the one write lock, which web requests wait for.
        self.max_transaction_seconds = max_transaction_seconds

    def process(self, topic: str, raw: bytes | str, finish: Finish = _nothing) -> list[Outgoing]:
        """Handle one message and commit; return what it produced. Raises on failure (after
        rolling back), ``RetryRequested`` when a side effect asked for a retry."""
        with self.sessions() as session:
            uow = SqlUnitOfWork(session)
            try:
                result = run_stage(self.stage, topic, raw, uow)
                if not isinstance(result, SideEffect):
                    keep_rejections(uow, result)
                    finish(uow, result)
                    uow.commit()
                    return result
                uow.commit()  # the reservation is durable before anything leaves the machine
            except BaseException:
                uow.rollback()
                raise
        return self._act_and_record(result, finish)

    def process_batch(
        self,
        messages: Sequence[tuple[str, bytes | str]],
        finish_for: Callable[[int], Finish] = _finish_nothing,
    ) -> BatchOutcome:
        """Handle ``messages`` (topic, raw) in as few transactions as their results allow.

        ``finish_for(i)`` is the runtime's part of a commit whose last message is ``messages[i]``
        (it gets the outputs of every message that commit completes, in order). Never raises
        for a failing message: the outcome says how far it got and why it stopped, so the
        runtime can acknowledge the done prefix and apply its failure policy to the next one.
        """
        outcome = BatchOutcome()
        n = len(messages)
        while len(outcome.outputs) < n:
            start = len(outcome.outputs)
            try:
                outs, effect = self._segment(messages, start, finish_for)
            except _SegmentFailed as failed:
                log.info("stage %s: batch failed at message %d (%r); one at a time from message %d",
                         self.stage.name, failed.index, failed.cause, start)
                # Invalid input is no failure: alone, ``run_stage`` turns it into a rejection.
                # Any other error was the failing message's attempt: the runtime's failure
                # policy counts it and retries that message alone (the ones before it are
                # done alone here first, as they would have been without batching).
                last = failed.index if isinstance(failed.cause, InvalidMessage) else failed.index - 1
                for i in range(start, last + 1):
                    topic, raw = messages[i]
                    try:
                        outcome.outputs.append(self.process(topic, raw, finish_for(i)))
                    except Exception as exc:  # noqa: BLE001 - the runtime's failure policy judges it
                        outcome.error = exc
                        return outcome
                if last < failed.index:
                    outcome.error = failed.cause
                    return outcome
                continue
            outcome.outputs.extend(outs)
            if effect is None:
                continue
            index = start + len(outs)
            try:
                outcome.outputs.append(self._act_and_record(effect, finish_for(index)))
            except Exception as exc:  # noqa: BLE001 - the reservation is committed; as ``process`` raising
                outcome.error = exc
                return outcome
        return outcome

    def _segment(
        self, messages: Sequence[tuple[str, bytes | str]], start: int, finish_for: Callable[[int], Finish]
    ) -> tuple[list[list[Outgoing]], SideEffect | None]:
        """Handle messages from ``start`` in one transaction until the end of the batch or a
        side effect; commit their outputs (and the side effect's reservation) once."""
        outs: list[list[Outgoing]] = []
        effect: SideEffect | None = None
        index = start
        opened = time.monotonic()
        with self.sessions() as session:
            uow = SqlUnitOfWork(session)
            try:
                while index < len(messages):
                    limit = self.max_transaction_seconds
                    if outs and limit is not None and time.monotonic() - opened >= limit:
                        break  # commit these; the rest of the batch in the next transaction
                    topic, raw = messages[index]
                    try:
                        # decode and handle, not ``run_stage``: its rejection path rolls the
                        # unit of work back, which here would take the whole batch with it.
                        # Invalid input fails the batch instead and ``process`` rejects it alone.
                        result = self.stage.handle(topic, decode(topic, raw), uow)
                    except Exception as exc:  # noqa: BLE001 - the batch falls back to one at a time
                        raise _SegmentFailed(index, exc) from exc
                    if isinstance(result, SideEffect):
                        effect = result
                        break
                    outs.append(result)
                    index += 1
                try:
                    if outs:
                        flat = [o for out in outs for o in out]
                        keep_rejections(uow, flat)
                        finish_for(start + len(outs) - 1)(uow, flat)
                    uow.commit()  # with a side effect: its reservation is durable before it acts
                except Exception as exc:  # noqa: BLE001
                    raise _SegmentFailed(index if effect is not None else index - 1, exc) from exc
            except BaseException:
                uow.rollback()
                raise
        return outs, effect

    def _act_and_record(self, effect: SideEffect, finish: Finish) -> list[Outgoing]:
        value: object = None
        error: Exception | None = None
        try:
            value = effect.act()
        except Exception as exc:  # noqa: BLE001 - the stage's ``failed`` step judges it
            error = exc
        with self.sessions() as session:
            uow = SqlUnitOfWork(session)
            try:
                recorded = effect.done(uow, value) if error is None else effect.failed(uow, error)
                if isinstance(recorded, RetryLater):
                    uow.commit()
                    raise RetryRequested(recorded.error, recorded.after_seconds) from recorded.error
                keep_rejections(uow, recorded)
                finish(uow, recorded)
                uow.commit()
                return recorded
            except RetryRequested:
                raise
            except BaseException:
                uow.rollback()
                raise

    def park(self, topic: str, raw: bytes | str, exc: BaseException, why: str, finish: Finish = _nothing) -> list[Outgoing]:
        """Give up on the message (the policy said so): record it as rejected, return the rejection."""
        with self.sessions() as session:
            uow = SqlUnitOfWork(session)
            out = park(self.stage.name, topic, raw, uow, exc, why)
            keep_rejections(uow, out)
            finish(uow, out)
            uow.commit()
            return out
