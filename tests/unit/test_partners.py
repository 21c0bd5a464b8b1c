"""Partner hotlines both ways, without a database: the ICCAM table, a partner's status codes
and what they do to the item, the status updates back to a partner that forwarded a report
to us (recorded, in order, delivered through the forwards' queue), and known material in a
country without a partner (NTD abroad plus a record for the police)."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime

import pytest

from hotline.kernel.clock import FakeClock, installed, now
from hotline.kernel.messages import Outgoing
from hotline.kernel.states import ItemState, can_transition
from hotline.storage.memory import MemoryState, MemoryUnitOfWork
from schemas.facts import HostingFacts
from schemas.items import ItemAccepted, ItemClassified
from schemas.notices import NoticeEvent, PartnerStatusUpdate, PoliceEscalation
from schemas.reports import ReportSubmitted
from services.classify.stage import ClassifyStage
from services.escalate.forwards import DeliveryDispatcher
from services.escalate.partners import PartnerDirectory, PartnerEntry
from services.partners.iccam import STATE_ACTION, STEP_ACTION, table_rows
from services.partners.logic import StatusRefused, record_status, relookup_ids, relookups
from tests.unit.stagekit import (
    DE,
    KNOWN_IMAGE,
    FakeGateway,
    deliver,
    escalate_stage,
    forward_for,
    make_item,
    of_topic,
)


@pytest.fixture
def state() -> MemoryState:
    return MemoryState()


@pytest.fixture
def uow(state: MemoryState) -> MemoryUnitOfWork:
    return MemoryUnitOfWork(state)


@pytest.fixture
def clock() -> Iterator[FakeClock]:
    with installed(FakeClock(datetime(2026, 3, 2, 9, 0, tzinfo=UTC))) as c:
        assert isinstance(c, FakeClock)
        yield c


# --------------------------------------------------------------------------- the ICCAM table


def test_every_item_state_and_every_update_step_has_an_iccam_entry() -> None:
    assert set(STATE_ACTION) == set(ItemState)
    steps = PartnerStatusUpdate.model_fields["step"].annotation.__args__  # type: ignore[union-attr]
    assert set(STEP_ACTION) == set(steps)
    codes = {"LEA", "ISP", "CR", "CU", "MO", "NI", None}
    assert set(STATE_ACTION.values()) <= codes and set(STEP_ACTION.values()) <= codes
    assert (STATE_ACTION[ItemState.REMOVED], STATE_ACTION[ItemState.CLOSED_NOT_ILLEGAL]) == ("CR", "NI")
    assert len(table_rows()) == len(ItemState) + len(STEP_ACTION)


# --------------------------------------------------------------------------- a partner reports back


def forwarded(uow: MemoryUnitOfWork, clock: FakeClock, country: str = "DE") -> tuple[str, str]:
    """An item forwarded (sent) to the partner of ``country``; (item id, forward id)."""
    item_id = make_item(uow, "forward_queued")
    deliver(escalate_stage(FakeGateway()), "forwards.partner", forward_for(item_id, country), uow)
    assert uow.items.get(item_id).state == "forwarded"  # type: ignore[union-attr]
    clock.advance(hours=5)
    return item_id, f"fwd-{item_id}"


def report(uow: MemoryUnitOfWork, fid: str, action: str, country: str | None = "DE",
           note: str | None = None) -> tuple[dict[str, object], list[Outgoing]]:
    result = record_status(uow, fid, action=action, note=note, by="partner-de", country=country,  # type: ignore[arg-type]
                           at=now())
    uow.enqueue(result.out)
    uow.commit()
    return result.as_json(), result.out


@pytest.mark.parametrize("action", ["CR", "CU"])
def test_content_removed_closes_the_item_with_the_time(uow: MemoryUnitOfWork, state: MemoryState, clock: FakeClock,
                                                       action: str) -> None:
    item_id, fid = forwarded(uow, clock)
    answer, out = report(uow, fid, action, note="gone at the hoster")
    item = state.items[item_id]
    assert item.state == "removed" and answer["item_state"] == "removed" and not answer["duplicate"]
    assert "removed 5 h after the forward" in item.reason and "gone at the hoster" in item.reason
    assert state.forwards[fid].partner_status == action
    assert [s.action for s in uow.forwards.statuses(fid)] == [action]
    assert ("partner-de", "partner_status", fid, f"{action} gone at the hoster") in state.audit
    assert "partner_status" in [e.kind for e in uow.items.events(item_id)]
    assert sorted(m.kind for m in of_topic(out, "notices.events")) == ["partner_status", "removed"]


def test_the_same_status_twice_has_the_effect_of_once(uow: MemoryUnitOfWork, state: MemoryState,
                                                      clock: FakeClock) -> None:
    item_id, fid = forwarded(uow, clock)
    report(uow, fid, "LEA")
    events = len(uow.items.events(item_id))
    answer, out = report(uow, fid, "LEA")
    assert answer["duplicate"] and out == [] and len(uow.items.events(item_id)) == events
    assert len(uow.forwards.statuses(fid)) == 1 and state.items[item_id].state == "forwarded"


def test_lea_and_isp_are_recorded_on_the_timeline_only(uow: MemoryUnitOfWork, state: MemoryState,
                                                       clock: FakeClock) -> None:
    item_id, fid = forwarded(uow, clock)
    report(uow, fid, "LEA", note="case 123")
    report(uow, fid, "ISP")
    assert state.items[item_id].state == "forwarded" and state.forwards[fid].partner_status == "ISP"
    details = [e.detail for e in uow.items.events(item_id) if e.kind == "partner_status"]
    assert len(details) == 2 and "case 123" in details[0]


def test_not_illegal_goes_back_to_an_analyst_with_the_note(uow: MemoryUnitOfWork, state: MemoryState,
                                                           clock: FakeClock) -> None:
    item_id, fid = forwarded(uow, clock)
    report(uow, fid, "NI", note="adult, verified")
    item = state.items[item_id]
    assert item.state == "awaiting_assessment" and "adult, verified" in item.reason and "analyst" in item.reason


def test_moved_looks_the_item_up_again_with_distinct_ids(uow: MemoryUnitOfWork, state: MemoryState,
                                                         clock: FakeClock) -> None:
    item_id, fid = forwarded(uow, clock)
    state.items[item_id].classification = {"stale": True}
    uow.commit()
    assert relookups(uow, item_id) == 0 and relookup_ids(item_id, 0) == (f"ntd-{item_id}", fid)
    answer, out = report(uow, fid, "MO", note="now at another hoster")
    item = state.items[item_id]
    assert item.state == "received" and item.classification is None and answer["effect"] == "looked up again"
    (again,) = of_topic(out, "items.accepted")
    assert isinstance(again, ItemAccepted) and again.item_id == item_id
    assert relookups(uow, item_id) == 1
    notice_id, forward_id = relookup_ids(item_id, 1)
    assert forward_id == f"fwd-{item_id}-mo-1" != fid and notice_id == f"ntd-{item_id}-mo-1"
    assert report(uow, fid, "MO")[0]["duplicate"] and relookups(uow, item_id) == 1  # once


def test_a_partner_may_report_only_on_forwards_to_its_country(uow: MemoryUnitOfWork, clock: FakeClock) -> None:
    _, fid = forwarded(uow, clock)
    with pytest.raises(StatusRefused) as other:
        record_status(uow, fid, action="CR", note=None, by="partner-fr", country="FR", at=clock.now())
    assert other.value.status == 403
    with pytest.raises(StatusRefused) as unknown:
        record_status(uow, "fwd-nope", action="CR", note=None, by="partner-de", country="DE", at=clock.now())
    assert unknown.value.status == 404
    assert record_status(uow, fid, action="CR", note=None, by="admin", country=None, at=clock.now()).item is not None


def test_moved_needs_a_transition_back_to_received_only_from_forwarded() -> None:
    assert can_transition(ItemState.FORWARDED, ItemState.RECEIVED)
    assert not can_transition(ItemState.NOTICE_SENT, ItemState.RECEIVED)


# --------------------------------------------------------------------------- status updates back to a partner

PARTNERS = PartnerDirectory({"DE": DE, "FR": PartnerEntry(country="FR", name="Partner hotline FR",
                                                          endpoint="http://fr.invalid/api")})  # FR: no status endpoint


def partner_report(uow: MemoryUnitOfWork, country: str = "DE") -> tuple[str, str]:
    """A report forwarded to us by the partner of ``country`` naming one new item."""
    msg = ReportSubmitted(urls=["http://img.hoster-a.test/x.jpg"], channel="partner", partner_reference="IWF-1",
                          partner_country=country)
    uow.reports.create(msg)
    item = uow.items.create("http://img.hoster-a.test/x.jpg")
    uow.reports.link_url(msg.report_id, 0, msg.urls[0], item.id)
    uow.commit()
    return msg.report_id, item.id


def run(stage: object, uow: MemoryUnitOfWork, out: list[Outgoing]) -> list[str]:
    """Deliver the partners.status messages of ``out``; the update ids delivered."""
    done = []
    for o in out:
        if o.topic == "partners.status":
            deliver(stage, o.topic, o.message, uow)  # type: ignore[arg-type]
            done.append(o.message.update_id)  # type: ignore[attr-defined]
    return done


def test_status_updates_go_back_to_the_partner_that_forwarded_the_report(
    uow: MemoryUnitOfWork, state: MemoryState, clock: FakeClock
) -> None:
    rid, item_id = partner_report(uow)
    gateway = FakeGateway()
    stage = escalate_stage(gateway, partners=PARTNERS)
    out = deliver(stage, "items.accepted", ItemAccepted(item_id=item_id, url="u", report_ids=[rid]), uow)
    run(stage, uow, out)
    sent = NoticeEvent(event_id="ntd-x:sent", item_id=item_id, kind="sent", notice_id=f"ntd-{item_id}")
    run(stage, uow, deliver(stage, "notices.events", sent, uow))
    run(stage, uow, deliver(stage, "notices.events", sent, uow))  # redelivered: no second update
    removed = NoticeEvent(event_id="r", item_id=item_id, kind="removed", detail="gone")
    run(stage, uow, deliver(stage, "notices.events", removed, uow))
    steps = ["acknowledged", "notice_sent", "removed"]
    assert gateway.calls == [("Partner hotline DE", f"{rid}:{item_id}:{s}") for s in steps]
    assert [u.status for u in uow.partner_updates.for_report(rid)] == ["sent"] * 3
    update = PartnerStatusUpdate.model_validate(state.partner_updates[f"{rid}:{item_id}:removed"].payload)
    assert (update.action, update.partner_reference, update.country) == ("CR", "IWF-1", "DE")


def test_a_later_step_first_records_the_acknowledgment_and_updates_go_in_order(
    uow: MemoryUnitOfWork, state: MemoryState, clock: FakeClock
) -> None:
    rid, item_id = partner_report(uow)
    gateway = FakeGateway(fail_times=1)
    stage = escalate_stage(gateway, retry_seconds=2, partners=PARTNERS)
    sent = NoticeEvent(event_id="e", item_id=item_id, kind="sent")
    out = deliver(stage, "notices.events", sent, uow)  # before items.accepted got here
    assert [m.step for m in of_topic(out, "partners.status")] == ["acknowledged", "notice_sent"]
    run(stage, uow, out)  # the acknowledgment fails once: notice_sent waits for it
    assert [c[1] for c in gateway.calls] == [f"{rid}:{item_id}:acknowledged"]
    clock.advance(2)
    for o in DeliveryDispatcher().tick(uow):
        deliver(stage, o.topic, o.message, uow)
    uow.commit()
    for o in DeliveryDispatcher().tick(uow):
        deliver(stage, o.topic, o.message, uow)
    assert [c[1] for c in gateway.calls] == [f"{rid}:{item_id}:{s}" for s in
                                            ("acknowledged", "acknowledged", "notice_sent")]
    accepted = ItemAccepted(item_id=item_id, url="u", report_ids=[rid])
    assert of_topic(deliver(stage, "items.accepted", accepted, uow), "partners.status") == []  # already there


def test_no_updates_for_other_channels_or_partners_without_status_endpoint(
    uow: MemoryUnitOfWork, state: MemoryState, clock: FakeClock
) -> None:
    stage = escalate_stage(FakeGateway(), partners=PARTNERS)
    rid, item_id = partner_report(uow, country="FR")
    assert deliver(stage, "items.accepted", ItemAccepted(item_id=item_id, url="u", report_ids=[rid]), uow) == []
    web = ReportSubmitted(urls=["http://a.test/"], channel="web")
    uow.reports.create(web)
    uow.commit()
    assert deliver(stage, "items.accepted", ItemAccepted(item_id=item_id, url="u", report_ids=[web.report_id]),
                   uow) == []
    assert state.partner_updates == {}


# --------------------------------------------------------------------------- no partner in the hosting country


def test_known_material_abroad_without_partner_is_noticed_there_and_recorded_for_the_police(
    uow: MemoryUnitOfWork, state: MemoryState
) -> None:
    stage = ClassifyStage(fetcher=None, hash_image=None, match=None, hosting=None,  # type: ignore[arg-type]
                          partner_names={"DE": "Partner hotline DE"}, home_country="NL")
    item = uow.items.create("http://img.hoster-us.test/k.jpg")
    uow.commit()
    us = HostingFacts(host="img.hoster-us.test", ip="203.0.113.130", country="US", hoster="Hoster US Inc.",
                      abuse="abuse@hoster-us.test", source="hosting_file")
    classified = ItemClassified(item_id=item.id, url=item.url, online=True, images=[KNOWN_IMAGE], hosting=us,
                                known=True, route="ntd", reason="known material hosted in US, where no partner ...")
    seen = uow.items.work_of(item.id)
    assert seen is not None
    out = stage._record(uow, item.id, classified, seen)
    uow.commit()
    (notice,) = of_topic(out, "notices.ntd")
    assert notice.abuse_email == "abuse@hoster-us.test" and notice.notice_id == f"ntd-{item.id}"
    (record,) = of_topic(out, "escalations.police")
    assert isinstance(record, PoliceEscalation)
    assert (record.reason, record.classification, record.escalation_id) == ("no_partner", None,
                                                                            f"pol-{item.id}-no-partner")
    esc = state.escalations[record.escalation_id]
    assert esc.state == "released" and "abuse@hoster-us.test" in (esc.outcome or "")
    assert state.items[item.id].state == "notice_queued"
    # Redelivery: the same messages, no second record.
    again = stage._outputs(classified, uow)
    assert [o.topic for o in again] == [o.topic for o in out] and len(state.escalations) == 1
    assert of_topic(again, "escalations.police")[0].escalation_id == record.escalation_id


def test_a_status_on_a_forward_still_pending_ends_its_delivery(uow: MemoryUnitOfWork, state: MemoryState,
                                                               clock: FakeClock) -> None:
    item_id = make_item(uow, "forward_queued")
    deliver(escalate_stage(FakeGateway(fail_times=1)), "forwards.partner", forward_for(item_id), uow)
    assert state.forwards[f"fwd-{item_id}"].status == "pending"
    report(uow, f"fwd-{item_id}", "ISP")
    fwd = state.forwards[f"fwd-{item_id}"]
    assert (fwd.status, fwd.next_attempt_at) == ("sent", None)
    clock.advance(3600)
    assert DeliveryDispatcher().tick(uow) == []
