"""The SQL unit of work: one session, one repository per aggregate, and the transactional
outbox. The runtimes and web requests create one per transaction and are the only ones
to commit it."""

from __future__ import annotations

import threading
from collections.abc import Iterable
from typing import TYPE_CHECKING

from sqlalchemy.orm import Session

from hotline.kernel.clock import now
from hotline.storage.accounts import SqlHashCheckStats, SqlUsers
from hotline.storage.actions import SqlAssessments, SqlEscalations, SqlForwards, SqlNotices
from hotline.storage.audit import SqlAuditTrail
from hotline.storage.bank_entries import SqlBankEntries
from hotline.storage.items import SqlItems
from hotline.storage.models import BusMessage
from hotline.storage.reports import SqlReports

if TYPE_CHECKING:
    from hotline.kernel.messages import Outgoing

# Rows of the outbox/bus table are inserted and committed under this lock, so their ids
# become visible in order to the embedded runtime's readers (one process, many threads).
OUTBOX_LOCK = threading.Lock()


class SqlUnitOfWork:
    def __init__(self, session: Session) -> None:
        self.session = session
        self.pending: list[Outgoing] = []
        self.audit = SqlAuditTrail(session)
        self.reports = SqlReports(session, self.audit)
        self.items = SqlItems(session)
        self.notices = SqlNotices(session)
        self.forwards = SqlForwards(session)
        self.escalations = SqlEscalations(session)
        self.assessments = SqlAssessments(session)
        self.bank = SqlBankEntries(session)
        self.users = SqlUsers(session)
        self.hashcheck = SqlHashCheckStats(session)

    def enqueue(self, outgoing: Iterable[Outgoing]) -> None:
        """Publish messages *with* this unit of work (transactional outbox): they reach the bus
        if and only if the state changes commit."""
        self.pending.extend(outgoing)

    def commit(self) -> None:
        if not self.pending:
            self.session.commit()
            return
        with OUTBOX_LOCK:
            self.session.add_all(
                BusMessage(topic=o.topic, key=o.key, value=o.message.model_dump_json(), created_at=now())
                for o in self.pending
            )
            self.pending.clear()
            self.session.commit()

    def rollback(self) -> None:
        self.pending.clear()
        self.session.rollback()

    def flush(self) -> None:
        self.session.flush()
