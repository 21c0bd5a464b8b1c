"""A message that keeps failing for a reason other than an outage must not stop its stage:
it is parked (rejected with the error, its item put before an analyst), while outages
(SMTP, network, database) are retried for as long as they last. Both runtimes decide
through the one policy (``hotline.kernel.failures``); each is shown here to park a bug
that follows five outages."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from pathlib import Path
from typing import ClassVar

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from hotline.kernel.failures import FailurePolicy
from hotline.kernel.messages import Outgoing
from hotline.kernel.parking import park
from hotline.kernel.ports import UnitOfWork
from hotline.kernel.stage import Result
from hotline.kernel.states import ItemState
from hotline.runtime.embedded import EmbeddedRuntime
from hotline.runtime.kafka import _process_until_done
from hotline.runtime.steps import StepRunner
from hotline.storage.engine import make_engine, make_sessionmaker, migrate
from hotline.storage.memory import MemoryUnitOfWork
from hotline.storage.models import BusMessage
from hotline.storage.unit_of_work import SqlUnitOfWork
from schemas import Message
from schemas.items import ItemAccepted
from schemas.reports import ReportSubmitted
from services.ingest.stage import IngestStage

FAST = FailurePolicy(max_failures=5, first_delay_seconds=0.001, max_delay_seconds=0.01)


@pytest.fixture()
def sessions(tmp_path: Path) -> sessionmaker[Session]:
    url = f"sqlite:///{tmp_path / 'park.db'}"
    migrate(url)
    return make_sessionmaker(make_engine(url))


class FlakyIngest(IngestStage):
    """Ingest that trips over reports whose description says so: ``errors`` in turn, the
    last one forever."""

    name: ClassVar[str] = "ingest"

    def __init__(self, *errors: Callable[[], Exception]) -> None:
        super().__init__(operator_hosts=frozenset({"a.test", "b.test"}))
        self.errors = list(errors) or [lambda: KeyError("tripped")]
        self.attempts = 0

    def handle(self, topic: str, message: Message, uow: UnitOfWork) -> Result:
        assert isinstance(message, ReportSubmitted)
        if message.description == "trip":
            self.attempts += 1
            raise self.errors[min(self.attempts, len(self.errors)) - 1]()
        return super().handle(topic, message, uow)


def outages_then_bug(outages: int) -> FlakyIngest:
    return FlakyIngest(*([lambda: ConnectionRefusedError("smtp down")] * outages), lambda: ValueError("a bug"))


def submit(sessions: sessionmaker[Session], report: ReportSubmitted) -> None:
    with sessions() as s:
        uow = SqlUnitOfWork(s)
        uow.enqueue([Outgoing("reports.submitted", report)])
        uow.commit()


def published(sessions: sessionmaker[Session], topic: str) -> list[str]:
    with sessions() as s:
        return list(s.scalars(select(BusMessage.value).where(BusMessage.topic == topic).order_by(BusMessage.id)))


def wait_for(predicate: Callable[[], bool], timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.02)
    return False


def report_status(sessions: sessionmaker[Session], report_id: str) -> tuple[str, str]:
    with sessions() as s:
        report = SqlUnitOfWork(s).reports.get(report_id)
        assert report is not None
        return report.status, report.reason or ""


# ------------------------------------------------------------------ embedded runtime


def test_a_message_that_keeps_failing_is_parked_and_the_stage_moves_on(sessions: sessionmaker[Session]) -> None:
    stage = FlakyIngest()
    bad = ReportSubmitted(urls=["http://a.test/x.jpg"], description="trip")
    good = ReportSubmitted(urls=["http://b.test/y.jpg"])
    submit(sessions, bad)
    submit(sessions, good)
    with EmbeddedRuntime(sessions, [stage], poll_seconds=0.01, policy=FAST) as runtime:
        assert wait_for(lambda: len(published(sessions, "items.accepted")) == 1), runtime.errors
        assert runtime.wait_idle(5)
    assert stage.attempts == FAST.max_failures
    rejected = published(sessions, "reports.rejected")
    assert len(rejected) == 1
    assert '"reason_code":"processing_failed"' in rejected[0]
    assert "KeyError" in rejected[0] and bad.report_id in rejected[0]
    status, reason = report_status(sessions, bad.report_id)
    assert status == "rejected" and "failed 5 times" in reason


def test_an_outage_is_retried_not_parked(sessions: sessionmaker[Session]) -> None:
    stage = FlakyIngest(lambda: ConnectionRefusedError("smtp down"))
    submit(sessions, ReportSubmitted(urls=["http://a.test/x.jpg"], description="trip"))
    with EmbeddedRuntime(sessions, [stage], poll_seconds=0.01, policy=FAST):
        assert wait_for(lambda: stage.attempts >= FAST.max_failures + 3)
    assert published(sessions, "reports.rejected") == []


def test_embedded_parks_a_bug_after_five_outages(sessions: sessionmaker[Session]) -> None:
    stage = outages_then_bug(5)
    bad = ReportSubmitted(urls=["http://a.test/x.jpg"], description="trip")
    submit(sessions, bad)
    with EmbeddedRuntime(sessions, [stage], poll_seconds=0.01, policy=FAST) as runtime:
        assert wait_for(lambda: len(published(sessions, "reports.rejected")) == 1), runtime.errors
        assert runtime.wait_idle(5)
    # Five outages, then the bug five times: parked, the stage's position moved past it.
    assert stage.attempts == 5 + FAST.max_failures
    rejected = published(sessions, "reports.rejected")
    assert "ValueError: a bug" in rejected[0]
    assert report_status(sessions, bad.report_id)[0] == "rejected"


# ------------------------------------------------------------------ Kafka runtime


class _Consumer:
    def __init__(self, tp: object) -> None:
        self.tp = tp

    def assignment(self) -> set[object]:
        return {self.tp}


class _App:
    """What ``_process_until_done`` needs of a faust app: the partitions it still owns."""

    def __init__(self, tp: object) -> None:
        self.consumer = _Consumer(tp)


class _Produced:
    """Stands in for a faust topic: records what was produced, delivered at once."""

    def __init__(self) -> None:
        self.sent: list[tuple[bytes, bytes]] = []

    async def send(self, key: bytes, value: bytes, force: bool) -> asyncio.Future[None]:
        self.sent.append((key, value))
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        fut.set_result(None)
        return fut


def test_kafka_worker_parks_a_bug_after_five_outages(sessions: sessionmaker[Session]) -> None:
    """The Kafka worker's event loop (the same function faust's agent awaits per event),
    with a real StepRunner on the database: it parks through the same policy."""
    stage = outages_then_bug(5)
    report = ReportSubmitted(urls=["http://a.test/x.jpg"], description="trip")
    produced: dict[str, _Produced] = {}

    def output_topic(name: str) -> _Produced:
        return produced.setdefault(name, _Produced())

    tp = ("reports.submitted", 0)
    done = asyncio.run(
        _process_until_done(
            _App(tp), "reports.submitted", "ingest", StepRunner(stage, sessions),  # type: ignore[arg-type]
            output_topic, report.to_bytes(), tp, policy=FAST,
        )
    )
    assert done is True
    assert stage.attempts == 5 + FAST.max_failures
    assert list(produced) == ["reports.rejected"]
    (key, value), = produced["reports.rejected"].sent
    assert b"ValueError: a bug" in value and report.report_id.encode() in value
    assert report_status(sessions, report.report_id)[0] == "rejected"


def test_kafka_worker_retries_an_outage_until_it_passes(sessions: sessionmaker[Session]) -> None:
    class Recovers(FlakyIngest):
        def handle(self, topic: str, message: Message, uow: UnitOfWork) -> Result:
            if self.attempts >= 12:
                assert isinstance(message, ReportSubmitted)
                return IngestStage.handle(self, topic, message.model_copy(update={"description": None}), uow)
            return super().handle(topic, message, uow)

    stage = Recovers(lambda: ConnectionRefusedError("db down"))
    report = ReportSubmitted(urls=["http://a.test/x.jpg"], description="trip")
    produced: dict[str, _Produced] = {}
    tp = ("reports.submitted", 0)
    done = asyncio.run(
        _process_until_done(
            _App(tp), "reports.submitted", "ingest", StepRunner(stage, sessions),  # type: ignore[arg-type]
            lambda name: produced.setdefault(name, _Produced()), report.to_bytes(), tp, policy=FAST,
        )
    )
    assert done is True and stage.attempts == 12
    assert list(produced) == ["items.accepted"]


# ------------------------------------------------------------------ parking itself


def test_parking_puts_the_item_before_an_analyst() -> None:
    uow = MemoryUnitOfWork()
    item = uow.items.create("http://a.test/x.jpg")
    uow.commit()
    raw = ItemAccepted(item_id=item.id, url=item.url, report_ids=["r1"]).model_dump_json()
    out = park("classify", "items.accepted", raw, uow, ValueError("odd page"), "failed 5 times")
    uow.commit()
    assert [o.topic for o in out] == ["reports.rejected"]
    again = uow.items.get(item.id)
    assert again is not None and again.state == ItemState.AWAITING_ASSESSMENT
    assert "ValueError: odd page" in again.reason and "failed 5 times" in again.reason


def test_parking_leaves_a_final_item_alone() -> None:
    uow = MemoryUnitOfWork()
    item = uow.items.create("http://a.test/x.jpg")
    uow.items.set_state(item, ItemState.CLOSED_OFFLINE, "gone", "classify")
    uow.commit()
    raw = ItemAccepted(item_id=item.id, url=item.url, report_ids=["r1"]).model_dump_json()
    park("classify", "items.accepted", raw, uow, ValueError("odd"), "failed 5 times")
    again = uow.items.get(item.id)
    assert again is not None and again.state == ItemState.CLOSED_OFFLINE


def test_the_step_runner_parks_through_the_same_code(sessions: sessionmaker[Session]) -> None:
    report = ReportSubmitted(urls=["http://a.test/x.jpg"], description="trip")
    out = StepRunner(FlakyIngest(), sessions).park("reports.submitted", report.to_bytes(), KeyError("x"), "failed 5 times")
    assert [o.topic for o in out] == ["reports.rejected"]
    assert report_status(sessions, report.report_id)[0] == "rejected"
