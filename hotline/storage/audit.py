"""The append-only audit log: each row commits to the previous row's hash, so tampering shows."""

from __future__ import annotations

import hashlib
import json

from sqlalchemy import select, text
from sqlalchemy.orm import Session

from hotline.kernel.clock import now
from hotline.storage.models import AuditLog

AUDIT_LOCK_KEY = 0x686F746C  # "hotl": the advisory lock that serializes audit appends
GENESIS = "0" * 64


def _row_hash(prev: str, at_iso: str, actor: str, action: str, subject: str, detail: str) -> str:
    body = json.dumps([prev, at_iso, actor, action, subject, detail])
    return hashlib.sha256(body.encode()).hexdigest()


class SqlAuditTrail:
    def __init__(self, session: Session) -> None:
        self.session = session

    def append(self, actor: str, action: str, subject: str, detail: str = "") -> None:
        """Appends are serialized until commit so that two writers cannot both chain onto the
        same predecessor: on PostgreSQL with a transaction-scoped advisory lock; SQLite
        already admits one writer at a time (a stale reader fails to upgrade and retries)."""
        if self.session.get_bind().dialect.name == "postgresql":
            self.session.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": AUDIT_LOCK_KEY})
        prev = self.session.scalar(select(AuditLog.hash).order_by(AuditLog.id.desc()).limit(1)) or GENESIS
        at = now()
        self.session.add(
            AuditLog(
                at=at, actor=actor, action=action, subject=subject, detail=detail, prev_hash=prev,
                hash=_row_hash(prev, at.isoformat(), actor, action, subject, detail),
            )
        )
        self.session.flush()

    def verify(self) -> list[int]:
        """Ids of audit rows whose hash does not match their content or predecessor."""
        bad = []
        prev = GENESIS
        for row in self.session.scalars(select(AuditLog).order_by(AuditLog.id)):
            expected = _row_hash(prev, row.at.isoformat(), row.actor, row.action, row.subject, row.detail)
            if row.prev_hash != prev or row.hash != expected:
                bad.append(row.id)
            prev = row.hash
        return bad
