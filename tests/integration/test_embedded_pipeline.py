"""The acceptance scenario on the embedded runtime: all stages in one process, the bus a table,
on SQLite and on PostgreSQL. The same scenario runs on Kafka in ``test_kafka_pipeline.py``."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from entrypoints.bootstrap import bootstrap
from hotline.config import Settings
from hotline.kernel.messages import Outgoing
from hotline.runtime.embedded import EmbeddedRuntime
from hotline.storage.models import BusMessage
from hotline.storage.unit_of_work import SqlUnitOfWork
from schemas.reports import ReportSubmitted
from tests.integration import scenario
from tests.integration.scenario import PARTNER_TOKEN_ENV, World

pytestmark = pytest.mark.integration


class EmbeddedPipeline:
    """``scenario.Pipeline`` on the embedded bus: publishing is an outbox write, reading a query."""

    def __init__(self, sessions: sessionmaker[Session]) -> None:
        self.sessions = sessions

    def submit(self, report: ReportSubmitted) -> None:
        with self.sessions() as s:
            store = SqlUnitOfWork(s)
            store.enqueue([Outgoing("reports.submitted", report)])
            store.commit()

    def submit_raw(self, value: bytes, key: bytes = b"") -> None:
        # Not a valid message, so it cannot be an ``Outgoing``; it still goes through the outbox,
        # whose ordering the embedded readers rely on.
        with self.sessions() as s:
            store = SqlUnitOfWork(s)
            store.enqueue_raw("reports.submitted", key.decode(), value.decode())
            store.commit()

    def published(self, topic: str) -> list[dict[str, Any]]:
        import json

        with self.sessions() as s:
            rows = s.scalars(select(BusMessage.value).where(BusMessage.topic == topic).order_by(BusMessage.id)).all()
        return [json.loads(v) for v in rows]

    def publish_outbox(self) -> None:
        """Nothing to do: on the embedded runtime the outbox *is* the bus."""


@pytest.fixture
def the_world(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[World]:
    with scenario.world(tmp_path) as w:
        monkeypatch.setenv(PARTNER_TOKEN_ENV, w.token)
        yield w


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'hotline.db'}"
        return
    pg_url: str = request.getfixturevalue("pg_url")
    with scenario.fresh_pg_database(pg_url, "emb") as url:
        yield url


@pytest.fixture
def embedded(the_world: World, database_url: str) -> Iterator[tuple[EmbeddedPipeline, EmbeddedRuntime]]:
    settings = Settings(database_url=database_url, **the_world.settings_kwargs())
    system = bootstrap(settings)
    with system.sessions() as s:
        scenario.load_bank(SqlUnitOfWork(s), the_world.known_images)
    runtime = EmbeddedRuntime(system.sessions, system.build_stages())
    runtime.start()
    try:
        yield EmbeddedPipeline(system.sessions), runtime
    finally:
        runtime.stop()
        system.engine.dispose()


def test_acceptance_embedded(embedded: tuple[EmbeddedPipeline, EmbeddedRuntime], the_world: World) -> None:
    pipeline, runtime = embedded
    timings = scenario.run_acceptance(pipeline, the_world, timeout=60)
    assert runtime.wait_idle(30)
    assert runtime.errors == {}
    print("embedded acceptance timings:", {k: round(v, 2) for k, v in timings.items()})


def test_known_batch_embedded(embedded: tuple[EmbeddedPipeline, EmbeddedRuntime], the_world: World) -> None:
    """A batch of known material: every report ends with exactly one notice to its hoster."""
    pipeline, runtime = embedded
    reports = scenario.known_batch(the_world, 30)
    started = time.monotonic()
    for r in reports:
        pipeline.submit(r)
    urls = [r.urls[0] for r in reports]
    scenario.wait_for(
        "every batch item notice_sent",
        lambda: all(s == "notice_sent" for s in scenario.states_by_url(pipeline.sessions, urls).values()),
        90,
    )
    by_notice = the_world.mail.count_by_notice()
    assert len(by_notice) == 30 and set(by_notice.values()) == {1}, by_notice
    print(f"embedded batch of 30: {time.monotonic() - started:.2f}s")
