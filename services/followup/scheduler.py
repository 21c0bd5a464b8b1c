"""The follow-up scheduler: on every tick, plan the first re-check of newly opened
follow-ups and publish a ``rechecks.due`` message for every due re-check and every decided
step whose message is not out yet. The runtime runs ``tick`` in a transaction of its own
and commits the claims together with the messages (embedded: into the bus table; Kafka:
produced right after the commit).

A claim is ``dispatched_at`` on the row (PostgreSQL: the rows are read ``FOR UPDATE SKIP
LOCKED``, so two schedulers never claim the same one). A claimed check whose result is not
recorded within ``redispatch_seconds`` (its message lost with a crashed process) is
dispatched again; the stage does each due time once, so a late duplicate changes nothing.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta
from typing import ClassVar

from hotline.kernel.clock import CURRENT, Clock
from hotline.kernel.messages import Outgoing
from hotline.kernel.ports import UnitOfWork
from schemas.followups import RecheckDue
from services.followup.logic import Policy, first_check_at

TOPIC = "rechecks.due"


@dataclass
class FollowupScheduler:
    policy: Policy
    clock: Clock = CURRENT
    batch: int = 100
    per_hoster: int = 2
    redispatch_seconds: float = 900.0
    interval_seconds: float = 5.0

    name: ClassVar[str] = "followup-scheduler"

    def tick(self, uow: UnitOfWork) -> list[Outgoing]:
        at = self.clock.now()
        stale = at - timedelta(seconds=self.redispatch_seconds)
        for f in uow.followups.unplanned(self.batch):
            f.status = "open"
            f.next_check_at = first_check_at(f.item_id, f.first_notice_at, self.policy)
        out = [
            Outgoing(TOPIC, RecheckDue(item_id=f.item_id, action="check", due_at=f.next_check_at, dispatched_at=at))
            for f in uow.followups.claim_due(at, self.batch, self.per_hoster, stale)
        ]
        out += [
            Outgoing(TOPIC, RecheckDue(item_id=f.item_id, action="step", position=f.step_pending, dispatched_at=at))
            for f in uow.followups.claim_pending_steps(at, self.batch, stale)
        ]
        return out
