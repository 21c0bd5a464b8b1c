"""The one-statement forms notify and escalate record with on PostgreSQL (issue 13: fewer
statements per notice and per forward) keep what the longer forms guaranteed:

- the audit row chained by the ``INSERT ... SELECT`` has the hash ``_row_hash`` gives (the same
  chain, whatever the text: quotes, backslashes, non-ASCII, control characters), also after
  rows written the other way, and ``verify`` finds nothing;
- ``followups.open`` by ``INSERT ... ON CONFLICT DO NOTHING``: a first notice inserts the row;
  a second keeps it; a moved one starts over for the new notice (``reopen``);
- ``notices.mark_sent`` and ``forwards.mark_sent`` by id, without loading the row; a forward
  already ``sent`` is not sent again (None)."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from hotline.kernel.clock import now
from hotline.storage.audit import GENESIS, SqlAuditTrail, _row_hash
from hotline.storage.followups import new_followup
from hotline.storage.models import AuditLog, Followup, Forward, Notice
from hotline.storage.unit_of_work import SqlUnitOfWork
from tests.integration.scenario import fresh_pg_sessions
from tests.unit.stagekit import make_item

pytestmark = pytest.mark.integration

DETAILS = ["", 'a "quoted" back\\slash', "ünïcödé €", "emoji 😀 new\nline\ttab \x01", "x" * 300]


@pytest.fixture
def sessions(pg_url: str) -> Iterator[sessionmaker[Session]]:
    with fresh_pg_sessions(pg_url, "records") as sessions:
        yield sessions


def test_the_audit_chain_built_by_the_database_is_the_one_python_builds(sessions: sessionmaker[Session]) -> None:
    with sessions() as s:
        # A row written the way older code did (in Python), then rows chained by the database.
        at = now()
        s.add(AuditLog(at=at, actor="old", action="a", subject="s", detail="d", prev_hash=GENESIS,
                       hash=_row_hash(GENESIS, at.isoformat(), "old", "a", "s", "d")))
        s.flush()
        trail = SqlAuditTrail(s)
        for detail in DETAILS:
            trail.append("notify", "notice_sent", "ntd-1", detail)
        s.commit()
    with sessions() as s:
        rows = s.scalars(select(AuditLog).order_by(AuditLog.id)).all()
        assert len(rows) == 1 + len(DETAILS)
        prev = GENESIS
        for row in rows:
            assert row.prev_hash == prev
            assert row.hash == _row_hash(prev, row.at.isoformat(), row.actor, row.action, row.subject, row.detail)
            prev = row.hash
        assert [r.detail for r in rows[1:]] == DETAILS
        assert SqlAuditTrail(s).verify() == []


def test_the_first_audit_row_chains_onto_the_genesis_hash(sessions: sessionmaker[Session]) -> None:
    with sessions() as s:
        SqlAuditTrail(s).append("notify", "notice_sent", "ntd-1")
        s.commit()
    with sessions() as s:
        (row,) = s.scalars(select(AuditLog)).all()
        assert row.prev_hash == GENESIS
        assert SqlAuditTrail(s).verify() == []


def _followup(item_id: str, notice_id: str, hoster: str) -> Followup:
    at = now()
    return new_followup(item_id=item_id, notice_id=notice_id, url="http://x.test/a.jpg", hoster=hoster, country="NL",
                        abuse_email=f"abuse@{hoster}.test", matched=[{"sha256": "0" * 64}], first_report_at=at,
                        first_notice_at=at)


def test_a_follow_up_is_inserted_once_kept_by_a_second_notice_and_reopened_when_moved(
    sessions: sessionmaker[Session],
) -> None:
    with sessions() as s:
        item_id = make_item(SqlUnitOfWork(s), "notice_queued")
    with sessions() as s:
        SqlUnitOfWork(s).followups.open(_followup(item_id, "ntd-1", "a"))
        s.commit()
    with sessions() as s:
        row = s.get(Followup, item_id)
        assert row is not None and (row.notice_id, row.status, row.checks, row.step) == ("ntd-1", "new", 0, 0)
        row.status, row.checks = "open", 3
        s.commit()
    with sessions() as s:  # a second notice: the row stays as it is
        kept = SqlUnitOfWork(s).followups.open(_followup(item_id, "ntd-2", "b"))
        assert (kept.notice_id, kept.status, kept.checks) == ("ntd-1", "open", 3)
        s.commit()
    with sessions() as s:
        row = s.get(Followup, item_id)
        assert row is not None
        row.status = "moved"
        s.commit()
    with sessions() as s:  # moved: starts over for the notice to the new hoster
        SqlUnitOfWork(s).followups.open(_followup(item_id, "ntd-3", "c"))
        s.commit()
    with sessions() as s:
        row = s.get(Followup, item_id)
        assert row is not None and (row.notice_id, row.hoster, row.status, row.checks) == ("ntd-3", "c", "new", 0)


def test_a_notice_and_a_forward_are_marked_sent_by_id(sessions: sessionmaker[Session]) -> None:
    with sessions() as s:
        uow = SqlUnitOfWork(s)
        item_id = make_item(uow, "notice_queued")
        uow.notices.reserve("ntd-1", item_id, "Hoster", "abuse@h.test", "<m@h>")
        fwd = uow.forwards.open("fwd-1", item_id, "DE", "Partner DE")
        fwd.attempts, fwd.next_attempt_at, fwd.dispatched_at = 2, now() + timedelta(minutes=5), now()
        uow.commit()
    at = now()
    with sessions() as s:
        uow = SqlUnitOfWork(s)
        assert uow.notices.mark_sent("ntd-1", at)
        assert not uow.notices.mark_sent("ntd-missing", at)
        assert uow.forwards.mark_sent("fwd-1", at) == 2
        assert uow.forwards.mark_sent("fwd-missing", at) is None
        uow.commit()
    with sessions() as s:
        notice = s.get(Notice, "ntd-1")
        assert notice is not None and (notice.status, notice.sent_at) == ("sent", at)
        forward = s.get(Forward, "fwd-1")
        assert forward is not None
        assert (forward.status, forward.sent_at, forward.next_attempt_at, forward.dispatched_at) == ("sent", at, None, None)
        assert SqlUnitOfWork(s).forwards.mark_sent("fwd-1", now()) is None  # sent already: not again
