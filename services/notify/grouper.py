"""The notice grouper: a periodic task (``hotline.kernel.stage.Periodic``) that flushes
held notices once their grouping window has closed (``services.notify.stage``, grouping).

On every tick it claims the ``grouped`` notices that are due (``held_until <= now``) and
re-publishes the oldest of each abuse address on ``notices.ntd``; the notify stage then
sends every notice held for that address as one e-mail (reserve → act → record, like any
notice). It sends nothing itself. A claim moves ``held_until`` on by
``redispatch_seconds``, committed with the message (transactional outbox), so a message lost
with a crashed process is published again later; a duplicate is harmless (a notice no
longer ``grouped`` is never sent again).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta
from typing import ClassVar

from hotline.kernel.clock import CURRENT, Clock
from hotline.kernel.messages import Outgoing
from hotline.kernel.ports import UnitOfWork
from schemas.notices import TakedownNotice

TOPIC = "notices.ntd"


@dataclass
class NoticeGrouper:
    clock: Clock = CURRENT
    batch: int = 100
    redispatch_seconds: float = 300.0
    interval_seconds: float = 5.0

    name: ClassVar[str] = "notice-grouper"

    def tick(self, uow: UnitOfWork) -> list[Outgoing]:
        at = self.clock.now()
        first: dict[str, TakedownNotice] = {}
        for notice in uow.notices.claim_held(at, at + timedelta(seconds=self.redispatch_seconds), self.batch):
            if notice.abuse_email not in first and notice.payload is not None:
                first[notice.abuse_email] = TakedownNotice.model_validate(notice.payload)
        return [Outgoing(TOPIC, message) for message in first.values()]
