"""A message that keeps failing for a reason other than an outage must not stop its stage:
after a few attempts it is parked (rejected with the error, its item put before an analyst),
while infrastructure failures (SMTP, network, database) are retried for as long as they last."""

from __future__ import annotations

import time
from pathlib import Path
from typing import ClassVar

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from hotline.storage.engine import make_engine, make_sessionmaker, migrate
from hotline.storage.models import BusMessage
from hotline.runtime.embedded import EmbeddedRuntime
from hotline.kernel.stage import MAX_UNEXPECTED_FAILURES, Outgoing, is_infrastructure_error, park
from hotline.storage.unit_of_work import SqlUnitOfWork
from schemas import Message
from schemas.items import ItemAccepted
from schemas.reports import ReportSubmitted
from services.ingest.stage import IngestStage


@pytest.fixture()
def sessions(tmp_path: Path) -> sessionmaker[Session]:
    url = f"sqlite:///{tmp_path / 'park.db'}"
    migrate(url)
    return make_sessionmaker(make_engine(url))


class FlakyIngest(IngestStage):
    """Ingest that trips over reports whose description says so."""

    name: ClassVar[str] = "ingest"
    error: ClassVar[type[Exception]] = KeyError

    def __init__(self) -> None:
        self.attempts = 0

    def handle(self, topic: str, message: Message, store: SqlUnitOfWork) -> list[Outgoing]:
        assert isinstance(message, ReportSubmitted)
        if message.description == "trip":
            self.attempts += 1
            raise self.error("tripped")
        return super().handle(topic, message, store)


def submit(sessions: sessionmaker[Session], report: ReportSubmitted) -> None:
    with sessions() as s:
        store = SqlUnitOfWork(s)
        store.enqueue([Outgoing("reports.submitted", report)])
        store.commit()


def published(sessions: sessionmaker[Session], topic: str) -> list[str]:
    with sessions() as s:
        return list(s.scalars(select(BusMessage.value).where(BusMessage.topic == topic).order_by(BusMessage.id)))


def wait_for(predicate, timeout: float = 10.0) -> bool:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.02)
    return False


def test_a_message_that_keeps_failing_is_parked_and_the_stage_moves_on(sessions: sessionmaker[Session]) -> None:
    stage = FlakyIngest()
    bad = ReportSubmitted(urls=["http://a.test/x.jpg"], description="trip")
    good = ReportSubmitted(urls=["http://b.test/y.jpg"])
    submit(sessions, bad)
    submit(sessions, good)
    with EmbeddedRuntime(sessions, [stage], poll_seconds=0.01, retry_base_seconds=0.001) as runtime:
        assert wait_for(lambda: len(published(sessions, "items.accepted")) == 1), runtime.errors
        assert runtime.wait_idle(5)
    assert stage.attempts == MAX_UNEXPECTED_FAILURES
    rejected = published(sessions, "reports.rejected")
    assert len(rejected) == 1
    assert '"reason_code":"processing_failed"' in rejected[0]
    assert "KeyError" in rejected[0] and bad.report_id in rejected[0]
    with sessions() as s:
        report = SqlUnitOfWork(s).reports.get(bad.report_id)
        assert report is not None and report.status == "rejected"
        assert "failed 5 times" in (report.reason or "")


def test_an_outage_is_retried_not_parked(sessions: sessionmaker[Session]) -> None:
    class SmtpDownLike(FlakyIngest):
        error: ClassVar[type[Exception]] = ConnectionRefusedError

    stage = SmtpDownLike()
    submit(sessions, ReportSubmitted(urls=["http://a.test/x.jpg"], description="trip"))
    with EmbeddedRuntime(sessions, [stage], poll_seconds=0.01, retry_base_seconds=0.001):
        assert wait_for(lambda: stage.attempts >= MAX_UNEXPECTED_FAILURES + 3)
    assert published(sessions, "reports.rejected") == []


def test_parking_puts_the_item_before_an_analyst(sessions: sessionmaker[Session]) -> None:
    with sessions() as s:
        store = SqlUnitOfWork(s)
        item = store.items.create("http://a.test/x.jpg")
        store.commit()
        raw = ItemAccepted(item_id=item.id, url=item.url, report_ids=["r1"]).model_dump_json()
        out = park(FlakyIngest(), "items.accepted", raw, store, ValueError("odd page"), 5)
        store.commit()
        assert [o.topic for o in out] == ["reports.rejected"]
        again = store.items.get(item.id)
        assert again is not None and again.state == "awaiting_assessment"
        assert "ValueError: odd page" in again.reason


@pytest.mark.parametrize(
    ("exc", "infra"),
    [(ConnectionRefusedError(), True), (TimeoutError(), True), (KeyError("x"), False), (ValueError(), False)],
)
def test_what_counts_as_an_outage(exc: BaseException, infra: bool) -> None:
    assert is_infrastructure_error(exc) is infra


def test_the_kafka_worker_parks_through_the_same_code(tmp_path: Path) -> None:
    from entrypoints.bootstrap import bootstrap
    from hotline.config import Settings
    from hotline.runtime.kafka import StageProcessor

    system = bootstrap(Settings(database_url=f"sqlite:///{tmp_path / 'k.db'}", index_dir="none"))
    try:
        report = ReportSubmitted(urls=["http://a.test/x.jpg"], description="trip")
        out = StageProcessor(system, FlakyIngest()).park("reports.submitted", report.to_bytes(), KeyError("x"), 5)
        assert [o.topic for o in out] == ["reports.rejected"]
        with system.sessions() as s:
            stored = SqlUnitOfWork(s).reports.get(report.report_id)
            assert stored is not None and stored.status == "rejected"
    finally:
        system.close()
