"""CPU per item of a real ``hotline serve --stage escalate`` process on Kafka, fed the events
it gets per item in the pipeline, at the pipeline's pace.

Why: ``bench_stagecpu`` measures the stage code and its database work only (0.04 ms per
event); the escalate process in the pipeline spends ~7 ms per item, most of it around the
stage: faust's agents and consumer, one executor hop and one transaction per event, the
forwards' HTTP delivery and bookkeeping, the periodic tasks and the outbox relay while idle.
This measures all of it as the process's own CPU time (``/proc/PID/stat``, utime + stime, so
PostgreSQL and the broker are excluded and a busy machine does not skew it).

Per item (the pipeline's mix): ``items.accepted`` (a web report), ``items.classified`` and,
for 85 % of items, ``notices.events`` (``sent``); for the other 15 % a ``forwards.partner``
to a loopback partner hotline (``PartnerEndpoint``, no status endpoint as in the pipeline),
which the stage delivers and answers with its own ``notices.events`` (``forwarded``), which
it reads back. Items are produced at ``--rate`` per second; the CPU is counted from the first
event until every forward has reached the partner and the group has no lag, divided by items.

Two rows, each with a process of its own, back to back: the partner without a status endpoint
(the pipeline's case: escalate does not read the pipeline's events at all, ``hotline.kernel.stage``
"Unread inputs"), and the same partner with one (it reads and decides each of them; as the
items are web reports, no update is sent), which is what every deployment paid before.

    python -m benchmarks.bench_escalate_kafka                 # 1000 items at 50/s
    python -m benchmarks.bench_escalate_kafka --items 300     # quicker

Needs ``HOTLINE_TEST_KAFKA_BROKERS`` and PostgreSQL (``HOTLINE_TEST_DATABASE_URL``). Bounded in
count and time; loopback only; its topics are under a fresh prefix and the database is dropped.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import platform
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

DEFAULT_DB = "postgresql+psycopg://postgres@127.0.0.1:5432/hotline_test"
DEFAULT_BROKERS = "127.0.0.1:9092"


def cpu_seconds(pid: int) -> float:
    """utime + stime of ``pid`` and its threads, in seconds."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def setup(sessions: Any, n: int, forward_every: int, tag: str) -> list[tuple[str, str, str, bool]]:
    """``n`` items, each named by a web report; every ``forward_every``-th is queued for a
    forward (the rest for a notice): (item id, report id, URL, forwarded)."""
    from benchmarks.bench_stagecpu import classified
    from hotline.storage.unit_of_work import SqlUnitOfWork
    from schemas.reports import ReportSubmitted
    from tests.unit.stagekit import path_to

    out = []
    with sessions() as session:
        uow = SqlUnitOfWork(session)
        for i in range(n):
            forwarded = i % forward_every == forward_every - 1
            url = f"http://img.hoster-{'de' if forwarded else 'a'}.test/{tag}-{i}.jpg"
            msg = ReportSubmitted(urls=[url], channel="web")
            uow.reports.create(msg)
            item = uow.items.create(url)
            uow.reports.link_url(msg.report_id, 0, url, item.id)
            for state in path_to("forward_queued" if forwarded else "notice_queued"):
                uow.items.set_state(item, state, "set up by the benchmark", "bench")
            item.classification = classified(item.id, url).model_dump(mode="json")  # as classify stores it
            out.append((item.id, msg.report_id, url, forwarded))
        uow.commit()
    return out


def events_of(item_id: str, report_id: str, url: str, forwarded: bool) -> list[tuple[str, Any]]:
    from benchmarks.bench_stagecpu import classified
    from schemas.items import ItemAccepted
    from schemas.notices import NoticeEvent, PartnerForward

    out: list[tuple[str, Any]] = [
        ("items.accepted", ItemAccepted(item_id=item_id, url=url, report_ids=[report_id])),
        ("items.classified", classified(item_id, url)),
    ]
    if forwarded:
        out.append(("forwards.partner", PartnerForward(forward_id=f"fwd-{item_id}", item_id=item_id, url=url,
                                                       country="DE", partner_name="Partner DE")))
    else:
        out.append(("notices.events", NoticeEvent(event_id=f"ntd-{item_id}:sent", item_id=item_id, kind="sent",
                                                  notice_id=f"ntd-{item_id}")))
    return out


def lag(brokers: str, prefix: str, status_updates: bool) -> int | None:
    """The escalate group's lag over the inputs it reads (None: the broker cannot say right now)."""
    from benchmarks.crash_harness import group_lag

    return group_lag(brokers, prefix, ("escalate",), status_updates=status_updates)


def wait_until(what: str, check: Any, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out waiting for {what}")
        time.sleep(0.2)


def produce(producer: Any, prefix: str, items: list[tuple[str, str, str, bool]], rate: float) -> None:
    """The events of ``items`` at ``rate`` items per second (each item's events together)."""
    from hotline.kernel.messages import Outgoing
    from hotline.runtime.kafka import kafka_topic

    started = time.monotonic()
    for n, item in enumerate(items):
        for topic, message in events_of(*item):
            o = Outgoing(topic, message)
            producer.send(kafka_topic(prefix, topic), key=o.key.encode(), value=message.to_bytes())
        ahead = started + (n + 1) / rate - time.monotonic()
        if ahead > 0:
            producer.flush()
            time.sleep(ahead)
    producer.flush()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--items", type=int, default=1000)
    parser.add_argument("--rate", type=float, default=50.0, help="items per second")
    parser.add_argument("--forward-every", type=int, default=7, help="every Nth item is forwarded (7: ~15 %%)")
    parser.add_argument("--idle", type=float, default=0.0, help="also measure this many seconds idle")
    parser.add_argument("--database-url", default=os.environ.get("HOTLINE_TEST_DATABASE_URL", DEFAULT_DB))
    parser.add_argument("--brokers", default=os.environ.get("HOTLINE_TEST_KAFKA_BROKERS", DEFAULT_BROKERS))
    parser.add_argument("--only", choices=("unread", "read"),
                        help="one row only: no partner status endpoint (events unread) or one (events read)")
    parser.add_argument("--py-spy", metavar="OUT",
                        help="record the measured phase with py-spy (raw) into OUT (OUT.unread and OUT.read "
                             "when both rows run)")
    parser.add_argument("--keep-log", action="store_true", help="print the stage's log at the end")
    args = parser.parse_args(argv)
    n = max(10, min(args.items, 5000))
    rows = [run(args, n, status_updates=mode == "read") for mode in ("unread", "read") if args.only in (None, mode)]
    print(f"machine: {os.cpu_count()} CPUs, Python {platform.python_version()}, "
          f"code from {sys.modules['hotline'].__file__}")
    print("| partners | pipeline events | items | forwarded | rate /s | wall s | CPU s | CPU ms per item | idle CPU ms/s |")
    print("|---|---|---|---|---|---|---|---|---|")
    for row in rows:
        print(row)
    return 0


def run(args: argparse.Namespace, n: int, status_updates: bool) -> str:
    """One escalate process fed ``n`` items; its table row. With ``status_updates`` the partner
    has a status endpoint, so the process reads the pipeline's events (``hotline.kernel.stage``,
    "Unread inputs"); the items are web reports, so none gets an update sent."""
    import yaml
    from kafka import KafkaProducer

    from benchmarks.crash_harness import fresh_database
    from doubles.loopback import PartnerEndpoint
    from hotline.runtime.kafka import create_topics
    from hotline.storage.engine import make_engine, make_sessionmaker, migrate
    from hotline.web.auth import new_token

    prefix = f"bench-esc-{uuid.uuid4().hex[:8]}."
    partner = PartnerEndpoint(new_token())
    partner.start()
    tmp = Path(tempfile.mkdtemp(prefix="bench-escalate-"))
    log_path = tmp / "escalate.log"
    with contextlib.ExitStack() as running, fresh_database(args.database_url) as url:
        running.callback(partner.stop)
        migrate(url)
        engine = make_engine(url)
        running.callback(engine.dispose)
        sessions = make_sessionmaker(engine)
        warm = setup(sessions, 20, args.forward_every, "warm")
        items = setup(sessions, n, args.forward_every, "item")
        partners = tmp / "partners.yaml"
        partners.write_text(yaml.safe_dump({"partners": [
            {"country": "DE", "name": "Partner DE", "endpoint": partner.url, "token_env": "HOTLINE_PARTNER_DE_TOKEN",
             **({"status_endpoint": partner.status_url} if status_updates else {})},
        ]}))
        create_topics(args.brokers, prefix, 3)
        env = {**os.environ, "HOTLINE_DATABASE_URL": url, "HOTLINE_KAFKA_BROKERS": args.brokers,
               "HOTLINE_TOPIC_PREFIX": prefix, "HOTLINE_PARTNERS_FILE": str(partners),
               "HOTLINE_PARTNER_DE_TOKEN": partner.token, "HOTLINE_KAFKA_PARTITIONS": "3"}
        with open(log_path, "wb") as log:
            proc = subprocess.Popen([sys.executable, "-m", "entrypoints.cli", "serve", "--stage", "escalate"],
                                    env=env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                    start_new_session=True)

        def stop() -> None:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(30)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
            if args.keep_log:
                print(log_path.read_text(errors="replace")[-5000:])

        running.callback(stop)
        producer = KafkaProducer(bootstrap_servers=args.brokers.split(","), acks="all", linger_ms=5)
        running.callback(producer.close)

        def forwards_received(expected: int) -> bool:
            return len(partner.received) >= expected

        produce(producer, prefix, warm, args.rate)
        warm_forwards = sum(1 for w in warm if w[3])
        wait_until("the warm-up forwards", lambda: forwards_received(warm_forwards), 120)
        wait_until("the warm-up events to be committed", lambda: lag(args.brokers, prefix, status_updates) == 0, 120)
        time.sleep(2)  # the last commits and the dispatcher's rounds of the warm-up settle
        idle = None
        if args.idle > 0:
            before = cpu_seconds(proc.pid)
            time.sleep(args.idle)
            idle = (cpu_seconds(proc.pid) - before) / args.idle
        expected = warm_forwards + sum(1 for i in items if i[3])
        spy = None
        if args.py_spy:
            out = args.py_spy if args.only else f"{args.py_spy}.{'read' if status_updates else 'unread'}"
            spy = subprocess.Popen(["py-spy", "record", "--gil", "-r", "100", "-f", "raw", "-o", out,
                                    "--pid", str(proc.pid)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        before = cpu_seconds(proc.pid)
        started = time.monotonic()
        produce(producer, prefix, items, args.rate)
        wait_until("every forward", lambda: forwards_received(expected), 300)
        wait_until("no lag", lambda: lag(args.brokers, prefix, status_updates) == 0, 300)
        wall = time.monotonic() - started
        spent = cpu_seconds(proc.pid) - before
        if spy is not None:
            spy.send_signal(signal.SIGINT)
            spy.wait(60)
        if proc.poll() is not None:
            raise RuntimeError(f"the escalate process exited ({proc.returncode}); log at {log_path}")
    what = ("a status endpoint", "read") if status_updates else ("no status endpoint", "unread")
    return (f"| {what[0]} | {what[1]} | {n} | {expected - warm_forwards} | {args.rate:g} | {wall:.1f} | {spent:.2f} | "
            f"{1000 * spent / n:.2f} | {'' if idle is None else f'{1000 * idle:.1f}'} |")

if __name__ == "__main__":
    sys.exit(main())
