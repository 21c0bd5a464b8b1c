"""The operators' copy of ``reports.rejected``: every rejected or parked message with its
original payload, until an operator resolves it (resubmitted, re-driven, dismissed)."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from hotline.kernel.clock import now
from hotline.storage.models import Rejection


class SqlRejections:
    def __init__(self, session: Session) -> None:
        self.session = session

    def record(self, message: Any) -> None:
        """``message``: a ``ReportRejected`` (its payload kept whole, as published)."""
        payload = message.payload
        item_id = payload.get("item_id") if isinstance(payload, dict) else None
        self.session.add(Rejection(
            at=now(), stage=message.stage, source_topic=message.source_topic, report_id=message.report_id,
            item_id=item_id if isinstance(item_id, str) else None, reason_code=message.reason_code,
            reason=message.reason, payload=payload,
        ))

    def get(self, rejection_id: int) -> Rejection | None:
        return self.session.get(Rejection, rejection_id)

    def lock(self, rejection_id: int) -> Rejection | None:
        return self.session.scalars(
            select(Rejection).where(Rejection.id == rejection_id).with_for_update()).first()

    def unresolved(self, limit: int = 200) -> Sequence[Rejection]:
        """Newest first."""
        return self.session.scalars(
            select(Rejection).where(Rejection.resolved_at.is_(None)).order_by(Rejection.id.desc()).limit(limit)
        ).all()

    def resolve(self, row: Rejection, by: str, resolution: str, at: datetime | None = None) -> None:
        row.resolved_at = at or now()
        row.resolved_by = by
        row.resolution = resolution
