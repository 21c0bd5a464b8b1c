"""Grouping (issue 8): later notices to one abuse address within ``group_seconds`` of the
last e-mail to it go out together as one e-mail with one X-ARF report per URL; the first is
never delayed; one e-mail is reserved, sent and recorded as a unit, so the at-most-once rule
holds for a group exactly as for one notice. On ``MemoryUnitOfWork`` with a ``FakeClock``."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import datetime, timedelta
from email.message import Message
from pathlib import Path
from typing import Any

import pytest
import xarf

from hotline.kernel.clock import FakeClock, installed
from hotline.kernel.messages import Outgoing
from hotline.kernel.ports import UnitOfWork
from hotline.runtime.steps import StepRunner
from hotline.storage.memory import MemoryState, MemoryUnitOfWork
from hotline.storage.unit_of_work import SqlUnitOfWork
from schemas.notices import TakedownNotice
from services.notify.grouper import NoticeGrouper
from services.notify.mailer import NotDelivered, RecordingMailer
from services.notify.stage import NotifyStage
from tests.unit.stagekit import (
    KNOWN_IMAGE,
    SENDER,
    DyingMailer,
    ProcessKilled,
    deliver,
    kinds,
    make_item,
    notice_for,
    of_topic,
)
from tests.xarf_check import attachments, plain_text, shipped_validator

WINDOW = 600.0


@pytest.fixture
def clock() -> Iterator[FakeClock]:
    with installed(FakeClock()) as fake:
        assert isinstance(fake, FakeClock)
        yield fake


@pytest.fixture
def state() -> MemoryState:
    return MemoryState()


@pytest.fixture
def uow(state: MemoryState) -> MemoryUnitOfWork:
    return MemoryUnitOfWork(state)


def stage(mailer: object, group_seconds: float = WINDOW) -> NotifyStage:
    return NotifyStage(mailer=mailer, sender=SENDER, hotline_name="Test hotline",  # type: ignore[arg-type]
                       group_seconds=group_seconds)


def queued(uow: UnitOfWork, n: int, abuse: str = "abuse@hoster-a.test") -> TakedownNotice:
    item_id = make_item(uow, "notice_queued")
    url = f"http://img.hoster-a.test/{n}.jpg"
    return notice_for(item_id, url=url, abuse_email=abuse, images=[KNOWN_IMAGE.model_copy(update={"url": url})])


def tick(uow: MemoryUnitOfWork, grouper: NoticeGrouper | None = None) -> list[Outgoing]:
    out = (grouper or NoticeGrouper()).tick(uow)
    uow.enqueue(out)
    uow.commit()
    return out


def xarf_reports(msg: Message) -> list[dict[str, Any]]:
    """Every attachment: ``application/json``, an X-ARF content/csam report valid by both validators."""
    reports = []
    for part in attachments(msg):
        assert part.get_content_type() == "application/json"
        raw = part.get_payload(decode=True)
        assert isinstance(raw, bytes)
        report = json.loads(raw)
        shipped_validator().validate(report)
        parsed = xarf.parse(report)
        assert parsed.errors == [] and parsed.warnings == [] and isinstance(parsed.report, xarf.CsamReport)
        reports.append(report)
    return reports


def sent_at(uow: MemoryUnitOfWork, notice: TakedownNotice) -> datetime:
    row = uow.notices.get(notice.notice_id)
    assert row is not None and row.sent_at is not None
    return row.sent_at


def statuses(uow: MemoryUnitOfWork, notices: list[TakedownNotice]) -> list[str]:
    return [uow.notices.get(n.notice_id).status for n in notices]  # type: ignore[union-attr]


def test_first_immediate_later_ones_held_then_one_email_with_one_xarf_per_url(
    uow: MemoryUnitOfWork, clock: FakeClock
) -> None:
    mailer = RecordingMailer()
    first = queued(uow, 0)
    assert kinds(deliver(stage(mailer), "notices.ntd", first, uow)) == ["sent"]
    assert len(mailer.sent) == 1  # the first notice to a contact is never delayed

    later = [queued(uow, i) for i in (1, 2, 3)]
    for notice in later:
        clock.advance(minutes=2)
        assert deliver(stage(mailer), "notices.ntd", notice, uow) == []
        assert uow.items.get(notice.item_id).state == "notice_queued"  # type: ignore[union-attr]
        held = uow.notices.get(notice.notice_id)
        assert held is not None and held.held_until == sent_at(uow, first) + timedelta(seconds=WINDOW)
        assert len(mailer.sent) == 1
    assert statuses(uow, later) == ["grouped"] * 3
    assert tick(uow) == []  # window still open: the grouper publishes nothing

    clock.advance(seconds=WINDOW)  # past the window after the first e-mail
    out = tick(uow)
    nudges = [o.message for o in out if isinstance(o.message, TakedownNotice)]
    assert [(o.topic, m.notice_id) for o, m in zip(out, nudges, strict=True)] == [("notices.ntd", later[0].notice_id)]
    assert tick(uow) == []  # claimed: not published again at once
    events = deliver(stage(mailer), "notices.ntd", nudges[0], uow)

    assert len(mailer.sent) == 2
    email = mailer.sent[1]
    reports = xarf_reports(email)
    assert [r["url"] for r in reports] == [n.url for n in later]
    assert len({r["report_id"] for r in reports}) == 3
    text = plain_text(email)
    assert all(n.url in text and n.notice_id in text for n in later)
    assert email["To"] == "abuse@hoster-a.test" and email["Message-ID"] == f"<group-{later[0].notice_id}@hotline.test>"
    assert sorted(e.item_id for e in of_topic(events, "notices.events")) == sorted(n.item_id for n in later)
    assert kinds(events) == ["sent"] * 3
    assert statuses(uow, later) == ["sent"] * 3
    assert {uow.notices.get(n.notice_id).message_id for n in later} == {email["Message-ID"]}  # type: ignore[union-attr]
    for n in later:
        assert uow.items.get(n.item_id).state == "notice_sent"  # type: ignore[union-attr]
        assert uow.followups.get(n.item_id) is not None

    # Redelivered (the nudge, or any notice of the group): nothing is sent again.
    for n in [nudges[0], *later]:
        assert kinds(deliver(stage(mailer), "notices.ntd", n, uow)) == ["sent"]
    assert len(mailer.attempts) == 2


def test_a_notice_to_another_contact_is_not_held(uow: MemoryUnitOfWork, clock: FakeClock) -> None:
    mailer = RecordingMailer()
    deliver(stage(mailer), "notices.ntd", queued(uow, 0), uow)
    held = queued(uow, 1)
    assert deliver(stage(mailer), "notices.ntd", held, uow) == []
    other = queued(uow, 2, abuse="abuse@hoster-b.test")
    assert kinds(deliver(stage(mailer), "notices.ntd", other, uow)) == ["sent"]
    assert [m["To"] for m in mailer.sent] == ["abuse@hoster-a.test", "abuse@hoster-b.test"]
    assert len(xarf_reports(mailer.sent[1])) == 1
    assert statuses(uow, [held, other]) == ["grouped", "sent"]


def test_the_next_notice_after_the_window_takes_the_held_ones_along(uow: MemoryUnitOfWork, clock: FakeClock) -> None:
    mailer = RecordingMailer()
    deliver(stage(mailer), "notices.ntd", queued(uow, 0), uow)
    held = queued(uow, 1)
    deliver(stage(mailer), "notices.ntd", held, uow)
    clock.advance(seconds=WINDOW + 1)
    late = queued(uow, 2)
    assert sorted(kinds(deliver(stage(mailer), "notices.ntd", late, uow))) == ["sent", "sent"]
    assert len(mailer.sent) == 2 and [r["url"] for r in xarf_reports(mailer.sent[1])] == [held.url, late.url]
    assert tick(uow, NoticeGrouper()) == []  # nothing left held


def test_a_crash_mid_send_makes_the_whole_group_delivery_unknown_never_resent(
    uow: MemoryUnitOfWork, clock: FakeClock
) -> None:
    mailer = RecordingMailer()
    deliver(stage(mailer), "notices.ntd", queued(uow, 0), uow)
    later = [queued(uow, i) for i in (1, 2, 3)]
    for n in later:
        deliver(stage(mailer), "notices.ntd", n, uow)
    clock.advance(seconds=WINDOW)
    (nudge,) = tick(uow)
    with pytest.raises(ProcessKilled):
        deliver(stage(DyingMailer()), "notices.ntd", nudge.message, uow)
    assert statuses(uow, later) == ["sending"] * 3  # reserved together, committed before the send

    # After the restart: the nudge comes again, and so does every notice of the group.
    events = deliver(stage(mailer), "notices.ntd", nudge.message, uow)
    assert kinds(events) == ["delivery_unknown"] * 3
    assert statuses(uow, later) == ["delivery_unknown"] * 3
    for n in later:
        item = uow.items.get(n.item_id)
        assert item is not None and item.state == "notice_unconfirmed" and "not re-sent" in item.reason
        assert kinds(deliver(stage(mailer), "notices.ntd", n, uow)) == ["delivery_unknown"]
    clock.advance(hours=1)
    assert tick(uow) == []
    assert len(mailer.attempts) == 1  # only the first notice, ever


def test_a_temporary_failure_retries_the_group_as_one_email(uow: MemoryUnitOfWork, clock: FakeClock) -> None:
    mailer = RecordingMailer()
    deliver(stage(mailer), "notices.ntd", queued(uow, 0), uow)
    later = [queued(uow, i) for i in (1, 2)]
    for n in later:
        deliver(stage(mailer), "notices.ntd", n, uow)
    clock.advance(seconds=WINDOW)
    (nudge,) = tick(uow)
    mailer.fail_with = [NotDelivered("451 try again", permanent=False)]
    with pytest.raises(NotDelivered):
        deliver(stage(mailer), "notices.ntd", nudge.message, uow)
    assert statuses(uow, later) == ["failed"] * 2
    assert kinds(deliver(stage(mailer), "notices.ntd", nudge.message, uow)) == ["sent"] * 2
    assert len(mailer.sent) == 2 and len(xarf_reports(mailer.sent[1])) == 2
    assert mailer.attempts[1]["Message-ID"] == mailer.attempts[2]["Message-ID"]


def test_window_zero_sends_every_notice_at_once_as_today(uow: MemoryUnitOfWork, clock: FakeClock) -> None:
    assert NotifyStage(mailer=RecordingMailer(), sender=SENDER).group_seconds == 0
    mailer = RecordingMailer()
    notices = [queued(uow, i) for i in range(4)]
    for n in notices:
        assert kinds(deliver(stage(mailer, group_seconds=0), "notices.ntd", n, uow)) == ["sent"]
    assert len(mailer.sent) == 4 and all(len(xarf_reports(m)) == 1 for m in mailer.sent)
    assert [m["Message-ID"] for m in mailer.sent] == [f"<{n.notice_id}@hotline.test>" for n in notices]
    assert statuses(uow, notices) == ["sent"] * 4
    assert all(uow.notices.get(n.notice_id).payload is None for n in notices)  # type: ignore[union-attr]
    assert tick(uow) == []


def test_sql_group_crash_is_delivery_unknown_for_all_through_the_runtime_steps(
    tmp_path: Path, clock: FakeClock
) -> None:
    """The same on a migrated SQLite database through ``StepRunner`` (the runtimes' step path)."""
    from hotline.storage.engine import make_engine, make_sessionmaker, migrate

    url = f"sqlite:///{tmp_path / 'group.db'}"
    migrate(url)
    engine = make_engine(url)
    sessions = make_sessionmaker(engine)
    try:
        def process(mailer: object, message: Any) -> list[Outgoing]:
            return StepRunner(stage(mailer), sessions).process("notices.ntd", message.model_dump_json(),
                                                              lambda uow, out: uow.enqueue(out))

        with sessions() as s:
            uow = SqlUnitOfWork(s)
            notices = [queued(uow, i) for i in range(3)]
        mailer = RecordingMailer()
        process(mailer, notices[0])
        assert [process(mailer, n) for n in notices[1:]] == [[], []]
        clock.advance(seconds=WINDOW)
        with sessions() as s:
            uow = SqlUnitOfWork(s)
            (nudge,) = NoticeGrouper().tick(uow)
            uow.commit()
        with pytest.raises(ProcessKilled):
            process(DyingMailer(), nudge.message)
        assert kinds(process(mailer, nudge.message)) == ["delivery_unknown"] * 2
        with sessions() as s:
            uow = SqlUnitOfWork(s)
            rows = [uow.notices.get(n.notice_id) for n in notices[1:]]
            assert [r.status for r in rows if r] == ["delivery_unknown"] * 2
            assert len({r.message_id for r in rows if r}) == 1
            assert NoticeGrouper().tick(uow) == []
        assert len(mailer.attempts) == 1
    finally:
        engine.dispose()
