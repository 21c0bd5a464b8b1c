"""Stage logic without a database: every stage runs on ``MemoryUnitOfWork`` with hand-written
recording fakes (``tests.unit.stagekit``), driven the way a runtime drives it (``deliver``:
decode + handle, side effect to its end, publish with the unit of work, commit; roll back
on an exception). A retry is the runtime delivering the same message again.

The last sections (marked "SQL adapter") run the same stages through ``StepRunner`` on a
migrated SQLite database, so the SQL unit of work and the runtimes' step path are covered
too, and hold the storage tests that only mean something on SQL (the audit hash chain,
timestamp and JSON column types).
"""

from __future__ import annotations

import shutil
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import select, text, update
from sqlalchemy.orm import Session, sessionmaker

from hotline.kernel.clock import FakeClock, installed
from hotline.kernel.failures import Failure, classify
from hotline.kernel.messages import Outgoing
from hotline.kernel.ports import UnitOfWork
from hotline.kernel.stage import SideEffect, complete, run_stage
from hotline.runtime.steps import RetryRequested, StepRunner
from hotline.storage.memory import MemoryState, MemoryUnitOfWork
from hotline.storage.unit_of_work import SqlUnitOfWork
from schemas.facts import BankMatch, HostingFacts, ImageFacts
from schemas.items import ItemAccepted, ItemClassified
from schemas.notices import NoticeEvent, PoliceEscalation
from schemas.reports import ReportRejected, ReportSubmitted
from services.assessment.logic import AssessmentRefused, assess
from services.escalate.forwards import Backoff, DeliveryDispatcher
from services.escalate.partners import HttpPartnerGateway, PartnerDirectory
from services.ingest.stage import IngestStage
from services.notify.mailer import DeliveryUnknown, NotDelivered, RecordingMailer
from services.operations.logic import OperationRefused, retry_delivery
from tests.unit.stagekit import (
    DE,
    DyingGateway,
    DyingMailer,
    FakeGateway,
    ProcessKilled,
    RaisingMailer,
    deliver,
    escalate_stage,
    forward_for,
    kinds,
    make_item,
    notice_for,
    notify_stage,
    of_topic,
    path_to,
)

# Names the tests' hosting file would list (intake accepts them; see services.ingest.hosts).
TEST_HOSTS = frozenset({"site.test", "ok.test", "files.test", "a.test", "b.test"})


@pytest.fixture
def state() -> MemoryState:
    """What a database would keep between units of work."""
    return MemoryState()


@pytest.fixture
def uow(state: MemoryState) -> MemoryUnitOfWork:
    return MemoryUnitOfWork(state)


def submit(uow: UnitOfWork, *urls: str, report_id: str | None = None) -> tuple[str, list[Outgoing]]:
    msg = ReportSubmitted(urls=list(urls)) if report_id is None else ReportSubmitted(urls=list(urls), report_id=report_id)
    return msg.report_id, deliver(IngestStage(operator_hosts=TEST_HOSTS), "reports.submitted", msg, uow)


def published(state: MemoryState, topic: str) -> list[Any]:
    return [o.message for o in state.published if o.topic == topic]


def test_path_to_walks_only_allowed_changes() -> None:
    assert path_to("received") == []
    assert path_to("notice_sent") == ["notice_queued", "notice_sent"]
    assert path_to("forwarded") == ["forward_queued", "forwarded"]
    assert path_to("escalated") == ["escalated"]  # a Tor hidden service: classify escalates it at once


# --------------------------------------------------------------------------- ingest


def test_new_url_becomes_an_item(uow: MemoryUnitOfWork) -> None:
    rid, out = submit(uow, "HTTP://Site.test/a.jpg#x")
    accepted = of_topic(out, "items.accepted")
    assert len(accepted) == 1 and isinstance(accepted[0], ItemAccepted)
    assert accepted[0].url == "http://site.test/a.jpg"
    assert accepted[0].report_ids == [rid]
    item = uow.items.get(accepted[0].item_id)
    assert item is not None and item.state == "received"
    report = uow.reports.get(rid)
    assert report is not None and report.status == "accepted"
    assert [e.kind for e in uow.items.events(item.id)] == ["received"]
    assert uow.state.published == out  # published with the unit of work


def test_same_url_twice_is_one_item_with_reported_again(uow: MemoryUnitOfWork, state: MemoryState) -> None:
    r1, out1 = submit(uow, "http://site.test/a.jpg")
    r2, out2 = submit(uow, "site.test/./a.jpg")  # another spelling, another report
    (first,) = of_topic(out1, "items.accepted")
    assert of_topic(out2, "items.accepted") == []  # no new work
    assert [i.id for i in state.items.values() if i.url == "http://site.test/a.jpg"] == [first.item_id]
    assert len(state.items) == 1
    assert uow.items.report_ids(first.item_id) == sorted([r1, r2])
    events = uow.items.events(first.item_id)
    assert [e.kind for e in events] == ["received", "reported_again"]
    assert r2 in events[1].detail


def test_same_url_twice_in_one_report(uow: MemoryUnitOfWork) -> None:
    rid, out = submit(uow, "http://site.test/a.jpg", "http://SITE.test:80/a.jpg")
    assert len(of_topic(out, "items.accepted")) == 1
    links = uow.reports.urls(rid)
    assert len(links) == 2 and links[0].item_id == links[1].item_id is not None


def test_url_of_a_closed_item_opens_a_new_item(uow: MemoryUnitOfWork) -> None:
    _, out1 = submit(uow, "http://site.test/a.jpg")
    (first,) = of_topic(out1, "items.accepted")
    item = uow.items.get(first.item_id)
    assert item is not None
    uow.items.set_state(item, "closed_offline", "gone", "classify")
    uow.commit()
    _, out2 = submit(uow, "http://site.test/a.jpg")
    (second,) = of_topic(out2, "items.accepted")
    assert second.item_id != first.item_id
    assert second.url == first.url


def test_invalid_urls_are_rejected_with_codes_and_the_rest_accepted(uow: MemoryUnitOfWork) -> None:
    rid, out = submit(uow, "ftp://files.test/x.jpg", "http://ok.test/", "http://bad host.test/")
    rejected = of_topic(out, "reports.rejected")
    assert [(r.reason_code, r.payload["position"]) for r in rejected] == [
        ("unsupported_scheme", 0),
        ("invalid_host", 2),
    ]
    assert all(r.report_id == rid and r.stage == "ingest" for r in rejected)
    assert len(of_topic(out, "items.accepted")) == 1
    report = uow.reports.get(rid)
    assert report is not None and report.status == "accepted"
    links = uow.reports.urls(rid)
    assert [link.item_id is None for link in links] == [True, False, True]
    assert "http and https" in (links[0].rejected_reason or "")


def test_report_with_only_invalid_urls_is_rejected(uow: MemoryUnitOfWork) -> None:
    rid, out = submit(uow, "mailto:x@y.test", "")
    assert [r.reason_code for r in of_topic(out, "reports.rejected")] == ["unsupported_scheme", "empty_url"]
    assert of_topic(out, "items.accepted") == []
    report = uow.reports.get(rid)
    assert report is not None and report.status == "rejected" and report.reason


def test_report_without_urls_is_rejected_whole(uow: MemoryUnitOfWork) -> None:
    rid, out = submit(uow)
    (rej,) = out
    assert rej.topic == "reports.rejected"
    assert isinstance(rej.message, ReportRejected)
    assert (rej.message.reason_code, rej.message.report_id) == ("no_urls", rid)
    report = uow.reports.get(rid)
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
    uow: MemoryUnitOfWork, state: MemoryState, raw: bytes, payload: object
) -> None:
    out = deliver(IngestStage(operator_hosts=TEST_HOSTS), "reports.submitted", raw, uow)
    (rej,) = out
    assert rej.topic == "reports.rejected"
    msg = rej.message
    assert isinstance(msg, ReportRejected)
    assert msg.reason_code == "malformed_message"
    assert msg.payload == payload
    assert msg.stage == "ingest" and msg.source_topic == "reports.submitted"
    assert state.items == {}
    if isinstance(payload, dict):  # the report id could be read: it is visible as rejected
        report = uow.reports.get("r-42")
        assert report is not None and report.status == "rejected"
        assert "urls" in (report.reason or "")
    else:
        assert [a[:3] for a in state.audit] == [("ingest", "message_rejected", "-")]
    # the rejection itself is published with the unit of work
    assert published(state, "reports.rejected") == [msg]


def test_redelivered_report_creates_nothing_new(uow: MemoryUnitOfWork, state: MemoryState) -> None:
    msg = ReportSubmitted(urls=["http://site.test/a.jpg", "http://site.test/b.jpg"])
    out1 = deliver(IngestStage(operator_hosts=TEST_HOSTS), "reports.submitted", msg, uow)
    out2 = deliver(IngestStage(operator_hosts=TEST_HOSTS), "reports.submitted", msg, uow)
    ids1 = sorted(m.item_id for m in of_topic(out1, "items.accepted"))
    ids2 = sorted(m.item_id for m in of_topic(out2, "items.accepted"))
    assert ids1 == ids2 and len(ids1) == 2  # replayed for the stages after, same items
    assert len(state.items) == 2
    assert len(state.report_urls) == 2


# --------------------------------------------------------------------------- notify


def test_notice_is_sent_once(uow: MemoryUnitOfWork, state: MemoryState) -> None:
    item_id = make_item(uow, "notice_queued")
    mailer = RecordingMailer()
    out = deliver(notify_stage(mailer), "notices.ntd", notice_for(item_id), uow)
    assert len(mailer.sent) == 1
    email = mailer.sent[0]
    assert email["To"] == "abuse@hoster-a.test"
    assert email["Message-ID"] == f"<ntd-{item_id}@hotline.test>"
    assert "http://img.hoster-a.test/known.jpg" in email.get_body(("plain",)).get_content()
    (event,) = of_topic(out, "notices.events")
    assert isinstance(event, NoticeEvent) and event.kind == "sent"
    assert published(state, "notices.events") == [event]
    notice = uow.notices.get(f"ntd-{item_id}")
    assert notice is not None and notice.status == "sent" and notice.sent_at is not None
    item = uow.items.get(item_id)
    assert item is not None and item.state == "notice_sent" and "abuse@hoster-a.test" in item.reason
    assert ("notify", "notice_sent", f"ntd-{item_id}", "abuse@hoster-a.test") in state.audit


def test_redelivered_notice_is_not_sent_again(uow: MemoryUnitOfWork) -> None:
    item_id = make_item(uow, "notice_queued")
    mailer = RecordingMailer()
    deliver(notify_stage(mailer), "notices.ntd", notice_for(item_id), uow)
    out = deliver(notify_stage(mailer), "notices.ntd", notice_for(item_id), uow)
    out3 = deliver(notify_stage(RecordingMailer()), "notices.ntd", notice_for(item_id), uow)
    assert len(mailer.sent) == 1
    assert kinds(out + out3) == ["sent", "sent"]


def test_notice_left_in_sending_is_not_resent(uow: MemoryUnitOfWork, state: MemoryState) -> None:
    item_id = make_item(uow, "notice_queued")
    with pytest.raises(ProcessKilled):
        deliver(notify_stage(DyingMailer()), "notices.ntd", notice_for(item_id), uow)
    notice = state.notices[f"ntd-{item_id}"]  # what the crash left behind: the intent, committed
    assert notice.status == "sending"

    restarted = MemoryUnitOfWork(state)
    mailer = RecordingMailer()
    out = deliver(notify_stage(mailer), "notices.ntd", notice_for(item_id), restarted)  # the redelivery
    assert mailer.sent == []
    assert kinds(out) == ["delivery_unknown"]
    notice = state.notices[f"ntd-{item_id}"]
    assert notice.status == "delivery_unknown"
    item = restarted.items.get(item_id)
    assert item is not None and item.state == "notice_unconfirmed"
    assert notice.message_id in item.reason

    deliver(notify_stage(mailer), "notices.ntd", notice_for(item_id), restarted)  # any later one: still not sent
    assert mailer.sent == []


def test_not_delivered_is_retried_and_the_retry_sends_once(uow: MemoryUnitOfWork, state: MemoryState) -> None:
    item_id = make_item(uow, "notice_queued")
    refusing = RaisingMailer(NotDelivered("421 service not available, try again later", permanent=False, code=421))
    result = run_stage(notify_stage(refusing), "notices.ntd", notice_for(item_id).model_dump_json(), uow)
    assert isinstance(result, SideEffect)
    with pytest.raises(NotDelivered):  # the stage's RetryLater: complete() re-raises its error
        complete(result, uow)
    assert refusing.attempts == 1
    notice = state.notices[f"ntd-{item_id}"]
    assert notice.status == "failed"  # recorded and committed with the retry request
    item = uow.items.get(item_id)
    assert item is not None and item.state == "notice_queued"
    assert state.published == []  # no event, no rejection: the runtime retries

    mailer = RecordingMailer()
    out = deliver(notify_stage(mailer), "notices.ntd", notice_for(item_id), uow)  # the retry
    deliver(notify_stage(mailer), "notices.ntd", notice_for(item_id), uow)  # and a redelivery
    assert len(mailer.sent) == 1
    assert kinds(out) == ["sent"]
    assert state.notices[f"ntd-{item_id}"].status == "sent"
    item = uow.items.get(item_id)
    assert item is not None and item.state == "notice_sent"


def test_not_delivered_leaves_a_retryable_notice_for_the_failure_policy(uow: MemoryUnitOfWork, state: MemoryState) -> None:
    # deliver() is what the runtime does: the error reaches the failure policy (a temporary
    # refusal is an outage, retried while it lasts), and what the stage recorded stays.
    item_id = make_item(uow, "notice_queued")
    refusing = RaisingMailer(NotDelivered("try later", permanent=False, code=421))
    for attempt in (1, 2):
        with pytest.raises(NotDelivered) as info:
            deliver(notify_stage(refusing), "notices.ntd", notice_for(item_id), uow)
        assert classify(info.value) is Failure.OUTAGE
        assert refusing.attempts == attempt
        assert state.notices[f"ntd-{item_id}"].status == "failed"
        assert state.items[item_id].state == "notice_queued"


def test_a_permanent_refusal_goes_to_an_analyst_and_is_not_resent(uow: MemoryUnitOfWork, state: MemoryState) -> None:
    item_id = make_item(uow, "notice_queued")
    refusing = RaisingMailer(NotDelivered("550 no such mailbox", permanent=True, code=550))
    out = deliver(notify_stage(refusing), "notices.ntd", notice_for(item_id), uow)
    assert refusing.attempts == 1
    assert kinds(out) == ["bounced"]
    assert state.notices[f"ntd-{item_id}"].status == "refused"
    item = state.items[item_id]
    assert item.state == "awaiting_assessment" and "550 no such mailbox" in item.reason
    again = deliver(notify_stage(refusing), "notices.ntd", notice_for(item_id), uow)  # redelivery
    assert refusing.attempts == 1 and kinds(again) == ["bounced"]


def test_a_mailer_bug_counts_as_delivery_unknown_never_a_resend(uow: MemoryUnitOfWork, state: MemoryState) -> None:
    """At most once: an error a mailer should not raise may have come after the data."""
    item_id = make_item(uow, "notice_queued")
    broken = RaisingMailer(RuntimeError("mailer bug"))
    out = deliver(notify_stage(broken), "notices.ntd", notice_for(item_id), uow)
    assert kinds(out) == ["delivery_unknown"]
    assert state.notices[f"ntd-{item_id}"].status == "delivery_unknown"
    mailer = RecordingMailer()
    deliver(notify_stage(mailer), "notices.ntd", notice_for(item_id), uow)
    assert mailer.sent == []


def test_an_outcome_is_kept_when_the_item_moved_meanwhile(uow: MemoryUnitOfWork, state: MemoryState) -> None:
    """The item was found removed while the mail was on its way: the notice is still
    recorded as sent (it was), the item stays removed."""
    item_id = make_item(uow, "notice_queued")

    class RemovedMeanwhile(RecordingMailer):
        def send(self, message: EmailMessage) -> None:
            super().send(message)
            item = state.items[item_id]
            uow.items.set_state(item, "removed", "gone", "test")

    mailer = RemovedMeanwhile()
    out = deliver(notify_stage(mailer), "notices.ntd", notice_for(item_id), uow)
    assert kinds(out) == ["sent"] and len(mailer.sent) == 1
    assert state.notices[f"ntd-{item_id}"].status == "sent"
    assert state.items[item_id].state == "removed"


def test_delivery_unknown_is_recorded_and_never_resent(uow: MemoryUnitOfWork, state: MemoryState) -> None:
    item_id = make_item(uow, "notice_queued")
    silent = RaisingMailer(DeliveryUnknown("timed out waiting for the answer to the end of DATA"))
    out = deliver(notify_stage(silent), "notices.ntd", notice_for(item_id), uow)  # no retry requested
    assert silent.attempts == 1
    (event,) = of_topic(out, "notices.events")
    assert event.kind == "delivery_unknown" and "timed out" in event.detail
    assert published(state, "notices.events") == [event]
    notice = state.notices[f"ntd-{item_id}"]
    assert notice.status == "delivery_unknown" and notice.sent_at is None
    item = uow.items.get(item_id)
    assert item is not None and item.state == "notice_unconfirmed"
    assert notice.message_id in item.reason
    assert ("notify", "notice_delivery_unknown", notice.id, notice.message_id) in state.audit

    mailer = RecordingMailer()
    again = deliver(notify_stage(mailer), "notices.ntd", notice_for(item_id), uow)  # redelivery
    assert mailer.sent == [] and silent.attempts == 1
    assert kinds(again) == ["delivery_unknown"]
    assert state.notices[f"ntd-{item_id}"].status == "delivery_unknown"


# --------------------------------------------------------------------------- escalate
#
# Forwards are a durable queue (services/escalate/forwards.py): each delivery of a
# forwards.partner message makes at most one attempt and returns normally, whatever the
# partner answered; a failed attempt is recorded with its next attempt time, and the
# dispatcher (a periodic task) publishes the stored message again when it is due.


@pytest.fixture
def clock() -> Iterator[FakeClock]:
    with installed(FakeClock(datetime(2026, 3, 2, 9, 0, tzinfo=UTC))) as c:
        assert isinstance(c, FakeClock)
        yield c


def dispatch(uow: MemoryUnitOfWork) -> list[Outgoing]:
    """One tick of the dispatcher, committed (what the periodic runner does)."""
    out = DeliveryDispatcher(redispatch_seconds=300).tick(uow)
    uow.enqueue(out)
    uow.commit()
    return out


def test_backoff_doubles_per_attempt_and_is_capped() -> None:
    assert [Backoff(2, 60).delay(n) for n in range(1, 9)] == [2, 4, 8, 16, 32, 60, 60, 60]
    assert Backoff(2, 3600).delay(200) == 3600  # no overflow after a very long outage


def test_failed_forward_is_queued_with_backoff_and_delivered_later(
    uow: MemoryUnitOfWork, state: MemoryState, clock: FakeClock
) -> None:
    item_id = make_item(uow, "forward_queued")
    gateway = FakeGateway(fail_times=2)
    stage = escalate_stage(gateway, retry_seconds=2)
    out = deliver(stage, "forwards.partner", forward_for(item_id), uow)  # no exception: the stage goes on
    fwd = state.forwards[f"fwd-{item_id}"]
    assert out == [] and (fwd.status, fwd.attempts, fwd.last_error) == ("pending", 1, "HTTP 503 on attempt 1")
    assert fwd.next_attempt_at == clock.now() + timedelta(seconds=2)
    assert fwd.payload is not None and fwd.payload["forward_id"] == f"fwd-{item_id}"
    assert state.items[item_id].state == "forward_queued"
    assert "forward_retrying" in [e.kind for e in uow.items.events(item_id)]

    # A redelivery before it is due makes no attempt; the dispatcher has nothing due either.
    assert deliver(stage, "forwards.partner", forward_for(item_id), uow) == []
    assert dispatch(uow) == [] and len(gateway.calls) == 1

    clock.advance(2)
    (again,) = dispatch(uow)
    assert again.topic == "forwards.partner" and again.message.forward_id == f"fwd-{item_id}"
    assert dispatch(uow) == []  # claimed: not published twice
    deliver(stage, again.topic, again.message, uow)
    assert (fwd.attempts, fwd.next_attempt_at) == (2, clock.now() + timedelta(seconds=4))  # doubled

    clock.advance(4)
    (third,) = dispatch(uow)
    assert kinds(deliver(stage, third.topic, third.message, uow)) == ["forwarded"]
    assert (fwd.status, fwd.attempts, fwd.next_attempt_at) == ("sent", 3, None) and fwd.sent_at is not None
    assert gateway.calls == [("Partner hotline DE", f"fwd-{item_id}")] * 3  # one key on every attempt
    item = state.items[item_id]
    assert item.state == "forwarded" and "Partner hotline DE" in item.reason and "attempt 3" in item.reason
    assert ("escalate", "forwarded", f"fwd-{item_id}", "Partner hotline DE") in state.audit

    assert kinds(deliver(stage, "forwards.partner", forward_for(item_id), uow)) == ["forwarded"]  # no second POST
    assert len(gateway.calls) == 3 and dispatch(uow) == []


def test_a_failing_partner_does_not_hold_up_another(uow: MemoryUnitOfWork, state: MemoryState, clock: FakeClock) -> None:
    gateway = FakeGateway(fail_times=99, failing={"Partner hotline FR"})
    stage = escalate_stage(gateway)
    to_fr, to_de = make_item(uow, "forward_queued"), make_item(uow, "forward_queued")
    assert deliver(stage, "forwards.partner", forward_for(to_fr, "FR"), uow) == []
    assert kinds(deliver(stage, "forwards.partner", forward_for(to_de, "DE"), uow)) == ["forwarded"]
    assert state.forwards[f"fwd-{to_fr}"].status == "pending" and state.items[to_de].state == "forwarded"


def test_every_attempt_carries_the_same_idempotency_key_and_token(
    uow: MemoryUnitOfWork, clock: FakeClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The real HTTP gateway against a fake partner endpoint: 503, 503, then 201.
    seen: list[httpx.Request] = []

    def partner(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(503 if len(seen) <= 2 else 201)

    monkeypatch.setenv("HOTLINE_TEST_PARTNER_TOKEN", "s3cret")
    de = DE.model_copy(update={"token_env": "HOTLINE_TEST_PARTNER_TOKEN"})
    item_id = make_item(uow, "forward_queued")
    stage = escalate_stage(HttpPartnerGateway(transport=httpx.MockTransport(partner)),
                           partners=PartnerDirectory({"DE": de}))
    msg = forward_for(item_id)
    for _ in range(3):
        deliver(stage, "forwards.partner", msg, uow)
        clock.advance(3600)
        msg = next(iter(of_topic(dispatch(uow), "forwards.partner")), msg)
    assert [r.headers["Idempotency-Key"] for r in seen] == [f"fwd-{item_id}"] * 3
    assert {r.headers["Authorization"] for r in seen} == {"Bearer s3cret"}
    assert {str(r.url) for r in seen} == {DE.endpoint}
    assert len({r.content for r in seen}) == 1  # the same bytes every time (the stored payload)
    assert uow.forwards.get(f"fwd-{item_id}").status == "sent"  # type: ignore[union-attr]


def test_a_refusal_is_kept_visible_and_an_operator_retries_it(
    uow: MemoryUnitOfWork, state: MemoryState, clock: FakeClock
) -> None:
    item_id = make_item(uow, "forward_queued")
    gateway = FakeGateway(fail_times=1, permanent=True)
    stage = escalate_stage(gateway)
    out = deliver(stage, "forwards.partner", forward_for(item_id), uow)
    assert kinds(out) == ["forward_failed"] and len(gateway.calls) == 1  # retrying cannot help
    fwd = state.forwards[f"fwd-{item_id}"]
    assert (fwd.status, fwd.next_attempt_at) == ("refused", None) and "HTTP 401" in (fwd.last_error or "")
    assert state.items[item_id].state == "forward_queued"  # stays where it is, never lost
    clock.advance(86400)
    assert dispatch(uow) == [] and deliver(stage, "forwards.partner", forward_for(item_id), uow) == []
    assert len(gateway.calls) == 1

    retry_delivery(uow, "forward", fwd.id, operator="ops", at=clock.now())  # credentials fixed
    uow.commit()
    (again,) = dispatch(uow)
    assert kinds(deliver(stage, again.topic, again.message, uow)) == ["forwarded"]
    assert fwd.status == "sent" and state.items[item_id].state == "forwarded"
    assert ("ops", "forward_retried", fwd.id, "refused -> pending") in state.audit
    with pytest.raises(OperationRefused) as info:
        retry_delivery(uow, "forward", fwd.id, operator="ops", at=clock.now())
    assert info.value.status == 409


def test_an_unset_token_variable_is_a_refusal(uow: MemoryUnitOfWork, state: MemoryState, clock: FakeClock,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("HOTLINE_TEST_UNSET_TOKEN", raising=False)
    calls: list[httpx.Request] = []
    de = DE.model_copy(update={"token_env": "HOTLINE_TEST_UNSET_TOKEN"})
    gateway = HttpPartnerGateway(transport=httpx.MockTransport(lambda r: calls.append(r) or httpx.Response(201)))
    item_id = make_item(uow, "forward_queued")
    deliver(escalate_stage(gateway, partners=PartnerDirectory({"DE": de})), "forwards.partner", forward_for(item_id), uow)
    fwd = state.forwards[f"fwd-{item_id}"]
    assert calls == [] and fwd.status == "refused" and "HOTLINE_TEST_UNSET_TOKEN" in (fwd.last_error or "")


def test_forwards_of_one_item_go_in_order(uow: MemoryUnitOfWork, state: MemoryState, clock: FakeClock) -> None:
    item_id = make_item(uow, "forward_queued")
    gateway = FakeGateway(fail_times=1)
    stage = escalate_stage(gateway)
    first, moved = forward_for(item_id), forward_for(item_id, forward_id=f"fwd-{item_id}-moved-1")
    deliver(stage, "forwards.partner", first, uow)  # fails: pending
    clock.advance(1)
    assert deliver(stage, "forwards.partner", moved, uow) == []  # waits for the older one
    assert [c[1] for c in gateway.calls] == [first.forward_id]
    assert state.forwards[moved.forward_id].status == "pending"
    clock.advance(2)
    assert [o.message.forward_id for o in dispatch(uow)] == [first.forward_id]  # only the oldest
    deliver(stage, "forwards.partner", first, uow)
    assert [o.message.forward_id for o in dispatch(uow)] == [moved.forward_id]
    deliver(stage, "forwards.partner", moved, uow)
    assert [c[1] for c in gateway.calls] == [first.forward_id, first.forward_id, moved.forward_id]
    assert {state.forwards[f].status for f in (first.forward_id, moved.forward_id)} == {"sent"}


def test_a_crash_during_an_attempt_is_counted_and_attempted_again_after_the_lease(
    uow: MemoryUnitOfWork, state: MemoryState, clock: FakeClock
) -> None:
    item_id = make_item(uow, "forward_queued")
    dying = DyingGateway()
    with pytest.raises(ProcessKilled):
        deliver(escalate_stage(dying), "forwards.partner", forward_for(item_id), uow)
    fwd = state.forwards[f"fwd-{item_id}"]
    assert dying.calls == 1 and (fwd.status, fwd.attempts) == ("pending", 1)  # the crash hid nothing
    gateway = FakeGateway()
    stage = escalate_stage(gateway)
    after = MemoryUnitOfWork(state)  # the restarted process
    assert deliver(stage, "forwards.partner", forward_for(item_id), after) == []  # in flight: not yet
    assert dispatch(after) == []
    clock.advance(301)  # the lease (forward_redispatch_seconds) is over
    (again,) = dispatch(after)
    assert kinds(deliver(stage, again.topic, again.message, after)) == ["forwarded"]
    assert gateway.calls == [("Partner hotline DE", f"fwd-{item_id}")] and fwd.attempts == 2


def test_gateway_bug_is_left_to_the_failure_policy(uow: MemoryUnitOfWork, state: MemoryState, clock: FakeClock) -> None:
    class BrokenGateway(FakeGateway):
        def deliver(self, partner: object, forward: object) -> int:  # type: ignore[override]
            raise TypeError("a bug in the gateway")

    item_id = make_item(uow, "forward_queued")
    with pytest.raises(TypeError):
        deliver(escalate_stage(BrokenGateway()), "forwards.partner", forward_for(item_id), uow)
    fwd = state.forwards[f"fwd-{item_id}"]
    assert (fwd.status, fwd.attempts) == ("pending", 1)  # still queued: attempted again after the lease
    assert state.items[item_id].state == "forward_queued"
    assert state.published == []


def test_forward_to_country_without_partner_is_refused(uow: MemoryUnitOfWork, state: MemoryState,
                                                       clock: FakeClock) -> None:
    item_id = make_item(uow, "forward_queued")
    gateway = FakeGateway()
    out = deliver(escalate_stage(gateway), "forwards.partner", forward_for(item_id, country="BE"), uow)
    assert gateway.calls == [] and kinds(out) == ["forward_failed"]
    fwd = state.forwards[f"fwd-{item_id}"]
    assert fwd.status == "refused" and "BE" in (fwd.last_error or "")
    assert state.items[item_id].state == "forward_queued"


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


def do_assess(uow: UnitOfWork, item_id: str, verdict: str, category: str | None = "national") -> list[Outgoing]:
    """An analyst's decision as the web request applies it: one unit of work, committed."""
    try:
        out = assess(uow, item_id, verdict=verdict, category=category, analyst="ann", notes="seen")  # type: ignore[arg-type]
    except BaseException:
        uow.rollback()
        raise
    uow.enqueue(out)
    uow.commit()
    return out


def test_illegal_escalates_and_adds_hashes_to_the_bank(uow: MemoryUnitOfWork, state: MemoryState) -> None:
    item_id = make_item(uow, "awaiting_assessment", CLASSIFIED)
    out = do_assess(uow, item_id, "illegal")
    (esc,) = out
    assert esc.topic == "escalations.police"
    msg = esc.message
    assert isinstance(msg, PoliceEscalation)
    assert msg.item_id == item_id and msg.url.startswith(CLASSIFIED.url + "?case=")
    assert msg.images == [IMG_OK, IMG_BROKEN]
    assert msg.hosting is not None and msg.hosting.abuse == "abuse@hoster-a.test"
    assert (msg.classification.analyst, msg.classification.category) == ("ann", "national")
    assert [(e.sha256, e.pdq, e.category, e.source) for e in state.bank] == [("c" * 64, "d" * 64, "national", "analyst:ann")]
    item = uow.items.get(item_id)
    assert item is not None and item.state == "escalated" and "police" in item.reason
    assert f"pol-{item_id}" in state.escalations
    assert published(state, "escalations.police") == [msg]
    assert [(a.analyst, a.verdict) for a in state.assessments] == [("ann", "illegal")]
    assert ("ann", "assessment", item_id, "illegal national") in state.audit


def test_not_illegal_closes(uow: MemoryUnitOfWork, state: MemoryState) -> None:
    item_id = make_item(uow, "awaiting_assessment", CLASSIFIED)
    assert do_assess(uow, item_id, "not_illegal", None) == []
    item = uow.items.get(item_id)
    assert item is not None and item.state == "closed_not_illegal" and "ann" in item.reason
    assert state.bank == []
    assert state.escalations == {}


def test_assessing_twice_is_refused_with_409(uow: MemoryUnitOfWork, state: MemoryState) -> None:
    item_id = make_item(uow, "awaiting_assessment", CLASSIFIED)
    do_assess(uow, item_id, "illegal")
    with pytest.raises(AssessmentRefused) as info:
        do_assess(uow, item_id, "not_illegal")
    assert info.value.status == 409 and "escalated" in info.value.reason
    item = uow.items.get(item_id)
    assert item is not None and item.state == "escalated"
    assert len(state.bank) == 1


@pytest.mark.parametrize("state_name", ["received", "notice_sent", "closed_offline", "forwarded"])
def test_assessing_an_item_not_waiting_is_refused(uow: MemoryUnitOfWork, state_name: str) -> None:
    item_id = make_item(uow, state_name)
    with pytest.raises(AssessmentRefused) as info:
        do_assess(uow, item_id, "illegal")
    assert info.value.status == 409


def test_assessing_an_unknown_item_is_404(uow: MemoryUnitOfWork) -> None:
    with pytest.raises(AssessmentRefused) as info:
        do_assess(uow, "no-such-item", "illegal")
    assert info.value.status == 404


def test_illegal_without_classification_still_escalates(uow: MemoryUnitOfWork) -> None:
    item_id = make_item(uow, "awaiting_assessment")
    (esc,) = do_assess(uow, item_id, "illegal", None)
    assert isinstance(esc.message, PoliceEscalation) and esc.message.images == []
    assert esc.message.classification.category == "national"


# =========================================================================== SQL adapter
#
# The same stages through StepRunner (the runtimes' step path) on a migrated SQLite database.
# Keep this section small: behaviour is tested above, here only that the SQL unit of work
# and the commit-act-record steps keep it.


@pytest.fixture(scope="module")
def migrated_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Migrate once per module; each test gets a copy (migrations take most of a second)."""
    from hotline.storage.engine import migrate

    path = tmp_path_factory.mktemp("template") / "template.db"
    migrate(f"sqlite:///{path}")
    return path


@pytest.fixture
def sessions(migrated_template: Path, tmp_path: Path) -> Iterator[sessionmaker[Session]]:
    from hotline.storage.engine import make_engine, make_sessionmaker

    db = tmp_path / "hotline.db"
    shutil.copy(migrated_template, db)
    engine = make_engine(f"sqlite:///{db}")
    yield make_sessionmaker(engine)
    engine.dispose()


@contextmanager
def sql(sessions: sessionmaker[Session]) -> Iterator[SqlUnitOfWork]:
    """A unit of work on a new session, committed at the end (to read, or to set up)."""
    with sessions() as session:
        uow = SqlUnitOfWork(session)
        yield uow
        uow.commit()


def to_bus(uow: UnitOfWork, outgoing: list[Outgoing]) -> None:
    """The embedded runtime's part of the last transaction: outputs to the bus table."""
    uow.enqueue(outgoing)


def process(sessions: sessionmaker[Session], stage: Any, topic: str, message: Any) -> list[Outgoing]:
    raw = message if isinstance(message, (bytes, str)) else message.model_dump_json()
    return StepRunner(stage, sessions).process(topic, raw, to_bus)


def on_bus(sessions: sessionmaker[Session], topic: str) -> int:
    with sessions() as s:
        return int(s.execute(text("select count(*) from bus_messages where topic = :t"), {"t": topic}).scalar() or 0)


def sql_item(sessions: sessionmaker[Session], state: str, classification: ItemClassified | None = None) -> str:
    with sessions() as s:
        return make_item(SqlUnitOfWork(s), state, classification)


def test_sql_notice_is_sent_once(sessions: sessionmaker[Session]) -> None:
    item_id = sql_item(sessions, "notice_queued")
    seen_at_send: list[str] = []

    class CheckingMailer(RecordingMailer):
        def send(self, message: Any) -> None:
            with sql(sessions) as fresh:  # the reservation is committed before the e-mail leaves
                notice = fresh.notices.get(f"ntd-{item_id}")
                seen_at_send.append(notice.status if notice else "missing")
            super().send(message)

    mailer = CheckingMailer()
    out = process(sessions, notify_stage(mailer), "notices.ntd", notice_for(item_id))
    again = process(sessions, notify_stage(mailer), "notices.ntd", notice_for(item_id))
    assert len(mailer.sent) == 1 and seen_at_send == ["sending"]
    assert mailer.sent[0]["Message-ID"] == f"<ntd-{item_id}@hotline.test>"
    assert kinds(out) == kinds(again) == ["sent"]
    assert on_bus(sessions, "notices.events") == 2
    with sql(sessions) as uow:
        notice = uow.notices.get(f"ntd-{item_id}")
        assert notice is not None and notice.status == "sent" and notice.sent_at is not None
        item = uow.items.get(item_id)
        assert item is not None and item.state == "notice_sent" and "abuse@hoster-a.test" in item.reason
        assert uow.audit.verify() == []


def test_sql_notice_left_in_sending_becomes_delivery_unknown(sessions: sessionmaker[Session]) -> None:
    item_id = sql_item(sessions, "notice_queued")
    with pytest.raises(ProcessKilled):
        process(sessions, notify_stage(DyingMailer()), "notices.ntd", notice_for(item_id))
    with sql(sessions) as uow:
        notice = uow.notices.get(f"ntd-{item_id}")
        assert notice is not None and notice.status == "sending"

    mailer = RecordingMailer()
    out = process(sessions, notify_stage(mailer), "notices.ntd", notice_for(item_id))  # after the restart
    process(sessions, notify_stage(mailer), "notices.ntd", notice_for(item_id))  # and once more
    assert mailer.sent == []
    assert kinds(out) == ["delivery_unknown"]
    with sql(sessions) as uow:
        notice = uow.notices.get(f"ntd-{item_id}")
        assert notice is not None and notice.status == "delivery_unknown"
        item = uow.items.get(item_id)
        assert item is not None and item.state == "notice_unconfirmed" and notice.message_id in item.reason


def test_sql_not_delivered_requests_a_retry_and_the_retry_sends_once(sessions: sessionmaker[Session]) -> None:
    item_id = sql_item(sessions, "notice_queued")
    with pytest.raises(RetryRequested) as info:
        process(sessions, notify_stage(RaisingMailer(NotDelivered("421 try later", permanent=False, code=421))), "notices.ntd", notice_for(item_id))
    assert isinstance(info.value.error, NotDelivered)
    with sql(sessions) as uow:
        notice = uow.notices.get(f"ntd-{item_id}")
        assert notice is not None and notice.status == "failed"  # committed with the retry request
    assert on_bus(sessions, "notices.events") == on_bus(sessions, "reports.rejected") == 0

    mailer = RecordingMailer()
    process(sessions, notify_stage(mailer), "notices.ntd", notice_for(item_id))
    process(sessions, notify_stage(mailer), "notices.ntd", notice_for(item_id))
    assert len(mailer.sent) == 1
    with sql(sessions) as uow:
        notice = uow.notices.get(f"ntd-{item_id}")
        assert notice is not None and notice.status == "sent"


def test_sql_forward_queue_backs_off_keeps_order_and_is_claimed_once(
    sessions: sessionmaker[Session], clock: FakeClock
) -> None:
    item_id = sql_item(sessions, "forward_queued")
    gateway = FakeGateway(fail_times=1)
    stage = escalate_stage(gateway, retry_seconds=2)
    first, moved = forward_for(item_id), forward_for(item_id, forward_id=f"fwd-{item_id}-moved-1")
    assert process(sessions, stage, "forwards.partner", first) == []  # failed: queued, no RetryLater
    clock.advance(1)
    assert process(sessions, stage, "forwards.partner", moved) == []  # waits for the older one
    with sql(sessions) as uow:
        fwd = uow.forwards.get(first.forward_id)
        assert fwd is not None and (fwd.status, fwd.attempts) == ("pending", 1)
        assert fwd.next_attempt_at == clock.now() - timedelta(seconds=1) + timedelta(seconds=2)
        assert uow.forwards.older_pending(uow.forwards.get(moved.forward_id))  # type: ignore[arg-type]
    dispatcher = DeliveryDispatcher(redispatch_seconds=300)

    def tick() -> list[str]:
        with sql(sessions) as uow:
            return [o.message.forward_id for o in dispatcher.tick(uow)]  # type: ignore[attr-defined]

    assert tick() == []  # nothing due yet
    clock.advance(1)
    assert tick() == [first.forward_id]  # the oldest of the item only
    assert tick() == []  # claimed
    assert kinds(process(sessions, stage, "forwards.partner", first)) == ["forwarded"]
    assert tick() == [moved.forward_id]
    assert kinds(process(sessions, stage, "forwards.partner", moved)) == ["forwarded"]
    assert [c[1] for c in gateway.calls] == [first.forward_id, first.forward_id, moved.forward_id]
    with sql(sessions) as uow:
        item = uow.items.get(item_id)
        assert item is not None and item.state == "forwarded"
        assert [f.status for f in uow.forwards.for_item(item_id)] == ["sent", "sent"]


def test_sql_invalid_message_is_rejected(sessions: sessionmaker[Session]) -> None:
    out = process(sessions, IngestStage(operator_hosts=TEST_HOSTS), "reports.submitted", b'{"report_id": "r-42", "urls": "not-a-list"}')
    (rej,) = of_topic(out, "reports.rejected")
    assert rej.reason_code == "malformed_message" and rej.report_id == "r-42"
    assert on_bus(sessions, "reports.rejected") == 1
    with sql(sessions) as uow:
        report = uow.reports.get("r-42")
        assert report is not None and report.status == "rejected" and "urls" in (report.reason or "")
        assert uow.session.scalars(text("select id from items")).all() == []


# --------------------------------------------------------------------------- memory and SQL agree


def _comparable(value: Any, names: dict[str, str]) -> Any:
    """``value`` without timestamps, with every random item id replaced by the item's URL."""
    if isinstance(value, dict):
        return {_comparable(k, names): _comparable(v, names) for k, v in value.items() if not isinstance(v, datetime)}
    if isinstance(value, list | tuple):
        return [_comparable(v, names) for v in value]
    if isinstance(value, str):
        for item_id, name in names.items():
            value = value.replace(item_id, name)
    return value


def _scenario(run: Callable[[Any, str, Any], list[Outgoing]], unit: Callable[[], Any]) -> Any:
    """Reports through ingest (a duplicate spelling, an invalid URL, a URL reported again, a
    redelivery), then a notice for one item; everything read back through the ports only."""
    reports = [
        ReportSubmitted(report_id="r-1", urls=["http://site.test/a.jpg", "HTTP://SITE.test:80/a.jpg", "ftp://x.test/"]),
        ReportSubmitted(report_id="r-2", urls=["site.test/./a.jpg", "http://site.test/b.jpg"]),
    ]
    outputs = [run(IngestStage(operator_hosts=TEST_HOSTS), "reports.submitted", r) for r in [*reports, reports[0]]]
    with unit() as uow:
        item_ids = sorted({u.item_id for r in reports for u in uow.reports.urls(r.report_id) if u.item_id})
        a = next(i for i in item_ids if uow.items.get(i).url == "http://site.test/a.jpg")
        uow.items.set_state(uow.items.get(a), "notice_queued", "known material", "classify")
    mailer = RecordingMailer()
    outputs.append(run(notify_stage(mailer), "notices.ntd", notice_for(a)))
    with unit() as uow:
        names = {i: f"<item {uow.items.get(i).url}>" for i in item_ids}
        notice = uow.notices.get(f"ntd-{a}")
        snapshot = {
            "reports": {
                r.report_id: (
                    uow.reports.get(r.report_id).status,
                    [(u.position, u.url_as_reported, u.item_id, u.rejected_reason) for u in uow.reports.urls(r.report_id)],
                )
                for r in reports
            },
            "items": {
                i: (
                    (item := uow.items.get(i)).url, item.state, item.reason, uow.items.report_ids(i),
                    [(e.stage, e.kind, e.detail) for e in uow.items.events(i)],
                )
                for i in item_ids
            },
            "notice": (notice.status, notice.message_id),
            "outputs": [[(o.topic, o.key, o.message.model_dump()) for o in out] for out in outputs],
            "mail": [(m["To"], m["Message-ID"], m.get_body(("plain",)).get_content()) for m in mailer.sent],
        }
        return _comparable(snapshot, names)


def test_memory_and_sql_units_of_work_agree(sessions: sessionmaker[Session]) -> None:
    memory = MemoryUnitOfWork()

    @contextmanager
    def memory_unit() -> Iterator[MemoryUnitOfWork]:
        yield memory
        memory.commit()

    in_memory = _scenario(lambda stage, topic, m: deliver(stage, topic, m, memory), memory_unit)
    on_sql = _scenario(lambda stage, topic, m: process(sessions, stage, topic, m), lambda: sql(sessions))
    assert in_memory == on_sql
    assert in_memory["notice"][0] == "sent" and len(in_memory["items"]) == 2


# =========================================================================== SQL adapter: storage
#
# Not stage behaviour: properties of the SQL storage itself (the audit hash chain, column types).


def _audited(sessions: sessionmaker[Session]) -> list[int]:
    """Produce a handful of audit rows through the stages themselves."""
    from hotline.storage.models import AuditLog

    for n in range(2):
        item_id = sql_item(sessions, "awaiting_assessment", CLASSIFIED)
        with sessions() as s:
            do_assess(SqlUnitOfWork(s), item_id, "illegal" if n else "not_illegal")
    item_id = sql_item(sessions, "notice_queued")
    process(sessions, notify_stage(RecordingMailer()), "notices.ntd", notice_for(item_id))
    with sessions() as s:
        ids = list(s.scalars(select(AuditLog.id).order_by(AuditLog.id)))
    assert len(ids) >= 3
    return ids


def verify_audit(sessions: sessionmaker[Session]) -> list[int]:
    with sessions() as s:
        return SqlUnitOfWork(s).audit.verify()


def test_audit_chain_verifies(sessions: sessionmaker[Session]) -> None:
    _audited(sessions)
    assert verify_audit(sessions) == []


def test_audit_chain_detects_an_edited_row(sessions: sessionmaker[Session]) -> None:
    from hotline.storage.models import AuditLog

    ids = _audited(sessions)
    with sessions() as s:
        s.execute(update(AuditLog).where(AuditLog.id == ids[1]).values(detail="not_illegal"))
        s.commit()
    assert verify_audit(sessions) == [ids[1]]


def test_audit_chain_detects_a_rehashed_row(sessions: sessionmaker[Session]) -> None:
    # A careful forger recomputes the edited row's own hash: the next row no longer links to it.
    import hashlib
    import json

    from hotline.storage.models import AuditLog

    ids = _audited(sessions)
    with sessions() as s:
        row = s.get(AuditLog, ids[0])
        assert row is not None
        row.actor = "somebody-else"
        body = json.dumps([row.prev_hash, row.at.isoformat(), row.actor, row.action, row.subject, row.detail])
        row.hash = hashlib.sha256(body.encode()).hexdigest()
        s.commit()
    assert verify_audit(sessions) == [ids[1]]


def test_audit_chain_detects_a_deleted_row(sessions: sessionmaker[Session]) -> None:
    ids = _audited(sessions)
    with sessions() as s:
        s.execute(text("delete from audit_log where id = :id"), {"id": ids[1]})
        s.commit()
    assert verify_audit(sessions) == [ids[2]]


def test_bank_match_value_object_round_trips_through_classification(sessions: sessionmaker[Session]) -> None:
    # The classification stored on the item is what assessment and redelivery read back.
    hit = IMG_OK.model_copy(update={"match": BankMatch(entry_id=1, signal="pdq", distance=4, category="baseline", source="b")})
    c = CLASSIFIED.model_copy(update={"images": [hit]})
    item_id = sql_item(sessions, "awaiting_assessment", c)
    with sql(sessions) as uow:
        item = uow.items.get(item_id)
        assert item is not None and item.classification is not None
        back = ItemClassified.model_validate(item.classification)
        assert back.images[0].match == hit.match


def test_audit_timestamps_read_back_in_utc_whatever_the_session_zone(sessions: sessionmaker[Session]) -> None:
    # PostgreSQL answers timestamptz in the session's TimeZone (e.g. Europe/Amsterdam); the chain
    # hashes at.isoformat(), so a "+01:00" spelling of the same instant broke every row.
    from datetime import UTC, timedelta, timezone

    from hotline.storage.models import AuditLog, UTCDateTime

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
