"""``hotline police feed --from-offset/--since`` and ``hotline police export``, as an operator
runs them: real subprocesses, a real SQLite database, and (for the feed) real Kafka."""

from __future__ import annotations

import csv
import io
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from hotline.kernel.clock import FakeClock, installed
from tests.integration.test_cli import env, run  # noqa: F401 - env is a fixture

pytestmark = pytest.mark.integration

T0 = datetime(2026, 11, 2, 9, 0, tzinfo=UTC)


def _escalations(database_url: str, n: int) -> list[str]:
    """``n`` escalations an hour apart from T0 (a fake clock); the first one on hold, the second
    released. Their item ids, oldest first."""
    from entrypoints.bootstrap import bootstrap
    from hotline.config import Settings
    from hotline.storage.unit_of_work import SqlUnitOfWork
    from schemas.items import ItemClassified
    from services.assessment.logic import assess
    from services.police.logic import act

    system = bootstrap(Settings(database_url=database_url, index_dir="none"))
    ids = []
    clock = FakeClock(T0)
    with installed(clock):
        for k in range(n):
            with system.sessions() as session:
                store = SqlUnitOfWork(session)
                item = store.items.create(f"http://img.hoster-a.test/new{k}.jpg")
                item.classification = ItemClassified(item_id=item.id, url=item.url, online=True, route="assessment",
                                                     reason="test").model_dump(mode="json")
                store.items.set_state(item, "awaiting_assessment", "test", "test")
                store.enqueue(assess(store, item.id, verdict="illegal", category="national", analyst="ann"))
                store.commit()
                if k == 0:
                    store.enqueue(act(store, f"pol-{item.id}", "hold", "officer-7", "investigation, \"quoted\""))
                if k == 1:
                    store.enqueue(act(store, f"pol-{item.id}", "release", "officer-7"))
                store.commit()
                ids.append(item.id)
            clock.advance(hours=1)
    system.engine.dispose()
    return ids


def test_feed_from_a_position_and_a_time_embedded(env: dict[str, str]) -> None:  # noqa: F811
    ids = _escalations(env["HOTLINE_DATABASE_URL"], 3)

    def feed(*args: str) -> list[str]:
        done = run(env, "police", "feed", *args)
        assert done.returncode == 0, done.stderr
        return [json.loads(line)["item_id"] for line in done.stdout.strip().splitlines()]

    assert feed() == ids
    assert feed("--from-offset", "1") == ids[1:]
    assert feed("--from-offset", "3") == []
    assert feed("--since", (T0 + timedelta(minutes=30)).isoformat()) == ids[1:]
    assert feed("--since", "2026-11-02T11:00:00") == ids[2:]  # no zone: UTC
    bad = run(env, "police", "feed", "--from-offset", "0:1")
    assert bad.returncode != 0 and "global position" in bad.stderr


def test_export_csv_and_json(env: dict[str, str], tmp_path: Path) -> None:  # noqa: F811
    ids = _escalations(env["HOTLINE_DATABASE_URL"], 3)
    done = run(env, "police", "export", "--from", T0.isoformat(), "--to", (T0 + timedelta(hours=2)).isoformat(),
               "--format", "csv")
    assert done.returncode == 0, done.stderr
    rows = list(csv.DictReader(io.StringIO(done.stdout)))
    assert [r["item_id"] for r in rows] == ids[:2]  # [from, to): the third is outside
    assert rows[0]["state"] == "on_hold" and rows[0]["hold_reason"] == 'investigation, "quoted"'
    assert rows[0]["held_by"] == "officer-7" and rows[0]["category"] == "national"
    assert rows[1]["state"] == "released" and rows[1]["released_by"] == "officer-7"
    out = tmp_path / "export.json"
    done = run(env, "police", "export", "--from", "2026-11-01", "--to", "2026-11-03", "--format", "json",
               "--output", str(out))
    assert done.returncode == 0, done.stderr
    data = json.loads(out.read_text())
    assert [d["item_id"] for d in data] == ids and data[2]["state"] == "new"
    assert "3 escalation(s)" in done.stderr


def test_feed_from_offsets_and_a_time_on_kafka(
    env: dict[str, str], kafka_brokers: str, unique_topic_prefix: str,  # noqa: F811
) -> None:
    from kafka import KafkaProducer

    from hotline.runtime.kafka import create_topics
    from schemas.notices import AnalystClassification, PoliceEscalation

    create_topics(kafka_brokers, unique_topic_prefix, 2)
    producer = KafkaProducer(bootstrap_servers=kafka_brokers, acks="all")
    for n in range(6):
        at = T0 + timedelta(hours=n)
        m = PoliceEscalation(escalation_id=f"pol-{n}", item_id=f"item-{n}", url=f"http://x.test/{n}.jpg",
                             first_seen=at, last_seen=at, escalated_at=at,
                             classification=AnalystClassification(analyst="ann", verdict="illegal", category="national"))
        producer.send(unique_topic_prefix + "escalations.police", key=m.item_id.encode(), value=m.to_bytes(),
                      partition=n % 2, timestamp_ms=int(at.timestamp() * 1000))
    producer.flush()
    producer.close()
    env = {**env, "HOTLINE_KAFKA_BROKERS": kafka_brokers, "HOTLINE_TOPIC_PREFIX": unique_topic_prefix}

    def feed(*args: str) -> set[str]:
        done = run(env, "police", "feed", *args)
        assert done.returncode == 0, done.stderr
        return {json.loads(line)["item_id"] for line in done.stdout.strip().splitlines()}

    assert feed() == {f"item-{n}" for n in range(6)}
    # partition 0 holds items 0, 2, 4; partition 1 holds 1, 3, 5
    assert feed("--from-offset", "2") == {"item-4", "item-5"}
    assert feed("--from-offset", "0:1,1:3") == {"item-2", "item-4"}
    assert feed("--from-offset", "1:2") == {"item-0", "item-2", "item-4", "item-5"}
    assert feed("--since", (T0 + timedelta(hours=3)).isoformat()) == {"item-3", "item-4", "item-5"}
