"""The police decide when (services/police, services/escalate/release.py, hold_timer.py), on
``MemoryUnitOfWork``: an analyst's confirmation escalates; received / hold / release go through
one state machine; a release becomes exactly one takedown (an NTD with basis
``police_release`` and the analyst's category at home, a forward to a partner abroad, an NTD
to the foreign hoster where no partner works, an analyst where nobody can be noticed); the
hold timer releases what nobody held, never what is on hold."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest

from hotline.kernel.clock import FakeClock, installed
from hotline.kernel.messages import Outgoing
from hotline.storage.memory import MemoryState, MemoryUnitOfWork
from schemas.facts import HostingFacts, ImageFacts
from schemas.items import ItemClassified
from schemas.notices import PoliceAction, TakedownNotice
from services.assessment.logic import assess
from services.escalate.hold_timer import HoldTimer
from services.notify.mailer import RecordingMailer
from services.notify.xarf_report import build_report, validate
from services.police.logic import PoliceRefused, act, describe, shown
from tests.unit.stagekit import (
    FakeGateway,
    deliver,
    escalate_stage,
    make_item,
    notify_stage,
    of_topic,
)

IMG = ImageFacts(url="http://img.hoster-a.test/new.jpg", md5="a" * 32, sha1="b" * 40, sha256="c" * 64,
                 pdq="d" * 64, pdq_quality=100, phash="e" * 16)
BROKEN = ImageFacts(url="http://img.hoster-a.test/broken.jpg", error="not an image")


def hosting(country: str | None = "NL", abuse: str | None = "abuse@hoster-a.test") -> HostingFacts:
    return HostingFacts(host="img.hoster-a.test", ip="192.0.2.1", country=country, asn=64501,
                        hoster=f"Hoster {country}", abuse=abuse, source="hosting_file")


def classified(**kw: Any) -> ItemClassified:
    return ItemClassified(item_id="placeholder", url="http://img.hoster-a.test/new.jpg", online=True,
                          images=[IMG, BROKEN], hosting=hosting(**kw), route="assessment", reason="unknown")


@pytest.fixture
def state() -> MemoryState:
    return MemoryState()


@pytest.fixture
def uow(state: MemoryState) -> MemoryUnitOfWork:
    return MemoryUnitOfWork(state)


def commit(uow: MemoryUnitOfWork, out: list[Outgoing]) -> list[Outgoing]:
    uow.enqueue(out)
    uow.commit()
    return out


def escalated(uow: MemoryUnitOfWork, hold_seconds: float | None = None, **kw: Any) -> tuple[str, str]:
    """An item an analyst confirmed as new material; (item id, escalation id)."""
    item_id = make_item(uow, "awaiting_assessment", classified(**kw))
    commit(uow, assess(uow, item_id, verdict="illegal", category="baseline", analyst="ann", hold_seconds=hold_seconds))
    return item_id, f"pol-{item_id}"


def police(uow: MemoryUnitOfWork, escalation_id: str, action: str, reason: str | None = None) -> PoliceAction:
    (out,) = commit(uow, act(uow, escalation_id, action, "officer-7", reason))  # type: ignore[arg-type]
    assert out.topic == "escalations.actions" and isinstance(out.message, PoliceAction)
    return out.message


def release_out(uow: MemoryUnitOfWork, action: PoliceAction) -> list[Outgoing]:
    return deliver(escalate_stage(FakeGateway()), "escalations.actions", action, uow)


def test_release_produces_one_ntd_with_basis_and_category(uow: MemoryUnitOfWork, state: MemoryState) -> None:
    item_id, esc_id = escalated(uow)
    assert state.escalations[esc_id].state == "new" and state.escalations[esc_id].release_due_at is None
    police(uow, esc_id, "received")
    action = police(uow, esc_id, "release")
    assert action.action_id == f"{esc_id}:release"
    out = release_out(uow, action)
    (notice,) = of_topic(out, "notices.ntd")
    assert isinstance(notice, TakedownNotice)
    assert (notice.notice_id, notice.basis, notice.category) == (f"ntd-{item_id}", "police_release", "baseline")
    assert notice.abuse_email == "abuse@hoster-a.test" and notice.images == [IMG]  # hashes only, no broken image
    (event,) = of_topic(out, "notices.events")
    assert event.kind == "released" and event.notice_id == notice.notice_id and "officer-7" in event.detail
    item = uow.items.get(item_id)
    assert item is not None and item.state == "notice_queued" and "released by police officer officer-7" in item.reason
    esc = state.escalations[esc_id]
    assert esc.state == "released" and esc.released_by == "officer-7" and esc.outcome and notice.notice_id in esc.outcome
    assert ("officer-7", "police_received", esc_id, "received by the police (officer-7)") in state.audit
    assert any(a[1] == "police_release" and a[2] == esc_id for a in state.audit)
    # The notice validates as X-ARF although no bank entry matched: the analyst's category says what it is.
    report = build_report(notice, "ntd@hotline.test", "Test hotline")
    validate(report)
    assert report["classification"] == "baseline" and report["detection_method"] == "manual_review"
    assert report["hash_values"]["sha256"] == "c" * 64 and "category:baseline" in report["tags"]


def test_released_twice_is_one_notice_and_a_409(uow: MemoryUnitOfWork, state: MemoryState) -> None:
    item_id, esc_id = escalated(uow)
    action = police(uow, esc_id, "release")
    with pytest.raises(PoliceRefused) as info:
        act(uow, esc_id, "release", "officer-8")
    assert info.value.status == 409
    uow.rollback()
    first = release_out(uow, action)
    again = release_out(uow, action)  # the same action redelivered (retry, restart)
    ids = {n.notice_id for n in of_topic(first + again, "notices.ntd")}
    assert ids == {f"ntd-{item_id}"}
    mailer = RecordingMailer()
    for notice in of_topic(first + again, "notices.ntd"):
        deliver(notify_stage(mailer), "notices.ntd", notice, uow)
    assert len(mailer.sent) == 1
    assert [e for e in uow.items.events(item_id) if e.kind == "notice_queued"].__len__() == 1
    assert state.escalations[esc_id].released_by == "officer-7"


def test_the_state_machine_refuses_what_it_must(uow: MemoryUnitOfWork, state: MemoryState) -> None:
    _, esc_id = escalated(uow)
    with pytest.raises(PoliceRefused) as info:
        act(uow, "pol-nothing", "hold", "officer-7", "investigation")
    assert info.value.status == 404
    with pytest.raises(PoliceRefused) as info:
        act(uow, esc_id, "hold", "officer-7", "   ")
    assert info.value.status == 422
    police(uow, esc_id, "hold", "investigation running")
    for action in ("received", "hold"):
        with pytest.raises(PoliceRefused) as info:
            act(uow, esc_id, action, "officer-7", "again")  # type: ignore[arg-type]
        assert info.value.status == 409
        uow.rollback()
    esc = state.escalations[esc_id]
    assert (esc.state, esc.hold_reason, esc.held_by) == ("on_hold", "investigation running", "officer-7")
    assert describe(esc)["actions"] == ["release"]


def test_hold_blocks_the_timer_and_no_hold_is_released_by_it(uow: MemoryUnitOfWork, state: MemoryState) -> None:
    clock = FakeClock()
    with installed(clock):
        held_item, held = escalated(uow, hold_seconds=600)
        free_item, free = escalated(uow, hold_seconds=600)
        assert state.escalations[free].release_due_at == clock.now() + timedelta(seconds=600)
        police(uow, held, "hold", "the investigation needs it online")
        police(uow, free, "received")
        timer = HoldTimer(clock=clock)
        assert commit(uow, timer.tick(uow)) == []  # nothing due yet
        clock.advance(601)
        (out,) = commit(uow, timer.tick(uow))
        assert commit(uow, timer.tick(uow)) == []  # claimed once
    action = out.message
    assert isinstance(action, PoliceAction) and action.escalation_id == free and action.by == "hold-timer"
    assert action.action_id == f"{free}:release"
    release_out(uow, action)
    free_row, held_row = uow.items.get(free_item), uow.items.get(held_item)
    assert free_row is not None and "released automatically: hold time passed" in free_row.reason
    assert free_row.state == "notice_queued"
    assert held_row is not None and held_row.state == "escalated"
    assert state.escalations[held].state == "on_hold" and state.escalations[held].outcome is None


def test_abroad_with_a_partner_is_forwarded(uow: MemoryUnitOfWork, state: MemoryState) -> None:
    item_id, esc_id = escalated(uow, country="DE", abuse="abuse@hoster-de.test")
    out = release_out(uow, police(uow, esc_id, "release"))
    assert of_topic(out, "notices.ntd") == []
    (fwd,) = of_topic(out, "forwards.partner")
    assert (fwd.forward_id, fwd.basis, fwd.category, fwd.country) == (f"fwd-{item_id}", "police_release", "baseline", "DE")
    item = uow.items.get(item_id)
    assert item is not None and item.state == "forward_queued"
    assert "Partner hotline DE" in (state.escalations[esc_id].outcome or "")


def test_abroad_without_a_partner_gets_a_foreign_ntd(uow: MemoryUnitOfWork, state: MemoryState) -> None:
    item_id, esc_id = escalated(uow, country="US", abuse="abuse@hoster-us.test")
    out = release_out(uow, police(uow, esc_id, "release"))
    (notice,) = of_topic(out, "notices.ntd")
    assert notice.abuse_email == "abuse@hoster-us.test" and notice.country == "US"
    assert of_topic(out, "forwards.partner") == []
    outcome = state.escalations[esc_id].outcome or ""
    assert "no partner hotline in US" in outcome and "foreign hoster" in outcome
    item = uow.items.get(item_id)
    assert item is not None and item.state == "notice_queued"


def test_no_abuse_contact_goes_to_an_analyst(uow: MemoryUnitOfWork, state: MemoryState) -> None:
    item_id, esc_id = escalated(uow, abuse=None)
    out = release_out(uow, police(uow, esc_id, "release"))
    assert of_topic(out, "notices.ntd") == [] and of_topic(out, "forwards.partner") == []
    item = uow.items.get(item_id)
    assert item is not None and item.state == "awaiting_assessment" and "no abuse contact" in item.reason
    assert "no abuse contact" in (state.escalations[esc_id].outcome or "")
    assert [e.kind for e in of_topic(out, "notices.events")] == ["released"]


def test_received_and_hold_produce_no_takedown(uow: MemoryUnitOfWork) -> None:
    item_id, esc_id = escalated(uow)
    assert release_out(uow, police(uow, esc_id, "received")) == []
    assert release_out(uow, police(uow, esc_id, "hold", "not yet")) == []
    item = uow.items.get(item_id)
    assert item is not None and item.state == "escalated"
    assert [e.kind for e in uow.items.events(item_id)][-2:] == ["police_received", "police_hold"]


def test_what_the_police_saw_is_audited(uow: MemoryUnitOfWork, state: MemoryState) -> None:
    _, a = escalated(uow)
    _, b = escalated(uow)
    rows = list(uow.escalations.newest())
    assert {r.id for r in rows} == {a, b}
    shown(uow, "officer-7", rows, "GET /api/v1/escalations")
    (actor, action, subject, detail) = state.audit[-1]
    assert (actor, action) == ("officer-7", "police_viewed") and a in detail and b in detail
    view = describe(rows[0])
    assert view["state"] == "new" and view["images"][0]["sha256"] in ("c" * 64,)
    assert view["classification"]["category"] == "baseline" and view["hosting"]["country"] == "NL"


# ------------------------------------------------------------ the same image at other URLs


def test_copies_of_one_image_are_decided_once_and_taken_down_with_the_release(
    uow: MemoryUnitOfWork, state: MemoryState,
) -> None:
    from services.classify.sightings import record_sightings

    elsewhere = HostingFacts(host="www.hoster-b.test", ip="192.0.2.9", country="NL", asn=64502,
                             hoster="Hoster B", abuse="abuse@hoster-b.test", source="hosting_file")
    first = classified()
    copy = first.model_copy(update={"url": "http://www.hoster-b.test/re/new.jpg", "hosting": elsewhere,
                                    "images": [IMG.model_copy(update={"url": "http://www.hoster-b.test/re/new.jpg"})]})
    other = classified().model_copy(update={"images": [IMG.model_copy(update={"sha256": "f" * 64})]})
    item_a = make_item(uow, "awaiting_assessment", first)
    item_b = make_item(uow, "awaiting_assessment", copy)
    item_c = make_item(uow, "awaiting_assessment", other)
    for item_id, c in ((item_a, first), (item_b, copy), (item_c, other)):
        record_sightings(uow, item_id, c)
    uow.commit()
    # linked on both timelines: an analyst sees the picture is handled elsewhere too
    assert any(e.kind == "also_seen" and item_a in e.detail for e in state.events if e.item_id == item_b)
    assert any(e.kind == "also_seen" and item_b in e.detail for e in state.events if e.item_id == item_a)
    assert not any(e.kind == "also_seen" for e in state.events if e.item_id == item_c)

    (out,) = commit(uow, assess(uow, item_a, verdict="illegal", category="baseline", analyst="ann"))
    assert [c.item_id for c in out.message.copies] == [item_b]  # type: ignore[attr-defined]
    assert state.items[item_b].state == "escalated" and item_a in state.items[item_b].reason
    assert state.items[item_c].state == "awaiting_assessment"  # a different picture: still an analyst's

    action = police(uow, f"pol-{item_a}", "release")
    out = release_out(uow, action)
    notices = {n.item_id: n for n in of_topic(out, "notices.ntd")}
    assert set(notices) == {item_a, item_b}
    assert notices[item_b].abuse_email == "abuse@hoster-b.test" and notices[item_b].notice_id == f"ntd-{item_b}"
    assert all(n.basis == "police_release" and n.category == "baseline" for n in notices.values())
    assert state.items[item_b].state == "notice_queued"
    events = [e.event_id for e in of_topic(out, "notices.events")]
    assert len(events) == len(set(events)) == 2
    # redelivered: the same two notices, nothing moved twice
    again = release_out(uow, action)
    assert sorted(n.notice_id for n in of_topic(again, "notices.ntd")) == sorted(n.notice_id for n in notices.values())


def test_a_picture_on_many_items_links_each_copy_to_its_first_sighting(
    uow: MemoryUnitOfWork, state: MemoryState,
) -> None:
    """A gallery crawl shows one picture on hundreds of items: each copy costs two timeline
    events at most (not one per earlier copy), the first sighting names its first copies and
    then only milestones, and every copy is still recorded for the analyst (``item_images``)."""
    from services.classify.sightings import MILESTONES, NAMED_COPIES, record_sightings

    ids: list[str] = []
    for n in range(MILESTONES[0] + 5):
        url = f"http://img.hoster-a.test/gallery/{n}.jpg"
        c = classified().model_copy(update={"url": url, "images": [IMG.model_copy(update={"url": url})]})
        item_id = make_item(uow, "awaiting_assessment", c)
        before = len(state.events)
        record_sightings(uow, item_id, c)
        assert len(state.events) - before <= 2
        ids.append(item_id)
    uow.commit()
    first = ids[0]
    on_first = [e.detail for e in state.events if e.item_id == first and e.kind == "also_seen"]
    assert len(on_first) == NAMED_COPIES + 1  # ten copies named, then the 100th as a milestone
    assert all(ids[k] in on_first[k - 1] for k in range(1, NAMED_COPIES + 1))
    assert f"now shown by {MILESTONES[0]} other items" in on_first[-1]
    last = [e.detail for e in state.events if e.item_id == ids[-1] and e.kind == "also_seen"]
    assert len(last) == 1 and first in last[0] and f"{len(ids) - 2} other item(s) show it too" in last[0]
    assert not any(e.kind == "also_seen" for e in state.events if e.item_id == ids[50] and ids[-1] in e.detail)
    # the analyst's view and the copies escalated with a decision still see every copy
    assert len({other for other, _sha, _url in uow.items.sharing_images(first, [IMG.sha256 or ""])}) == len(ids) - 1
