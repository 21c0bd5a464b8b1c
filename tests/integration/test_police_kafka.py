"""The police decide when, on the distributed runtime: real Kafka, real PostgreSQL, the stages
(ingest, classify, notify, escalate with its hold timer) as separate ``hotline serve --stage``
processes, the web app over real HTTP on loopback (its outbox published by a relay, as ``hotline
serve --stage web`` does), ``hotline police feed --follow`` as a subprocess, and a real SMTP
server (aiosmtpd) counting what arrives.

With ``HOTLINE_POLICE_HOLD_SECONDS`` short and real (a fake clock cannot span processes), four
analyst-confirmed items at an NL hoster:

- every escalation is readable in the police feed within one second of the analyst's decision
  (the assessment POST's answer, i.e. its commit, to the feed printing the line);
- A gets no police action: the hold timer releases it and exactly one NTD follows;
- B is put on hold: it is not released after its due time (D, confirmed after B and not
  held, is released by the timer meanwhile, so the timer did pass B's due time); the police
  release it and exactly one NTD follows;
- C is put on hold; escalate and notify are stopped, C is released, escalate starts again and
  records the outcome while notify is still down, then notify starts: exactly one NTD.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy.orm import Session, sessionmaker

from doubles.loopback import free_port, serve_app
from entrypoints.bootstrap import bootstrap
from entrypoints.web import create_app
from hashing.synthetic import photo_like_jpeg
from hotline.config import Settings
from hotline.storage.engine import make_engine, make_sessionmaker, migrate
from hotline.storage.models import Escalation
from hotline.storage.unit_of_work import SqlUnitOfWork
from hotline.web.auth import new_token
from schemas.reports import ReportSubmitted
from tests.integration import scenario
from tests.integration.scenario import (
    HOSTER_B,
    NL_B,
    KafkaPipeline,
    StageProcesses,
    World,
    wait_for,
)
from tests.integration.test_kafka_pipeline import worker_env

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]

HOLD_SECONDS = 5.0
FEED_WITHIN_SECONDS = 1.0
STAGES = ("ingest", "classify", "notify", "escalate")
WAIT = 90.0


@pytest.fixture(scope="module")
def police_db(pg_url: str) -> Iterator[str]:
    with scenario.fresh_pg_database(pg_url, "kpolice") as url:
        migrate(url)
        yield url


@pytest.fixture
def db_sessions(police_db: str) -> Iterator[sessionmaker[Session]]:
    engine = make_engine(police_db)
    try:
        yield make_sessionmaker(engine)
    finally:
        engine.dispose()


class Feed:
    """``hotline police feed --follow`` in a subprocess; records when each line arrived."""

    def __init__(self, env: dict[str, str], log: Path) -> None:
        self.lines: list[tuple[float, dict[str, Any]]] = []
        self._lock = threading.Lock()
        self._err = open(log, "wb")  # noqa: SIM115 - closed in stop
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "entrypoints.cli", "police", "feed", "--follow"],
            env={**os.environ, **env}, stdout=subprocess.PIPE, stderr=self._err, stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        import json

        assert self.proc.stdout is not None
        for raw in self.proc.stdout:
            arrived = time.monotonic()
            with self._lock:
                self.lines.append((arrived, json.loads(raw)))

    def arrival(self, item_id: str) -> float | None:
        with self._lock:
            return next((t for t, m in self.lines if m["item_id"] == item_id), None)

    def count(self, item_id: str) -> int:
        with self._lock:
            return sum(m["item_id"] == item_id for _, m in self.lines)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self._err.close()


@dataclass
class Deployment:
    pipeline: KafkaPipeline
    procs: StageProcesses
    api: httpx.Client  # the web app
    tokens: dict[str, str]  # role -> token
    env: dict[str, str]  # the workers' environment (the feed subprocess gets it too)


@contextlib.contextmanager
def deployed(
    w: World, database_url: str, sessions: sessionmaker[Session], brokers: str, prefix: str, log_dir: Path,
) -> Iterator[Deployment]:
    log_dir.mkdir(exist_ok=True)
    env = {**worker_env(w, database_url, brokers, prefix), "HOTLINE_POLICE_HOLD_SECONDS": str(HOLD_SECONDS),
           "HOTLINE_INDEX_DIR": "none"}
    pipeline = KafkaPipeline(brokers, prefix, sessions, relay=True)  # the web app's outbox relay
    procs = StageProcesses(env, log_dir)
    settings = Settings(database_url=database_url, kafka_brokers=brokers, topic_prefix=prefix,
                        police_hold_seconds=HOLD_SECONDS, index_dir="none", **w.settings_kwargs())
    system = bootstrap(settings, run_migrations=False)
    tokens = {role: new_token() for role in ("analyst", "police")}
    with sessions() as s:
        store = SqlUnitOfWork(s)
        for role, token in tokens.items():
            store.users.add(f"kafka-{role}-{token[:6]}", role, token)
        store.commit()
    port = free_port()
    server, thread = serve_app(create_app(system), port)
    client = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30, trust_env=False)
    try:
        for stage in STAGES:
            procs.start(stage)
        yield Deployment(pipeline, procs, client, tokens, env)
    except BaseException as exc:
        codes = procs.stop_all()
        raise AssertionError(f"{exc}\nexit codes {codes}\n{procs.logs()}") from exc
    finally:
        procs.stop_all()
        client.close()
        server.should_exit = True
        thread.join(10)
        system.close()
        pipeline.close()


def escalation(sessions: sessionmaker[Session], escalation_id: str) -> Escalation | None:
    with sessions() as s:
        return s.get(Escalation, escalation_id)


def test_police_hold_release_and_hold_time_on_kafka(
    tmp_path: Path, kafka_brokers: str, police_db: str, db_sessions: sessionmaker[Session], unique_topic_prefix: str,
) -> None:
    sessions = db_sessions
    prefix = unique_topic_prefix + "."
    with scenario.world(tmp_path) as w, deployed(w, police_db, sessions, kafka_brokers, prefix, tmp_path / "logs") as d:
        pipeline, procs, api = d.pipeline, d.procs, d.api
        analyst = {"Authorization": f"Bearer {d.tokens['analyst']}"}
        police = {"Authorization": f"Bearer {d.tokens['police']}"}
        feed = Feed(d.env, tmp_path / "logs" / "feed.log")
        try:
            # Four pieces of new material at an NL hoster: each waits for an analyst.
            urls = {}
            for n, name in enumerate("ABCD"):
                path = f"/police/{name}.jpg"
                w.sites[NL_B].add(path, "image/jpeg", photo_like_jpeg(320, 240, seed=900_000 + n * 7 + os.getpid() % 97))
                urls[name] = w.url(NL_B, path)
                pipeline.submit(ReportSubmitted(channel="api", urls=[urls[name]]))
            items = {}
            for name, url in urls.items():
                wait_for(f"{name} waiting for an analyst",
                         lambda u=url: scenario.item_state(sessions, u) == "awaiting_assessment", WAIT)  # type: ignore[misc]
                item = scenario.item_for_url(sessions, url)
                assert item is not None
                items[name] = item.id

            def confirm(name: str) -> float:
                r = api.post(f"/api/v1/items/{items[name]}/assessment", headers=analyst,
                             json={"verdict": "illegal", "category": "baseline"})
                assert r.status_code == 200 and r.json()["state"] == "escalated", r.text
                return time.monotonic()  # committed: the answer comes after the commit

            def in_feed(name: str, decided: float) -> float:
                arrived = wait_for(f"{name} in the police feed", lambda: feed.arrival(items[name]), WAIT, 0.01)
                return arrived - decided

            def post(name: str, action: str, **body: str) -> httpx.Response:
                return api.post(f"/api/v1/escalations/pol-{items[name]}/{action}", headers=police,
                                json=body or None)

            # A first escalation also tells us the feed is up (it reads from the beginning).
            in_feed("A", confirm("A"))
            latencies = {}
            decided = confirm("B")
            latencies["B"] = in_feed("B", decided)
            assert post("B", "hold", reason="investigation: keep it online").status_code == 200
            decided = confirm("C")
            latencies["C"] = in_feed("C", decided)
            assert post("C", "received").status_code == 200
            assert post("C", "hold", reason="search warrant pending").status_code == 200
            decided = confirm("D")
            latencies["D"] = in_feed("D", decided)
            assert all(t < FEED_WITHIN_SECONDS for t in latencies.values()), latencies

            # A and D: no hold came; the hold timer releases them, one NTD each.
            for name in "AD":
                wait_for(f"the NTD of {name} after the hold time",
                         lambda n=name: w.mail.count_by_notice()[f"ntd-{items[n]}"] >= 1, WAIT)  # type: ignore[misc]
                esc = escalation(sessions, f"pol-{items[name]}")
                assert esc is not None and esc.state == "released" and esc.released_by == "hold-timer"
                assert esc.outcome is not None and esc.outcome.startswith(f"notice ntd-{items[name]} to {HOSTER_B}")
            # B and C: on hold, past their due time (D, due after them, was released), untouched.
            for name in "BC":
                esc = escalation(sessions, f"pol-{items[name]}")
                assert esc is not None and esc.state == "on_hold" and esc.outcome is None
                assert esc.release_due_at is not None
                assert w.mail.count_by_notice()[f"ntd-{items[name]}"] == 0
                assert scenario.item_state(sessions, urls[name]) == "escalated"

            # B: the police release it: exactly one NTD.
            released = post("B", "release")
            assert released.status_code == 200 and released.json()["state"] == "released"
            assert post("B", "release").status_code == 409
            wait_for("the NTD of B after the release",
                     lambda: w.mail.count_by_notice()[f"ntd-{items['B']}"] >= 1, WAIT)
            mail = next(m for m in w.mail.snapshot() if m.notice_id == f"ntd-{items['B']}")
            assert mail.rcpt_tos == [HOSTER_B]
            report = scenario.checked_xarf(mail.message)
            assert report["classification"] == "baseline" and report["detection_method"] == "manual_review"

            # C: a restart between release and notice.
            assert procs.terminate("escalate") == 0 and procs.terminate("notify") == 0
            assert post("C", "release").status_code == 200
            procs.restart("escalate")
            wait_for("escalate to record C's outcome after its restart",
                     lambda: (e := escalation(sessions, f"pol-{items['C']}")) is not None and e.outcome, WAIT)
            assert w.mail.count_by_notice()[f"ntd-{items['C']}"] == 0  # notify is still down
            procs.restart("notify")
            wait_for("the NTD of C after the restart",
                     lambda: w.mail.count_by_notice()[f"ntd-{items['C']}"] >= 1, WAIT)
            wait_for("every item notice_sent",
                     lambda: all(scenario.item_state(sessions, u) == "notice_sent" for u in urls.values()), WAIT)

            # Exactly one NTD each, whatever was retried or restarted; each escalation once in the feed.
            counts = w.mail.count_by_notice()
            assert {n: counts[f"ntd-{items[n]}"] for n in "ABCD"} == dict.fromkeys("ABCD", 1), counts
            assert all(feed.count(items[n]) == 1 for n in "ABCD")
            actions = pipeline.published("escalations.actions")
            assert sorted(m["action_id"] for m in actions if m["action"] == "release") == sorted(
                f"pol-{items[n]}:release" for n in "ABCD")
            with sessions() as s:
                assert SqlUnitOfWork(s).audit.verify() == []
        finally:
            feed.stop()
