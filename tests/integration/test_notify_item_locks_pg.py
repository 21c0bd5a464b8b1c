"""Two notices of one item (per-image hosters: ``ntd-<item>-h<n>``) recorded at the same moment,
on a real PostgreSQL: by two notify processes sharing the partitions, or by two e-mails in
flight in one (notify overlaps on Kafka). Recording a sent notice opens the item's follow-up
and moves the item; without a lock both records found "no follow-up yet" and the second
failed on the follow-up's key after its e-mail had gone out. ``ItemRepository.lock`` holds
the item's row first, so the second waits for the first."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from email.message import EmailMessage

import pytest
from sqlalchemy import func, select, text
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session, sessionmaker

from hotline.runtime.steps import StepRunner
from hotline.storage.models import Followup, Notice
from hotline.storage.unit_of_work import SqlUnitOfWork
from tests.integration.scenario import fresh_pg_sessions
from tests.unit.stagekit import make_item, notice_for, notify_stage

pytestmark = pytest.mark.integration


@pytest.fixture
def sessions(pg_url: str) -> Iterator[sessionmaker[Session]]:
    with fresh_pg_sessions(pg_url, "itemlocks") as sessions:
        yield sessions


def _item(sessions: sessionmaker[Session]) -> str:
    with sessions() as s:
        return make_item(SqlUnitOfWork(s), "notice_queued")


def test_a_locked_item_makes_a_second_locker_wait(sessions: sessionmaker[Session]) -> None:
    a, b = _item(sessions), _item(sessions)
    with sessions() as first:
        SqlUnitOfWork(first).items.lock([b, a, b])  # any order, duplicates: one statement in id order
        with sessions() as second:
            second.execute(text("SET LOCAL lock_timeout = '200ms'"))
            with pytest.raises(OperationalError, match="lock"):
                SqlUnitOfWork(second).items.lock([a])
        first.commit()
    with sessions() as second:  # released with the first's commit
        second.execute(text("SET LOCAL lock_timeout = '2s'"))
        SqlUnitOfWork(second).items.lock([a, b])
        second.commit()


class _MeetingMailer:
    """Accepts every message; the first two senders wait for each other, so both e-mails are
    out before either outcome is recorded."""

    def __init__(self) -> None:
        self.meet = threading.Barrier(2, timeout=30)
        self.sent: list[EmailMessage] = []

    def send(self, message: EmailMessage) -> None:
        self.meet.wait()
        self.sent.append(message)


def _send(runner: StepRunner, raw: str, errors: list[BaseException]) -> None:
    try:
        runner.process("notices.ntd", raw)
    except BaseException as exc:  # noqa: BLE001 - the test reports it
        errors.append(exc)


def test_two_notices_of_one_item_recorded_at_once_both_count(sessions: sessionmaker[Session]) -> None:
    for _ in range(5):  # a few rounds: the records race each time
        item_id = _item(sessions)
        notices = [
            notice_for(item_id, notice_id=f"ntd-{item_id}-h1"),
            notice_for(item_id, notice_id=f"ntd-{item_id}-h2", hoster="Hoster B B.V.", abuse_email="abuse@hoster-b.test"),
        ]
        mailer = _MeetingMailer()
        runner = StepRunner(notify_stage(mailer), sessions)
        errors: list[BaseException] = []
        threads = [threading.Thread(target=_send, args=(runner, n.model_dump_json(), errors)) for n in notices]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        assert not errors, errors
        assert len(mailer.sent) == 2
        with sessions() as s:
            statuses = dict(s.execute(select(Notice.id, Notice.status).where(Notice.item_id == item_id)).all())
            followups = s.scalar(select(func.count()).select_from(Followup).where(Followup.item_id == item_id))
        assert statuses == {n.notice_id: "sent" for n in notices}
        assert followups == 1
