"""Messages on ``rechecks.due``: the follow-up scheduler's work for the followup stage."""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from schemas.base import Message, utcnow


class CheckDue(BaseModel):
    """One re-check in a batch: the item and the due time it is for."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    item_id: str
    due_at: datetime


class RecheckDue(Message):
    """A follow-up action that has come due for one item with a sent notice.

    ``action="check"``: fetch the URL again for the re-check due at ``due_at`` (the stage
    does each due time once: a duplicate or stale message is ignored). ``action="step"``:
    take reminder/ladder step number ``position`` (1 = the reminder), at most once.

    ``checks`` (optional, added without a version bump: the single form stays valid): a batch
    of re-checks, each done exactly as a single ``check`` message for its item and due time
    would be. A batch message also names its first check in ``item_id``/``due_at`` (the
    partition key), so a consumer that predates ``checks`` does that one and the others are
    redispatched by the scheduler like lost messages."""

    item_id: str
    action: Literal["check", "step"] = "check"
    due_at: datetime | None = None
    position: int | None = None
    dispatched_at: datetime = Field(default_factory=utcnow)
    checks: list[CheckDue] = Field(default_factory=list)

    def due_checks(self) -> list[CheckDue]:
        """The re-checks this message asks for (none for a step)."""
        if self.action != "check":
            return []
        if self.checks:
            return list(self.checks)
        return [CheckDue(item_id=self.item_id, due_at=self.due_at)] if self.due_at is not None else []
