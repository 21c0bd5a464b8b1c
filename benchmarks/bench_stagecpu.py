"""CPU per event of the ingest, classify (record), notify and escalate stages, without Kafka: each stage driven through
``StepRunner`` (what ``hotline serve --stage NAME`` runs per event) on a fresh PostgreSQL
database, its CPU time (``time.process_time``: this process, PostgreSQL excluded) divided by
the events it handled.

Why: in the Kafka pipeline at 50 reports/s the machine is CPU-bound and notify and escalate
each took as much CPU as a third of classify, the bottleneck (issue 13); every CPU-ms they save
goes to classify. The stage processes also spend CPU on faust, aiokafka and their periodic
tasks; this isolates what the stage code and its database work cost per event, which is what
changes in ``services/notify`` and ``services/escalate`` move.

- ingest: ``--items`` one-URL web reports (``reports.submitted``, every URL new), in batches of
  ``HOTLINE_BATCH_SIZE`` (``process_batch``, as the Kafka runtime hands them), and as a second
  row one report per transaction (the batch the Kafka runtime sees at a low rate).
- classify (record): the database part of classify per item (``handle``, then the record step
  of its side effect) for the items ingest created, with prepared facts instead of fetching and
  hashing (those cost what they cost, whatever the database does): the pipeline's mix of 60%
  known in NL (a notice), 15% known in DE (a forward), 15% unknown, 10% a gallery of 8 images
  (one known); every image its own SHA-256.
  Also counted, apart from the timed run: the statements and commits the database sees per
  classify item (independent of the machine's load).
- notify: ``--items`` takedown notices (one known image each, as classify writes them), in
  batches of ``HOTLINE_BATCH_SIZE`` as the Kafka runtime hands them (``process_batch``), to a
  mailer that accepts everything in memory: reserve, render (X-ARF report, validated), record.
- escalate: the events it gets per item in the pipeline: ``items.accepted`` (a web report),
  ``items.classified`` (route ``ntd``) and ``notices.events`` (``sent``), one per transaction
  (``process``), with the benchmark's partners file (a DE partner, no status endpoint) and,
  as a second row, the same partner with a ``status_endpoint``; and as a third, a forward per item
  queued for one (``forwards.partner``: record, deliver to a gateway that answers 202, record sent).

    python -m benchmarks.bench_stagecpu            # 400 items
    python -m benchmarks.bench_stagecpu --quick    # 100 items
    python -m benchmarks.bench_stagecpu --stages ingest,classify

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


def setup(sessions: Any, n: int, tag: str, state: str = "notice_queued") -> list[tuple[str, str, str]]:
    """``n`` items in ``state`` (queued for a notice), each named by one web report: (item id, report id, URL)."""
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
            for step in path_to(state):
                uow.items.set_state(item, step, "set up by the benchmark", "bench")
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


def run_ingest(sessions: Any, n: int, tag: str, batch: int) -> tuple[float, int, list[tuple[str, str]]]:
    """``n`` new one-URL web reports through the ingest stage; returns the CPU time, the count
    and the (item id, URL) of every item it accepted."""
    from hotline.runtime.steps import StepRunner
    from schemas.items import ItemAccepted
    from schemas.reports import ReportSubmitted
    from services.ingest.stage import IngestStage

    # The test hoster is vouched for by the operator (as the pipeline benchmark's hosting file does).
    runner = StepRunner(IngestStage(operator_hosts=frozenset({"img.hoster-a.test"})), sessions)
    raws = [("reports.submitted",
             ReportSubmitted(urls=[f"http://img.hoster-a.test/{tag}/{i}.jpg"], channel="web").to_bytes())
            for i in range(n)]
    accepted: list[tuple[str, str]] = []
    started = time.process_time()
    for k in range(0, len(raws), batch):
        outcome = runner.process_batch(raws[k:k + batch])
        if outcome.error is not None:
            raise outcome.error
        accepted += [(o.message.item_id, o.message.url) for o in outcome.flat() if isinstance(o.message, ItemAccepted)]
    spent = time.process_time() - started
    if len(accepted) != n:
        raise RuntimeError(f"ingest accepted {len(accepted)} of {n} reports")
    return spent, n, accepted


def bench_classified(k: int, item_id: str, url: str) -> Any:
    """The ``k``-th item's prepared facts, in the pipeline's mix (see the module docstring)."""
    import hashlib

    from schemas.facts import BankMatch, HostingFacts, ImageFacts
    from schemas.items import HosterRoute, ItemClassified

    def img(u: str, known: bool) -> ImageFacts:
        sha = hashlib.sha256(u.encode()).hexdigest()
        match = BankMatch(entry_id=1, signal="sha256", distance=0, category="baseline", source="bench") if known else None
        return ImageFacts(url=u, md5=sha[:32], sha1=sha[:40], sha256=sha, pdq="f" * 64, pdq_quality=100,
                          width=640, height=480, format="JPEG", byte_size=40_000, match=match)

    kind = ("notice", "forward", "unknown", "gallery")[[0, 0, 0, 0, 0, 0, 1, 2, 3, 2, 1, 2, 0, 0, 0, 0, 0, 0, 3, 1][k % 20]]
    nl = hosting()
    de = HostingFacts(host="img.hoster-c.test", ip="127.0.0.3", country="DE", asn=64503,
                      hoster="Hoster C GmbH", abuse="abuse@hoster-c.test", source="hosting_file")
    if kind == "notice":
        images = [img(url, True)]
        return ItemClassified(item_id=item_id, url=url, online=True, images=images, hosting=nl, known=True,
                              route="ntd", reason="known material hosted in NL",
                              attribution=[HosterRoute(hosting=nl, route="ntd", reason="known material hosted in NL",
                                                       page=True, image_urls=[url], action_id=f"ntd-{item_id}")])
    if kind == "forward":
        images = [img(url, True)]
        return ItemClassified(item_id=item_id, url=url, online=True, images=images, hosting=de, known=True,
                              route="forward", reason="known material hosted in DE",
                              attribution=[HosterRoute(hosting=de, route="forward", reason="known material hosted in DE",
                                                       page=True, image_urls=[url], action_id=f"fwd-{item_id}")])
    if kind == "unknown":
        return ItemClassified(item_id=item_id, url=url, online=True, images=[img(url, False)], hosting=nl,
                              route="assessment", reason="1 image(s) not in the bank: waiting for an analyst")
    images = [img(f"{url}/{j}.jpg", j == 0) for j in range(8)]
    return ItemClassified(item_id=item_id, url=url, online=True, images=images, hosting=nl, known=True,
                          route="ntd", reason="known material hosted in NL",
                          attribution=[HosterRoute(hosting=nl, route="ntd", reason="known material hosted in NL",
                                                   page=True, image_urls=[images[0].url], action_id=f"ntd-{item_id}")])


def run_classify_record(sessions: Any, items: list[tuple[str, str]]) -> tuple[float, int]:
    """Every item through classify (``process``: handle, act, record) with its act step
    answering prepared facts (no fetching, no hashing)."""
    from hotline.runtime.steps import StepRunner
    from schemas.items import ItemAccepted
    from services.classify.stage import ClassifyStage

    facts = {item_id: bench_classified(k, item_id, url) for k, (item_id, url) in enumerate(items)}

    class Prepared(ClassifyStage):
        def classify(self, item_id: str, url: str) -> Any:
            return facts[item_id]

    stage = Prepared(fetcher=None, hash_image=None, match=None, hosting=None,  # type: ignore[arg-type]
                     partner_names={"DE": "Partner hotline DE"})
    runner = StepRunner(stage, sessions)
    raws = [ItemAccepted(item_id=item_id, url=url, report_ids=[]).to_bytes() for item_id, url in items]
    started = time.process_time()
    for raw in raws:
        if not runner.process("items.accepted", raw):
            raise RuntimeError("classify produced no output")
    return time.process_time() - started, len(raws)


def classify_round_trips(engine: Any, sessions: Any, n: int, batch: int) -> float:
    """Statements and transaction ends (commit, rollback) the database sees per classify item,
    counted on ``n`` more items outside the timed run (the listeners cost CPU of their own): a
    count that does not depend on how busy the machine is."""
    from sqlalchemy import event

    _, _, items = run_ingest(sessions, n, "counted", batch)
    seen = [0]

    def count(*_args: Any) -> None:
        seen[0] += 1

    hooks = [(engine, "before_cursor_execute"), (engine, "commit"), (engine, "rollback")]
    for target, name in hooks:
        event.listen(target, name, count)
    try:
        run_classify_record(sessions, items)
    finally:
        for target, name in hooks:
            event.remove(target, name, count)
    return seen[0] / n


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


def forward(item_id: str, url: str) -> Any:
    from schemas.notices import PartnerForward

    return PartnerForward(forward_id=f"fwd-{item_id}", item_id=item_id, url=url, country="DE",
                          partner_name="Partner hotline DE", images=[image(url)], hosting=hosting())


def run_forward(sessions: Any, items: list[tuple[str, str, str]]) -> tuple[float, int]:
    """``forwards.partner`` per item (queued for a forward), one per transaction (``process``):
    record the queue row, deliver (a gateway that answers 202 at once), record it sent."""
    from hotline.runtime.steps import StepRunner
    from services.escalate.partners import PartnerDirectory, PartnerEntry
    from services.escalate.stage import EscalateStage

    de = PartnerEntry(country="DE", name="Partner hotline DE", endpoint="http://127.0.0.1:9/api")
    runner = StepRunner(EscalateStage(partners=PartnerDirectory({"DE": de}), gateway=NullGateway()),  # type: ignore[arg-type]
                        sessions)
    raws = [forward(item_id, url).to_bytes() for item_id, _, url in items]
    started = time.process_time()
    for raw in raws:
        if not runner.process("forwards.partner", raw):
            raise RuntimeError("escalate recorded no forward")
    return time.process_time() - started, len(raws)


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
    parser.add_argument("--stages", default="ingest,classify,notify,escalate",
                        help="comma-separated subset of ingest,classify,notify,escalate")
    parser.add_argument("--database-url", default=os.environ.get("HOTLINE_TEST_DATABASE_URL", DEFAULT_DB))
    args = parser.parse_args(argv)
    n = 100 if args.quick else min(args.items, 5000)

    from benchmarks.crash_harness import fresh_database
    from hotline.storage.engine import make_engine, make_sessionmaker, migrate

    rows = []
    trips: float | None = None
    with fresh_database(args.database_url) as url:
        migrate(url)
        engine = make_engine(url)
        try:
            sessions = make_sessionmaker(engine)
            stages = set(args.stages.split(","))
            if stages & {"ingest", "classify"}:
                _, _, warm = run_ingest(sessions, 20, "warm", args.batch)  # warm-up: imports, schemas, pool
                run_classify_record(sessions, warm)
                spent, count, accepted = run_ingest(sessions, n, "batched", args.batch)
                rows.append((f"ingest (batches of {args.batch})", "report", spent, count))
                spent, count, single = run_ingest(sessions, n, "single", 1)
                rows.append(("ingest (one per transaction)", "report", spent, count))
                if "classify" in stages:
                    rows.append(("classify (record step, prepared facts)", "item",
                                 *run_classify_record(sessions, accepted + single)))
                    trips = classify_round_trips(engine, sessions, 100, args.batch)
            if stages & {"notify", "escalate"}:
                run_notify(sessions, setup(sessions, 10, "warm"), args.batch)  # warm-up: imports, schemas, pool
                items = setup(sessions, n, "item")
                if "notify" in stages:
                    rows.append(("notify", "notice", *run_notify(sessions, items, args.batch)))
                if "escalate" in stages:
                    run_escalate(sessions, items[:10], False)
                    rows.append(("escalate (no status endpoint)", "event", *run_escalate(sessions, items, False)))
                    rows.append(("escalate (DE has a status endpoint)", "event", *run_escalate(sessions, items, True)))
                    run_forward(sessions, setup(sessions, 10, "fwarm", "forward_queued"))
                    rows.append(("escalate (forwards.partner)", "forward",
                                 *run_forward(sessions, setup(sessions, n, "fwd", "forward_queued"))))
        finally:
            engine.dispose()
    print(f"machine: {os.cpu_count()} CPUs, Python {platform.python_version()}, code from {sys.modules['hotline'].__file__}")
    print("| stage | events | CPU s | CPU ms per event |")
    print("|---|---|---|---|")
    for name, unit, spent, count in rows:
        print(f"| {name} | {count} ({unit}s) | {spent:.2f} | {1000 * spent / count:.2f} |")
    if trips is not None:
        print(f"classify: {trips:.2f} statements and commits per item (the pipeline's mix, counted apart)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
