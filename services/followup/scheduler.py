"""The follow-up scheduler: on every tick, plan the first re-check of newly opened
follow-ups and publish a ``rechecks.due`` message for every due re-check and every decided
step whose message is not out yet. The runtime runs ``tick`` in a transaction of its own
and commits the claims together with the messages (embedded: into the bus table; Kafka:
produced right after the commit).

A claim is ``dispatched_at`` on the row (PostgreSQL: the rows are read ``FOR UPDATE SKIP
LOCKED``, so two schedulers never claim the same one). A claimed check whose result is not
recorded within ``redispatch_seconds`` (its message lost with a crashed process) is
dispatched again; the stage does each due time once, so a late duplicate changes nothing.

Due checks go out ``checks_per_message`` to a message (``RecheckDue.checks``; 1: the single
form). The claims already keep every hoster at ``per_hoster`` in flight, so a message never
holds more of one hoster than the cap; the stage fetches a batch in parallel, at most
``per_hoster`` at a time per hoster. Steps always go one to a message.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import ClassVar

from hotline.kernel.clock import CURRENT, Clock
from hotline.kernel.messages import Outgoing
from hotline.kernel.ports import UnitOfWork
from hotline.storage.models import Followup
from schemas.followups import CheckDue, RecheckDue
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
    checks_per_message: int = 1

    name: ClassVar[str] = "followup-scheduler"

    def tick(self, uow: UnitOfWork) -> list[Outgoing]:
        at = self.clock.now()
        stale = at - timedelta(seconds=self.redispatch_seconds)
        for f in uow.followups.unplanned(self.batch):
            f.status = "open"
            f.next_check_at = first_check_at(f.item_id, f.first_notice_at, self.policy)
        claimed = uow.followups.claim_due(at, self.batch, self.per_hoster, stale)
        size = max(1, self.checks_per_message)
        out = [self._checks(claimed[i:i + size], at) for i in range(0, len(claimed), size)]
        out += [
            Outgoing(TOPIC, RecheckDue(item_id=f.item_id, action="step", position=f.step_pending, dispatched_at=at))
            for f in uow.followups.claim_pending_steps(at, self.batch, stale)
        ]
        return out

    @staticmethod
    def _checks(group: list[Followup], at: datetime) -> Outgoing:
        first = group[0]
        if len(group) == 1:
            return Outgoing(TOPIC, RecheckDue(item_id=first.item_id, action="check", due_at=first.next_check_at,
                                              dispatched_at=at))
        checks = [CheckDue(item_id=f.item_id, due_at=f.next_check_at) for f in group if f.next_check_at is not None]
        return Outgoing(TOPIC, RecheckDue(item_id=first.item_id, action="check", due_at=first.next_check_at,
                                          dispatched_at=at, checks=checks))
