"""At most one notice, against a real SMTP server on loopback (aiosmtpd) and the real
embedded runtime on SQLite: a server that takes the whole message and then never answers
(or drops the connection before its final reply) may have the mail, so the notice
becomes ``delivery_unknown``, the item ``notice_unconfirmed``, and nothing is ever sent
again — not on redelivery, not after a restart. A server that refuses for now gets the
notice again once it is back, exactly once."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from sqlalchemy.orm import Session, sessionmaker

from doubles.loopback import SmtpMode, SmtpSink
from hotline.kernel.failures import FailurePolicy
from hotline.kernel.messages import Outgoing
from hotline.kernel.states import ItemState
from hotline.runtime.embedded import EmbeddedRuntime
from hotline.storage.engine import make_engine, make_sessionmaker, migrate
from hotline.storage.unit_of_work import SqlUnitOfWork
from schemas.facts import HostingFacts
from schemas.notices import TakedownNotice
from services.notify.mailer import SmtpMailer
from services.notify.stage import NotifyStage
from tests.unit.stagekit import KNOWN_IMAGE
from tests.xarf_check import checked_xarf, plain_text

FAST = FailurePolicy(first_delay_seconds=0.05, max_delay_seconds=0.2)


@pytest.fixture()
def sessions(tmp_path: Path) -> Iterator[sessionmaker[Session]]:
    url = f"sqlite:///{tmp_path / 'notify.db'}"
    migrate(url)
    engine = make_engine(url)
    yield make_sessionmaker(engine)
    engine.dispose()


def queued_notice(sessions: sessionmaker[Session], url: str) -> TakedownNotice:
    """An item classified as known material at home, and its notice on ``notices.ntd``."""
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


def redeliver(sessions: sessionmaker[Session], notice: TakedownNotice) -> None:
    with sessions() as s:
        uow = SqlUnitOfWork(s)
        uow.enqueue([Outgoing("notices.ntd", notice)])
        uow.commit()


def status_of(sessions: sessionmaker[Session], notice: TakedownNotice) -> tuple[str | None, str | None]:
    with sessions() as s:
        uow = SqlUnitOfWork(s)
        row, item = uow.notices.get(notice.notice_id), uow.items.get(notice.item_id)
        return (row.status if row else None), (item.state if item else None)


def wait_for(predicate: Callable[[], bool], timeout: float = 20.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return False


def runtime(sessions: sessionmaker[Session], sink: SmtpSink) -> EmbeddedRuntime:
    stage = NotifyStage(mailer=SmtpMailer("127.0.0.1", sink.port, timeout=1.0), sender="ntd@hotline.test")
    return EmbeddedRuntime(sessions, [stage], poll_seconds=0.02, policy=FAST)


@pytest.mark.parametrize("mode", ["no_reply", "drop"])
def test_no_final_reply_means_delivery_unknown_and_never_a_second_mail(
    sessions: sessionmaker[Session], mode: SmtpMode
) -> None:
    sink = SmtpSink(mode=mode).start()
    try:
        notice = queued_notice(sessions, "http://images.hoster-a.test/a.jpg")
        with runtime(sessions, sink) as rt:
            assert wait_for(lambda: status_of(sessions, notice) == ("delivery_unknown", "notice_unconfirmed")), rt.errors
            assert rt.wait_idle(10)
        assert sink.received == 1 and not sink.mails[0].answered

        # The server is healthy again; the same notice is delivered again and the process
        # restarts: still nothing is sent a second time.
        sink.mode = "accept"
        redeliver(sessions, notice)
        with runtime(sessions, sink) as rt:
            assert rt.wait_idle(10), rt.errors
        assert sink.received == 1
        assert status_of(sessions, notice) == ("delivery_unknown", "notice_unconfirmed")
        with sessions() as s:
            item = SqlUnitOfWork(s).items.get(notice.item_id)
            assert item is not None and item.reason.count("not re-sent") == 1
    finally:
        sink.stop()


def test_a_temporary_refusal_is_retried_and_sent_once(sessions: sessionmaker[Session]) -> None:
    sink = SmtpSink(mode="tempfail").start()
    try:
        notice = queued_notice(sessions, "http://images.hoster-a.test/b.jpg")
        with runtime(sessions, sink) as rt:
            assert wait_for(lambda: sink.refused >= 3), rt.errors
            # Between attempts the notice rests as failed (retried, never refused or bounced);
            # during an attempt it is sending, so wait for the rest rather than sample once.
            assert wait_for(lambda: status_of(sessions, notice) == ("failed", "notice_queued")), (
                status_of(sessions, notice), rt.errors)
            sink.mode = "accept"
            assert wait_for(lambda: status_of(sessions, notice) == ("sent", "notice_sent")), rt.errors
            assert rt.wait_idle(10)
        assert sink.received == 1 and sink.mails[0].answered
        # What the real SMTP server received: the text and one X-ARF report that validates.
        received = sink.mails[0].message
        assert notice.url in plain_text(received)
        report = checked_xarf(received)
        assert report["url"] == notice.url and report["source_identifier"] == "127.0.0.2"
        assert report["hash_values"]["sha256"] == KNOWN_IMAGE.sha256 and report["classification"] == "baseline"
        assert not any(p.get_content_maintype() == "image" for p in received.walk())
    finally:
        sink.stop()
