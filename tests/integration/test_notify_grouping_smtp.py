"""Grouping against a real SMTP server on loopback (aiosmtpd) and the real embedded runtime
on SQLite, with the notice grouper as its periodic task and a ``FakeClock``: the first notice
to a contact goes out at once; three more within the window are held and, once the window
has closed, reach the server as ONE e-mail with three X-ARF reports that validate."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from sqlalchemy.orm import Session, sessionmaker

from doubles.loopback import SmtpSink
from hotline.kernel.clock import FakeClock, installed
from hotline.kernel.failures import FailurePolicy
from hotline.kernel.messages import Outgoing
from hotline.kernel.states import ItemState
from hotline.runtime.embedded import EmbeddedRuntime
from hotline.storage.engine import make_engine, make_sessionmaker, migrate
from hotline.storage.unit_of_work import SqlUnitOfWork
from schemas.facts import HostingFacts
from schemas.notices import TakedownNotice
from services.notify.grouper import NoticeGrouper
from services.notify.mailer import SmtpMailer
from services.notify.stage import NotifyStage
from tests.unit.stagekit import KNOWN_IMAGE
from tests.xarf_check import attachments, plain_text, shipped_validator

WINDOW = 600.0


@pytest.fixture()
def sessions(tmp_path: Path) -> Iterator[sessionmaker[Session]]:
    url = f"sqlite:///{tmp_path / 'group.db'}"
    migrate(url)
    engine = make_engine(url)
    yield make_sessionmaker(engine)
    engine.dispose()


def queue(sessions: sessionmaker[Session], url: str) -> TakedownNotice:
    with sessions() as s:
        uow = SqlUnitOfWork(s)
        item = uow.items.create(url)
        uow.items.set_state(item, ItemState.NOTICE_QUEUED, "known material", "classify")
        notice = TakedownNotice(
            notice_id=f"ntd-{item.id}", item_id=item.id, url=url, hoster="Hoster A B.V.",
            abuse_email="abuse@hoster-a.test", country="NL", images=[KNOWN_IMAGE.model_copy(update={"url": url})],
            hosting=HostingFacts(host="images.hoster-a.test", ip="127.0.0.2", country="NL", asn=64501),
        )
        uow.enqueue([Outgoing("notices.ntd", notice)])
        uow.commit()
        return notice


def statuses(sessions: sessionmaker[Session], notices: list[TakedownNotice]) -> list[tuple[str, str, str]]:
    with sessions() as s:
        uow = SqlUnitOfWork(s)
        rows = [(uow.notices.get(n.notice_id), uow.items.get(n.item_id)) for n in notices]
        return [(r.status if r else "-", i.state if i else "-", r.message_id if r else "-") for r, i in rows]


def wait_for(predicate: Callable[[], bool], timeout: float = 20.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return False


def test_held_notices_reach_the_smtp_server_as_one_email(sessions: sessionmaker[Session]) -> None:
    sink = SmtpSink().start()
    clock = FakeClock()
    try:
        with installed(clock):
            stage = NotifyStage(mailer=SmtpMailer("127.0.0.1", sink.port, timeout=2.0), sender="ntd@hotline.test",
                                group_seconds=WINDOW)
            runtime = EmbeddedRuntime(sessions, [stage], poll_seconds=0.02,
                                      policy=FailurePolicy(first_delay_seconds=0.05, max_delay_seconds=0.2),
                                      periodic=[NoticeGrouper(interval_seconds=0.05)])
            with runtime as rt:
                first = queue(sessions, "http://images.hoster-a.test/0.jpg")
                assert wait_for(lambda: statuses(sessions, [first])[0][0] == "sent"), rt.errors
                assert sink.received == 1  # never delayed

                later = [queue(sessions, f"http://images.hoster-a.test/{i}.jpg") for i in (1, 2, 3)]
                assert wait_for(lambda: [s[0] for s in statuses(sessions, later)] == ["grouped"] * 3), rt.errors
                assert rt.wait_idle(10)
                time.sleep(0.3)  # the grouper ticks: the window is still open
                assert sink.received == 1

                clock.advance(seconds=WINDOW + 1)
                assert wait_for(lambda: [s[0] for s in statuses(sessions, later)] == ["sent"] * 3), rt.errors
                assert rt.wait_idle(10)
                time.sleep(0.3)
        assert sink.received == 2 and all(m.answered for m in sink.mails)
        email = sink.mails[1].message
        reports = []
        for part in attachments(email):
            assert part.get_content_type() == "application/json"
            raw = part.get_payload(decode=True)
            assert isinstance(raw, bytes)
            report = json.loads(raw)
            shipped_validator().validate(report)
            reports.append(report)
        assert sorted(r["url"] for r in reports) == sorted(n.url for n in later)  # one report per URL
        assert all(n.url in plain_text(email) for n in later)
        rows = statuses(sessions, later)
        assert {r[1] for r in rows} == {"notice_sent"} and {r[2] for r in rows} == {email["Message-ID"]}
    finally:
        sink.stop()
