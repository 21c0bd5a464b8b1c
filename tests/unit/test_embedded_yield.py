"""Embedded stages yield to intake during a burst (``EmbeddedRuntime`` ``yield_to`` /
``yield_max_seconds``, ``services.ingest.intake.IntakePressure``): while intake says "burst" a
stage defers its next step, never longer than the bound in a row, so the pipeline never
stops; when the burst ends it catches up; nothing is lost or skipped either way."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import ClassVar

import pytest
from sqlalchemy.orm import Session, sessionmaker

from hotline.kernel.ports import UnitOfWork
from hotline.kernel.stage import Result
from hotline.runtime.embedded import EmbeddedRuntime
from hotline.storage.engine import make_engine, make_sessionmaker, migrate
from schemas import Message
from schemas.reports import ReportSubmitted
from services.ingest.intake import IntakePressure
from services.ingest.stage import IngestStage
from tests.unit.test_parking import report_status, submit, wait_for

HOSTS = frozenset({"a.test"})


@pytest.fixture()
def sessions(tmp_path: Path) -> Iterator[sessionmaker[Session]]:
    url = f"sqlite:///{tmp_path / 'yield.db'}"
    migrate(url)
    engine = make_engine(url)
    yield make_sessionmaker(engine)
    engine.dispose()


class TimedIngest(IngestStage):
    """Ingest that notes when it handled each message."""

    name: ClassVar[str] = "ingest"

    def __init__(self) -> None:
        super().__init__(operator_hosts=HOSTS)
        self.handled_at: list[float] = []

    def handle(self, topic: str, message: Message, uow: UnitOfWork) -> Result:
        self.handled_at.append(time.monotonic())
        return super().handle(topic, message, uow)


class Flag:
    """A ``yield_to`` the test switches; counts how often the runtime asked."""

    def __init__(self, on: bool) -> None:
        self.on = on
        self.asked = 0

    def __call__(self) -> bool:
        self.asked += 1
        return self.on


def _reports(sessions: sessionmaker[Session], n: int) -> list[str]:
    ids = []
    for i in range(n):
        r = ReportSubmitted(urls=[f"http://a.test/{i}.jpg"])
        submit(sessions, r)
        ids.append(r.report_id)
    return ids


def _ingested(sessions: sessionmaker[Session], ids: list[str]) -> int:
    return sum(report_status(sessions, rid)[0] != "received" for rid in ids)


def test_a_burst_that_never_ends_defers_each_step_at_most_the_bound(sessions: sessionmaker[Session]) -> None:
    stage = TimedIngest()
    burst = Flag(True)
    bound = 0.3
    runtime = EmbeddedRuntime(sessions, [stage], poll_seconds=0.01, batch_size=1, yield_to=burst,
                              yield_max_seconds=bound)
    ids = _reports(sessions, 4)
    with runtime:
        # The burst is never over, yet every report is handled: the bound lets each step through.
        assert wait_for(lambda: runtime.idle(), 30)
    assert _ingested(sessions, ids) == len(ids)
    assert len(stage.handled_at) == len(ids)  # each once: deferring skips and repeats nothing
    # Deferred before every step, for about the bound each time (a lower bound: never sooner).
    assert runtime.deferrals["ingest"] >= len(ids)
    gaps = [b - a for a, b in zip(stage.handled_at, stage.handled_at[1:], strict=False)]
    assert min(gaps) >= bound * 0.9
    assert bound * 0.9 <= runtime.longest_deferral["ingest"] < bound + 2.0


def test_stages_wait_while_intake_is_busy_and_catch_up_after(sessions: sessionmaker[Session]) -> None:
    stage = TimedIngest()
    burst = Flag(True)
    runtime = EmbeddedRuntime(sessions, [stage], poll_seconds=0.01, yield_to=burst, yield_max_seconds=600)
    ids = _reports(sessions, 20)
    with runtime:
        # The stage asked many times and each time deferred: nothing handled during the burst.
        assert wait_for(lambda: burst.asked >= 20, 10)
        assert stage.handled_at == []
        burst.on = False
        assert wait_for(lambda: runtime.idle(), 30)
    assert _ingested(sessions, ids) == len(ids)


def test_without_a_burst_nothing_is_deferred(sessions: sessionmaker[Session]) -> None:
    stage = TimedIngest()
    calm = Flag(False)
    runtime = EmbeddedRuntime(sessions, [stage], poll_seconds=0.01, yield_to=calm, yield_max_seconds=600)
    ids = _reports(sessions, 5)
    with runtime:
        assert wait_for(lambda: runtime.idle(), 30)
    assert _ingested(sessions, ids) == len(ids)
    assert calm.asked > 0 and runtime.deferrals == {}


def test_a_zero_bound_switches_yielding_off(sessions: sessionmaker[Session]) -> None:
    stage = TimedIngest()
    runtime = EmbeddedRuntime(sessions, [stage], poll_seconds=0.01, yield_to=Flag(True), yield_max_seconds=0)
    _reports(sessions, 3)
    with runtime:
        assert wait_for(lambda: runtime.idle(), 30)
    assert runtime.deferrals == {}


class _Committer:
    def __init__(self) -> None:
        self.submitted = 0


def test_intake_pressure_is_the_arrival_rate_over_a_window() -> None:
    committer = _Committer()
    state = SimpleNamespace(intake_committer=committer)
    pressure = IntakePressure(state, rate=1000, window=0.05)
    assert not pressure()  # the first sample has nothing to compare with
    stop = threading.Event()

    def burst() -> None:  # far more than 1,000 "reports" a second
        while not stop.is_set():
            committer.submitted += 100
            time.sleep(0.001)

    feeder = threading.Thread(target=burst)
    feeder.start()
    try:
        assert wait_for(pressure, 10)
    finally:
        stop.set()
        feeder.join()
    assert wait_for(lambda: not pressure(), 10)  # no arrivals: the burst is over


def test_no_committer_or_no_rate_means_no_pressure() -> None:
    assert not IntakePressure(SimpleNamespace(), rate=1)()  # group commit off: nothing to count
    committer = _Committer()
    pressure = IntakePressure(SimpleNamespace(intake_committer=committer), rate=0, window=0.01)
    committer.submitted = 10**9
    assert not pressure()
