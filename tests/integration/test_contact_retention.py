"""Reporter contact details are removed: from consumed bus messages at once, from reports and
rejection copies after ``HOTLINE_REPORTER_RETENTION_DAYS`` (defect 11 of issue 12: processed
bus messages kept reporter addresses). Embedded runtime on SQLite."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from click.testing import CliRunner
from pydantic import SecretStr
from sqlalchemy import select

from entrypoints.bootstrap import System, bootstrap
from hotline.config import Settings, get_settings
from hotline.kernel.clock import FakeClock
from hotline.runtime.embedded import EmbeddedRuntime
from hotline.runtime.kafka import contact_retention_ms
from hotline.storage.contact_retention import strip_text
from hotline.storage.models import AuditLog, BusMessage, Rejection, Report
from hotline.storage.reporter_address import ReporterSeal, new_key
from hotline.storage.unit_of_work import SqlUnitOfWork
from schemas.reports import ReportSubmitted
from services.ingest.retention import AUDIT_ACTION, ContactPurge
from tests.integration.test_embedded_pipeline import EmbeddedPipeline

pytestmark = pytest.mark.integration

KEY = new_key()


@pytest.fixture
def system(tmp_path: Path) -> Iterator[System]:
    clock = FakeClock(datetime.now(UTC))
    s = bootstrap(Settings(database_url=f"sqlite:///{tmp_path / 'hotline.db'}", index_dir="none",
                           reporter_key=SecretStr(KEY)), clock=clock)
    yield s
    s.close()


def _bus_addresses(system: System) -> list[str]:
    with system.sessions() as s:
        values = s.scalars(select(BusMessage.value).where(BusMessage.topic.in_(
            ("reports.submitted", "reports.rejected")))).all()
    return [v for v in values if "v1:" in v]


def _submit(system: System, n: int, bad: int = 0) -> list[str]:
    seal = ReporterSeal(KEY)
    pipeline = EmbeddedPipeline(system.sessions)
    ids = []
    for i in range(n):
        sealed = seal.seal(f"reporter{i}@example.org")
        if i < bad:  # a malformed message (urls not a list): rejected whole, address and all
            rid = f"bad-{i}"
            pipeline.submit_raw(json.dumps({"report_id": rid, "urls": 5, "reporter_email": sealed}).encode())
            ids.append(rid)
            continue
        r = ReportSubmitted(urls=[f"http://site{i}.example.com/x"], reporter_email=sealed, channel="web")
        pipeline.submit(r)
        ids.append(r.report_id)
    return ids


def test_consumed_messages_lose_the_address_reports_keep_it_until_retention(system: System) -> None:
    ids = _submit(system, 5, bad=2)
    runtime = EmbeddedRuntime(system.sessions, system.build_stages(("ingest",)))
    with runtime:
        assert runtime.wait_idle(30)
    assert len(_bus_addresses(system)) >= 5  # before the purge: every message has its address
    purge = system.build_contact_purge()
    assert isinstance(purge, ContactPurge) and purge.consumers is not None
    with system.sessions() as s:
        uow = SqlUnitOfWork(s)
        purge.tick(uow)
        uow.commit()
    assert purge.last is not None and purge.last.bus_messages >= 5 and purge.last.reports == 0
    assert _bus_addresses(system) == []
    with system.sessions() as s:
        kept = s.scalars(select(Report.reporter_email).where(Report.id.in_(ids[2:]))).all()
        assert len(kept) == 3 and all(k and k.startswith("v1:") for k in kept)
        rejected = s.scalars(select(Rejection.payload)).all()
        assert len(rejected) == 2 and all("v1:" in json.dumps(p) for p in rejected), rejected
        # Counts only in the audit log.
        row = s.scalars(select(AuditLog).where(AuditLog.action == AUDIT_ACTION)).one()
        assert json.loads(row.detail)["bus_messages"] == purge.last.bus_messages and "v1:" not in row.detail

    # Retention passes: the reports and the rejection copies lose it too.
    clock = system.clock
    assert isinstance(clock, FakeClock)
    clock.advance(timedelta(days=91).total_seconds())
    with system.sessions() as s:
        uow = SqlUnitOfWork(s)
        purge.tick(uow)
        uow.commit()
    assert purge.last.reports == 3 and purge.last.rejections == 2
    with system.sessions() as s:
        assert s.scalars(select(Report.reporter_email).where(Report.reporter_email.is_not(None))).all() == []
        assert all("v1:" not in json.dumps(p) for p in s.scalars(select(Rejection.payload)).all())
    # Nothing left: a further tick changes nothing and logs nothing.
    with system.sessions() as s:
        uow = SqlUnitOfWork(s)
        purge.tick(uow)
        uow.commit()
        assert purge.last.total == 0
        assert len(s.scalars(select(AuditLog).where(AuditLog.action == AUDIT_ACTION)).all()) == 2


def test_unconsumed_messages_keep_the_address(system: System) -> None:
    _submit(system, 3)
    purge = system.build_contact_purge()
    with system.sessions() as s:
        uow = SqlUnitOfWork(s)
        purge.tick(uow)
        uow.commit()
    assert purge.last is not None and purge.last.total == 0
    assert len(_bus_addresses(system)) == 3  # ingest has not read them: they must stay whole


def test_periodic_task_goes_with_ingest(system: System) -> None:
    assert any(isinstance(t, ContactPurge) for t in system.periodic_for(("ingest",)))
    assert not any(isinstance(t, ContactPurge) for t in system.periodic_for(("classify", "notify")))


def test_cli_purge_contacts(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from entrypoints.cli import main

    url = f"sqlite:///{tmp_path / 'cli.db'}"
    monkeypatch.setenv("HOTLINE_DATABASE_URL", url)
    monkeypatch.setenv("HOTLINE_INDEX_DIR", "none")
    monkeypatch.setenv("HOTLINE_REPORTER_KEY", KEY)
    get_settings.cache_clear()
    try:
        system = bootstrap(get_settings())
        _submit(system, 2)
        runtime = EmbeddedRuntime(system.sessions, system.build_stages(("ingest",)))
        with runtime:
            assert runtime.wait_idle(30)
        system.close()
        out = CliRunner().invoke(main, ["reports", "purge-contacts", "--days", "0"])
        assert out.exit_code == 0, out.output
        assert "2 report(s)" in out.output and "2 bus message(s)" in out.output
        raw = (tmp_path / "cli.db").read_bytes()
        assert b"v1:" not in raw  # rewritten (VACUUM): no old copy in free pages
    finally:
        get_settings.cache_clear()


def test_strip_text_handles_nested_and_broken_payloads() -> None:
    nested = json.dumps({"payload": {"reporter_email": "v1:" + "A" * 40, "urls": []}, "reason": "x"})
    out, changed = strip_text(nested)
    assert changed and "v1:" not in out and json.loads(out)["payload"]["reporter_email"] is None
    broken = '{"reporter_email": "someone@example.org", "urls": [ '
    out, changed = strip_text(broken)
    assert changed and "someone@" not in out
    assert strip_text('{"reporter_email":null}') == ('{"reporter_email":null}', False)


def test_kafka_retention_matches_the_setting() -> None:
    assert contact_retention_ms(90) == 90 * 86_400_000
    assert contact_retention_ms(0) == 86_400_000  # never shorter than a day


def test_topics_that_carry_addresses_get_the_retention(kafka_brokers: str, unique_topic_prefix: str) -> None:
    from kafka import KafkaAdminClient
    from kafka.admin import ConfigResource, ConfigResourceType

    from hotline.runtime.kafka import create_topics
    from tests.integration.scenario import delete_topics

    prefix = unique_topic_prefix + "."
    create_topics(kafka_brokers, prefix, 1, contact_retention_days=30)
    admin = KafkaAdminClient(bootstrap_servers=kafka_brokers.split(","), client_id="hotline-tests-retention")
    try:
        found: dict[str, str | None] = {}
        for topic in ("reports.submitted", "reports.rejected", "items.accepted"):
            # kafka-python 3.0: {"topic": {name: {config: {"value": ..., "config_source": ...}}}}
            answer = admin.describe_configs([ConfigResource(ConfigResourceType.TOPIC, prefix + topic)])
            config = answer["topic"][prefix + topic].get("retention.ms")  # absent: the broker's default
            found[topic] = str(config["value"]) if config and config["config_source"] == "DYNAMIC_TOPIC_CONFIG" else None
    finally:
        admin.close()
        delete_topics(kafka_brokers, prefix)
    assert found["reports.submitted"] == found["reports.rejected"] == str(30 * 86_400_000)
    assert found["items.accepted"] != str(30 * 86_400_000)  # the broker's default
