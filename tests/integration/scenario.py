"""The acceptance scenario, written once and run against both runtimes.

``World`` is the outside world on loopback: three hosting providers' web sites
(127.0.0.2 and 127.0.0.3 in NL, 127.0.0.4 in DE) serving synthetic images, the
hosting and partner files that describe them, a partner hotline endpoint and an
SMTP server that record what reaches them. ``Pipeline`` is what a runtime must
offer the scenario (submit a message, see what was published, reach the
database); ``tests/integration/test_embedded_pipeline.py`` and
``test_kafka_pipeline.py`` each provide one and call the same ``run_*``
functions, so the two runtimes are held to the same expectations (after
getsentry/arroyo: one suite, in-memory and real broker).

Nothing here talks to anything but 127.0.0.0/8.
"""

from __future__ import annotations

import contextlib
import json
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, TypeVar

import yaml
from sqlalchemy import create_engine, select, text
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session, sessionmaker

from doubles.loopback import LoopbackSite, PartnerEndpoint, SmtpSink
from hashing.image import hash_image
from hashing.synthetic import photo_like_jpeg
from hotline.storage.engine import make_engine, make_sessionmaker, migrate
from hotline.storage.models import Item, Notice, Report, ReportUrl
from hotline.storage.unit_of_work import SqlUnitOfWork
from schemas.reports import ReportSubmitted
from services.assessment.logic import assess
from tests.xarf_check import checked_xarf, plain_text

PARTNER_TOKEN_ENV = "HOTLINE_PARTNER_DE_TOKEN"
BANK_REFRESH_SECONDS = 1.0

HOSTER_A = "abuse@hoster-a.test"  # NL, 127.0.0.2
HOSTER_B = "abuse@hoster-b.test"  # NL, 127.0.0.3
HOSTER_C = "abuse@hoster-c.test"  # DE, 127.0.0.4

T = TypeVar("T")


def wait_for(
    what: str, probe: Callable[[], T | None], timeout: float, interval: float = 0.1
) -> T:
    """Poll ``probe`` until it returns something truthy; fail with ``what`` after ``timeout``."""
    deadline = time.monotonic() + timeout
    last: T | None = None
    while time.monotonic() < deadline:
        last = probe()
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what} (last: {last!r})")


@dataclass
class Case:
    """One reported URL and where it must end up."""

    name: str
    url: str
    state: str
    abuse: str | None = None  # the NTD must reach exactly this address
    forwarded: bool = False


@dataclass
class World:
    tmp: Path
    sites: dict[str, LoopbackSite]
    partner: PartnerEndpoint
    mail: SmtpSink  # ``mail.stop()`` takes the mail server away until ``mail.start()``
    hosting_file: Path
    partners_file: Path
    known_images: list[bytes]
    unknown_image: bytes
    token: str
    cases: dict[str, Case] = field(default_factory=dict)

    def url(self, host: str, path: str) -> str:
        return f"http://{host}:{self.sites[host].port}{path}"

    def env(self) -> dict[str, str]:
        """``HOTLINE_*`` variables for a worker process living in this world."""
        return {
            "HOTLINE_SMTP_HOST": "127.0.0.1",
            "HOTLINE_SMTP_PORT": str(self.mail.port),
            "HOTLINE_HOSTING_FILE": str(self.hosting_file),
            "HOTLINE_PARTNERS_FILE": str(self.partners_file),
            "HOTLINE_ALLOW_PRIVATE_FETCH": "true",
            "HOTLINE_FORWARD_RETRY_SECONDS": "0.2",
            PARTNER_TOKEN_ENV: self.token,
        }

    def settings_kwargs(self) -> dict[str, Any]:
        return {
            "smtp_host": "127.0.0.1",
            "smtp_port": self.mail.port,
            "hosting_file": self.hosting_file,
            "partners_file": self.partners_file,
            "allow_private_fetch": True,
            "forward_retry_seconds": 0.2,
        }


NL_A, NL_B, DE_C = "images.hoster-a.test", "cdn.hoster-b.test", "bilder.hoster-c.test"


@contextlib.contextmanager
def world(tmp: Path, site_delay: float = 0.0, smtp_delay: float = 0.0) -> Iterator[World]:
    """Start the loopback world; everything is shut down on exit."""
    # Fresh images per world: a database shared by several tests must not already know the
    # "unknown" image because an analyst confirmed it in an earlier test.
    base = uuid.uuid4().int % 1_000_000 * 10
    known = [photo_like_jpeg(320, 240, seed=base + i) for i in (1, 2, 3)]
    unknown = photo_like_jpeg(320, 240, seed=base + 4)
    token = uuid.uuid4().hex
    with contextlib.ExitStack() as running:
        sites: dict[str, LoopbackSite] = {}
        for name, ip in ((NL_A, "127.0.0.2"), (NL_B, "127.0.0.3"), (DE_C, "127.0.0.4")):
            sites[name] = LoopbackSite(ip, delay=site_delay).start()
            running.callback(sites[name].stop)
        partner = PartnerEndpoint(token, accept_status=202).start()
        running.callback(partner.stop)
        mail = SmtpSink(delay=smtp_delay).start()
        running.callback(mail.stop)
        yield _make_world(tmp, sites, partner, mail, known, unknown, token)


def _make_world(
    tmp: Path,
    sites: dict[str, LoopbackSite],
    partner: PartnerEndpoint,
    mail: SmtpSink,
    known: list[bytes],
    unknown: bytes,
    token: str,
) -> World:
    """The world around running servers, with the hosting and partner files that describe them."""
    hosting_file = tmp / "hosting.yaml"
    hosting_file.write_text(
        yaml.safe_dump(
            {
                "hosts": {NL_A: ["127.0.0.2"], NL_B: ["127.0.0.3"], DE_C: ["127.0.0.4"]},
                "networks": [
                    {"range": "127.0.0.2/32", "country": "NL", "asn": 64501, "hoster": "Hoster A B.V.", "abuse": HOSTER_A},
                    {"range": "127.0.0.3/32", "country": "NL", "asn": 64502, "hoster": "Hoster B B.V.", "abuse": HOSTER_B},
                    {"range": "127.0.0.4/32", "country": "DE", "asn": 64503, "hoster": "Hoster C GmbH", "abuse": HOSTER_C},
                ],
            }
        )
    )
    partners_file = tmp / "partners.yaml"
    partners_file.write_text(
        yaml.safe_dump(
            {
                "partners": [
                    {"country": "DE", "name": "Partner hotline DE", "endpoint": partner.url, "token_env": PARTNER_TOKEN_ENV}
                ]
            }
        )
    )
    return World(tmp, sites, partner, mail, hosting_file, partners_file, known, unknown, token)


def load_bank(store: SqlUnitOfWork, images: list[bytes]) -> None:
    """Put the hashes (never the bytes) of ``images`` into the bank as known material."""
    for data in images:
        h = hash_image(data)
        store.bank.add(
            category="baseline",
            source="test",
            md5=h.md5,
            sha1=h.sha1,
            sha256=h.sha256,
            pdq=h.pdq,
            phash=h.phash,
        )
    store.commit()


# ---------------------------------------------------------------- what a runtime offers


class Pipeline(Protocol):
    sessions: sessionmaker[Session]

    def submit(self, report: ReportSubmitted) -> None:
        """Publish a report on ``reports.submitted`` the way a channel would."""

    def submit_raw(self, value: bytes, key: bytes = b"") -> None:
        """Publish arbitrary bytes on ``reports.submitted`` (a broken producer)."""

    def published(self, topic: str) -> list[dict[str, Any]]:
        """Every message on ``topic`` so far, decoded from JSON."""

    def publish_outbox(self) -> None:
        """Make what the web process committed to ``bus_messages`` reach the stages."""


# ---------------------------------------------------------------- database probes


def item_for_url(sessions: sessionmaker[Session], url: str) -> Item | None:
    with sessions() as s:
        return s.scalar(select(Item).where(Item.url == url).order_by(Item.first_seen.desc()).limit(1))


def item_state(sessions: sessionmaker[Session], url: str) -> str | None:
    item = item_for_url(sessions, url)
    return item.state if item else None


def report_status(sessions: sessionmaker[Session], report_id: str) -> str | None:
    with sessions() as s:
        r = s.get(Report, report_id)
        return r.status if r else None


def states_by_url(sessions: sessionmaker[Session], urls: list[str]) -> dict[str, str | None]:
    return {u: item_state(sessions, u) for u in urls}


def notices_by_status(sessions: sessionmaker[Session]) -> Counter[str]:
    with sessions() as s:
        return Counter(s.scalars(select(Notice.status)).all())


# ---------------------------------------------------------------- the acceptance scenario


def build_acceptance_cases(w: World) -> dict[str, Case]:
    """Serve the scenario's content and return the cases, by name."""
    a, b, c = w.sites[NL_A], w.sites[NL_B], w.sites[DE_C]
    # Known material on a page at an NL hoster -> NTD to Hoster A.
    a.add("/gallery/1.jpg", "image/jpeg", w.known_images[0])
    a.add("/gallery/", "text/html", b'<html><body><img src="1.jpg" alt=""></body></html>')
    # Unknown material at another NL hoster -> analyst -> police.
    b.add("/new/photo.jpg", "image/jpeg", w.unknown_image)
    # Known material at a DE hoster -> forward to the German partner hotline.
    c.add("/bild.jpg", "image/jpeg", w.known_images[1])
    # Nothing at the URL any more -> closed offline (the site answers 404).
    cases = [
        Case("known_nl", w.url(NL_A, "/gallery/"), "notice_sent", abuse=HOSTER_A),
        Case("unknown_nl", w.url(NL_B, "/new/photo.jpg"), "escalated"),
        Case("known_de", w.url(DE_C, "/bild.jpg"), "forwarded", forwarded=True),
        Case("offline", w.url(NL_A, "/gone.jpg"), "closed_offline"),
    ]
    w.cases = {case.name: case for case in cases}
    return w.cases


def run_acceptance(p: Pipeline, w: World, timeout: float = 90.0) -> dict[str, float]:
    """The whole acceptance flow on ``p``; returns timings (seconds) per milestone."""
    t0 = time.monotonic()
    timings: dict[str, float] = {}
    cases = build_acceptance_cases(w)
    urls = [c.url for c in cases.values()]

    reports = [ReportSubmitted(channel="web", urls=[u], description=f"case {n}") for n, u in zip(cases, urls, strict=True)]
    # The same known URL reported a second time (with a different spelling): one item, one notice.
    duplicate = ReportSubmitted(channel="api", urls=[cases["known_nl"].url.replace("http://", "HTTP://")])
    ftp_only = ReportSubmitted(channel="web", urls=["ftp://files.hoster-a.test/x.jpg"])
    for r in reports:
        p.submit(r)
    p.submit(duplicate)
    p.submit_raw(b"{this is not json", key=b"broken")
    p.submit(ftp_only)

    # -- bad input ends on reports.rejected with a reason, and the stages go on
    def rejected_for(pred: Callable[[dict[str, Any]], bool]) -> dict[str, Any] | None:
        return next((m for m in p.published("reports.rejected") if pred(m)), None)

    broken = wait_for(
        "rejection of invalid JSON",
        lambda: rejected_for(lambda m: m.get("reason_code") == "malformed_message"),
        timeout,
    )
    assert broken["stage"] == "ingest" and broken["reason"]
    assert broken["payload"] == "{this is not json"
    ftp = wait_for(
        "rejection of the ftp:// report",
        lambda: rejected_for(lambda m: m.get("report_id") == ftp_only.report_id),
        timeout,
    )
    assert ftp["reason_code"] == "unsupported_scheme", ftp
    assert "ftp" in ftp["reason"]
    wait_for("ftp-only report marked rejected", lambda: report_status(p.sessions, ftp_only.report_id) == "rejected", timeout)
    timings["rejections"] = time.monotonic() - t0

    # -- routing by classification
    def settled() -> dict[str, str | None] | None:
        states = states_by_url(p.sessions, urls)
        want = {c.url: ("awaiting_assessment" if c.name == "unknown_nl" else c.state) for c in cases.values()}
        return states if states == want else None

    try:
        wait_for("every item routed", settled, timeout)
    except AssertionError as exc:
        raise AssertionError(f"{exc}; states now {states_by_url(p.sessions, urls)}") from None
    timings["routed"] = time.monotonic() - t0

    # NTD: exactly once, to the NL hoster's abuse address, though the URL was reported twice.
    known_nl = item_for_url(p.sessions, cases["known_nl"].url)
    assert known_nl is not None
    with p.sessions() as s:
        links = s.scalars(select(ReportUrl.report_id).where(ReportUrl.item_id == known_nl.id)).all()
    assert sorted(links) == sorted([reports[0].report_id, duplicate.report_id])
    mails = wait_for("the NTD e-mail", lambda: [m for m in w.mail.snapshot() if m.notice_id == f"ntd-{known_nl.id}"], timeout)
    assert len(mails) == 1, f"NTD sent {len(mails)} times"
    assert mails[0].rcpt_tos == [HOSTER_A]
    assert mails[0].message["To"] == HOSTER_A
    body = plain_text(mails[0].message)
    assert cases["known_nl"].url in body and "Geachte" in body  # Dutch for a hoster in NL
    # The X-ARF v4 report rides along and validates; never an image.
    report = checked_xarf(mails[0].message)
    assert report["url"] == cases["known_nl"].url and report["detection_method"] == "hash_match"
    assert report["source_identifier"] == "127.0.0.2" and report["country_code"] == "NL"
    assert report["hash_values"]["sha256"] and not any(
        p.get_content_maintype() == "image" for p in mails[0].message.walk())

    # Forward: the partner got it, with the bearer token (PartnerEndpoint refuses without).
    known_de = item_for_url(p.sessions, cases["known_de"].url)
    assert known_de is not None
    fwd = wait_for("the partner forward", lambda: w.partner.forwards_for(known_de.id), timeout)
    assert len(fwd) == 1 and fwd[0].body["country"] == "DE" and fwd[0].idempotency_key == f"fwd-{known_de.id}"
    assert w.partner.refused == 0
    # Nothing but the NL notice went out by mail: the DE item is the partner's to take down.
    assert all(m.rcpt_tos != [HOSTER_C] for m in w.mail.snapshot())

    # -- the analyst confirms the unknown item: police first, and the bank learns it
    unknown = item_for_url(p.sessions, cases["unknown_nl"].url)
    assert unknown is not None
    with p.sessions() as s:
        store = SqlUnitOfWork(s)
        store.enqueue(assess(store, unknown.id, verdict="illegal", category="national", analyst="analyst-1"))
        store.commit()
    p.publish_outbox()
    esc = wait_for(
        "the police escalation",
        lambda: [m for m in p.published("escalations.police") if m.get("item_id") == unknown.id],
        timeout,
    )
    assert len(esc) == 1
    assert esc[0]["url"] == cases["unknown_nl"].url
    assert esc[0]["hosting"]["country"] == "NL"
    assert esc[0]["images"][0]["sha256"] == hash_image(w.unknown_image).sha256
    assert esc[0]["classification"]["verdict"] == "illegal"
    assert item_state(p.sessions, cases["unknown_nl"].url) == "escalated"
    timings["escalated"] = time.monotonic() - t0

    # A new copy of the now-known image, elsewhere in NL: recognised, NTD to Hoster A.
    # Classify re-reads the bank at most once a second (services.bank.bank.Bank.refresh_seconds):
    # a copy reported within that second of the decision may still count as unknown.
    time.sleep(BANK_REFRESH_SECONDS + 0.5)
    w.sites[NL_A].add("/copy/photo.jpg", "image/jpeg", w.unknown_image)
    copy_url = w.url(NL_A, "/copy/photo.jpg")
    p.submit(ReportSubmitted(channel="api", urls=[copy_url]))
    wait_for("the copy's NTD", lambda: item_state(p.sessions, copy_url) == "notice_sent", timeout)

    # -- final states and the audit trail
    final = states_by_url(p.sessions, urls)
    assert final == {c.url: c.state for c in cases.values()}, final
    with p.sessions() as s:
        assert SqlUnitOfWork(s).audit.verify() == []
    by_notice = w.mail.count_by_notice()
    assert all(n == 1 for n in by_notice.values()), by_notice
    assert len(by_notice) == 2
    timings["total"] = time.monotonic() - t0
    return timings


def known_batch(w: World, n: int, prefix: str = "/batch") -> list[ReportSubmitted]:
    """``n`` reports of known material at the two NL hosters, one URL each."""
    reports = []
    for i in range(n):
        host = NL_A if i % 2 == 0 else NL_B
        path = f"{prefix}/{i}.jpg"
        w.sites[host].add(path, "image/jpeg", w.known_images[i % len(w.known_images)])
        reports.append(ReportSubmitted(channel="api", urls=[w.url(host, path)]))
    return reports


# ---------------------------------------------------------------- fresh PostgreSQL databases


@contextlib.contextmanager
def fresh_pg_database(admin_url: str, name_hint: str = "it") -> Iterator[str]:
    """A new, empty database on the server of ``admin_url``; dropped on exit.

    Each test module gets its own, so the bus table and item states of parallel
    runs (and of other engineers' tests on ``hotline_test``) never mix.
    """
    name = f"hotline_{name_hint}_{uuid.uuid4().hex[:10]}".lower()
    url = make_url(admin_url)
    admin = create_engine(url, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{name}"'))
        yield url.set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


@contextlib.contextmanager
def fresh_pg_sessions(admin_url: str, name_hint: str = "it") -> Iterator[sessionmaker[Session]]:
    """Sessions on a ``fresh_pg_database``, migrated; the engine disposed and the database
    dropped on exit (what a test module on PostgreSQL alone needs as its fixture)."""
    with fresh_pg_database(admin_url, name_hint) as url:
        migrate(url)
        engine = make_engine(url)
        try:
            yield make_sessionmaker(engine)
        finally:
            engine.dispose()


# ---------------------------------------------------------------- the Kafka runtime, as processes


class KafkaPipeline:
    """``Pipeline`` on real Kafka: reports are produced with kafka-python as a web form would,
    and a reader assigned to every partition of every topic records what is published.

    The reader has no consumer group, so it neither joins a rebalance nor commits offsets:
    it sees each topic from the beginning and cannot disturb the stages.
    """

    def __init__(
        self, brokers: str, prefix: str, sessions: sessionmaker[Session], relay: bool = True
    ) -> None:
        from kafka import KafkaProducer

        from hotline.runtime.kafka import create_topics
        from hotline.runtime.relay import OutboxRelay
        from schemas import TOPICS

        self.brokers, self.prefix, self.sessions = brokers, prefix, sessions
        create_topics(brokers, prefix, 3)
        self.producer = KafkaProducer(bootstrap_servers=brokers.split(","), acks="all")
        self._seen: dict[str, list[bytes]] = {name: [] for name in TOPICS}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._reader = threading.Thread(target=self._read, name="topic-reader", daemon=True)
        self._reader.start()
        # The web process's outbox relay (``hotline serve --stage web`` starts the same class);
        # off when the test runs the web process itself.
        self.relay = OutboxRelay(sessions, brokers, prefix, poll_seconds=0.1) if relay else None
        if self.relay is not None:
            self.relay.start()

    def _read(self) -> None:
        from kafka import KafkaConsumer, TopicPartition

        consumer = KafkaConsumer(
            bootstrap_servers=self.brokers.split(","),
            group_id=None,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
        )
        try:
            partitions = []
            for logical in self._seen:
                name = self.prefix + logical
                ids: set[int] = wait_for(
                    f"partitions of {name}",
                    lambda n=name: consumer.partitions_for_topic(n),  # type: ignore[misc]
                    30,
                )
                partitions += [TopicPartition(name, i) for i in sorted(ids)]
            consumer.assign(partitions)
            consumer.seek_to_beginning(*partitions)
            while not self._stop.is_set():
                for tp, records in consumer.poll(timeout_ms=200).items():
                    logical = tp.topic[len(self.prefix) :]
                    with self._lock:
                        self._seen[logical].extend(r.value for r in records)
        finally:
            consumer.close()

    def submit(self, report: ReportSubmitted) -> None:
        self.submit_raw(report.to_bytes(), key=report.report_id.encode())

    def submit_raw(self, value: bytes, key: bytes = b"") -> None:
        self.producer.send(self.prefix + "reports.submitted", key=key, value=value).get(timeout=30)

    def published(self, topic: str) -> list[dict[str, Any]]:
        with self._lock:
            raw = list(self._seen[topic])
        return [json.loads(v) for v in raw]

    def publish_outbox(self) -> None:
        """Wait for the relay to empty ``bus_messages`` (it deletes what the broker acknowledged)."""
        from hotline.storage.models import BusMessage

        def empty() -> bool:
            with self.sessions() as s:
                return s.scalar(select(BusMessage.id).limit(1)) is None

        wait_for("the outbox relay to publish", empty, 30)

    def close(self) -> None:
        if self.relay is not None:
            self.relay.stop()
        self._stop.set()
        self._reader.join(10)
        self.producer.close(timeout=10)
        delete_topics(self.brokers, self.prefix)


def delete_topics(brokers: str, prefix: str) -> None:
    """Remove a test's topics and the workers' faust-internal ones, so runs do not pile up
    topics on a shared broker. Best effort: a broker that refuses only leaves litter behind."""
    import warnings

    from kafka import KafkaAdminClient
    from kafka.errors import KafkaError

    from hotline.runtime.kafka import app_id_for

    internal = app_id_for(prefix, "")
    admin = KafkaAdminClient(bootstrap_servers=brokers.split(","), client_id="hotline-tests-cleanup")
    try:
        doomed = [t for t in admin.list_topics() if t.startswith(prefix) or t.startswith(internal)]
        if doomed:
            admin.delete_topics(doomed, timeout_ms=30000)
    except KafkaError as exc:
        warnings.warn(f"could not delete test topics with prefix {prefix}: {exc!r}", stacklevel=2)
    finally:
        admin.close()


class StageProcesses:
    """The four stages as separate ``hotline serve --stage NAME`` processes.

    Each runs in its own session (process group), logs to a file under ``log_dir``,
    and is always killed in ``stop_all`` (TERM, then KILL after a grace period).
    """

    def __init__(self, env: dict[str, str], log_dir: Path) -> None:
        self.env = env
        self.log_dir = log_dir
        self.procs: dict[str, Any] = {}
        self.starts: Counter[str] = Counter()
        self.commands: dict[str, tuple[str, tuple[str, ...]]] = {}

    def start(self, stage: str, *args: str, name: str | None = None) -> None:
        """Start ``hotline serve --stage STAGE ARGS`` as process ``name`` (default: the stage);
        stage ``all`` is plain ``hotline serve`` (every stage and the web app in one process:
        the embedded runtime)."""
        import os
        import subprocess
        import sys

        name = name or stage
        self.starts[name] += 1
        self.commands[name] = (stage, args)
        log = open(self.log_dir / f"{name}.{self.starts[name]}.log", "wb")  # noqa: SIM115 - the child owns it
        self.procs[name] = subprocess.Popen(
            [sys.executable, "-m", "entrypoints.cli", "serve", *(["--stage", stage] if stage != "all" else []), *args],
            env={**os.environ, **self.env},
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        log.close()

    def terminate(self, stage: str, timeout: float = 20.0) -> int:
        """SIGTERM one stage and wait for it; its exit code."""
        import signal

        proc = self.procs[stage]
        proc.send_signal(signal.SIGTERM)
        return int(proc.wait(timeout))

    def log_text(self, stage: str) -> str:
        return "".join(p.read_text(errors="replace") for p in sorted(self.log_dir.glob(f"{stage}.*.log")))

    def restart(self, name: str) -> None:
        """Start process ``name`` again, as it was started before."""
        stage, args = self.commands[name]
        self.start(stage, *args, name=name)

    def kill9(self, stage: str) -> None:
        import signal

        proc = self.procs[stage]
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)

    def alive(self, stage: str) -> bool:
        return self.procs[stage].poll() is None

    def stop_all(self, grace: float = 15.0) -> dict[str, int | None]:
        """TERM every process, KILL what is still running after ``grace``; the exit codes."""
        import signal
        import subprocess

        for proc in self.procs.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + grace
        codes: dict[str, int | None] = {}
        for stage, proc in self.procs.items():
            try:
                codes[stage] = proc.wait(max(deadline - time.monotonic(), 0.1))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)
                codes[stage] = None
        return codes

    def logs(self, tail: int = 40) -> str:
        out = []
        for path in sorted(self.log_dir.glob("*.log")):
            lines = path.read_text(errors="replace").splitlines()
            out.append(f"--- {path.name} (last {tail} lines)\n" + "\n".join(lines[-tail:]))
        return "\n".join(out)
