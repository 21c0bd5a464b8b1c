"""Stages that batch (issue 13): several messages of a ``batchable`` stage in one transaction,
on both runtimes, with the same effects as one message at a time. What is checked here is
behaviour, never speed: one commit per batch, nothing of a failed batch left half-done, the
failing message alone retried or parked, a side effect reserved before it acts."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from email.message import EmailMessage
from pathlib import Path
from typing import Any, ClassVar

import pytest
from sqlalchemy import event, func, select
from sqlalchemy.orm import Session, sessionmaker

from hotline.kernel.ports import UnitOfWork
from hotline.kernel.stage import Result, batchable
from hotline.runtime.embedded import EmbeddedRuntime
from hotline.runtime.kafka import _process_batch
from hotline.runtime.steps import StepRunner
from hotline.storage.engine import make_engine, make_sessionmaker, migrate
from hotline.storage.models import BusMessage, BusOffset, Item, Report
from hotline.storage.unit_of_work import SqlUnitOfWork
from schemas import Message
from schemas.reports import ReportSubmitted
from services.classify.stage import ClassifyStage
from services.ingest.stage import IngestStage
from services.notify.stage import NotifyStage
from tests.unit.stagekit import make_item, notice_for, notify_stage
from tests.unit.test_parking import (
    FAST,
    _App,
    _Produced,
    published,
    report_status,
    submit,
    wait_for,
)

HOSTS = frozenset({"a.test", "b.test"})


@pytest.fixture()
def sessions(tmp_path: Path) -> Iterator[sessionmaker[Session]]:
    url = f"sqlite:///{tmp_path / 'batch.db'}"
    migrate(url)
    engine = make_engine(url)
    yield make_sessionmaker(engine)
    engine.dispose()


class Commits:
    """Counts the commits of every session ``sessions`` makes."""

    def __init__(self, sessions: sessionmaker[Session]) -> None:
        self.count = 0
        event.listen(sessions, "after_commit", self._seen)

    def _seen(self, session: Session) -> None:
        self.count += 1


class TrippingIngest(IngestStage):
    """Ingest that raises on reports whose description is ``trip``: ``times`` attempts, then
    it handles them (``times`` None: always)."""

    name: ClassVar[str] = "ingest"

    def __init__(self, times: int | None = None) -> None:
        super().__init__(operator_hosts=HOSTS)
        self.times = times
        self.attempts = 0

    def handle(self, topic: str, message: Message, uow: UnitOfWork) -> Result:
        assert isinstance(message, ReportSubmitted)
        if message.description == "trip" and (self.times is None or self.attempts < self.times):
            self.attempts += 1
            out = super().handle(topic, message, uow)  # its changes are made, then it fails
            assert out
            raise KeyError("tripped")
        return super().handle(topic, message, uow)


def reports(n: int, trip_at: int | None = None) -> list[ReportSubmitted]:
    return [
        ReportSubmitted(urls=[f"http://a.test/{i}.jpg"], description="trip" if i == trip_at else None)
        for i in range(n)
    ]


def raw(messages: list[ReportSubmitted]) -> list[tuple[str, bytes | str]]:
    return [("reports.submitted", m.model_dump_json()) for m in messages]


def count(sessions: sessionmaker[Session], model: Any) -> int:
    with sessions() as s:
        return int(s.scalar(select(func.count()).select_from(model)) or 0)


def test_the_stages_that_say_so_batch() -> None:
    assert batchable(IngestStage()) and batchable(notify_stage(object()))
    assert NotifyStage.batchable and not getattr(ClassifyStage, "batchable", False)


def test_a_batch_of_plain_outputs_commits_once_in_order(sessions: sessionmaker[Session]) -> None:
    msgs = reports(20)
    commits = Commits(sessions)
    outcome = StepRunner(IngestStage(operator_hosts=HOSTS), sessions).process_batch(raw(msgs))
    assert commits.count == 1
    assert outcome.error is None and len(outcome.outputs) == 20
    # One output per report, in the reports' order.
    assert [o.message.url for o in outcome.flat()] == [f"http://a.test/{i}.jpg" for i in range(20)]  # type: ignore[attr-defined]
    assert count(sessions, Item) == 20
    assert all(report_status(sessions, m.report_id)[0] == "accepted" for m in msgs)


def test_a_batch_transaction_is_bounded_in_time(sessions: sessionmaker[Session]) -> None:
    """With a bound of 0 s every transaction closes after its first message: still the
    whole batch done, in order, each message committed once."""
    msgs = reports(5)
    commits = Commits(sessions)
    runner = StepRunner(IngestStage(operator_hosts=HOSTS), sessions, max_transaction_seconds=0.0)
    outcome = runner.process_batch(raw(msgs))
    assert outcome.error is None and commits.count == 5
    assert [o.message.url for o in outcome.flat()] == [f"http://a.test/{i}.jpg" for i in range(5)]  # type: ignore[attr-defined]
    assert count(sessions, Item) == 5


def test_two_reports_of_one_url_in_one_batch_make_one_item(sessions: sessionmaker[Session]) -> None:
    """The second message sees the first one's uncommitted item (same transaction)."""
    same = [ReportSubmitted(urls=["http://a.test/same.jpg"]) for _ in range(3)]
    outcome = StepRunner(IngestStage(operator_hosts=HOSTS), sessions).process_batch(raw(same))
    assert outcome.error is None
    assert [o.topic for o in outcome.flat()] == ["items.accepted"]
    assert count(sessions, Item) == 1


def test_a_failure_in_message_k_leaves_nothing_half_done(sessions: sessionmaker[Session]) -> None:
    """Message 3 of 8 fails: the batch is rolled back whole (the failing attempt's changes
    too), messages 0-2 are then done one at a time, message 3 handed back as one failed
    attempt (for the runtime's failure policy), 4-7 untouched for the runtime to carry on."""
    msgs = reports(8, trip_at=3)
    stage = TrippingIngest()
    outcome = StepRunner(stage, sessions).process_batch(raw(msgs))
    assert isinstance(outcome.error, KeyError)
    assert len(outcome.outputs) == 3
    assert stage.attempts == 1  # one attempt, in the batch: the runtime retries it alone
    with sessions() as s:
        assert s.get(Report, msgs[3].report_id) is None  # nothing of the failing message
        assert {r.id for r in s.scalars(select(Report))} == {m.report_id for m in msgs[:3]}
    assert count(sessions, Item) == 3


def test_a_message_that_fails_once_in_a_batch_is_done_once_with_the_others(sessions: sessionmaker[Session]) -> None:
    msgs = reports(8, trip_at=5)
    stage = TrippingIngest(times=1)
    runner = StepRunner(stage, sessions)
    outcome = runner.process_batch(raw(msgs))
    assert isinstance(outcome.error, KeyError) and len(outcome.outputs) == 5
    # What a runtime does next: the failing message alone, then a batch of the rest.
    outcome.outputs.append(runner.process(*raw(msgs)[5]))
    rest = runner.process_batch(raw(msgs)[6:])
    assert rest.error is None
    outcome.outputs.extend(rest.outputs)
    assert [o.message.url for o in outcome.flat()] == [f"http://a.test/{i}.jpg" for i in range(8)]  # type: ignore[attr-defined]
    assert count(sessions, Item) == 8
    assert all(report_status(sessions, m.report_id)[0] == "accepted" for m in msgs)


def test_invalid_input_in_a_batch_is_rejected_alone(sessions: sessionmaker[Session]) -> None:
    msgs = raw(reports(4))
    msgs.insert(2, ("reports.submitted", '{"report_id": "r-broken", "urls": "not a list"}'))
    outcome = StepRunner(IngestStage(operator_hosts=HOSTS), sessions).process_batch(msgs)
    assert outcome.error is None and len(outcome.outputs) == 5
    assert [o.topic for o in outcome.outputs[2]] == ["reports.rejected"]
    assert count(sessions, Item) == 4


# ------------------------------------------------------------------ side effects in a batch


class CheckingMailer:
    """Looks, in a session of its own, at what is committed when it is asked to send."""

    def __init__(self, sessions: sessionmaker[Session]) -> None:
        self.sessions = sessions
        self.seen: list[tuple[str, str | None]] = []  # (message-id, its notice's committed status)

    def send(self, message: EmailMessage) -> None:
        with self.sessions() as s:
            notice_id = str(message["Message-ID"]).strip("<>").split("@")[0]
            status = SqlUnitOfWork(s).notices.get(notice_id)
            self.seen.append((notice_id, status.status if status else None))


def test_a_side_effect_in_a_batch_is_reserved_before_it_acts(sessions: sessionmaker[Session]) -> None:
    with sessions() as s:
        uow = SqlUnitOfWork(s)
        items = [make_item(uow, "notice_queued") for _ in range(3)]
    notices = [notice_for(i) for i in items]
    mailer = CheckingMailer(sessions)
    runner = StepRunner(notify_stage(mailer), sessions)
    first = runner.process_batch([("notices.ntd", notices[0].model_dump_json())])
    assert first.error is None and len(mailer.seen) == 1
    # A batch: a redelivery of the sent notice (bookkeeping), two new ones (e-mails), the
    # redelivery again.
    batch = [notices[0], notices[1], notices[2], notices[0]]
    commits = Commits(sessions)
    outcome = runner.process_batch([("notices.ntd", n.model_dump_json()) for n in batch])
    assert outcome.error is None
    assert [[getattr(o.message, "kind", None) for o in out] for out in outcome.outputs] == [["sent"]] * 4
    # Each e-mail found its notice committed "sending" when it went, and went once.
    assert mailer.seen[1:] == [(notices[1].notice_id, "sending"), (notices[2].notice_id, "sending")]
    # reserve(+bookkeeping before it), record; reserve, record; the last bookkeeping.
    assert commits.count == 5
    with sessions() as s:
        uow = SqlUnitOfWork(s)
        assert [uow.notices.get(n.notice_id).status for n in notices] == ["sent"] * 3  # type: ignore[union-attr]


# ------------------------------------------------------------------ embedded runtime


def position(sessions: sessionmaker[Session], consumer: str) -> int:
    with sessions() as s:
        return int(s.scalar(select(func.max(BusOffset.position)).where(BusOffset.consumer == consumer)) or 0)


def test_embedded_reads_a_batch_and_advances_its_position_in_the_same_commit(sessions: sessionmaker[Session]) -> None:
    for m in reports(30):
        submit(sessions, m)
    runtime = EmbeddedRuntime(sessions, [IngestStage(operator_hosts=HOSTS)], batch_size=25, batch_max_seconds=None)
    commits = Commits(sessions)
    assert runtime.step(runtime.stages[0])
    assert commits.count == 1
    with sessions() as s:
        ids = list(s.scalars(select(BusMessage.id).where(BusMessage.topic == "reports.submitted").order_by(BusMessage.id)))
    assert position(sessions, "ingest") == ids[24]
    assert len(published(sessions, "items.accepted")) == 25
    assert runtime.step(runtime.stages[0]) and position(sessions, "ingest") == ids[-1]
    assert not runtime.step(runtime.stages[0])
    assert commits.count == 2


def test_embedded_with_batch_size_one_commits_per_message(sessions: sessionmaker[Session]) -> None:
    for m in reports(3):
        submit(sessions, m)
    runtime = EmbeddedRuntime(sessions, [IngestStage(operator_hosts=HOSTS)], batch_size=1)
    commits = Commits(sessions)
    while runtime.step(runtime.stages[0]):
        pass
    assert commits.count == 3


def test_embedded_parks_the_failing_message_of_a_batch_alone(sessions: sessionmaker[Session]) -> None:
    msgs = reports(12, trip_at=4)
    for m in msgs:
        submit(sessions, m)
    stage = TrippingIngest()
    with EmbeddedRuntime(sessions, [stage], poll_seconds=0.01, policy=FAST, batch_size=50) as runtime:
        assert wait_for(lambda: len(published(sessions, "reports.rejected")) == 1), runtime.errors
        assert runtime.wait_idle(10)
    # Every other report once, the failing one parked (its own failures, not the batch's).
    accepted = published(sessions, "items.accepted")
    assert len(accepted) == 11
    assert sorted(report_status(sessions, m.report_id)[0] for m in msgs) == ["accepted"] * 11 + ["rejected"]
    assert stage.attempts == FAST.max_failures  # once in the batch, then alone until parked
    assert count(sessions, Item) == 11


# ------------------------------------------------------------------ Kafka runtime


class _Tp:
    pass


class _Message:
    def __init__(self, tp: _Tp) -> None:
        self.tp = tp


class _Event:
    def __init__(self, value: bytes, tp: _Tp) -> None:
        self.value = value
        self.message = _Message(tp)


class _Manual:
    def __init__(self) -> None:
        self.acked: list[_Event] = []

    async def ack(self, e: _Event) -> bool:
        self.acked.append(e)
        return True


def test_kafka_batch_delivers_then_acks_and_takes_the_failing_event_alone(sessions: sessionmaker[Session]) -> None:
    """The Kafka worker's batch step (what the agent awaits per ``noack_take`` batch), with a
    real StepRunner: outputs of the done events produced in order before their acks; the
    failing event retried alone under the policy and parked; the ones after it done too."""
    tp = _Tp()
    msgs = reports(6, trip_at=2)
    events = [_Event(m.model_dump_json().encode(), tp) for m in msgs]
    produced: dict[str, _Produced] = {}
    manual = _Manual()
    stage = TrippingIngest()
    asyncio.run(_process_batch(_App(tp), "reports.submitted", "ingest", StepRunner(stage, sessions),  # type: ignore[arg-type]
                               lambda t: produced.setdefault(t, _Produced()), manual, events, FAST))
    assert manual.acked == events  # every event acked, in order, the parked one too
    assert len(produced["items.accepted"].sent) == 5
    assert len(produced["reports.rejected"].sent) == 1
    assert report_status(sessions, msgs[2].report_id)[0] == "rejected"
    assert count(sessions, Item) == 5


def test_kafka_batch_outputs_in_event_order(sessions: sessionmaker[Session]) -> None:
    tp = _Tp()
    msgs = reports(10)
    events = [_Event(m.model_dump_json().encode(), tp) for m in msgs]
    produced: dict[str, _Produced] = {}
    manual = _Manual()
    commits = Commits(sessions)
    asyncio.run(_process_batch(_App(tp), "reports.submitted", "ingest",  # type: ignore[arg-type]
                               StepRunner(IngestStage(operator_hosts=HOSTS), sessions),
                               lambda t: produced.setdefault(t, _Produced()), manual, events))
    assert commits.count == 1 and manual.acked == events
    urls = [v for _, v in produced["items.accepted"].sent]
    assert [u.decode().split('"url":"')[1].split('"')[0] for u in urls] == [f"http://a.test/{i}.jpg" for i in range(10)]
