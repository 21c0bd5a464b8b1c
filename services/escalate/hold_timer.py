"""The hold timer: a periodic task (``hotline.kernel.stage.Periodic``) beside the escalate
stage that releases escalations whose hold time passed without a hold
(``HOTLINE_POLICE_HOLD_SECONDS``; ``Escalation.release_due_at``).

Each tick claims the escalations in ``new``/``received`` that are due (PostgreSQL: ``FOR
UPDATE SKIP LOCKED``, so two escalate processes never claim the same one, and a police action
on the row at that moment is waited for or skipped, never overwritten) and releases them as
``hold-timer`` through the same state machine as the police (``services.police.logic``): the
state change and the ``PoliceAction`` (``{escalation_id}:release``, the same id a police
release has) commit together through the outbox. An escalation on hold is never claimed.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from hotline.kernel.clock import CURRENT, Clock
from hotline.kernel.messages import Outgoing
from hotline.kernel.ports import UnitOfWork
from services.police.logic import HOLD_TIMER, record


@dataclass
class HoldTimer:
    clock: Clock = CURRENT
    batch: int = 100
    interval_seconds: float = 5.0

    name: ClassVar[str] = "hold-timer"

    def tick(self, uow: UnitOfWork) -> list[Outgoing]:
        at = self.clock.now()
        out: list[Outgoing] = []
        for escalation in uow.escalations.claim_due(at, self.batch):
            out += record(uow, escalation, "release", HOLD_TIMER, "the hold time passed without a hold", at)
        return out
