"""CPU per event of the notify and escalate stages, without Kafka: each stage driven through
``StepRunner`` (what ``hotline serve --stage NAME`` runs per event) on a fresh PostgreSQL
database, its CPU time (``time.process_time``: this process, PostgreSQL excluded) divided by
the events it handled.

Why: in the Kafka pipeline at 50 reports/s the machine is CPU-bound and notify and escalate
each took as much CPU as a third of classify, the bottleneck (issue 13); every CPU-ms they save
goes to classify. The stage processes also spend CPU on faust, aiokafka and their periodic
tasks; this isolates what the stage code and its database work cost per event, which is what
changes in ``services/notify`` and ``services/escalate`` move.

- notify: ``--items`` takedown notices (one known image each, as classify writes them), in
  batches of ``HOTLINE_BATCH_SIZE`` as the Kafka runtime hands them (``process_batch``), to a
  mailer that accepts everything in memory: reserve, render (X-ARF report, validated), record.
- escalate: the events it gets per item in the pipeline: ``items.accepted`` (a web report),
  ``items.classified`` (route ``ntd``) and ``notices.events`` (``sent``), one per transaction
  (``process``), with the benchmark's partners file (a DE partner, no status endpoint) and,
  as a second row, the same partner with a ``status_endpoint``.

    python -m benchmarks.bench_stagecpu            # 400 items
    python -m benchmarks.bench_stagecpu --quick    # 100 items

Bounded in count; loopback only; the database is dropped at the end. Compare code versions by
running the same command with ``PYTHONPATH`` pointing at each checkout.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from email.message import EmailMessage
from typing import Any

DEFAULT_DB = "postgresql+psycopg://postgres@127.0.0.1:5432/hotline_test"


class NullMailer:
    """Accepts every message, keeps none (the SMTP conversation is not the stage's CPU)."""

    def __init__(self) -> None:
        self.count = 0

    def send(self, message: EmailMessage) -> None:
        self.count += 1


class NullGateway:
    def deliver(self, partner: Any, forward: Any) -> int:
        return 202

    def send_status(self, partner: Any, update: Any) -> int:
        return 202


def setup(sessions: Any, n: int, tag: str) -> list[tuple[str, str, str]]:
    """``n`` items queued for a notice, each named by one web report: (item id, report id, URL)."""
    from hotline.storage.unit_of_work import SqlUnitOfWork
    from schemas.reports import ReportSubmitted
    from tests.unit.stagekit import path_to

    out = []
    with sessions() as session:
        uow = SqlUnitOfWork(session)
        for i in range(n):
            url = f"http://img.hoster-a.test/{tag}-{i}.jpg"
            msg = ReportSubmitted(urls=[url], channel="web")
            uow.reports.create(msg)
            item = uow.items.create(url)
            uow.reports.link_url(msg.report_id, 0, url, item.id)
            for state in path_to("notice_queued"):
                uow.items.set_state(item, state, "set up by the benchmark", "bench")
            item.classification = classified(item.id, url).model_dump(mode="json")
            out.append((item.id, msg.report_id, url))
        uow.commit()
    return out


def image(url: str) -> Any:
    from schemas.facts import BankMatch, ImageFacts

    return ImageFacts(url=url, md5="0" * 31 + "1", sha1="0" * 39 + "2", sha256="0" * 63 + "3", pdq="f" * 64,
                      match=BankMatch(entry_id=1, signal="sha256", distance=0, category="baseline", source="bench"))


def hosting() -> Any:
    from schemas.facts import HostingFacts

    return HostingFacts(host="img.hoster-a.test", ip="127.0.0.2", country="NL", asn=64501,
                        hoster="Hoster A B.V.", abuse="abuse@hoster-a.test", source="hosting_file")


def classified(item_id: str, url: str) -> Any:
    from schemas.items import ItemClassified

    return ItemClassified(item_id=item_id, url=url, online=True, images=[image(url)], hosting=hosting(),
                          known=True, route="ntd", reason="known material hosted in NL")


def notice(item_id: str, url: str) -> Any:
    from schemas.notices import TakedownNotice

    return TakedownNotice(notice_id=f"ntd-{item_id}", item_id=item_id, url=url, hoster="Hoster A B.V.",
                          abuse_email="abuse@hoster-a.test", country="NL", images=[image(url)], hosting=hosting())


def run_notify(sessions: Any, items: list[tuple[str, str, str]], batch: int) -> tuple[float, int]:
    from hotline.runtime.steps import StepRunner
    from services.notify.stage import NotifyStage

    mailer = NullMailer()
    runner = StepRunner(NotifyStage(mailer=mailer, sender="ntd@hotline.test", hotline_name="Bench hotline"), sessions)
    raws = [("notices.ntd", notice(item_id, url).to_bytes()) for item_id, _, url in items]
    started = time.process_time()
    for k in range(0, len(raws), batch):
        outcome = runner.process_batch(raws[k:k + batch])
        if outcome.error is not None:
            raise outcome.error
    spent = time.process_time() - started
    if mailer.count != len(items):
        raise RuntimeError(f"notify sent {mailer.count} of {len(items)} notices")
    return spent, len(raws)


def run_escalate(sessions: Any, items: list[tuple[str, str, str]], status_endpoint: bool) -> tuple[float, int]:
    from hotline.runtime.steps import StepRunner
    from schemas.items import ItemAccepted
    from schemas.notices import NoticeEvent
    from services.escalate.partners import PartnerDirectory, PartnerEntry
    from services.escalate.stage import EscalateStage

    de = PartnerEntry(country="DE", name="Partner hotline DE", endpoint="http://127.0.0.1:9/api",
                      status_endpoint="http://127.0.0.1:9/status" if status_endpoint else None)
    stage = EscalateStage(partners=PartnerDirectory({"DE": de}), gateway=NullGateway())  # type: ignore[arg-type]
    runner = StepRunner(stage, sessions)
    events: list[tuple[str, bytes]] = []
    for item_id, report_id, url in items:
        events.append(("items.accepted", ItemAccepted(item_id=item_id, url=url, report_ids=[report_id]).to_bytes()))
        events.append(("items.classified", classified(item_id, url).to_bytes()))
        events.append(("notices.events", NoticeEvent(event_id=f"ntd-{item_id}:sent", item_id=item_id, kind="sent",
                                                     notice_id=f"ntd-{item_id}").to_bytes()))
    started = time.process_time()
    for topic, raw in events:
        if runner.process(topic, raw):
            raise RuntimeError(f"escalate produced output for {topic}: nothing to tell a web reporter's partner")
    return time.process_time() - started, len(events)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--items", type=int, default=400)
    parser.add_argument("--quick", action="store_true", help="100 items")
    parser.add_argument("--batch", type=int, default=int(os.environ.get("HOTLINE_BATCH_SIZE", "50")))
    parser.add_argument("--database-url", default=os.environ.get("HOTLINE_TEST_DATABASE_URL", DEFAULT_DB))
    args = parser.parse_args(argv)
    n = 100 if args.quick else min(args.items, 5000)

    from benchmarks.crash_harness import fresh_database
    from hotline.storage.engine import make_engine, make_sessionmaker, migrate

    rows = []
    with fresh_database(args.database_url) as url:
        migrate(url)
        engine = make_engine(url)
        try:
            sessions = make_sessionmaker(engine)
            run_notify(sessions, setup(sessions, 10, "warm"), args.batch)  # warm-up: imports, schemas, pool
            items = setup(sessions, n, "item")
            rows.append(("notify", "notice", *run_notify(sessions, items, args.batch)))
            run_escalate(sessions, items[:10], False)
            rows.append(("escalate (no status endpoint)", "event", *run_escalate(sessions, items, False)))
            rows.append(("escalate (DE has a status endpoint)", "event", *run_escalate(sessions, items, True)))
        finally:
            engine.dispose()
    print(f"machine: {os.cpu_count()} CPUs, Python {platform.python_version()}, code from {sys.modules['hotline'].__file__}")
    print("| stage | events | CPU s | CPU ms per event |")
    print("|---|---|---|---|")
    for name, unit, spent, count in rows:
        print(f"| {name} | {count} ({unit}s) | {spent:.2f} | {1000 * spent / count:.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
