"""The contact purge: a periodic task (``hotline.kernel.stage.Periodic``) beside ingest that
removes reporter addresses past ``HOTLINE_REPORTER_RETENTION_DAYS``, and those of bus messages
every consumer has passed (``hotline.storage.contact_retention``). Beside ingest because
ingest is where addresses enter the pipeline and the stage that consumes ``reports.submitted``.

Each tick that removed something writes one audit row with the counts (never an address);
``hotline reports purge-contacts`` runs the same purge once, from the command line.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from typing import ClassVar

from hotline.kernel.clock import CURRENT, Clock
from hotline.kernel.messages import Outgoing
from hotline.kernel.ports import UnitOfWork
from hotline.storage.contact_retention import PurgeCounts, purge_contacts
from hotline.storage.unit_of_work import SqlUnitOfWork

AUDIT_ACTION = "reporter_contacts_purged"


def purge(uow: UnitOfWork, cutoff_days: float, clock: Clock = CURRENT,
          consumers: Mapping[str, Sequence[str]] | None = None, actor: str = "contact-purge") -> PurgeCounts:
    """One purge in ``uow``'s transaction, audit-logged (counts only) when it removed anything."""
    assert isinstance(uow, SqlUnitOfWork), "the contact purge works on the SQL storage"
    cutoff = clock.now() - timedelta(days=cutoff_days)
    counts = purge_contacts(uow.session, cutoff, consumers)
    if counts.total:
        detail = json.dumps({"retention_days": cutoff_days, **counts.as_dict()}, sort_keys=True)
        uow.audit.append(actor, AUDIT_ACTION, "reporter_email", detail)
    return counts


@dataclass
class ContactPurge:
    retention_days: float = 90.0
    interval_seconds: float = 3600.0
    clock: Clock = CURRENT
    # topic -> embedded stages that read it; None on Kafka (bus_messages is only the outbox).
    consumers: Mapping[str, Sequence[str]] | None = field(default=None)
    last: PurgeCounts | None = None

    name: ClassVar[str] = "contact-purge"

    def tick(self, uow: UnitOfWork) -> list[Outgoing]:
        self.last = purge(uow, self.retention_days, self.clock, self.consumers)
        return []
