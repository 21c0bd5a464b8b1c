"""Stages that batch (issue 13), end to end: a burst of reports through batched ingest and
notify (``HOTLINE_BATCH_SIZE``) ends in exactly one outcome each, one e-mail per notice at the
SMTP sink, none lost, none doubled; then every notice is delivered to notify again (as after
a crash or a rebalance) and that batch of bookkeeping sends nothing new. On the embedded
runtime (SQLite) and on real Kafka + PostgreSQL with the stages as processes."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from entrypoints.bootstrap import bootstrap
from hotline.config import Settings
from hotline.kernel.messages import Outgoing
from hotline.runtime.embedded import EmbeddedRuntime
from hotline.storage.engine import make_engine, make_sessionmaker, migrate
from hotline.storage.models import Notice
from hotline.storage.unit_of_work import SqlUnitOfWork
from schemas.notices import TakedownNotice
from tests.integration import scenario
from tests.integration.scenario import PARTNER_TOKEN_ENV, World
from tests.integration.test_kafka_pipeline import deployer

pytestmark = pytest.mark.integration

BURST = 60


def notices(sessions: sessionmaker[Session]) -> list[Notice]:
    with sessions() as s:
        return list(s.scalars(select(Notice)))


def check_one_outcome_each(w: World, sessions: sessionmaker[Session], urls: list[str]) -> None:
    """Every URL notice_sent, one notice each, one e-mail per notice, no e-mail twice."""
    assert set(scenario.states_by_url(sessions, urls).values()) == {"notice_sent"}
    rows = notices(sessions)
    assert len(rows) == len(urls) and {n.status for n in rows} == {"sent"}
    mails = w.mail.snapshot()
    sent_ids = Counter(m.notice_id for m in mails)
    assert len(mails) == len(urls), f"{len(mails)} e-mails for {len(urls)} notices"
    assert set(sent_ids) == {n.id for n in rows} and set(sent_ids.values()) == {1}


def wait_all_sent(sessions: sessionmaker[Session], urls: list[str], timeout: float) -> None:
    scenario.wait_for(
        f"all {len(urls)} items notice_sent",
        lambda: set(scenario.states_by_url(sessions, urls).values()) == {"notice_sent"},
        timeout,
        interval=0.2,
    )


# ------------------------------------------------------------------ embedded


@pytest.fixture
def the_world(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[World]:
    with scenario.world(tmp_path) as w:
        monkeypatch.setenv(PARTNER_TOKEN_ENV, w.token)
        yield w


def test_a_burst_through_batched_stages_embedded(tmp_path: Path, the_world: World) -> None:
    settings = Settings(database_url=f"sqlite:///{tmp_path / 'hotline.db'}", batch_size=50,
                        **the_world.settings_kwargs())
    system = bootstrap(settings)
    sessions = system.sessions
    with sessions() as s:
        scenario.load_bank(SqlUnitOfWork(s), the_world.known_images)
    reports = scenario.known_batch(the_world, BURST, prefix="/burst")
    urls = [r.urls[0] for r in reports]
    with sessions() as s:  # the whole burst in the bus before the stages start: full batches
        store = SqlUnitOfWork(s)
        store.enqueue([Outgoing("reports.submitted", r) for r in reports])
        store.commit()
    runtime = EmbeddedRuntime(sessions, system.build_stages(), batch_size=settings.batch_size)
    runtime.start()
    try:
        wait_all_sent(sessions, urls, 120)
        assert runtime.wait_idle(60), runtime.errors
        check_one_outcome_each(the_world, sessions, urls)
        # Every notice again (a redelivery): one batch of bookkeeping, no new e-mail.
        ntd = [TakedownNotice.model_validate(m) for m in scenario_published(sessions, "notices.ntd")]
        assert len(ntd) == BURST
        with sessions() as s:
            store = SqlUnitOfWork(s)
            store.enqueue([Outgoing("notices.ntd", n) for n in ntd])
            store.commit()
        assert runtime.wait_idle(60), runtime.errors
        sent_events = [e for e in scenario_published(sessions, "notices.events") if e["kind"] == "sent"]
        assert Counter(e["notice_id"] for e in sent_events) == Counter({n.notice_id: 2 for n in ntd})
        check_one_outcome_each(the_world, sessions, urls)
        assert runtime.errors == {}
    finally:
        runtime.stop()
        system.engine.dispose()


def scenario_published(sessions: sessionmaker[Session], topic: str) -> list[dict[str, object]]:
    import json

    from hotline.storage.models import BusMessage

    with sessions() as s:
        rows = s.scalars(select(BusMessage.value).where(BusMessage.topic == topic).order_by(BusMessage.id)).all()
    return [json.loads(v) for v in rows]


# ------------------------------------------------------------------ Kafka + PostgreSQL


@pytest.fixture(scope="module")
def kafka_db(pg_url: str) -> Iterator[str]:
    with scenario.fresh_pg_database(pg_url, "batch") as url:
        migrate(url)
        yield url


def test_a_burst_through_batched_stages_kafka(
    tmp_path: Path, kafka_brokers: str, kafka_db: str, unique_topic_prefix: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HOTLINE_BATCH_SIZE", "50")  # read by the stage processes
    engine = make_engine(kafka_db)
    sessions = make_sessionmaker(engine)
    prefix = unique_topic_prefix + "."
    deploy = deployer(kafka_db, sessions, kafka_brokers, prefix, tmp_path / "logs")
    try:
        with scenario.world(tmp_path) as w:
            with deploy(w) as (pipeline, procs):
                reports = scenario.known_batch(w, BURST, prefix="/burst")
                urls = [r.urls[0] for r in reports]
                for r in reports:  # a burst: produced without waiting for each
                    pipeline.producer.send(prefix + "reports.submitted", key=r.report_id.encode(), value=r.to_bytes())
                pipeline.producer.flush(30)
                wait_all_sent(sessions, urls, 180)
                check_one_outcome_each(w, sessions, urls)
                def all_ntd() -> list[dict[str, object]] | None:
                    got = pipeline.published("notices.ntd")
                    return got if len(got) >= BURST else None

                ntd = scenario.wait_for("every notice on notices.ntd", all_ntd, 60)
                # Every notice delivered to notify again, as after a rebalance: bookkeeping only.
                for m in ntd:
                    pipeline.producer.send(prefix + "notices.ntd", key=str(m["hoster"]).encode(),
                                           value=TakedownNotice.model_validate(m).to_bytes())
                pipeline.producer.flush(30)

                def sent_twice() -> Counter[str] | None:
                    got = Counter(e["notice_id"] for e in pipeline.published("notices.events") if e["kind"] == "sent")
                    return got if len(got) == BURST and set(got.values()) == {2} else None

                scenario.wait_for("a second 'sent' event per notice", sent_twice, 90, interval=0.2)
                check_one_outcome_each(w, sessions, urls)
                assert all(procs.alive(s) for s in ("ingest", "classify", "notify", "escalate"))
    finally:
        engine.dispose()
