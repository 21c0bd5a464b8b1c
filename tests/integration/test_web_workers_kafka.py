"""``hotline serve --stage web --workers 2`` on Kafka + PostgreSQL: two web processes share one
listening socket, each with its own group committer, and the parent runs the one outbox relay.
Every report answered 202 is in ``reports`` once, and ``reports.submitted`` carries each of
them exactly once (no relay publishes a row twice, none is left behind)."""

from __future__ import annotations

import http.client
import json
import os
import signal
import subprocess
import sys
import threading
from collections import Counter
from pathlib import Path

import pytest
from sqlalchemy import func, select

from doubles.loopback import free_port
from hotline.runtime.kafka import create_topics, kafka_topic
from hotline.storage.engine import make_engine, make_sessionmaker, migrate
from hotline.storage.models import BusMessage, Report
from tests.integration import scenario

pytestmark = pytest.mark.integration

CLIENTS = 8
PER_CLIENT = 40


def _children(pid: int) -> list[int]:
    """Process ids whose parent is ``pid`` (Linux /proc)."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            found.append(int(stat.parent.name))
    return found


def _healthy(port: int) -> bool:
    try:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
        conn.request("GET", "/healthz")
        return conn.getresponse().status == 200
    except OSError:
        return False


def _post_reports(port: int, client: int, ids: list[str], errors: list[str]) -> None:
    """One keep-alive connection posting PER_CLIENT reports (new connection after an error)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    for n in range(PER_CLIENT):
        body = json.dumps({"urls": [f"https://workers.example.com/{client}-{n}.jpg"]})
        try:
            conn.request("POST", "/api/v1/reports", body, {"Content-Type": "application/json"})
            resp = conn.getresponse()
            text = resp.read().decode()
        except OSError as exc:
            errors.append(repr(exc))
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
            continue
        if resp.status == 202:
            ids.append(json.loads(text)["report_id"])
        else:
            errors.append(f"{resp.status} {text}")


def test_two_web_workers_store_every_acknowledged_report_once_and_relay_each_once(
    kafka_brokers: str, pg_url: str, unique_topic_prefix: str, tmp_path: Path
) -> None:
    from kafka import KafkaConsumer, TopicPartition

    with scenario.fresh_pg_database(pg_url, "workers") as db:
        migrate(db)
        create_topics(kafka_brokers, unique_topic_prefix, 2)
        port = free_port()
        env = {**os.environ, "HOTLINE_DATABASE_URL": db, "HOTLINE_KAFKA_BROKERS": kafka_brokers,
               "HOTLINE_TOPIC_PREFIX": unique_topic_prefix, "HOTLINE_REPORT_RATE_PER_MINUTE": "0",
               "HOTLINE_INDEX_DIR": "none"}
        log = tmp_path / "web.log"
        with open(log, "wb") as out:
            proc = subprocess.Popen(
                [sys.executable, "-m", "entrypoints.cli", "serve", "--stage", "web", "--workers", "2",
                 "--port", str(port)],
                env=env, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
        engine = make_engine(db)
        try:
            scenario.wait_for("the web workers to answer", lambda: _healthy(port), 120, 0.3)
            # uvicorn's supervisor plus two workers (its spawn helper may be a third child).
            scenario.wait_for("two worker processes", lambda: len(_children(proc.pid)) >= 2, 60)

            ids: list[str] = []
            errors: list[str] = []
            threads = [threading.Thread(target=_post_reports, args=(port, c, ids, errors)) for c in range(CLIENTS)]
            for t in threads:
                t.start()
            for t in threads:
                t.join(120)
            assert errors == []
            assert len(ids) == CLIENTS * PER_CLIENT and len(set(ids)) == len(ids)

            sessions = make_sessionmaker(engine)
            with sessions() as s:
                stored = Counter(s.scalars(select(Report.id)).all())
            assert stored == Counter(ids)  # every 202 in the database, once; nothing else

            def outbox_empty() -> bool:
                with sessions() as s:
                    return int(s.scalar(select(func.count()).select_from(BusMessage)) or 0) == 0

            scenario.wait_for("the relay to empty the outbox", outbox_empty, 60)
            topic = kafka_topic(unique_topic_prefix, "reports.submitted")
            consumer = KafkaConsumer(bootstrap_servers=kafka_brokers, enable_auto_commit=False,
                                     consumer_timeout_ms=1000)
            try:
                parts = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic) or ())]
                consumer.assign(parts)
                consumer.seek_to_beginning(*parts)
                ends = consumer.end_offsets(parts)
                published: Counter[str] = Counter()

                def read_to_end() -> bool:
                    for records in consumer.poll(timeout_ms=1000).values():
                        for r in records:
                            published[json.loads(r.value)["report_id"]] += 1
                    return all(consumer.position(p) >= ends[p] for p in parts)

                scenario.wait_for("every published message read", read_to_end, 60, 0)
            finally:
                consumer.close()
            assert published == Counter(ids)  # each report's message once: one relay, no repeats
        finally:
            engine.dispose()
            try:
                os.killpg(proc.pid, signal.SIGTERM)
                proc.wait(20)
            except (ProcessLookupError, subprocess.TimeoutExpired):
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(5)
            scenario.delete_topics(kafka_brokers, unique_topic_prefix)
