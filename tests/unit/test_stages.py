"""Stage logic against a real SQLite database and hand-written recording fakes (no broker).

Each test drives a stage the way a runtime does (``run_stage`` with the wire bytes, or
``handle`` then ``commit``) and then reads the state back through a fresh session.
"""

from __future__ import annotations

import shutil
import smtplib
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select, text, update
from sqlalchemy.orm import Session, sessionmaker

from hotline.storage.engine import make_engine, make_sessionmaker, migrate
from hotline.storage.models import (
    AuditLog,
    BankEntry,
    Escalation,
    Forward,
    Item,
    Notice,
    Report,
    ReportUrl,
)
from hotline.kernel.messages import Outgoing
from hotline.kernel.stage import run_stage
from hotline.storage.unit_of_work import SqlUnitOfWork
from schemas.facts import BankMatch, HostingFacts, ImageFacts
from schemas.items import ItemAccepted, ItemClassified
from schemas.notices import NoticeEvent, PartnerForward, PoliceEscalation, TakedownNotice
from schemas.reports import ReportRejected, ReportSubmitted
from services.assessment.logic import AssessmentRefused, assess
from services.escalate.partners import DeliveryFailed, PartnerDirectory, PartnerEntry
from services.escalate.stage import EscalateStage
from services.ingest.stage import IngestStage
from services.notify.mailer import RecordingMailer
from services.notify.stage import NotifyStage

# --------------------------------------------------------------------------- database


@pytest.fixture(scope="module")
def migrated_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Migrate once per module; each test gets a copy (migrations take most of a second)."""
    path = tmp_path_factory.mktemp("template") / "template.db"
    migrate(f"sqlite:///{path}")
    return path


@pytest.fixture
def sessions(migrated_template: Path, tmp_path: Path) -> Iterator[sessionmaker[Session]]:
    db = tmp_path / "hotline.db"
    shutil.copy(migrated_template, db)
    engine = make_engine(f"sqlite:///{db}")
    yield make_sessionmaker(engine)
    engine.dispose()


def deliver(sessions: sessionmaker[Session], stage: Any, topic: str, raw: bytes | str) -> list[Outgoing]:
    """One delivery as the embedded runtime does it: decode+handle, publish with the unit of work."""
    with sessions() as session:
        store = SqlUnitOfWork(session)
        out = run_stage(stage, topic, raw, store)
        store.enqueue(out)
        store.commit()
        return out


def read(sessions: sessionmaker[Session], fn: Callable[[SqlUnitOfWork], object]) -> object:
    with sessions() as session:
        return fn(SqlUnitOfWork(session))


def of_topic(out: list[Outgoing], topic: str) -> list[Any]:
    return [o.message for o in out if o.topic == topic]


def submit(sessions: sessionmaker[Session], *urls: str, report_id: str | None = None) -> tuple[str, list[Outgoing]]:
    msg = ReportSubmitted(urls=list(urls)) if report_id is None else ReportSubmitted(urls=list(urls), report_id=report_id)
    return msg.report_id, deliver(sessions, IngestStage(), "reports.submitted", msg.model_dump_json())


# --------------------------------------------------------------------------- ingest


def test_new_url_becomes_an_item(sessions: sessionmaker[Session]) -> None:
    rid, out = submit(sessions, "HTTP://Site.test/a.jpg#x")
    accepted = of_topic(out, "items.accepted")
    assert len(accepted) == 1 and isinstance(accepted[0], ItemAccepted)
    assert accepted[0].url == "http://site.test/a.jpg"
    assert accepted[0].report_ids == [rid]
    with sessions() as s:
        item = s.get(Item, accepted[0].item_id)
        assert item is not None and item.state == "received"
        report = s.get(Report, rid)
        assert report is not None and report.status == "accepted"
        assert [e.kind for e in SqlUnitOfWork(s).items.events(item.id)] == ["received"]


def test_same_url_twice_is_one_item_with_reported_again(sessions: sessionmaker[Session]) -> None:
    r1, out1 = submit(sessions, "http://site.test/a.jpg")
    r2, out2 = submit(sessions, "site.test/./a.jpg")  # another spelling, another report
    (first,) = of_topic(out1, "items.accepted")
    assert of_topic(out2, "items.accepted") == []  # no new work
    with sessions() as s:
        assert s.scalar(select(Item.id).where(Item.url == "http://site.test/a.jpg")) == first.item_id
        assert len(s.scalars(select(Item)).all()) == 1
        store = SqlUnitOfWork(s)
        assert store.items.report_ids(first.item_id) == sorted([r1, r2])
        kinds = [e.kind for e in store.items.events(first.item_id)]
        assert kinds == ["received", "reported_again"]
        assert r2 in store.items.events(first.item_id)[1].detail


def test_same_url_twice_in_one_report(sessions: sessionmaker[Session]) -> None:
    rid, out = submit(sessions, "http://site.test/a.jpg", "http://SITE.test:80/a.jpg")
    assert len(of_topic(out, "items.accepted")) == 1
    with sessions() as s:
        links = SqlUnitOfWork(s).reports.urls(rid)
        assert len(links) == 2 and links[0].item_id == links[1].item_id is not None


def test_url_of_a_closed_item_opens_a_new_item(sessions: sessionmaker[Session]) -> None:
    _, out1 = submit(sessions, "http://site.test/a.jpg")
    (first,) = of_topic(out1, "items.accepted")
    with sessions() as s:
        store = SqlUnitOfWork(s)
        item = store.items.get(first.item_id)
        assert item is not None
        store.items.set_state(item, "closed_offline", "gone", "classify")
        store.commit()
    _, out2 = submit(sessions, "http://site.test/a.jpg")
    (second,) = of_topic(out2, "items.accepted")
    assert second.item_id != first.item_id
    assert second.url == first.url


def test_invalid_urls_are_rejected_with_codes_and_the_rest_accepted(sessions: sessionmaker[Session]) -> None:
    rid, out = submit(sessions, "ftp://files.test/x.jpg", "http://ok.test/", "http://bad host.test/")
    rejected = of_topic(out, "reports.rejected")
    assert [(r.reason_code, r.payload["position"]) for r in rejected] == [  # type: ignore[attr-defined]
        ("unsupported_scheme", 0),
        ("invalid_host", 2),
    ]
    assert all(r.report_id == rid and r.stage == "ingest" for r in rejected)  # type: ignore[attr-defined]
    assert len(of_topic(out, "items.accepted")) == 1
    with sessions() as s:
        report = s.get(Report, rid)
        assert report is not None and report.status == "accepted"
        links = SqlUnitOfWork(s).reports.urls(rid)
        assert [link.item_id is None for link in links] == [True, False, True]
        assert "http and https" in (links[0].rejected_reason or "")


def test_report_with_only_invalid_urls_is_rejected(sessions: sessionmaker[Session]) -> None:
    rid, out = submit(sessions, "mailto:x@y.test", "")
    assert [r.reason_code for r in of_topic(out, "reports.rejected")] == ["unsupported_scheme", "empty_url"]  # type: ignore[attr-defined]
    assert of_topic(out, "items.accepted") == []
    with sessions() as s:
        report = s.get(Report, rid)
        assert report is not None and report.status == "rejected" and report.reason


def test_report_without_urls_is_rejected_whole(sessions: sessionmaker[Session]) -> None:
    rid, out = submit(sessions)
    (rej,) = out
    assert rej.topic == "reports.rejected"
    assert isinstance(rej.message, ReportRejected)
    assert (rej.message.reason_code, rej.message.report_id) == ("no_urls", rid)
    with sessions() as s:
        report = s.get(Report, rid)
        assert report is not None and report.status == "rejected"


@pytest.mark.parametrize(
    ("raw", "payload"),
    [
        (b"{this is not json", "{this is not json"),
        (b'{"report_id": "r-42", "urls": "not-a-list"}', {"report_id": "r-42", "urls": "not-a-list"}),
        (b'["a", "list"]', ["a", "list"]),
    ],
)
def test_malformed_message_becomes_a_rejection_with_the_payload(
    sessions: sessionmaker[Session], raw: bytes, payload: object
) -> None:
    out = deliver(sessions, IngestStage(), "reports.submitted", raw)
    (rej,) = out
    assert rej.topic == "reports.rejected"
    msg = rej.message
    assert isinstance(msg, ReportRejected)
    assert msg.reason_code == "malformed_message"
    assert msg.payload == payload
    assert msg.stage == "ingest" and msg.source_topic == "reports.submitted"
    with sessions() as s:
        assert s.scalars(select(Item)).all() == []
        if isinstance(payload, dict):  # the report id could be read: it is visible as rejected
            report = s.get(Report, "r-42")
            assert report is not None and report.status == "rejected"
            assert "urls" in (report.reason or "")
        # the rejection itself is published through the outbox with the unit of work
        assert s.execute(text("select count(*) from bus_messages where topic='reports.rejected'")).scalar() == 1


def test_redelivered_report_creates_nothing_new(sessions: sessionmaker[Session]) -> None:
    msg = ReportSubmitted(urls=["http://site.test/a.jpg", "http://site.test/b.jpg"])
    out1 = deliver(sessions, IngestStage(), "reports.submitted", msg.model_dump_json())
    out2 = deliver(sessions, IngestStage(), "reports.submitted", msg.model_dump_json())
    ids1 = sorted(m.item_id for m in of_topic(out1, "items.accepted"))  # type: ignore[attr-defined]
    ids2 = sorted(m.item_id for m in of_topic(out2, "items.accepted"))  # type: ignore[attr-defined]
    assert ids1 == ids2 and len(ids1) == 2  # replayed for the stages after, same items
    with sessions() as s:
        assert len(s.scalars(select(Item)).all()) == 2
        assert len(s.scalars(select(ReportUrl)).all()) == 2


# --------------------------------------------------------------------------- notify


def make_item(sessions: sessionmaker[Session], state: str, classification: ItemClassified | None = None) -> str:
    with sessions() as s:
        store = SqlUnitOfWork(s)
        # A distinct URL per item: only one open item may exist per URL.
        item = store.items.create(f"http://img.hoster-a.test/known.jpg?case={uuid.uuid4().hex}")
        store.items.set_state(item, state, "set up by the test", "test")
        if classification is not None:
            item.classification = classification.model_copy(update={"item_id": item.id}).model_dump(mode="json")
        store.commit()
        return item.id


def notice_for(item_id: str) -> TakedownNotice:
    return TakedownNotice(
        notice_id=f"ntd-{item_id}", item_id=item_id, url="http://img.hoster-a.test/known.jpg",
        hoster="Hoster A B.V.", abuse_email="abuse@hoster-a.test", country="NL",
    )


class ProcessKilled(BaseException):
    """Stands in for the process dying mid-send (not an Exception: nothing may catch it)."""


class DyingMailer:
    def send(self, message: object) -> None:
        raise ProcessKilled


class RefusingMailer:
    def __init__(self) -> None:
        self.attempts = 0

    def send(self, message: object) -> None:
        self.attempts += 1
        raise smtplib.SMTPServerDisconnected("connection unexpectedly closed")


def notify(sessions: sessionmaker[Session], mailer: object, notice: TakedownNotice) -> list[Outgoing]:
    stage = NotifyStage(mailer=mailer, sender="ntd@hotline.test", hotline_name="Test hotline")  # type: ignore[arg-type]
    return deliver(sessions, stage, "notices.ntd", notice.model_dump_json())


def test_notice_is_sent_once(sessions: sessionmaker[Session]) -> None:
    item_id = make_item(sessions, "notice_queued")
    mailer = RecordingMailer()
    out = notify(sessions, mailer, notice_for(item_id))
    assert len(mailer.sent) == 1
    email = mailer.sent[0]
    assert email["To"] == "abuse@hoster-a.test"
    assert email["Message-ID"] == f"<ntd-{item_id}@hotline.test>"
    assert "http://img.hoster-a.test/known.jpg" in email.get_content()
    (event,) = of_topic(out, "notices.events")
    assert isinstance(event, NoticeEvent) and event.kind == "sent"
    with sessions() as s:
        notice = s.get(Notice, f"ntd-{item_id}")
        assert notice is not None and notice.status == "sent" and notice.sent_at is not None
        item = s.get(Item, item_id)
        assert item is not None and item.state == "notice_sent" and "abuse@hoster-a.test" in item.reason
        assert SqlUnitOfWork(s).audit.verify() == []


def test_redelivered_notice_is_not_sent_again(sessions: sessionmaker[Session]) -> None:
    item_id = make_item(sessions, "notice_queued")
    mailer = RecordingMailer()
    notify(sessions, mailer, notice_for(item_id))
    out = notify(sessions, mailer, notice_for(item_id))
    out3 = notify(sessions, RecordingMailer(), notice_for(item_id))
    assert len(mailer.sent) == 1
    assert [e.kind for e in of_topic(out + out3, "notices.events")] == ["sent", "sent"]  # type: ignore[attr-defined]


def test_notice_left_in_sending_is_not_resent(sessions: sessionmaker[Session]) -> None:
    item_id = make_item(sessions, "notice_queued")
    with pytest.raises(ProcessKilled):
        notify(sessions, DyingMailer(), notice_for(item_id))
    with sessions() as s:  # what the crash left behind: the intent, committed
        notice = s.get(Notice, f"ntd-{item_id}")
        assert notice is not None and notice.status == "sending"

    mailer = RecordingMailer()
    out = notify(sessions, mailer, notice_for(item_id))  # the redelivery after the restart
    assert mailer.sent == []
    (event,) = of_topic(out, "notices.events")
    assert event.kind == "delivery_unknown"  # type: ignore[attr-defined]
    with sessions() as s:
        notice = s.get(Notice, f"ntd-{item_id}")
        assert notice is not None and notice.status == "delivery_unknown"
        item = s.get(Item, item_id)
        assert item is not None and item.state == "notice_unconfirmed"
        assert notice.message_id in item.reason

    notify(sessions, mailer, notice_for(item_id))  # and any later redelivery: still not sent
    assert mailer.sent == []


def test_smtp_failure_is_retryable_and_the_retry_sends_once(sessions: sessionmaker[Session]) -> None:
    item_id = make_item(sessions, "notice_queued")
    refusing = RefusingMailer()
    with pytest.raises(smtplib.SMTPServerDisconnected):  # transient: run_stage lets it through
        notify(sessions, refusing, notice_for(item_id))
    assert refusing.attempts == 1
    with sessions() as s:
        notice = s.get(Notice, f"ntd-{item_id}")
        assert notice is not None and notice.status == "failed"
        item = s.get(Item, item_id)
        assert item is not None and item.state == "notice_queued"
        assert s.execute(text("select count(*) from bus_messages where topic='reports.rejected'")).scalar() == 0

    mailer = RecordingMailer()
    notify(sessions, mailer, notice_for(item_id))
    notify(sessions, mailer, notice_for(item_id))
    assert len(mailer.sent) == 1
    with sessions() as s:
        notice = s.get(Notice, f"ntd-{item_id}")
        assert notice is not None and notice.status == "sent"


# --------------------------------------------------------------------------- escalate

DE = PartnerEntry(country="DE", name="Partner hotline DE", endpoint="http://partner.invalid/api")


class FakeGateway:
    """Fails ``fail_times`` times (permanently or not), then accepts; records every call."""

    def __init__(self, fail_times: int = 0, permanent: bool = False) -> None:
        self.fail_times, self.permanent = fail_times, permanent
        self.calls: list[tuple[str, str]] = []

    def deliver(self, partner: PartnerEntry, forward: PartnerForward) -> int:
        self.calls.append((partner.name, forward.forward_id))
        if len(self.calls) <= self.fail_times:
            raise DeliveryFailed(f"HTTP 503 on attempt {len(self.calls)}" if not self.permanent else "HTTP 401",
                                 permanent=self.permanent)
        return 201


def forward_for(item_id: str, country: str = "DE") -> PartnerForward:
    return PartnerForward(forward_id=f"fwd-{item_id}", item_id=item_id, url="http://cdn.hoster-de.test/k3.jpg",
                          country=country, partner_name="Partner hotline DE")


def escalate(sessions: sessionmaker[Session], gateway: FakeGateway, fwd: PartnerForward, attempts: int = 5) -> list[Outgoing]:
    stage = EscalateStage(partners=PartnerDirectory({"DE": DE}), gateway=gateway, max_attempts=attempts, retry_seconds=0)
    return deliver(sessions, stage, "forwards.partner", fwd.model_dump_json())


def test_forward_retries_then_succeeds(sessions: sessionmaker[Session]) -> None:
    item_id = make_item(sessions, "forward_queued")
    gateway = FakeGateway(fail_times=2)
    out = escalate(sessions, gateway, forward_for(item_id))
    assert gateway.calls == [("Partner hotline DE", f"fwd-{item_id}")] * 3
    assert [e.kind for e in of_topic(out, "notices.events")] == ["forwarded"]  # type: ignore[attr-defined]
    with sessions() as s:
        fwd = s.get(Forward, f"fwd-{item_id}")
        assert fwd is not None and (fwd.status, fwd.attempts) == ("sent", 3)
        item = s.get(Item, item_id)
        assert item is not None and item.state == "forwarded" and "Partner hotline DE" in item.reason
    escalate(sessions, gateway, forward_for(item_id))  # redelivery: no second POST
    assert len(gateway.calls) == 3


def test_forward_permanent_failure_returns_item_to_analyst(sessions: sessionmaker[Session]) -> None:
    item_id = make_item(sessions, "forward_queued")
    gateway = FakeGateway(fail_times=99, permanent=True)
    out = escalate(sessions, gateway, forward_for(item_id))
    assert len(gateway.calls) == 1  # retrying cannot help
    assert [e.kind for e in of_topic(out, "notices.events")] == ["forward_failed"]  # type: ignore[attr-defined]
    with sessions() as s:
        fwd = s.get(Forward, f"fwd-{item_id}")
        assert fwd is not None and fwd.status == "failed" and "HTTP 401" in (fwd.last_error or "")
        item = s.get(Item, item_id)
        assert item is not None and item.state == "awaiting_assessment"
        assert "HTTP 401" in item.reason and "analyst" in item.reason


def test_forward_gives_up_after_max_attempts(sessions: sessionmaker[Session]) -> None:
    item_id = make_item(sessions, "forward_queued")
    gateway = FakeGateway(fail_times=99)
    escalate(sessions, gateway, forward_for(item_id), attempts=3)
    assert len(gateway.calls) == 3
    with sessions() as s:
        item = s.get(Item, item_id)
        assert item is not None and item.state == "awaiting_assessment" and "3 attempt(s)" in item.reason


def test_forward_to_country_without_partner(sessions: sessionmaker[Session]) -> None:
    item_id = make_item(sessions, "forward_queued")
    gateway = FakeGateway()
    escalate(sessions, gateway, forward_for(item_id, country="FR"))
    assert gateway.calls == []
    with sessions() as s:
        item = s.get(Item, item_id)
        assert item is not None and item.state == "awaiting_assessment" and "FR" in item.reason


# --------------------------------------------------------------------------- assessment

IMG_OK = ImageFacts(url="http://a.test/new.jpg", md5="a" * 32, sha1="b" * 40, sha256="c" * 64, pdq="d" * 64,
                    pdq_quality=100, phash="e" * 16)
IMG_BROKEN = ImageFacts(url="http://a.test/broken.jpg", error="not an image")
CLASSIFIED = ItemClassified(
    item_id="placeholder", url="http://img.hoster-a.test/known.jpg", online=True, images=[IMG_OK, IMG_BROKEN],
    hosting=HostingFacts(host="img.hoster-a.test", ip="192.0.2.1", country="NL", hoster="Hoster A B.V.",
                         abuse="abuse@hoster-a.test", source="hosting_file"),
    route="assessment", reason="1 image(s) not in the bank: waiting for an analyst",
)


def do_assess(sessions: sessionmaker[Session], item_id: str, verdict: str, category: str | None = "national") -> list[Outgoing]:
    with sessions() as s:
        store = SqlUnitOfWork(s)
        out = assess(store, item_id, verdict=verdict, category=category, analyst="ann", notes="seen")  # type: ignore[arg-type]
        store.enqueue(out)
        store.commit()
        return out


def test_illegal_escalates_and_adds_hashes_to_the_bank(sessions: sessionmaker[Session]) -> None:
    item_id = make_item(sessions, "awaiting_assessment", CLASSIFIED)
    out = do_assess(sessions, item_id, "illegal")
    (esc,) = out
    assert esc.topic == "escalations.police"
    msg = esc.message
    assert isinstance(msg, PoliceEscalation)
    assert msg.item_id == item_id and msg.url.startswith(CLASSIFIED.url + "?case=")
    assert msg.images == [IMG_OK, IMG_BROKEN]
    assert msg.hosting is not None and msg.hosting.abuse == "abuse@hoster-a.test"
    assert (msg.classification.analyst, msg.classification.category) == ("ann", "national")
    with sessions() as s:
        entries = s.scalars(select(BankEntry)).all()
        assert [(e.sha256, e.pdq, e.category, e.source) for e in entries] == [("c" * 64, "d" * 64, "national", "analyst:ann")]
        item = s.get(Item, item_id)
        assert item is not None and item.state == "escalated" and "police" in item.reason
        assert s.get(Escalation, f"pol-{item_id}") is not None
        assert s.execute(text("select count(*) from bus_messages where topic='escalations.police'")).scalar() == 1


def test_not_illegal_closes(sessions: sessionmaker[Session]) -> None:
    item_id = make_item(sessions, "awaiting_assessment", CLASSIFIED)
    assert do_assess(sessions, item_id, "not_illegal", None) == []
    with sessions() as s:
        item = s.get(Item, item_id)
        assert item is not None and item.state == "closed_not_illegal" and "ann" in item.reason
        assert s.scalars(select(BankEntry)).all() == []
        assert s.scalars(select(Escalation)).all() == []


def test_assessing_twice_is_refused_with_409(sessions: sessionmaker[Session]) -> None:
    item_id = make_item(sessions, "awaiting_assessment", CLASSIFIED)
    do_assess(sessions, item_id, "illegal")
    with pytest.raises(AssessmentRefused) as info:
        do_assess(sessions, item_id, "not_illegal")
    assert info.value.status == 409 and "escalated" in info.value.reason
    with sessions() as s:
        item = s.get(Item, item_id)
        assert item is not None and item.state == "escalated"
        assert len(s.scalars(select(BankEntry)).all()) == 1


@pytest.mark.parametrize("state", ["received", "notice_sent", "closed_offline", "forwarded"])
def test_assessing_an_item_not_waiting_is_refused(sessions: sessionmaker[Session], state: str) -> None:
    item_id = make_item(sessions, state)
    with pytest.raises(AssessmentRefused) as info:
        do_assess(sessions, item_id, "illegal")
    assert info.value.status == 409


def test_assessing_an_unknown_item_is_404(sessions: sessionmaker[Session]) -> None:
    with pytest.raises(AssessmentRefused) as info:
        do_assess(sessions, "no-such-item", "illegal")
    assert info.value.status == 404


def test_illegal_without_classification_still_escalates(sessions: sessionmaker[Session]) -> None:
    item_id = make_item(sessions, "awaiting_assessment")
    (esc,) = do_assess(sessions, item_id, "illegal", None)
    assert isinstance(esc.message, PoliceEscalation) and esc.message.images == []
    assert esc.message.classification.category == "national"


# --------------------------------------------------------------------------- audit chain


def _audited(sessions: sessionmaker[Session]) -> list[int]:
    """Produce a handful of audit rows through the stages themselves."""
    for n in range(2):
        item_id = make_item(sessions, "awaiting_assessment", CLASSIFIED)
        do_assess(sessions, item_id, "illegal" if n else "not_illegal")
    item_id = make_item(sessions, "notice_queued")
    notify(sessions, RecordingMailer(), notice_for(item_id))
    with sessions() as s:
        ids = list(s.scalars(select(AuditLog.id).order_by(AuditLog.id)))
    assert len(ids) >= 3
    return ids


def test_audit_chain_verifies(sessions: sessionmaker[Session]) -> None:
    _audited(sessions)
    assert read(sessions, lambda st: st.verify_audit_chain()) == []


def test_audit_chain_detects_an_edited_row(sessions: sessionmaker[Session]) -> None:
    ids = _audited(sessions)
    with sessions() as s:
        s.execute(update(AuditLog).where(AuditLog.id == ids[1]).values(detail="not_illegal"))
        s.commit()
    assert read(sessions, lambda st: st.verify_audit_chain()) == [ids[1]]


def test_audit_chain_detects_a_rehashed_row(sessions: sessionmaker[Session]) -> None:
    # A careful forger recomputes the edited row's own hash: the next row no longer links to it.
    import hashlib
    import json

    ids = _audited(sessions)
    with sessions() as s:
        row = s.get(AuditLog, ids[0])
        assert row is not None
        row.actor = "somebody-else"
        body = json.dumps([row.prev_hash, row.at.isoformat(), row.actor, row.action, row.subject, row.detail])
        row.hash = hashlib.sha256(body.encode()).hexdigest()
        s.commit()
    assert read(sessions, lambda st: st.verify_audit_chain()) == [ids[1]]


def test_audit_chain_detects_a_deleted_row(sessions: sessionmaker[Session]) -> None:
    ids = _audited(sessions)
    with sessions() as s:
        s.execute(text("delete from audit_log where id = :id"), {"id": ids[1]})
        s.commit()
    assert read(sessions, lambda st: st.verify_audit_chain()) == [ids[2]]


def test_bank_match_value_object_round_trips_through_classification(sessions: sessionmaker[Session]) -> None:
    # The classification stored on the item is what assessment and redelivery read back.
    hit = IMG_OK.model_copy(update={"match": BankMatch(entry_id=1, signal="pdq", distance=4, category="baseline", source="b")})
    c = CLASSIFIED.model_copy(update={"images": [hit]})
    item_id = make_item(sessions, "awaiting_assessment", c)
    with sessions() as s:
        item = s.get(Item, item_id)
        assert item is not None and item.classification is not None
        back = ItemClassified.model_validate(item.classification)
        assert back.images[0].match == hit.match


def test_audit_timestamps_read_back_in_utc_whatever_the_session_zone(sessions: sessionmaker[Session]) -> None:
    # PostgreSQL answers timestamptz in the session's TimeZone (e.g. Europe/Amsterdam); the chain
    # hashes at.isoformat(), so a "+01:00" spelling of the same instant broke every row.
    from datetime import UTC, datetime, timedelta, timezone

    from hotline.storage.models import UTCDateTime

    amsterdam = datetime(2026, 1, 5, 13, 0, 0, 123456, tzinfo=timezone(timedelta(hours=1)))
    read_back = UTCDateTime().process_result_value(amsterdam, None)
    assert read_back == amsterdam and read_back is not None
    assert read_back.isoformat() == "2026-01-05T12:00:00.123456+00:00"
    # and a zone-aware value written through SQLite keeps its instant
    with sessions() as s:
        s.add(AuditLog(at=amsterdam, actor="a", action="b", subject="c", detail="", prev_hash="0", hash="0"))
        s.commit()
    with sessions() as s:
        (at,) = s.scalars(select(AuditLog.at)).all()
        assert at == amsterdam and at.tzinfo is not None and at.utcoffset() == timedelta(0)
        assert at == datetime(2026, 1, 5, 12, 0, 0, 123456, tzinfo=UTC)
