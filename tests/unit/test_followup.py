"""The follow-up after a notice: the pure decisions with a fake clock, and the followup stage
and scheduler on ``MemoryUnitOfWork`` (a simulated week in well under a second), with the
guarded fetcher on an httpx mock transport and a recording mailer."""

from __future__ import annotations

import json
import threading
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest

from hashing.image import hash_image
from hashing.synthetic import photo_like_jpeg
from hotline.kernel.clock import FakeClock, installed, now
from hotline.kernel.messages import Outgoing
from hotline.kernel.stage import SideEffect, run_stage
from hotline.storage.memory import MemoryState, MemoryUnitOfWork
from schemas.facts import ImageFacts
from schemas.followups import RecheckDue
from schemas.notices import TakedownNotice
from services.classify.fetcher import Fetcher, FetchPolicy
from services.followup.logic import CheckResult, Policy, after_check, next_step, step_due_at, words
from services.followup.mail import Contacts
from services.followup.opening import open_followup
from services.followup.scheduler import FollowupScheduler
from services.followup.stage import FollowupStage
from services.notify.mailer import RecordingMailer
from tests.unit.stagekit import DyingMailer, ProcessKilled, deliver, make_item

T0 = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)
HOUR = 3600.0
POLICY = Policy(recheck_seconds=HOUR, deadline_seconds=24 * HOUR, confirm_seconds=300, jitter=0.0,
                ladder_step_seconds=24 * HOUR)

# ------------------------------------------------------------------ pure decisions


def test_one_gone_result_is_confirmed_by_a_second_before_it_is_a_removal() -> None:
    first = after_check(item_id="i", checks=3, misses=0, first_gone_at=None, checked_at=T0,
                        result=CheckResult.GONE, policy=POLICY)
    assert first.removed_at is None and first.misses == 1
    assert first.next_check_at == T0 + timedelta(seconds=300)  # the confirmation, soon
    later = T0 + timedelta(seconds=300)
    second = after_check(item_id="i", checks=4, misses=1, first_gone_at=T0, checked_at=later,
                         result=CheckResult.CHANGED, policy=POLICY)
    assert second.removed_at == T0  # removed when it was first seen gone
    assert second.next_check_at is None


def test_a_hiccup_followed_by_online_starts_over() -> None:
    back = after_check(item_id="i", checks=4, misses=1, first_gone_at=T0, checked_at=T0,
                       result=CheckResult.ONLINE, policy=POLICY)
    assert back.misses == 0 and back.first_gone_at is None and back.removed_at is None
    assert back.next_check_at == T0 + timedelta(hours=1)


def test_unreachable_says_nothing_either_way() -> None:
    plain = after_check(item_id="i", checks=0, misses=0, first_gone_at=None, checked_at=T0,
                        result=CheckResult.UNREACHABLE, policy=POLICY)
    assert plain.misses == 0 and plain.next_check_at == T0 + timedelta(hours=1)
    confirming = after_check(item_id="i", checks=1, misses=1, first_gone_at=T0, checked_at=T0,
                             result=CheckResult.UNREACHABLE, policy=POLICY)
    assert confirming.misses == 1 and confirming.first_gone_at == T0 and confirming.removed_at is None


def test_jitter_spreads_checks_within_the_share() -> None:
    policy = Policy(recheck_seconds=HOUR, jitter=0.1)
    dues = {after_check(item_id=f"i{n}", checks=0, misses=0, first_gone_at=None, checked_at=T0,
                        result=CheckResult.ONLINE, policy=policy).next_check_at for n in range(50)}
    assert len(dues) > 10
    assert all(d is not None and T0 + timedelta(hours=1) <= d <= T0 + timedelta(hours=1.1) for d in dues)


def test_the_reminder_is_due_at_the_deadline_and_each_rung_a_step_after_the_last() -> None:
    assert next_step(steps_taken=0, first_notice_at=T0, last_step_at=None, at=T0 + timedelta(hours=23),
                     policy=POLICY) is None
    assert next_step(steps_taken=0, first_notice_at=T0, last_step_at=None, at=T0 + timedelta(hours=24),
                     policy=POLICY) == (1, "reminder")
    sent = T0 + timedelta(hours=25)
    assert step_due_at(2, T0, sent, POLICY) == sent + timedelta(hours=24)
    assert next_step(steps_taken=1, first_notice_at=T0, last_step_at=sent, at=sent + timedelta(hours=24),
                     policy=POLICY) == (2, "upstream")
    assert next_step(steps_taken=4, first_notice_at=T0, last_step_at=sent, at=sent + timedelta(days=9),
                     policy=POLICY) is None  # the ladder is done


def test_ladder_setting_is_checked() -> None:
    assert Policy.parse_ladder("authority, upstream") == ("authority", "upstream")
    with pytest.raises(ValueError, match="unknown ladder step"):
        Policy.parse_ladder("upstream,pope")


def test_durations_in_words() -> None:
    assert words(timedelta(minutes=45)) == "45 min"
    assert words(timedelta(hours=5, minutes=12)) == "5 h 12 min"
    assert words(timedelta(hours=26)) == "1 day 2 h"
    assert words(timedelta(days=3)) == "3 days"


def test_fake_clock_drives_now() -> None:
    clock = FakeClock(T0)
    with installed(clock):
        assert now() == T0
        clock.advance(hours=2)
        assert now() == T0 + timedelta(hours=2)
    assert now() != T0 + timedelta(hours=2)


# ------------------------------------------------------------------ the stage on memory

IMAGE = photo_like_jpeg(160, 120, seed=81)
OTHER = photo_like_jpeg(160, 120, seed=82)
URL = "http://img.hoster-a.test/known.jpg"


class Site:
    """What the hoster serves, as an httpx mock transport; counts requests."""

    def __init__(self) -> None:
        self.status = 200
        self.body = IMAGE
        self.hits = 0

    def handle(self, request: httpx.Request) -> httpx.Response:
        self.hits += 1
        if self.status != 200:
            return httpx.Response(self.status)
        return httpx.Response(200, headers={"content-type": "image/jpeg"}, content=self.body)


class World:
    def __init__(self, authority: str | None = "authority@gov.test", mailer: Any = None) -> None:
        self.clock = FakeClock(T0)
        self.site = Site()
        self.mailer = mailer or RecordingMailer()
        fetcher = Fetcher(FetchPolicy(allow_private=True), resolve=lambda host: ["192.0.2.10"],
                          transport=httpx.MockTransport(self.site.handle))
        self.stage = FollowupStage(fetcher=fetcher, hash_image=hash_image, mailer=self.mailer,
                                   sender="ntd@hotline.test", policy=POLICY,
                                   contacts=Contacts(authority_email=authority), clock=self.clock)
        self.scheduler = FollowupScheduler(policy=POLICY, clock=self.clock, per_hoster=0)
        self.state = MemoryState()
        self.uow = MemoryUnitOfWork(self.state)
        self._installed = installed(self.clock)
        self._installed.__enter__()
        self.item_id = make_item(self.uow, "notice_sent")
        h = hash_image(IMAGE)
        notice = TakedownNotice(notice_id=f"ntd-{self.item_id}", item_id=self.item_id, url=URL,
                                hoster="Hoster A B.V.", abuse_email="abuse@hoster-a.test", country="NL",
                                images=[ImageFacts(url=URL, sha256=h.sha256, md5=h.md5, pdq=h.pdq)])
        open_followup(self.uow, notice, self.clock.now())
        self.uow.commit()
        self.events: list[Any] = []

    def close(self) -> None:
        self._installed.__exit__(None, None, None)

    def tick(self) -> list[Outgoing]:
        out = self.scheduler.tick(self.uow)
        self.uow.enqueue(out)
        self.uow.commit()
        return out

    def run(self, hours: float, step_hours: float = 0.5) -> None:
        """Advance the clock in steps; at each, tick and deliver everything that comes due."""
        end = self.clock.now() + timedelta(hours=hours)
        while self.clock.now() < end:
            self.clock.advance(hours=step_hours)
            self.settle()

    def settle(self) -> None:
        """Tick and deliver until nothing more is due at this time (the scheduler ticks often)."""
        while queue := list(self.tick()):
            while queue:
                o = queue.pop(0)
                produced = deliver(self.stage, o.topic, o.message, self.uow)
                queue += [p for p in produced if p.topic == "rechecks.due"]
                self.events += [p.message for p in produced if p.topic == "notices.events"]

    @property
    def followup(self) -> Any:
        return self.uow.followups.get(self.item_id)

    def kinds(self) -> list[str]:
        return [e.kind for e in self.events if e.kind != "rechecked"]

    def sent_to(self) -> list[tuple[str, str]]:
        return [(m["X-Hotline-Followup-Step"], m["To"]) for m in self.mailer.sent]


@pytest.fixture
def w() -> Any:
    world = World()
    yield world
    world.close()


def test_removed_after_the_second_check_with_time_to_removal(w: World) -> None:
    w.run(hours=5)
    assert w.followup.checks == 5 and w.followup.last_result == "online"
    w.site.status = 404
    gone_from = w.clock.now()
    w.run(hours=1.5)
    f = w.followup
    assert f.status == "removed" and f.next_check_at is None
    assert gone_from < f.removed_at <= gone_from + timedelta(hours=1)
    item = w.uow.items.get(w.item_id)
    assert item is not None and item.state == "removed"
    assert "after the first notice" in item.reason and "after the first report" in item.reason
    removed = [e for e in w.uow.items.events(w.item_id) if e.kind == "removed"]
    assert len(removed) == 1 and removed[0].at == f.removed_at
    assert w.kinds() == ["removed"]
    hits = w.site.hits
    w.run(hours=48)
    assert w.site.hits == hits  # removed: no more checks
    assert w.mailer.sent == []  # and no reminder


def test_a_single_hiccup_is_no_removal(w: World) -> None:
    w.run(hours=1)
    w.site.status = 503
    w.run(hours=1)
    w.site.status = 404
    w.clock.advance(hours=0.75)  # one "gone" check, then it is back before the confirmation
    w.tick()
    w.run(hours=0.25)
    assert w.followup.misses == 1
    w.site.status = 200
    w.run(hours=1)
    assert w.followup.status == "open" and w.followup.misses == 0
    assert "removed" not in w.kinds()


def test_other_content_at_the_url_counts_as_removed(w: World) -> None:
    w.run(hours=1)
    w.site.body = OTHER
    w.run(hours=1.5)
    assert w.followup.status == "removed"
    assert "no longer serves the matched image" in (w.followup.removal_reason or "")


def test_reminder_then_the_ladder_exactly_when_due_and_once(w: World) -> None:
    w.run(hours=23.5)
    assert w.mailer.sent == []
    w.run(hours=1)
    assert w.sent_to() == [("reminder", "abuse@hoster-a.test")]
    assert w.kinds() == ["reminder"]
    w.run(hours=23)
    assert len(w.mailer.sent) == 1
    w.run(hours=2)
    # upstream and registrar are unknown: skipped with the reason; the authority gets it.
    assert w.sent_to() == [("reminder", "abuse@hoster-a.test"), ("authority", "authority@gov.test")]
    assert w.kinds() == ["reminder", "overdue", "overdue", "overdue"]
    skipped = [s for s in w.uow.followups.steps(w.item_id) if s.status == "skipped"]
    assert [s.kind for s in skipped] == ["upstream", "registrar"] and "no upstream" in skipped[0].reason
    w.run(hours=24 * 4, step_hours=6)
    assert len(w.mailer.sent) == 2  # the ladder has no more rungs
    mail = w.mailer.sent[1]
    attachment = next(p for p in mail.iter_attachments() if p.get_filename() == "evidence.json")
    package = json.loads(attachment.get_content())
    assert package["matched_images"][0]["sha256"] == hash_image(IMAGE).sha256
    assert any(e["kind"] == "reminder" for e in package["timeline"])
    assert all(isinstance(v, str | int | float | list | dict | None) for v in package.values())


def test_no_authority_no_authority_mail() -> None:
    w = World(authority=None)
    try:
        w.run(hours=50, step_hours=2)
        assert [k for k, _ in w.sent_to()] == ["reminder"]
        assert [s.status for s in w.uow.followups.steps(w.item_id)] == ["sent", "skipped", "skipped", "skipped"]
    finally:
        w.close()


def test_removed_content_gets_no_reminder(w: World) -> None:
    w.run(hours=20)
    w.site.status = 410
    w.run(hours=30, step_hours=2)
    assert w.followup.status == "removed" and w.mailer.sent == []


def test_a_step_found_sending_after_a_crash_is_not_sent_again() -> None:
    w = World(mailer=DyingMailer())
    try:
        with pytest.raises(ProcessKilled):
            w.run(hours=24.5)
        step = w.uow.followups.get_step(f"{w.item_id}:1")
        assert step is not None and step.status == "sending"  # committed before the SMTP conversation
        w.stage.mailer = recording = RecordingMailer()
        w.run(hours=0.25)  # the scheduler dispatches the pending step again later...
        w.clock.advance(seconds=POLICY.recheck_seconds)
        w.scheduler.redispatch_seconds = 60
        w.run(hours=0.5)
        step = w.uow.followups.get_step(f"{w.item_id}:1")
        assert step is not None and step.status == "delivery_unknown"
        assert recording.attempts == []  # ...and it is never re-sent
        assert "delivery_unknown" in w.kinds()
    finally:
        w.close()


def test_a_duplicate_check_message_fetches_nothing(w: World) -> None:
    w.run(hours=1)
    f = w.followup
    due = f.next_check_at
    w.clock.set(due)
    out = w.tick()
    assert len(out) == 1
    deliver(w.stage, "rechecks.due", out[0].message, w.uow)
    hits = w.site.hits
    deliver(w.stage, "rechecks.due", out[0].message, w.uow)  # redelivered
    assert w.site.hits == hits and w.followup.checks == f.checks


def test_scheduler_caps_checks_in_flight_per_hoster() -> None:
    state = MemoryState()
    uow = MemoryUnitOfWork(state)
    with installed(FakeClock(T0)) as clock:
        ids = [make_item(uow, "notice_sent") for _ in range(5)]
        for i in ids:
            open_followup(uow, TakedownNotice(notice_id=f"ntd-{i}", item_id=i, url=URL, hoster="A",
                                              abuse_email="abuse@a.test"), clock.now())
        uow.commit()
        scheduler = FollowupScheduler(policy=POLICY, clock=clock, per_hoster=2)
        assert scheduler.tick(uow) == []  # planned, none due yet
        clock.advance(hours=2)  # type: ignore[attr-defined]
        first = scheduler.tick(uow)
        assert len(first) == 2  # two in flight for hoster A
        assert scheduler.tick(uow) == []  # nothing more until those are recorded
        assert all(isinstance(o.message, RecheckDue) for o in first)


def test_a_step_decided_by_a_check_survives_losing_that_checks_outputs(w: World) -> None:
    """On Kafka a stage's outputs are produced after its commit: a crash in between loses them
    and redelivers the check, which is then a duplicate that produces nothing. The reminder
    that check decided must still go out when due (through the scheduler and its outbox),
    not a redispatch interval later."""
    w.run(hours=23.5)
    assert w.mailer.sent == []
    f = w.followup
    while f.next_check_at is not None and f.next_check_at < T0 + timedelta(seconds=POLICY.deadline_seconds):
        w.clock.set(f.next_check_at)
        w.settle()
        f = w.followup
    w.clock.set(f.next_check_at)
    [check] = w.tick()
    lost = deliver(w.stage, "rechecks.due", check.message, w.uow)  # recorded, then the process dies
    assert not [o for o in lost if o.topic == "rechecks.due"]  # a step is never a stage output
    assert w.followup.step_pending == 1
    assert deliver(w.stage, "rechecks.due", check.message, w.uow) == []  # the redelivery: a duplicate
    w.settle()  # the scheduler's next tick, at the same time: the reminder goes out now
    assert w.sent_to() == [("reminder", "abuse@hoster-a.test")]
    assert w.followup.step == 1 and w.followup.step_pending is None


# ------------------------------------------------------------------ moved to another hoster

PAGE = "http://www.hoster-a.test/gallery.html"
A_IMG = "http://img.hoster-a.test/known.jpg"
HOSTS = {  # host -> (address, country, hoster, abuse)
    "www.hoster-a.test": ("192.0.2.10", "NL", "Hoster A B.V.", "abuse@hoster-a.test"),
    "img.hoster-a.test": ("192.0.2.11", "NL", "Hoster A B.V.", "abuse@hoster-a.test"),
    "cdn.hoster-a.test": ("192.0.2.12", "NL", "Hoster A B.V.", "abuse@hoster-a.test"),
    "img.hoster-b.test": ("198.51.100.10", "NL", "Hoster B B.V.", "abuse@hoster-b.test"),
    "img.hoster-de.test": ("203.0.113.10", "DE", "Hoster DE GmbH", "abuse@hoster-de.test"),
    "img.hoster-us.test": ("203.0.113.130", "US", "Hoster US Inc.", "abuse@hoster-us.test"),
    "img.hoster-br.test": ("203.0.113.140", "BR", "Hoster BR Ltda.", None),  # no abuse contact known
}


def _html(*imgs: str) -> bytes:
    return ("<html><body>" + "".join(f'<img src="{u}">' for u in imgs) + "</body></html>").encode()


class Web:
    """Several hosts on an httpx mock transport: path -> (status, content type, body, location)."""

    def __init__(self) -> None:
        self.pages: dict[str, tuple[int, str, bytes]] = {}
        self.hits: dict[str, int] = {}

    def put(self, url: str, body: bytes, ctype: str = "image/jpeg", status: int = 200) -> None:
        self.pages[url] = (status, ctype, body)

    def handle(self, request: httpx.Request) -> httpx.Response:
        url = f"{request.url.scheme}://{request.headers['host']}{request.url.raw_path.decode()}"
        self.hits[url] = self.hits.get(url, 0) + 1
        if url not in self.pages:
            return httpx.Response(404)
        status, ctype, body = self.pages[url]
        if 300 <= status < 400:
            return httpx.Response(status, headers={"location": body.decode()})
        return httpx.Response(status, headers={"content-type": ctype}, content=body)


def _resolver() -> Any:
    import ipaddress

    from services.classify.hosting import HostingDirectory, HostingResolver, NetworkEntry

    nets = [(ipaddress.ip_network(f"{ip}/32"), NetworkEntry(range=f"{ip}/32", country=c, hoster=h, abuse=a))
            for ip, c, h, a in HOSTS.values()]
    return HostingResolver(HostingDirectory({h: [v[0]] for h, v in HOSTS.items()}, nets))


class MovedWorld:
    """A page on hoster A showing the known image from hoster A; the followup stage knows who
    hosts what (a hosting directory) and has a partner in DE."""

    def __init__(self) -> None:
        from schemas.facts import BankMatch, HostingFacts
        from schemas.items import ItemClassified

        self.clock = FakeClock(T0)
        self.web = Web()
        self.web.put(PAGE, _html(A_IMG), "text/html")
        self.web.put(A_IMG, IMAGE)
        self.hosting = _resolver()
        fetcher = Fetcher(FetchPolicy(allow_private=True), resolve=self.hosting.addresses,
                          transport=httpx.MockTransport(self.web.handle))
        self.mailer = RecordingMailer()
        self.stage = FollowupStage(fetcher=fetcher, hash_image=hash_image, mailer=self.mailer,
                                   sender="ntd@hotline.test", policy=POLICY, contacts=Contacts(), clock=self.clock,
                                   hosting=self.hosting, home_country="NL", partner_names={"DE": "Partner DE"})
        self.scheduler = FollowupScheduler(policy=POLICY, clock=self.clock, per_hoster=0)
        self.uow = MemoryUnitOfWork(MemoryState())
        self._installed = installed(self.clock)
        self._installed.__enter__()
        h = hash_image(IMAGE)
        match = BankMatch(entry_id=7, signal="sha256", distance=0, category="A1", source="test")
        img = ImageFacts(url=A_IMG, sha256=h.sha256, md5=h.md5, pdq=h.pdq, match=match)
        hosting = HostingFacts(host="www.hoster-a.test", country="NL", hoster="Hoster A B.V.",
                               abuse="abuse@hoster-a.test", source="hosting_file")
        classified = ItemClassified(item_id="x", url=PAGE, online=True, images=[img], hosting=hosting, known=True,
                                    route="ntd", reason="known")
        self.item_id = make_item(self.uow, "notice_sent", classified)
        self.notice = TakedownNotice(notice_id=f"ntd-{self.item_id}", item_id=self.item_id, url=PAGE,
                                     hoster="Hoster A B.V.", abuse_email="abuse@hoster-a.test", country="NL",
                                     images=[img], hosting=hosting)
        open_followup(self.uow, self.notice, self.clock.now())
        self.uow.commit()
        self.out: list[Outgoing] = []

    def close(self) -> None:
        self._installed.__exit__(None, None, None)

    def run(self, hours: float, step_hours: float = 0.5) -> None:
        end = self.clock.now() + timedelta(hours=hours)
        while self.clock.now() < end:
            self.clock.advance(hours=step_hours)
            queue = list(self.scheduler.tick(self.uow))
            self.uow.enqueue(queue)
            self.uow.commit()
            while queue:
                o = queue.pop(0)
                produced = deliver(self.stage, o.topic, o.message, self.uow)
                queue += [p for p in produced if p.topic == "rechecks.due"]
                self.out += [p for p in produced if p.topic != "rechecks.due"]

    def published(self, topic: str) -> list[Any]:
        return [o.message for o in self.out if o.topic == topic]

    @property
    def followup(self) -> Any:
        return self.uow.followups.get(self.item_id)


@pytest.fixture
def mw() -> Any:
    world = MovedWorld()
    yield world
    world.close()


def test_moved_ends_the_follow_up_and_is_no_removal() -> None:
    out = after_check(item_id="i", checks=3, misses=1, first_gone_at=T0, checked_at=T0,
                      result=CheckResult.MOVED, policy=POLICY)
    assert out.next_check_at is None and out.removed_at is None and out.misses == 0


def test_moved_ids_are_deterministic_and_count_the_moves() -> None:
    from services.followup.logic import moved_forward_id, moved_notice_id, moves
    from services.followup.mail import step_id

    assert moved_notice_id("i1", "ntd-i1") == "ntd-i1-moved-1"
    assert moved_notice_id("i1", "ntd-i1-moved-1") == "ntd-i1-moved-2"
    assert moved_forward_id("i1", "ntd-i1") == "fwd-i1-moved-1"
    assert moves("ntd-i1") == 0 and moves("ntd-i1-moved-3") == 3
    assert step_id("i1", 1, "ntd-i1") == "i1:1"  # the first notice's steps keep their ids
    assert step_id("i1", 1, "ntd-i1-moved-1") == "i1:m1:1"


@pytest.mark.parametrize(("host", "route"), [
    ("img.hoster-b.test", "ntd"), ("img.hoster-de.test", "forward"),
    # no partner hotline in the US: the notice goes to the hoster there directly (issue 9)
    ("img.hoster-us.test", "ntd"), ("img.hoster-br.test", "assessment"),
])
def test_where_moved_content_goes(host: str, route: str) -> None:
    from services.followup.recheck import MovedTo
    from services.followup.stage import decide_moved

    moved = MovedTo(page_url=PAGE, image_url=f"http://{host}/x.jpg", hashes={}, hosting=_resolver().facts(host))
    assert decide_moved(moved, "NL", {"DE"}).route == route


def _observe(w: MovedWorld) -> Any:
    from services.followup.recheck import observe

    return observe(w.stage.fetcher, hash_image, PAGE, w.followup.matched, hoster="Hoster A B.V.",
                   hoster_of=w.hosting.facts)


def test_observe_tells_moved_from_online(mw: MovedWorld) -> None:
    assert _observe(mw).result is CheckResult.ONLINE
    mw.web.put("http://cdn.hoster-a.test/copy.jpg", IMAGE)  # another URL, the same hoster: still online
    mw.web.put(PAGE, _html("http://cdn.hoster-a.test/copy.jpg"), "text/html")
    assert _observe(mw).result is CheckResult.ONLINE
    mw.web.put("http://img.hoster-b.test/copy.jpg", IMAGE)
    mw.web.put(PAGE, _html("http://img.hoster-b.test/copy.jpg"), "text/html")
    obs = _observe(mw)
    assert obs.result is CheckResult.MOVED and obs.moved_to is not None
    assert obs.moved_to.hoster == "Hoster B B.V." and obs.moved_to.image_url == "http://img.hoster-b.test/copy.jpg"
    assert obs.moved_to.hashes["sha256"] == hash_image(IMAGE).sha256
    mw.web.put(PAGE, _html("http://img.hoster-b.test/copy.jpg", A_IMG), "text/html")  # still at A too
    assert _observe(mw).result is CheckResult.ONLINE
    mw.web.put(PAGE, _html("http://img.hoster-b.test/other.jpg"), "text/html")
    mw.web.put("http://img.hoster-b.test/other.jpg", OTHER)  # not the matched image: changed, not moved
    assert _observe(mw).result is CheckResult.CHANGED


def test_a_redirect_to_another_hoster_serving_the_image_is_moved(mw: MovedWorld) -> None:
    from services.followup.recheck import observe

    mw.web.put(A_IMG, b"http://img.hoster-b.test/known.jpg", status=302)
    mw.web.put("http://img.hoster-b.test/known.jpg", IMAGE)
    obs = observe(mw.stage.fetcher, hash_image, A_IMG, [{"url": A_IMG, "sha256": hash_image(IMAGE).sha256}],
                  hoster="Hoster A B.V.", hoster_of=mw.hosting.facts)
    assert obs.result is CheckResult.MOVED and obs.moved_to is not None
    assert obs.moved_to.page_url == "http://img.hoster-b.test/known.jpg" and obs.moved_to.hoster == "Hoster B B.V."


def test_moved_at_home_sends_a_new_notice_and_stops_reminding_the_old_hoster(mw: MovedWorld) -> None:
    mw.run(hours=2)
    assert mw.followup.last_result == "online"
    mw.web.put("http://img.hoster-b.test/copy.jpg", IMAGE)
    mw.web.put(PAGE, _html("http://img.hoster-b.test/copy.jpg"), "text/html")
    mw.web.pages.pop(A_IMG)
    mw.run(hours=1)
    f = mw.followup
    assert f.status == "moved" and f.next_check_at is None and f.removed_at is None
    notices = mw.published("notices.ntd")
    assert len(notices) == 1
    n = notices[0]
    assert n.notice_id == f"ntd-{mw.item_id}-moved-1" and n.abuse_email == "abuse@hoster-b.test"
    assert n.hoster == "Hoster B B.V." and n.country == "NL" and n.url == PAGE
    assert [i.url for i in n.images] == ["http://img.hoster-b.test/copy.jpg"] and n.images[0].match is not None
    assert n.hosting is not None and n.hosting.host == "img.hoster-b.test"
    events = [e for e in mw.published("notices.events") if e.detail.startswith("moved to")]
    assert [(e.kind, e.notice_id) for e in events] == [("rechecked", f"ntd-{mw.item_id}")]
    assert "moved to Hoster B B.V." in events[0].detail
    item_events = [e for e in mw.uow.items.events(mw.item_id) if e.kind == "moved"]
    assert len(item_events) == 1
    assert not any(e.kind == "removed" for e in mw.uow.items.events(mw.item_id))
    hits = dict(mw.web.hits)
    mw.run(hours=48, step_hours=2)  # past the deadline: no reminder to A, no more checks of A's follow-up
    assert mw.mailer.sent == [] and mw.web.hits == hits
    assert len(mw.published("notices.ntd")) == 1


def test_the_same_moved_result_twice_publishes_one_notice(mw: MovedWorld) -> None:
    mw.run(hours=1)
    mw.web.put("http://img.hoster-b.test/copy.jpg", IMAGE)
    mw.web.put(PAGE, _html("http://img.hoster-b.test/copy.jpg"), "text/html")
    mw.clock.set(mw.followup.next_check_at)
    msgs = mw.scheduler.tick(mw.uow)
    mw.uow.commit()
    assert len(msgs) == 1
    first = deliver(mw.stage, "rechecks.due", msgs[0].message, mw.uow)
    again = deliver(mw.stage, "rechecks.due", msgs[0].message, mw.uow)  # redelivered
    assert [o.message.notice_id for o in first if o.topic == "notices.ntd"] == [f"ntd-{mw.item_id}-moved-1"]
    assert again == []
    # A recorded result replayed on the stage directly (another delivery that raced) adds nothing either.
    from services.followup.recheck import Observation

    obs = Observation(CheckResult.MOVED, "moved")
    assert mw.stage._record(mw.uow, mw.item_id, msgs[0].message.due_at, obs) == []


def test_moved_abroad_is_forwarded_and_nowhere_goes_to_an_analyst() -> None:
    for host, topic, state in (("img.hoster-de.test", "forwards.partner", "notice_sent"),
                               ("img.hoster-br.test", None, "awaiting_assessment")):
        w = MovedWorld()
        try:
            w.run(hours=1)
            w.web.put(f"http://{host}/copy.jpg", IMAGE)
            w.web.put(PAGE, _html(f"http://{host}/copy.jpg"), "text/html")
            w.run(hours=1)
            assert w.followup.status == "moved"
            assert w.published("notices.ntd") == []
            forwards = w.published("forwards.partner")
            if topic:
                assert [(x.forward_id, x.country, x.partner_name) for x in forwards] == [
                    (f"fwd-{w.item_id}-moved-1", "DE", "Partner DE")]
            else:
                assert forwards == []
            item = w.uow.items.get(w.item_id)
            assert item is not None and item.state == state
            if state == "awaiting_assessment":
                assert "moved to Hoster BR Ltda." in item.reason and "no partner hotline" in item.reason
        finally:
            w.close()


def test_the_new_notice_reopens_the_follow_up_for_the_new_hoster(mw: MovedWorld) -> None:
    mw.run(hours=1)
    mw.web.put("http://img.hoster-b.test/copy.jpg", IMAGE)
    mw.web.put(PAGE, _html("http://img.hoster-b.test/copy.jpg"), "text/html")
    mw.run(hours=1)
    notice = mw.published("notices.ntd")[0]
    open_followup(mw.uow, notice, mw.clock.now())  # what notify does when it sent it
    mw.uow.commit()
    f = mw.followup
    assert (f.status, f.notice_id, f.hoster, f.abuse_email) == ("new", notice.notice_id, "Hoster B B.V.",
                                                                "abuse@hoster-b.test")
    assert f.first_notice_at == mw.clock.now() and f.checks == 0 and f.step == 0
    assert [m["url"] for m in f.matched] == ["http://img.hoster-b.test/copy.jpg"]
    mw.run(hours=26)  # B leaves it up: the reminder goes to B, under the new notice's step id
    assert [(m["X-Hotline-Followup-Step"], m["To"], m["X-Hotline-Followup-Id"]) for m in mw.mailer.sent] == [
        ("reminder", "abuse@hoster-b.test", f"{mw.item_id}:m1:1")]
    assert mw.followup.last_result == "online"


# ------------------------------------------------------------------ a batch of checks in one message


class Hosters:
    """Several hosters behind one mock transport: ``gone`` URLs answer 404, ``broken`` ones
    serve bytes that make the hash function fail; counts requests and the most fetches of one
    hoster at a time."""

    def __init__(self) -> None:
        self.hits: dict[str, int] = {}
        self.gone: set[str] = set()
        self.broken: set[str] = set()
        self.delay = 0.0
        self._lock = threading.Lock()
        self._now: dict[str, int] = {}
        self.peak: dict[str, int] = {}

    def handle(self, request: httpx.Request) -> httpx.Response:
        host = request.headers["host"]
        url = f"http://{host}{request.url.path}"
        with self._lock:
            self.hits[url] = self.hits.get(url, 0) + 1
            self._now[host] = self._now.get(host, 0) + 1
            self.peak[host] = max(self.peak.get(host, 0), self._now[host])
        try:
            time.sleep(self.delay)
            if url in self.gone:
                return httpx.Response(404)
            body = b"BROKEN" if url in self.broken else IMAGE
            return httpx.Response(200, headers={"content-type": "image/jpeg"}, content=body)
        finally:
            with self._lock:
                self._now[host] -= 1


class BatchWorld:
    """``n`` follow-ups over ``hosters`` hosters (item k at hoster k % hosters), one due check each."""

    def __init__(self, n: int = 6, hosters: int = 2, per_hoster: int = 3, per_message: int = 50) -> None:
        self.clock = FakeClock(T0)
        self.sites = Hosters()
        fetcher = Fetcher(FetchPolicy(allow_private=True), resolve=lambda host: ["192.0.2.10"],
                          transport=httpx.MockTransport(self.sites.handle))

        def hashing(data: bytes) -> Any:
            if data == b"BROKEN":
                raise RuntimeError("the decoder crashed")
            return hash_image(data)

        self.stage = FollowupStage(fetcher=fetcher, hash_image=hashing, mailer=RecordingMailer(),
                                   sender="ntd@hotline.test", policy=POLICY, clock=self.clock,
                                   per_hoster=per_hoster, workers=8)
        self.scheduler = FollowupScheduler(policy=POLICY, clock=self.clock, per_hoster=per_hoster,
                                           checks_per_message=per_message, batch=100)
        self.state = MemoryState()
        self.uow = MemoryUnitOfWork(self.state)
        self._installed = installed(self.clock)
        self._installed.__enter__()
        h = hash_image(IMAGE)
        self.ids: list[str] = []
        self.urls: dict[str, str] = {}
        for k in range(n):
            item_id = make_item(self.uow, "notice_sent")
            url = f"http://img.hoster-{k % hosters}.test/{k}.jpg"
            notice = TakedownNotice(notice_id=f"ntd-{item_id}", item_id=item_id, url=url,
                                    hoster=f"Hoster {k % hosters}", abuse_email=f"abuse@hoster-{k % hosters}.test",
                                    images=[ImageFacts(url=url, sha256=h.sha256, md5=h.md5, pdq=h.pdq)])
            open_followup(self.uow, notice, self.clock.now())
            self.ids.append(item_id)
            self.urls[item_id] = url
        self.uow.commit()
        assert self.tick() == []  # planned
        self.clock.advance(hours=2)

    def close(self) -> None:
        self._installed.__exit__(None, None, None)

    def tick(self) -> list[Outgoing]:
        out = self.scheduler.tick(self.uow)
        self.uow.enqueue(out)
        self.uow.commit()
        return out

    def deliver(self, message: Any) -> list[Outgoing]:
        return deliver(self.stage, "rechecks.due", message, self.uow)

    def checks(self) -> list[int]:
        return [self.uow.followups.get(i).checks for i in self.ids]  # type: ignore[union-attr]


@pytest.fixture
def bw() -> Any:
    world = BatchWorld()
    yield world
    world.close()


def test_the_scheduler_puts_due_checks_in_batches_and_old_single_messages_still_work(bw: BatchWorld) -> None:
    out = bw.tick()
    assert len(out) == 1  # six checks, one message
    message = out[0].message
    assert isinstance(message, RecheckDue) and len(message.checks) == 6
    assert message.item_id == message.checks[0].item_id and message.due_at == message.checks[0].due_at
    assert {c.item_id for c in message.checks} == set(bw.ids)
    # A consumer still takes the single form (a producer before ``checks``) of the same check.
    first = message.checks[0]
    wire = json.loads(RecheckDue(item_id=first.item_id, due_at=first.due_at).model_dump_json())
    del wire["checks"]
    events = bw.deliver(json.dumps(wire))
    assert [e.message.kind for e in events if e.topic == "notices.events"] == ["rechecked"]
    bw.deliver(message)
    assert bw.checks() == [1] * 6  # the one done already is a duplicate inside the batch


def test_a_redelivered_batch_records_once(bw: BatchWorld) -> None:
    bw.sites.gone.add(bw.urls[bw.ids[0]])
    (batch,) = bw.tick()
    first = bw.deliver(batch.message)
    assert len([o for o in first if o.topic == "notices.events"]) == 6
    hits = dict(bw.sites.hits)
    assert bw.deliver(batch.message) == []  # redelivered: nothing fetched, nothing recorded
    assert bw.sites.hits == hits
    assert bw.checks() == [1] * 6
    f = bw.uow.followups.get(bw.ids[0])
    assert f is not None and f.misses == 1 and f.last_result == "gone"


def test_a_crash_between_reserve_and_record_is_redispatched_and_recorded_once(bw: BatchWorld) -> None:
    (batch,) = bw.tick()
    result = run_stage(bw.stage, "rechecks.due", batch.message.model_dump_json(), bw.uow)
    assert isinstance(result, SideEffect)
    bw.uow.commit()  # the reservation is committed...
    result.act()  # ...the fetches ran, and the process dies before the record transaction
    bw.uow.rollback()
    assert bw.checks() == [0] * 6
    assert bw.tick() == []  # still in flight: not dispatched twice before it is stale
    bw.clock.advance(seconds=bw.scheduler.redispatch_seconds + 1)
    (again,) = bw.tick()
    assert {c.item_id for c in again.message.checks} == set(bw.ids)  # every check comes back
    bw.deliver(again.message)
    bw.deliver(batch.message)  # the lost delivery turns up late: a duplicate
    assert bw.checks() == [1] * 6
    assert all(bw.uow.followups.get(i).dispatched_at is None for i in bw.ids)  # type: ignore[union-attr]
    assert bw.stage.mailer.sent == []  # type: ignore[attr-defined]


def test_the_per_hoster_cap_holds_inside_a_batch() -> None:
    world = BatchWorld(n=12, hosters=2, per_hoster=3)
    try:  # the claims let three of a hoster into the message...
        world.sites.delay = 0.05
        (batch,) = world.tick()
        assert len(batch.message.checks) == 6
        world.stage.per_hoster = 2  # ...the stage still fetches at most two of a hoster at a time
        world.deliver(batch.message)
        assert world.sites.peak == {"img.hoster-0.test": 2, "img.hoster-1.test": 2}
        assert sorted(world.checks()) == [0] * 6 + [1] * 6
    finally:
        world.close()


def test_the_scheduler_claims_within_the_cap_when_batching() -> None:
    world = BatchWorld(n=12, hosters=3, per_hoster=2)
    try:
        out = world.tick()
        assert len(out) == 1 and len(out[0].message.checks) == 6  # two per hoster in flight
        hosters = [world.uow.followups.get(c.item_id).hoster for c in out[0].message.checks]  # type: ignore[union-attr]
        assert sorted(hosters) == ["Hoster 0"] * 2 + ["Hoster 1"] * 2 + ["Hoster 2"] * 2
        assert world.tick() == []
    finally:
        world.close()


def test_one_checks_error_does_not_fail_the_batch(bw: BatchWorld) -> None:
    broken, unreachable = bw.ids[0], bw.ids[1]
    bw.sites.broken.add(bw.urls[broken])  # the hash function raises for this one
    bw.urls[unreachable] = bw.uow.followups.get(unreachable).url = "http://img.hoster-1.test:99999/x.jpg"  # type: ignore[union-attr]
    (batch,) = bw.tick()
    out = bw.deliver(batch.message)
    assert len([o for o in out if o.topic == "notices.events"]) == 5
    assert bw.checks() == [0] + [1] * 5
    f = bw.uow.followups.get(broken)
    assert f is not None and f.dispatched_at is not None  # left claimed: the scheduler redispatches it
    u = bw.uow.followups.get(unreachable)
    assert u is not None and u.last_result == "unreachable"  # a fetch error is a result, as before
    bw.sites.broken.clear()
    bw.clock.advance(seconds=bw.scheduler.redispatch_seconds + 1)
    (again,) = bw.tick()
    assert [c.item_id for c in again.message.due_checks()] == [broken]  # one check: the single form
    bw.deliver(again.message)
    assert bw.uow.followups.get(broken).checks == 1  # type: ignore[union-attr]
