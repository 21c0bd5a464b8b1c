"""Messages on ``rechecks.due``: the follow-up scheduler's work for the followup stage."""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import Field

from schemas.base import Message, utcnow


class RecheckDue(Message):
    """A follow-up action that has come due for one item with a sent notice.

    ``action="check"``: fetch the URL again for the re-check due at ``due_at`` (the stage
    does each due time once: a duplicate or stale message is ignored). ``action="step"``:
    take reminder/ladder step number ``position`` (1 = the reminder), at most once."""

    item_id: str
    action: Literal["check", "step"] = "check"
    due_at: datetime | None = None
    position: int | None = None
    dispatched_at: datetime = Field(default_factory=utcnow)
