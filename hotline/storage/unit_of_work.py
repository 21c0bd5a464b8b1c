"""The SQL unit of work: one session, one repository per aggregate, and the transactional
outbox. The runtimes and web requests create one per transaction and are the only ones
to commit it."""

from __future__ import annotations

import threading
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any, cast

from sqlalchemy import Table, insert
from sqlalchemy.orm import Session

from hotline.kernel.clock import now
from hotline.storage.accounts import SqlHashCheckStats, SqlUsers
from hotline.storage.actions import SqlAssessments, SqlEscalations, SqlForwards, SqlNotices
from hotline.storage.audit import SqlAuditTrail
from hotline.storage.bank_entries import SqlBankEntries
from hotline.storage.deliveries import SqlPartnerUpdates
from hotline.storage.followups import SqlFollowups
from hotline.storage.items import SqlItems
from hotline.storage.leases import SqlLeases
from hotline.storage.models import BusMessage
from hotline.storage.rejections import SqlRejections
from hotline.storage.reports import SqlReports

if TYPE_CHECKING:
    from hotline.kernel.messages import Outgoing

# Rows of the outbox/bus table are inserted and committed under this lock, so their ids
# become visible in order to the embedded runtime's readers (one process, many threads).
# Lock order: a unit of work takes its database locks first and this lock last (see
# ``SqlUnitOfWork.commit``), never the other way round; and SQLite does not need it at all.
OUTBOX_LOCK = threading.Lock()
BUS_MESSAGES = cast(Table, BusMessage.__table__)  # for Core statements
WROTE_OUTBOX = "hotline.wrote_outbox"
"""``session.info`` flag, set for the one commit that writes outbox rows (the outbox relay of
the process wakes on a commit that carries it, ``hotline.runtime.relay``)."""


class SqlUnitOfWork:
    def __init__(self, session: Session) -> None:
        self.session = session
        self.pending: list[Outgoing] = []
        self.pending_raw: list[tuple[str, str, str]] = []  # (topic, key, value)
        self.audit = SqlAuditTrail(session)
        self.reports = SqlReports(session, self.audit)
        self.items = SqlItems(session)
        self.notices = SqlNotices(session)
        self.forwards = SqlForwards(session)
        self.escalations = SqlEscalations(session)
        self.assessments = SqlAssessments(session)
        self.bank = SqlBankEntries(session)
        self.followups = SqlFollowups(session)
        self.users = SqlUsers(session)
        self.hashcheck = SqlHashCheckStats(session)
        self.partner_updates = SqlPartnerUpdates(session)
        self.leases = SqlLeases(session)
        self.rejections = SqlRejections(session)

    def enqueue(self, outgoing: Iterable[Outgoing]) -> None:
        """Publish messages *with* this unit of work (transactional outbox): they reach the bus
        if and only if the state changes commit."""
        self.pending.extend(outgoing)

    def enqueue_raw(self, topic: str, key: str, value: str) -> None:
        """Publish a value that is no valid message, as a broken producer would (tests use it to
        check that stages reject it): same outbox path, same ordering, as ``enqueue``."""
        self.pending_raw.append((topic, key, value))

    def commit(self) -> None:
        self.reports.flush_added()
        self.reports.forget_new()
        self.items.forget_deferred()
        if not self.pending and not self.pending_raw:
            self.session.commit()
            return
        # Core rows, not ORM objects: a group commit writes hundreds of outbox rows, and each
        # ORM object costs its own identity-map and unit-of-work bookkeeping (and a RETURNING
        # of its id nobody reads). One executemany: one multi-row statement.
        at = now()
        rows = [
            {"topic": o.topic, "key": o.key, "value": o.message.model_dump_json(), "created_at": at}
            for o in self.pending
        ] + [{"topic": t, "key": k, "value": v, "created_at": at} for t, k, v in self.pending_raw]
        self.pending.clear()
        self.pending_raw.clear()
        # The session's own changes go out first (flush), then the outbox rows, in one transaction.
        self.session.flush()
        # Marked for exactly this commit: every ``after_commit`` listener (the relay) sees it.
        self.session.info[WROTE_OUTBOX] = True
        try:
            self._insert_and_commit(rows)
        finally:
            self.session.info.pop(WROTE_OUTBOX, None)

    def _insert_and_commit(self, rows: list[dict[str, Any]]) -> None:
        if self.session.get_bind().dialect.name == "sqlite":
            # SQLite admits one writer at a time and these rows get their ids and commit under
            # that one write lock, so ids become visible in order without OUTBOX_LOCK. Taking it
            # here would deadlock: a unit of work that has already written (a stage) holds the
            # write lock and waits for OUTBOX_LOCK, while one whose first write is this insert
            # (a submission) holds OUTBOX_LOCK and waits for the write lock -- until the busy
            # timeout fails it with "database is locked".
            self.session.execute(insert(BUS_MESSAGES), rows)
            self.session.commit()
            return
        # Row locks are taken before OUTBOX_LOCK (flush), never while holding it: inside it only
        # inserts into bus_messages and COMMIT, which wait for no other transaction.
        with OUTBOX_LOCK:
            self.session.execute(insert(BUS_MESSAGES), rows)
            self.session.commit()

    def rollback(self) -> None:
        self.pending.clear()
        self.pending_raw.clear()
        self.reports.discard_added()
        self.items.forget_deferred()
        self.session.rollback()

    def flush(self) -> None:
        self.reports.flush_added()
        self.session.flush()
