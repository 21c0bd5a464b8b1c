"""Crash harness: synthetic reports through the distributed runtime while stage processes die.

Why: the platform promises that a crash loses nothing and duplicates no takedown notice and
no partner forward (state committed before the offset moves, deterministic ids for one-time
effects, notices marked ``sending`` before SMTP so a crash mid-conversation ends
``notice_unconfirmed`` instead of a second mail). This puts that promise under load: the five
stages (ingest, classify, notify, escalate, followup) run as separate ``hotline serve --stage
NAME`` processes on real Kafka and PostgreSQL, reports arrive at a steady rate over HTTP at
the web process (``hotline serve --stage web``: the report API and its outbox relay), and a
randomly chosen process, the web process among them, is SIGKILLed at a random moment and
started again, at least ``--kills`` times. A report the API acknowledged (202) must come out
the other end although the web process may die right after answering; a request refused or
failed while it is down is retried with the same ``Idempotency-Key``, so no report is stored
twice (``--no-web`` produces the reports straight to Kafka instead). With ``--broker-restart`` / ``--db-restart`` (on by default) the harness
starts its own Kafka and PostgreSQL on ports of their own (deploy/kafka, deploy/postgres) and
restarts each once during the run; the shared services (9092, 5432) are never touched.

The world is loopback only: three hosting sites (``LoopbackSite``) serving synthetic images
the bank knows, a real SMTP server (``SmtpSink``, aiosmtpd) and a partner hotline
(``PartnerEndpoint``). Reports are of three kinds: known material at an NL hoster (a notice
e-mailed: ``notice_sent``; ``notice_unconfirmed`` when notify died inside the SMTP
conversation, which the platform will not repeat), known material at a DE hoster (forwarded to
the partner: ``forwarded``) and a URL that is gone (``closed_offline``).

At the end it waits for the pipeline to drain (every item in its expected state, every
consumer group caught up with its input topics, the outbox empty) and prints a table: kills,
restarts, reports, lost (a report not accepted or an item not in its expected state), duplicate
notices (copies beyond the first per ``X-Hotline-Notice-Id`` at the SMTP sink), duplicate
forwards (a second forward handled by the partner for one item, or one ``Idempotency-Key``
handled twice), time to drain. It stops by itself within ``--max-minutes``.

    python -m benchmarks.crash_harness --reports 2000 --kills 20 --max-minutes 15
    python -m benchmarks.crash_harness --reports 100 --kills 5 --no-broker-restart --no-db-restart \
        --brokers 127.0.0.1:9092 --database-url postgresql+psycopg://postgres@127.0.0.1:5432/hotline_test

Exit code 0 when nothing was lost or duplicated and the run drained in time. Run from the
repository root; its own services need Java and the Kafka jars (``deploy/kafka/fetch.sh``) and
the Debian ``postgresql`` package. A short version runs in the test suite
(``tests/integration/test_crash_harness.py``).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import platform
import random
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

STAGES = ("ingest", "classify", "notify", "escalate", "followup")
WEB = "web"  # ``hotline serve --stage web``: the report API and its outbox relay
# The shared services of the machine (and of CI): the harness never starts, stops or restarts
# anything on these ports.
SHARED_PORTS = frozenset({5432, 9092, 9093, 15432, 19092})
EXPECTED = {
    "nl": frozenset({"notice_sent", "notice_unconfirmed"}),
    "de": frozenset({"forwarded"}),
    "gone": frozenset({"closed_offline"}),
}


@dataclass
class Options:
    reports: int = 2000
    kills: int = 20
    max_minutes: float = 15.0
    rate: float = 0.0  # reports per second; 0: spread the reports over ~40% of the time budget
    seed: int | None = None
    brokers: str | None = None  # use this broker (no broker restart possible)
    database_url: str | None = None  # admin URL of a server to make a fresh database on
    broker_restart: bool = True
    db_restart: bool = True
    kafka_port: int = 29092
    kafka_controller_port: int = 29093
    pg_port: int = 25432
    log_dir: Path | None = None
    partitions: int = 3
    # Reports over HTTP through the web process (``hotline serve --stage web``), which is
    # killed at random too; off: produced straight to Kafka, as a channel would.
    web: bool = True
    out: Callable[[str], None] = print


@dataclass
class Result:
    kills: int = 0
    restarts: int = 0
    broker_restarts: int = 0
    db_restarts: int = 0
    reports: int = 0
    submitted: int = 0
    send_retries: int = 0  # submissions retried (web: with the same Idempotency-Key)
    lost: int = 0
    unconfirmed: int = 0
    duplicate_notices: int = 0
    duplicate_forwards: int = 0
    resent_forwards: int = 0  # POSTs the partner answered from its dedupe (same key again)
    notices_received: int = 0
    expected_notices: int = 0  # reports of the "nl" kind (one notice each)
    expected_forwards: int = 0  # reports of the "de" kind (one forward each)
    forwards_received: int = 0
    drain_seconds: float | None = None
    total_seconds: float = 0.0
    drained: bool = False
    kills_by_stage: Counter[str] = field(default_factory=Counter)
    lost_detail: list[str] = field(default_factory=list)
    duplicate_detail: list[str] = field(default_factory=list)
    events: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return (
            self.drained
            and self.lost == 0
            and self.duplicate_notices == 0
            and self.duplicate_forwards == 0
        )

    def table(self) -> str:
        rows = [
            (
                "stage kills (SIGKILL)",
                f"{self.kills}  ({', '.join(f'{k} {v}' for k, v in sorted(self.kills_by_stage.items()))})",
            ),
            ("stage restarts", str(self.restarts)),
            ("broker restarts", str(self.broker_restarts)),
            ("database restarts", str(self.db_restarts)),
            ("reports submitted", f"{self.submitted} of {self.reports}"),
            ("submissions retried (same Idempotency-Key)", str(self.send_retries)),
            ("lost", str(self.lost)),
            ("notice_unconfirmed (kill inside SMTP)", str(self.unconfirmed)),
            ("notices received (SMTP sink)", str(self.notices_received)),
            ("duplicate notices", str(self.duplicate_notices)),
            ("forwards handled (partner sink)", str(self.forwards_received)),
            ("duplicate forwards", str(self.duplicate_forwards)),
            ("re-sent forwards deduped by key", str(self.resent_forwards)),
            (
                "time to drain after last crash",
                "-" if self.drain_seconds is None else f"{self.drain_seconds:.1f} s",
            ),
            ("total time", f"{self.total_seconds:.1f} s"),
            ("result", "OK" if self.ok else "FAILED"),
        ]
        width = max(len(k) for k, _ in rows)
        lines = [f"  {k:<{width}}  {v}" for k, v in rows]
        return "\n".join(["crash harness", *lines])


# ---------------------------------------------------------------- own services (restartable)


def _refuse_shared(*ports: int) -> None:
    bad = SHARED_PORTS.intersection(ports)
    if bad:
        raise SystemExit(
            f"crash harness: port(s) {sorted(bad)} belong to the shared services; choose others"
        )


def _script(path: str, env: dict[str, str], *args: str, timeout: float = 240) -> str:
    done = subprocess.run(
        ["bash", str(ROOT / path), *args],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    if done.returncode != 0:
        raise RuntimeError(
            f"{path} {' '.join(args)} failed ({done.returncode}):\n{done.stdout}\n{done.stderr}"
        )
    return done.stdout.strip()


class OwnKafka:
    """A broker of the harness's own (deploy/kafka/start.sh with its own ports and directory)."""

    def __init__(self, port: int, controller_port: int, directory: Path) -> None:
        _refuse_shared(port, controller_port)
        self.env = {
            "HOTLINE_KAFKA_PORT": str(port),
            "HOTLINE_KAFKA_CONTROLLER_PORT": str(controller_port),
            "HOTLINE_KAFKA_DIR": str(directory),
            "HOTLINE_KAFKA_HEAP": "-Xms128m -Xmx384m",
        }
        self.brokers = f"127.0.0.1:{port}"

    def start(self) -> None:
        _script("deploy/kafka/start.sh", self.env)

    def stop(self, wipe: bool = False) -> None:
        _script("deploy/kafka/stop.sh", self.env, *(["--wipe"] if wipe else []))

    def restart(self) -> None:
        self.stop()
        self.start()


class OwnPostgres:
    """A PostgreSQL cluster of the harness's own (deploy/postgres/start.sh on its own port)."""

    def __init__(self, port: int) -> None:
        _refuse_shared(port)
        self.env = {"HOTLINE_PG_PORT": str(port)}
        self.url = ""

    def start(self) -> None:
        self.url = _script("deploy/postgres/start.sh", self.env).splitlines()[-1]

    def stop(self, wipe: bool = False) -> None:
        _script("deploy/postgres/stop.sh", self.env, *(["--wipe"] if wipe else []))

    def restart(self) -> None:
        self.stop()
        self.start()


# ---------------------------------------------------------------- the run


@dataclass
class Planned:
    report: Any  # ReportSubmitted
    kind: str  # nl | de | gone
    accepted_id: str | None = None  # the report id the API answered (web submission)

    @property
    def report_id(self) -> str:
        """The id to look the report up by: the API's answer, else the planned message's (a
        report the API never acknowledged is then not found, and counted lost)."""
        return self.accepted_id or self.report.report_id


def plan_reports(w: Any, n: int, rng: random.Random) -> list[Planned]:
    """``n`` one-URL reports: 45% known at NL hosters, 45% known at the DE hoster, 10% gone."""
    from schemas.reports import ReportSubmitted
    from tests.integration.scenario import DE_C, NL_A, NL_B

    planned = []
    run = uuid.uuid4().hex[:6]
    for i in range(n):
        roll = rng.random()
        image = w.known_images[i % len(w.known_images)]
        if roll < 0.45:
            host = NL_A if i % 2 == 0 else NL_B
            path, kind = f"/crash-{run}/{i}.jpg", "nl"
            w.sites[host].add(path, "image/jpeg", image)
        elif roll < 0.9:
            host, path, kind = DE_C, f"/crash-{run}/{i}.jpg", "de"
            w.sites[host].add(path, "image/jpeg", image)
        else:
            host, path, kind = NL_A, f"/crash-{run}/gone-{i}.jpg", "gone"
        planned.append(Planned(ReportSubmitted(channel="api", urls=[w.url(host, path)]), kind))
    return planned


class Submitter(threading.Thread):
    """Produces the reports to ``reports.submitted`` at a steady rate, as a channel would.
    A send that fails (broker restarting) is retried until the run's deadline."""

    def __init__(
        self, brokers: str, topic: str, planned: list[Planned], rate: float, deadline: float
    ) -> None:
        super().__init__(name="submitter", daemon=True)
        self.brokers, self.topic, self.planned, self.rate, self.deadline = (
            brokers,
            topic,
            planned,
            rate,
            deadline,
        )
        self.sent = 0
        self.retries = 0
        self.finished_at: float | None = None  # time.monotonic() when the last report was sent
        self.stop_event = threading.Event()

    def run(self) -> None:
        from kafka import KafkaProducer
        from kafka.errors import KafkaError

        producer = KafkaProducer(bootstrap_servers=self.brokers.split(","), acks="all", retries=5)
        try:
            t0 = time.monotonic()
            for i, p in enumerate(self.planned):
                due = t0 + i / self.rate
                if self.stop_event.wait(max(0.0, due - time.monotonic())):
                    return
                while True:
                    try:
                        producer.send(
                            self.topic, key=p.report.report_id.encode(), value=p.report.to_bytes()
                        ).get(timeout=20)
                        break
                    except KafkaError:
                        self.retries += 1
                        if time.monotonic() > self.deadline or self.stop_event.wait(1.0):
                            return
                self.sent += 1
            self.finished_at = time.monotonic()
        finally:
            producer.close(timeout=10)


class HttpSubmitter(Submitter):
    """Posts the reports to the web process's ``POST /api/v1/reports``, each with an
    ``Idempotency-Key`` of its own. A request refused or failed (the web process killed or
    restarting, the database away: no answer, a 5xx, a 429) is retried with the same key until
    it is acknowledged, so a report is stored once however often it is sent; a 202 is a
    promise the pipeline must keep even if the web process dies right after it."""

    def __init__(self, base_url: str, planned: list[Planned], rate: float, deadline: float) -> None:
        super().__init__("", "", planned, rate, deadline)
        self.base_url = base_url
        self.refused: list[str] = []  # requests answered with a 4xx other than 429: a bug

    def run(self) -> None:
        import httpx

        with httpx.Client(base_url=self.base_url, timeout=20, trust_env=False) as http:
            t0 = time.monotonic()
            for i, p in enumerate(self.planned):
                due = t0 + i / self.rate
                if self.stop_event.wait(max(0.0, due - time.monotonic())):
                    return
                body = {"urls": p.report.urls}
                headers = {"Idempotency-Key": p.report.report_id}
                while True:
                    try:
                        r = http.post("/api/v1/reports", json=body, headers=headers)
                    except httpx.HTTPError:
                        r = None
                    if r is not None and r.status_code in (200, 201, 202):
                        p.accepted_id = r.json()["report_id"]
                        break
                    if r is not None and 400 <= r.status_code < 500 and r.status_code != 429:
                        self.refused.append(f"{p.report.urls[0]}: HTTP {r.status_code} {r.text[:200]}")
                        break
                    self.retries += 1
                    if time.monotonic() > self.deadline or self.stop_event.wait(0.5):
                        return
                self.sent += 1
            self.finished_at = time.monotonic()


def group_lag(brokers: str, prefix: str, stages: Sequence[str] | None = None, *,
              status_updates: bool = False) -> int | None:
    """Messages not yet committed by the stage's consumer group, summed over every stage's (or
    only ``stages``') input topics as its processes read them: escalate reads the pipeline's
    events only when a partner takes status updates (``status_updates``; ``hotline.kernel.stage``,
    "Unread inputs"). None when the broker cannot be asked right now."""
    from kafka import KafkaAdminClient, KafkaConsumer, TopicPartition
    from kafka.errors import KafkaError

    from hotline.runtime.kafka import app_id_for, kafka_topic
    from services.classify.stage import ClassifyStage
    from services.escalate.stage import EscalateStage, unread_when
    from services.followup.stage import FollowupStage
    from services.ingest.stage import IngestStage
    from services.notify.stage import NotifyStage

    inputs = {
        "ingest": IngestStage.inputs,
        "classify": ClassifyStage.inputs,
        "notify": NotifyStage.inputs,
        "escalate": tuple(t for t in EscalateStage.inputs if t not in unread_when(status_updates)),
        "followup": FollowupStage.inputs,
    }

    admin = consumer = None
    try:
        admin = KafkaAdminClient(
            bootstrap_servers=brokers.split(","), client_id="crash-harness-lag"
        )
        consumer = KafkaConsumer(
            bootstrap_servers=brokers.split(","), group_id=None, enable_auto_commit=False
        )
        lag = 0
        for stage, topics in inputs.items():
            if stages is not None and stage not in stages:
                continue
            group = app_id_for(prefix, stage)
            committed = admin.list_group_offsets(group).get(group, {})
            for logical in topics:
                topic = kafka_topic(prefix, logical)
                parts = consumer.partitions_for_topic(topic) or set()
                tps = [TopicPartition(topic, p) for p in parts]
                for tp, end in consumer.end_offsets(tps).items():
                    meta = committed.get(tp)
                    lag += end - (meta.offset if meta is not None and meta.offset >= 0 else 0)
        return lag
    except (KafkaError, OSError, ValueError):
        return None
    finally:
        if consumer is not None:
            consumer.close()
        if admin is not None:
            admin.close()


def outcome(
    sessions: Any, planned: list[Planned]
) -> tuple[dict[str, str | None], dict[str, str | None]]:
    """Report id -> report status, and URL -> item state, for the planned reports."""
    from sqlalchemy import select

    from hotline.storage.models import Item, Report

    ids = [p.report_id for p in planned]
    urls = [p.report.urls[0] for p in planned]
    with sessions() as s:
        statuses = dict(s.execute(select(Report.id, Report.status).where(Report.id.in_(ids))).all())
        states = dict(s.execute(select(Item.url, Item.state).where(Item.url.in_(urls))).all())
    return (
        {i: statuses.get(i) for i in ids},
        {u: states.get(u) for u in urls},
    )


def settled(sessions: Any, planned: list[Planned]) -> bool:
    statuses, states = outcome(sessions, planned)
    if any(v != "accepted" for v in statuses.values()):
        return False
    return all(states[p.report.urls[0]] in EXPECTED[p.kind] for p in planned)


def outbox_empty(sessions: Any) -> bool:
    from sqlalchemy import select

    from hotline.storage.models import BusMessage, Forward

    with sessions() as s:
        return s.scalar(select(BusMessage.id).limit(1)) is None and (
            s.scalar(select(Forward.id).where(Forward.status == "pending").limit(1)) is None
        )


def _safe(probe: Callable[[], bool]) -> bool:
    """A probe that fails while a service restarts counts as "not yet"."""
    try:
        return probe()
    except Exception:  # noqa: BLE001 - the database or broker is away for a moment
        return False


@contextlib.contextmanager
def fresh_database(admin_url: str) -> Iterator[str]:
    """A new database for the run, dropped at the end over a new connection (the server may
    have been restarted in between, which kills pooled ones)."""
    from sqlalchemy import create_engine, text
    from sqlalchemy.engine import make_url
    from sqlalchemy.pool import NullPool

    name = f"hotline_crash_{uuid.uuid4().hex[:10]}"
    url = make_url(admin_url)

    def admin(sql: str) -> None:
        engine = create_engine(url, isolation_level="AUTOCOMMIT", poolclass=NullPool)
        try:
            with engine.connect() as conn:
                conn.execute(text(sql))
        finally:
            engine.dispose()

    admin(f'CREATE DATABASE "{name}"')
    try:
        yield url.set(database=name).render_as_string(hide_password=False)
    finally:
        with contextlib.suppress(Exception):
            admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def run_harness(opts: Options) -> Result:
    """One run; always cleans up (processes, topics, database, own services)."""
    rng = random.Random(opts.seed)
    result = Result(reports=opts.reports)
    started = time.monotonic()
    hard_deadline = started + opts.max_minutes * 60
    own_kafka = opts.broker_restart or not opts.brokers
    own_pg = opts.db_restart or not opts.database_url
    tmp = Path(tempfile.mkdtemp(prefix="hotline-crash-"))
    log_dir = opts.log_dir or tmp / "logs"
    log_dir.mkdir(parents=True, exist_ok=True)
    say = opts.out
    with contextlib.ExitStack() as stack:
        stack.callback(shutil.rmtree, tmp, True)
        kafka: OwnKafka | None = None
        pg: OwnPostgres | None = None
        if own_kafka:
            kafka = OwnKafka(opts.kafka_port, opts.kafka_controller_port, tmp / "kafka")
            say(f"starting own Kafka on {kafka.brokers}")
            kafka.start()
            stack.callback(kafka.stop, True)
        if own_pg:
            pg = OwnPostgres(opts.pg_port)
            say(f"starting own PostgreSQL on 127.0.0.1:{opts.pg_port}")
            pg.start()
            stack.callback(pg.stop, True)
        brokers = kafka.brokers if kafka else str(opts.brokers)
        admin_url = pg.url if pg else str(opts.database_url)
        _run(
            opts,
            rng,
            result,
            stack,
            tmp,
            log_dir,
            brokers,
            admin_url,
            kafka,
            pg,
            started,
            hard_deadline,
        )
    result.total_seconds = time.monotonic() - started
    return result


def _run(
    opts: Options,
    rng: random.Random,
    result: Result,
    stack: contextlib.ExitStack,
    tmp: Path,
    log_dir: Path,
    brokers: str,
    admin_url: str,
    kafka: OwnKafka | None,
    pg: OwnPostgres | None,
    started: float,
    hard_deadline: float,
) -> None:
    from hotline.runtime.kafka import create_topics
    from hotline.storage.engine import make_engine, make_sessionmaker, migrate
    from hotline.storage.unit_of_work import SqlUnitOfWork
    from tests.integration import scenario

    say = opts.out

    def event(what: str) -> None:
        result.events.append(f"{time.monotonic() - t0:7.1f}s {what}")
        say(result.events[-1].strip())

    def supervise() -> None:
        # Stages that died by themselves (a worker started while the broker was down exits)
        # are restarted, as an operator's supervisor would; each is counted and listed.
        for name in list(procs.procs):
            if not procs.alive(name):
                event(f"{name} had exited (code {procs.procs[name].returncode}); restarted")
                procs.restart(name)
                result.restarts += 1

    t0 = time.monotonic()
    db_url = stack.enter_context(fresh_database(admin_url))
    migrate(db_url)
    engine = make_engine(db_url)
    stack.callback(engine.dispose)
    sessions = make_sessionmaker(engine)
    w = stack.enter_context(scenario.world(tmp))
    planned = plan_reports(w, opts.reports, rng)
    with sessions() as s:
        scenario.load_bank(SqlUnitOfWork(s), w.known_images)
    prefix = f"crash{uuid.uuid4().hex[:8]}."
    create_topics(brokers, prefix, opts.partitions)
    stack.callback(_quietly, scenario.delete_topics, brokers, prefix)
    env = {
        **w.env(),
        "HOTLINE_DATABASE_URL": db_url,
        "HOTLINE_KAFKA_BROKERS": brokers,
        "HOTLINE_TOPIC_PREFIX": prefix,
        "HOTLINE_KAFKA_PARTITIONS": str(opts.partitions),
        "HOTLINE_FORWARD_RETRY_SECONDS": "0.5",
        "HOTLINE_FORWARD_RETRY_MAX_SECONDS": "5",
        "HOTLINE_FORWARD_TICK_SECONDS": "0.5",
        # A forward in flight in a killed escalate is made again after this (the partner
        # dedupes by Idempotency-Key); the default (300 s) would outlast a short run.
        "HOTLINE_FORWARD_REDISPATCH_SECONDS": "10",
        "PYTHONPATH": str(ROOT),
        "HOTLINE_REPORT_RATE_PER_MINUTE": "0",  # one client sends every report
    }
    procs = scenario.StageProcesses(env, log_dir)
    stack.callback(procs.stop_all)
    for stage in STAGES:
        procs.start(stage)
    killable: tuple[str, ...] = STAGES
    web_url = ""
    if opts.web:
        from doubles.loopback import free_port

        port = free_port()
        web_url = f"http://127.0.0.1:{port}"
        procs.start(WEB, "--host", "127.0.0.1", "--port", str(port))
        killable = (*STAGES, WEB)
        scenario.wait_for("the web process", lambda: _web_up(web_url), 90, interval=0.2)
    budget = hard_deadline - time.monotonic()
    rate = opts.rate or max(opts.reports / max(budget * 0.4, 1.0), 0.5)
    submit_seconds = opts.reports / rate
    say(
        f"{opts.reports} reports at {rate:.1f}/s over {submit_seconds:.0f}s, {opts.kills} kills, "
        f"broker restart {'on' if kafka and opts.broker_restart else 'off'}, "
        f"database restart {'on' if pg and opts.db_restart else 'off'}; logs in {log_dir}"
    )
    submitter = (
        HttpSubmitter(web_url, planned, rate, hard_deadline - 60)
        if opts.web
        else Submitter(brokers, prefix + "reports.submitted", planned, rate, hard_deadline - 60)
    )
    submitter.start()
    stack.callback(submitter.stop_event.set)

    # The chaos: kills spread over the submission period (at least a few seconds apart on
    # average, so a restarted worker sometimes gets to work before the next blow), the broker
    # restart after a third of the kills, the database restart after two thirds.
    gap = max(submit_seconds / (opts.kills + 1), 2.0)
    broker_at = opts.kills // 3 if kafka and opts.broker_restart else -1
    db_at = (2 * opts.kills) // 3 if pg and opts.db_restart else -1
    chaos_deadline = hard_deadline - max(90.0, (hard_deadline - started) * 0.25)
    last_crash = time.monotonic()

    def pause(seconds: float) -> None:
        end = time.monotonic() + seconds
        while (left := end - time.monotonic()) > 0:
            time.sleep(min(left, 0.5))
            supervise()

    for k in range(opts.kills):
        pause(rng.uniform(0.3, 1.7) * gap)  # a random moment
        if time.monotonic() > chaos_deadline:
            event(f"kills stopped at {k}: out of time")
            break
        stage = rng.choice(killable)
        procs.kill9(stage)
        result.kills += 1
        result.kills_by_stage[stage] += 1
        event(f"kill -9 {stage} (submitted {submitter.sent})")
        if rng.random() < 0.3:
            time.sleep(rng.uniform(0.0, 3.0))  # sometimes the stage stays dead a while
        procs.restart(stage)
        result.restarts += 1
        last_crash = time.monotonic()
        if k == broker_at and kafka is not None:
            event("broker stopping")
            kafka.restart()
            event("broker restarted")
            result.broker_restarts += 1
            last_crash = time.monotonic()
        if k == db_at and pg is not None:
            event("database stopping")
            pg.restart()
            event("database restarted")
            result.db_restarts += 1
            last_crash = time.monotonic()
    while submitter.is_alive() and time.monotonic() < hard_deadline - 60:
        pause(1.0)
    result.submitted = submitter.sent
    result.send_retries = submitter.retries
    if isinstance(submitter, HttpSubmitter):
        result.lost_detail += submitter.refused[:20]
    event(
        f"chaos over; {submitter.sent} reports submitted ({submitter.retries} send retries); draining"
    )
    drain_deadline = hard_deadline - 30
    drain_from = max(last_crash, submitter.finished_at or time.monotonic())

    def drained() -> bool:
        supervise()
        return (
            _safe(lambda: settled(sessions, planned))
            and _safe(lambda: outbox_empty(sessions))
            and group_lag(brokers, prefix) == 0
        )

    while time.monotonic() < drain_deadline:
        if drained():
            result.drained = True
            result.drain_seconds = time.monotonic() - drain_from
            event(f"drained in {result.drain_seconds:.1f}s")
            break
        time.sleep(1.0)
    _count(result, sessions, planned, w)
    if not result.drained:
        event("did not drain in time; last lines of the stage logs:\n" + procs.logs(15))


def _web_up(base_url: str) -> bool:
    import httpx

    try:
        return httpx.get(base_url + "/healthz", timeout=2, trust_env=False).status_code == 200
    except httpx.HTTPError:
        return False


def _quietly(fn: Callable[..., Any], *args: Any) -> None:
    with contextlib.suppress(Exception):
        fn(*args)


def _count(result: Result, sessions: Any, planned: list[Planned], w: Any) -> None:
    from sqlalchemy import select

    from hotline.storage.models import Item, Notice

    statuses, states = _safe_outcome(sessions, planned)
    for p in planned:
        rid, url = p.report_id, p.report.urls[0]
        if statuses.get(rid) != "accepted" or states.get(url) not in EXPECTED[p.kind]:
            result.lost += 1
            if len(result.lost_detail) < 20:
                result.lost_detail.append(
                    f"report {rid} ({p.kind}) status {statuses.get(rid)} item {states.get(url)} {url}"
                )
        if states.get(url) == "notice_unconfirmed":
            result.unconfirmed += 1
    mails = w.mail.count_by_notice()
    result.notices_received = sum(mails.values())
    for nid, n in mails.items():
        if n > 1 or nid == "?":
            result.duplicate_notices += n - 1 if nid != "?" else n
            result.duplicate_detail.append(f"notice {nid} e-mailed {n} times")
    result.expected_notices = sum(1 for p in planned if p.kind == "nl")
    result.expected_forwards = sum(1 for p in planned if p.kind == "de")
    # One notice per item; a notice recorded as sent must have reached the sink (else the
    # takedown request is lost although the database says it went out).
    with contextlib.suppress(Exception), sessions() as s:
        rows = s.execute(
            select(Notice.id, Notice.item_id, Notice.status)
            .join(Item, Item.id == Notice.item_id)
            .where(Item.url.in_([p.report.urls[0] for p in planned]))
        ).all()
        for item_id, n in Counter(r.item_id for r in rows).items():
            if n > 1:
                result.duplicate_notices += n - 1
                result.duplicate_detail.append(f"item {item_id} has {n} notices")
        for r in rows:
            if r.status == "sent" and mails.get(r.id, 0) == 0:
                result.lost += 1
                result.lost_detail.append(
                    f"notice {r.id} (item {r.item_id}) is sent but never arrived"
                )
    partner = w.partner
    with partner._lock:
        received = list(partner.received)
        handled = Counter(partner.handled)
        posts = list(partner.posts)
    result.forwards_received = len(received)
    for key, n in handled.items():
        if n > 1:
            result.duplicate_forwards += n - 1
            result.duplicate_detail.append(f"forward key {key} handled {n} times")
    per_item_fwd = Counter(f.body.get("item_id") for f in received)
    for item_id, n in per_item_fwd.items():
        if n > 1:
            result.duplicate_forwards += n - 1
            result.duplicate_detail.append(f"item {item_id} forwarded {n} times (distinct keys)")
    result.resent_forwards = sum(1 for p in posts if p.status == 200)


def _safe_outcome(
    sessions: Any, planned: list[Planned]
) -> tuple[dict[str, str | None], dict[str, str | None]]:
    for _ in range(30):
        try:
            return outcome(sessions, planned)
        except Exception:  # noqa: BLE001 - database restarting
            time.sleep(1.0)
    return {}, {}


def machine() -> str:
    cpus = os.cpu_count()
    mem = ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal"):
                mem = f", {int(line.split()[1]) // 1024} MiB RAM"
    return f"{platform.machine()}, {cpus} CPUs{mem}, Linux {platform.release()}, Python {platform.python_version()}"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    ap.add_argument("--reports", type=int, default=2000)
    ap.add_argument("--kills", type=int, default=20)
    ap.add_argument("--max-minutes", type=float, default=15.0)
    ap.add_argument(
        "--rate", type=float, default=0.0, help="reports per second (default: fit the time budget)"
    )
    ap.add_argument("--seed", type=int, default=None)
    ap.add_argument(
        "--brokers",
        default=os.environ.get("HOTLINE_TEST_KAFKA_BROKERS"),
        help="an existing broker (used only with --no-broker-restart)",
    )
    ap.add_argument(
        "--database-url",
        default=os.environ.get("HOTLINE_TEST_DATABASE_URL"),
        help="an existing PostgreSQL admin URL (used only with --no-db-restart)",
    )
    ap.add_argument("--broker-restart", action=argparse.BooleanOptionalAction, default=True)
    ap.add_argument("--db-restart", action=argparse.BooleanOptionalAction, default=True)
    ap.add_argument("--kafka-port", type=int, default=29092)
    ap.add_argument("--kafka-controller-port", type=int, default=29093)
    ap.add_argument("--pg-port", type=int, default=25432)
    ap.add_argument("--log-dir", type=Path, default=None, help="keep the stage logs here")
    ap.add_argument(
        "--web",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="submit over HTTP to hotline serve --stage web, and kill it too (default: on)",
    )
    a = ap.parse_args(argv)
    opts = Options(
        reports=a.reports,
        kills=a.kills,
        max_minutes=a.max_minutes,
        rate=a.rate,
        seed=a.seed,
        brokers=a.brokers,
        database_url=a.database_url,
        broker_restart=a.broker_restart,
        db_restart=a.db_restart,
        kafka_port=a.kafka_port,
        kafka_controller_port=a.kafka_controller_port,
        pg_port=a.pg_port,
        log_dir=a.log_dir,
        web=a.web,
        out=lambda s: print(f"[{time.strftime('%H:%M:%S')}] {s}", flush=True),
    )
    if opts.seed is None:
        opts.seed = random.randrange(1 << 30)
    print(f"machine: {machine()}; seed {opts.seed}", flush=True)
    result = run_harness(opts)
    for d in result.lost_detail + result.duplicate_detail:
        print("  ! " + d)
    print(result.table())
    return 0 if result.ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
