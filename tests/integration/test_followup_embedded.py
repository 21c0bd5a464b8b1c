"""After the notice, on the embedded runtime (SQLite) with a fake clock: a simulated week in
seconds. Real SMTP (``SmtpSink``) and loopback hosters; three hosters' content is removed
at once, after the deadline, and never. Removal times, reminders and ladder steps are
checked against the clock, and the runtime is stopped and started again on the same
database in the middle of the week: no check is lost or doubled, no step sent twice.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import or_, select

from entrypoints.bootstrap import System, bootstrap
from hotline.config import Settings
from hotline.kernel.clock import FakeClock, installed
from hotline.kernel.messages import Outgoing
from hotline.runtime.embedded import EmbeddedRuntime
from hotline.storage.models import Followup, Item, ItemEvent
from hotline.storage.unit_of_work import SqlUnitOfWork
from schemas.reports import ReportSubmitted
from tests.integration import scenario
from tests.integration.scenario import HOSTER_A, HOSTER_B, NL_A, NL_B, World, wait_for

pytestmark = [pytest.mark.integration, pytest.mark.timeout(240)]

T0 = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)
HOUR = 3600
AUTHORITY = "authority@gov.test"
STEP_HOURS = 2


def settings_for(w: World, db: str) -> Settings:
    return Settings(
        database_url=db, **w.settings_kwargs(),
        recheck_seconds=6 * HOUR, removal_deadline_seconds=24 * HOUR, recheck_confirm_seconds=600,
        recheck_jitter=0, ladder_step_seconds=24 * HOUR, authority_email=AUTHORITY,
        followup_tick_seconds=0.05, recheck_per_hoster=1, recheck_redispatch_seconds=30 * 24 * HOUR,
    )


class Running:
    def __init__(self, settings: Settings) -> None:
        self.system: System = bootstrap(settings)
        self.runtime = EmbeddedRuntime(self.system.sessions, self.system.build_stages(),
                                       periodic=[self.system.build_scheduler()])
        self.runtime.start()

    def stop(self) -> None:
        self.runtime.stop()
        self.system.close()


@pytest.fixture
def w(tmp_path: Path) -> Iterator[World]:
    with scenario.world(tmp_path) as world:
        yield world


def settled(r: Running, clock: FakeClock) -> bool:
    if not r.runtime.idle():
        return False
    with r.system.sessions() as s:
        busy = s.scalar(select(Followup.item_id).where(or_(
            Followup.status == "new",
            Followup.next_check_at <= clock.now(),
            Followup.step_pending.is_not(None),
        )).limit(1))
    return busy is None


def test_a_simulated_week_after_the_notice(w: World, tmp_path: Path) -> None:
    clock = FakeClock(T0)
    with installed(clock):
        settings = settings_for(w, f"sqlite:///{tmp_path / 'hotline.db'}")
        r = Running(settings)
        try:
            run_week(w, r, clock, settings)
        finally:
            r.stop()


def run_week(w: World, r: Running, clock: FakeClock, settings: Settings) -> None:
    with r.system.sessions() as s:
        scenario.load_bank(SqlUnitOfWork(s), w.known_images)
    paths = {"at_once": (NL_A, "/fu/once.jpg"), "late": (NL_B, "/fu/late.jpg"), "never": (NL_A, "/fu/never.jpg")}
    urls = {}
    for name, (host, path) in paths.items():
        w.sites[host].add(path, "image/jpeg", w.known_images[0])
        urls[name] = w.url(host, path)
        with r.system.sessions() as s:
            store = SqlUnitOfWork(s)
            store.enqueue([Outgoing("reports.submitted", ReportSubmitted(channel="api", urls=[urls[name]]))])
            store.commit()
    sessions = r.system.sessions
    wait_for("three notices sent", lambda: all(
        scenario.item_state(sessions, u) == "notice_sent" for u in urls.values()), 60)
    ids = {n: scenario.item_for_url(sessions, u).id for n, u in urls.items()}  # type: ignore[union-attr]
    w.sites[NL_A].pages.pop(paths["at_once"][1])  # the hoster acts on the notice at once

    hours = 0
    while hours < 7 * 24:
        clock.advance(hours=STEP_HOURS)
        hours += STEP_HOURS
        if hours == 30:
            w.sites[NL_B].pages.pop(paths["late"][1])  # removed after the reminder
        if hours == 84:
            # Stop in the middle of the week, while the scheduler may have just dispatched
            # checks that are not done yet, and start a new runtime on the same database.
            r.runtime.stop()
            r.system.close()
            fresh = Running(settings)
            r.system, r.runtime = fresh.system, fresh.runtime
            sessions = r.system.sessions
        wait_for(f"hour {hours} settled", lambda: settled(r, clock), 30, interval=0.02)
    assert r.runtime.errors == {}

    with sessions() as s:
        f = {n: s.get(Followup, i) for n, i in ids.items()}
        items = {n: s.get(Item, i) for n, i in ids.items()}
        removed_events = {n: s.scalars(select(ItemEvent).where(ItemEvent.item_id == i, ItemEvent.kind == "removed"))
                          .all() for n, i in ids.items()}
    for n in ids:
        assert f[n] is not None and f[n].first_notice_at == T0  # type: ignore[union-attr]

    once, late, never = f["at_once"], f["late"], f["never"]
    assert once is not None and late is not None and never is not None
    # Removed at once: seen gone at the first check (6 h), confirmed 2 h later.
    assert once.status == "removed" and once.removed_at == T0 + timedelta(hours=6)
    assert items["at_once"] is not None and items["at_once"].state == "removed"
    assert "removed 6 h after the first notice" in items["at_once"].reason
    assert [e.at for e in removed_events["at_once"]] == [once.removed_at]
    # Removed after the deadline, just before the check at 30 h.
    assert late.status == "removed" and late.removed_at == T0 + timedelta(hours=30)
    assert items["late"] is not None and "1 day 6 h after the first notice" in items["late"].reason
    # Never removed: checked every 6 h for the whole week, no check lost or doubled across
    # the restart, and the hoster's site saw exactly those fetches (plus classify's).
    assert never.status == "open" and never.removed_at is None
    assert never.checks == 7 * 24 // 6
    assert w.sites[NL_A].hits[paths["never"][1]] == never.checks + 1

    steps = Counter((m.message["X-Hotline-Followup-Id"], tuple(m.rcpt_tos)) for m in w.mail.snapshot()
                    if m.message["X-Hotline-Followup-Id"])
    assert set(steps.values()) == {1}, steps  # no step twice
    sent = sorted(steps)
    assert sent == sorted([
        (f"{ids['late']}:1", (HOSTER_B,)),  # the reminder, at 24 h; removed before the ladder
        (f"{ids['never']}:1", (HOSTER_A,)),  # the reminder
        (f"{ids['never']}:4", (AUTHORITY,)),  # upstream (2) and registrar (3) unknown: skipped
    ])
    reminders = [m for m in w.mail.snapshot() if m.message["X-Hotline-Followup-Step"] == "reminder"]
    assert all(m.message["Date"] for m in reminders)
    with sessions() as s:
        never_events = s.scalars(select(ItemEvent).where(ItemEvent.item_id == ids["never"])
                                 .order_by(ItemEvent.id)).all()
    kinds = [e.kind for e in never_events]
    assert kinds.count("reminder") == 1 and kinds.count("overdue") == 3
    reminder_at = next(e.at for e in never_events if e.kind == "reminder")
    assert reminder_at == T0 + timedelta(hours=24)
    authority_at = [e.at for e in never_events if e.kind == "overdue"][-1]
    assert authority_at == T0 + timedelta(hours=48)
    events = [m for m in scenario_published(sessions, "notices.events") if m["item_id"] in ids.values()]
    assert Counter(m["kind"] for m in events if m["item_id"] == ids["at_once"])["removed"] == 1


def scenario_published(sessions: object, topic: str) -> list[dict[str, object]]:
    import json

    from hotline.storage.models import BusMessage

    with sessions() as s:  # type: ignore[operator]
        rows = s.scalars(select(BusMessage.value).where(BusMessage.topic == topic)).all()
    return [json.loads(v) for v in rows]


def test_content_moved_to_another_hoster_gets_a_new_notice_there(w: World, tmp_path: Path) -> None:
    """A page on hoster A shows the known image from A, then (A took its copy down) the same
    image from hoster B: B's abuse contact gets a new notice, A gets no more reminders."""
    clock = FakeClock(T0)
    with installed(clock):
        settings = settings_for(w, f"sqlite:///{tmp_path / 'hotline.db'}")
        r = Running(settings)
        try:
            with r.system.sessions() as s:
                scenario.load_bank(SqlUnitOfWork(s), w.known_images)
            a, b = w.sites[NL_A], w.sites[NL_B]
            a.add("/mv/known.jpg", "image/jpeg", w.known_images[0])
            a.add("/mv/page.html", "text/html", f'<img src="{w.url(NL_A, "/mv/known.jpg")}">'.encode())
            page = w.url(NL_A, "/mv/page.html")
            with r.system.sessions() as s:
                store = SqlUnitOfWork(s)
                store.enqueue([Outgoing("reports.submitted", ReportSubmitted(channel="api", urls=[page]))])
                store.commit()
            sessions = r.system.sessions
            wait_for("the notice to A", lambda: scenario.item_state(sessions, page) == "notice_sent", 60)
            item_id = scenario.item_for_url(sessions, page).id  # type: ignore[union-attr]
            for hour in range(2, 13, 2):  # online at the 6 h check
                clock.advance(hours=STEP_HOURS)
                wait_for(f"hour {hour} settled", lambda: settled(r, clock), 30, interval=0.02)
            b.add("/mirror/copy.jpg", "image/jpeg", w.known_images[0])
            a.add("/mv/page.html", "text/html", f'<img src="{w.url(NL_B, "/mirror/copy.jpg")}">'.encode())
            a.remove("/mv/known.jpg")
            moved_id = f"ntd-{item_id}-moved-1"
            for hour in range(14, 61, 2):  # the 18 h check sees it at B; the deadline (24 h) passes
                clock.advance(hours=STEP_HOURS)
                wait_for(f"hour {hour} settled", lambda: settled(r, clock), 30, interval=0.02)
            assert r.runtime.errors == {}
            mail = w.mail.snapshot()
            to_b = [m for m in mail if tuple(m.rcpt_tos) == (HOSTER_B,)]
            notices_to_b = [m for m in to_b if m.notice_id == moved_id]
            assert len(notices_to_b) == 1
            assert w.url(NL_B, "/mirror/copy.jpg") in plain(notices_to_b[0])
            to_a = [m for m in mail if tuple(m.rcpt_tos) == (HOSTER_A,)]
            assert [m.message["X-Hotline-Followup-Step"] for m in to_a] == [None]  # A's notice, no reminder
            # B left it up past its own deadline (24 h after its notice): B got the reminder.
            reminders_b = [m for m in to_b if m.message["X-Hotline-Followup-Step"] == "reminder"]
            assert [m.message["X-Hotline-Followup-Id"] for m in reminders_b] == [f"{item_id}:m1:1"]
            with sessions() as s:
                f = s.get(Followup, item_id)
                assert f is not None and f.notice_id == moved_id and f.hoster == "Hoster B B.V."
                assert f.status == "open" and f.removed_at is None
                kinds = [e.kind for e in s.scalars(select(ItemEvent).where(ItemEvent.item_id == item_id))]
            assert kinds.count("moved") == 1 and "removed" not in kinds
            events = [m for m in scenario_published(sessions, "notices.events") if m["item_id"] == item_id]
            moved = [m for m in events if str(m["detail"]).startswith("moved to")]
            assert [(m["kind"], m["notice_id"]) for m in moved] == [("rechecked", f"ntd-{item_id}")]
        finally:
            r.stop()


def plain(mail: object) -> str:
    from tests.xarf_check import plain_text

    return plain_text(mail.message)  # type: ignore[attr-defined]
