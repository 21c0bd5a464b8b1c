"""One message through one stage, the same way in both runtimes: the runtime owns every
transaction, the stage only decides (see ``hotline.kernel.stage``).

    handle ──commit──▶ act (no transaction) ──▶ done / failed ──commit──▶ outputs

``finish`` is the runtime's part of the last transaction: the embedded runtime writes
the outputs to its bus table and advances its consumer position there (one commit for
all of it); the Kafka runtime writes nothing and produces the outputs after the commit.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from sqlalchemy.orm import Session, sessionmaker

from hotline.kernel.failures import FailureHistory, Park
from hotline.kernel.messages import REJECTED, Outgoing
from hotline.kernel.parking import park
from hotline.kernel.ports import UnitOfWork
from hotline.kernel.stage import RetryLater, SideEffect, Stage, run_stage
from hotline.storage.unit_of_work import SqlUnitOfWork

log = logging.getLogger(__name__)

Finish = Callable[[UnitOfWork, list[Outgoing]], None]


def _nothing(uow: UnitOfWork, outgoing: list[Outgoing]) -> None:
    return None


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


def keep_rejections(uow: SqlUnitOfWork, out: list[Outgoing]) -> None:
    """The operators' copy of every ``reports.rejected`` message a stage produced (bad input, a
    parked message), in the stage's transaction: every stage's output passes here on either
    runtime, so the operators' page (services/operations) misses none."""
    for o in out:
        if o.topic == REJECTED:
            uow.rejections.record(o.message)


class StepRunner:
    def __init__(self, stage: Stage, sessions: sessionmaker[Session]) -> None:
        self.stage = stage
        self.sessions = sessions

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
