"""``HOTLINE_STAGE_NICE`` on Kafka + PostgreSQL: with the same environment, a stage process
(``serve --stage ingest``) runs at the lower priority in every one of its threads (faust's,
kafka-python's, the executor's: Linux keeps a nice value per thread), and so does its
autogroup, while the web process keeps its own; the lowered stage still does its work (the
report posted to the web process is ingested)."""

from __future__ import annotations

import http.client
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from sqlalchemy import select

from doubles.loopback import free_port
from hotline.runtime.kafka import create_topics
from hotline.storage.engine import make_engine, make_sessionmaker, migrate
from hotline.storage.models import Report
from tests.integration import scenario

pytestmark = pytest.mark.integration

NICE = 9


def _thread_nices(pid: int) -> list[int]:
    """The nice value of each thread of ``pid`` (field 19 of /proc/PID/task/TID/stat)."""
    nices = []
    for stat in Path(f"/proc/{pid}/task").glob("*/stat"):
        try:
            nices.append(int(stat.read_text().rsplit(")", 1)[1].split()[16]))
        except (OSError, IndexError):
            continue  # the thread ended while we looked
    return nices


def _group_nice(pid: int) -> str | None:
    group = Path(f"/proc/{pid}/autogroup")
    return group.read_text().split("nice")[-1].strip() if group.exists() else None


def _post(port: int) -> str | None:
    try:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
        conn.request("POST", "/api/v1/reports", json.dumps({"urls": ["https://nice.example.com/a.jpg"]}),
                     {"Content-Type": "application/json"})
        resp = conn.getresponse()
        body = resp.read()
    except OSError:
        return None
    return str(json.loads(body)["report_id"]) if resp.status == 202 else None


def test_a_stage_process_runs_every_thread_at_the_lower_priority_and_the_web_process_does_not(
    kafka_brokers: str, pg_url: str, unique_topic_prefix: str, tmp_path: Path
) -> None:
    with scenario.fresh_pg_database(pg_url, "nice") as db:
        migrate(db)
        create_topics(kafka_brokers, unique_topic_prefix, 1)
        env = {**os.environ, "HOTLINE_DATABASE_URL": db, "HOTLINE_KAFKA_BROKERS": kafka_brokers,
               "HOTLINE_TOPIC_PREFIX": unique_topic_prefix, "HOTLINE_KAFKA_PARTITIONS": "1",
               "HOTLINE_REPORT_RATE_PER_MINUTE": "0", "HOTLINE_INDEX_DIR": "none",
               "HOTLINE_STAGE_NICE": str(NICE)}
        port = free_port()
        procs = {}
        for name, args in (("ingest", ["--stage", "ingest"]), ("web", ["--stage", "web", "--port", str(port)])):
            with open(tmp_path / f"{name}.log", "wb") as out:
                procs[name] = subprocess.Popen([sys.executable, "-m", "entrypoints.cli", "serve", *args], env=env,
                                               stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                               start_new_session=True)
        engine = make_engine(db)
        try:
            report_id = scenario.wait_for("the web process to take a report", lambda: _post(port), 120, 0.3)
            sessions = make_sessionmaker(engine)

            def ingested() -> bool:
                with sessions() as s:
                    return s.scalar(select(Report.status).where(Report.id == report_id)) != "received"

            scenario.wait_for("the lowered ingest stage to ingest it", ingested, 120, 0.2)
            stage = _thread_nices(procs["ingest"].pid)
            assert len(stage) >= 3, stage  # faust's loop, kafka-python's and the executor's threads at least
            assert set(stage) == {NICE}, stage
            assert set(_thread_nices(procs["web"].pid)) == {0}
            if _group_nice(procs["ingest"].pid) is not None:
                assert _group_nice(procs["ingest"].pid) == str(NICE)
                assert _group_nice(procs["web"].pid) == "0"
        finally:
            engine.dispose()
            for proc in procs.values():
                os.killpg(proc.pid, signal.SIGTERM)
            for proc in procs.values():
                try:
                    proc.wait(30)
                except subprocess.TimeoutExpired:
                    os.killpg(proc.pid, signal.SIGKILL)
                    proc.wait(10)
