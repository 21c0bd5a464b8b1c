"""The append-only audit log: each row commits to the previous row's hash, so tampering shows."""

from __future__ import annotations

import hashlib
import json
from typing import Any, cast

from sqlalchemy import Table, bindparam, insert, select, text
from sqlalchemy.orm import Session

from hotline.kernel.clock import now
from hotline.storage.models import AuditLog

AUDIT_LOCK_KEY = 0x686F746C  # "hotl": the advisory lock that serializes audit appends
GENESIS = "0" * 64


def _row_hash(prev: str, at_iso: str, actor: str, action: str, subject: str, detail: str) -> str:
    body = json.dumps([prev, at_iso, actor, action, subject, detail])
    return hashlib.sha256(body.encode()).hexdigest()


def _body_after_prev(at_iso: str, actor: str, action: str, subject: str, detail: str) -> str:
    """What follows ``[<prev as JSON>, `` in ``_row_hash``'s body: ``json.dumps`` of a list is
    ``[`` + its items' JSON joined by ``, `` + ``]``, so the body is ``[`` + prev's JSON + ``, `` +
    this. (``ensure_ascii``: pure ASCII, so the database's UTF-8 bytes are Python's.)"""
    return json.dumps([at_iso, actor, action, subject, detail])[1:]


AUDIT = cast(Table, AuditLog.__table__)
_LAST_HASH = select(AuditLog.hash).order_by(AuditLog.id.desc()).limit(1)
_APPEND_CHAINED = text(
    # The predecessor's hash read and chained onto in the insert itself: one statement, where
    # reading it first and inserting after took two round trips (and an ORM object per row).
    # ``to_json(h)::text`` is ``json.dumps(h)`` for the hex digests the chain holds.
    "INSERT INTO audit_log (at, actor, action, subject, detail, prev_hash, hash) "
    "SELECT :at, :actor, :action, :subject, :detail, p.h, "
    "encode(sha256(convert_to('[' || to_json(p.h)::text || ', ' || :rest, 'UTF8')), 'hex') "
    "FROM (SELECT coalesce((SELECT hash FROM audit_log ORDER BY id DESC LIMIT 1), :genesis) AS h) AS p"
).bindparams(bindparam("at", type_=AUDIT.c.at.type))
_LOCK = text("SELECT pg_advisory_xact_lock(:k)")


class SqlAuditTrail:
    def __init__(self, session: Session) -> None:
        self.session = session

    def append(self, actor: str, action: str, subject: str, detail: str = "") -> None:
        """Appends are serialized until commit so that two writers cannot both chain onto the
        same predecessor: on PostgreSQL with a transaction-scoped advisory lock; SQLite
        already admits one writer at a time (a stale reader fails to upgrade and retries)."""
        at = now()
        row: dict[str, Any] = {"at": at, "actor": actor, "action": action, "subject": subject, "detail": detail}
        if self.session.get_bind().dialect.name == "postgresql":
            self.session.execute(_LOCK, {"k": AUDIT_LOCK_KEY})
            # The session's pending changes first, as the read of the predecessor's hash used
            # to flush them (after the lock, in one flush; callers count on it).
            self.session.flush()
            # A statement of its own after the lock's: in READ COMMITTED its snapshot is taken
            # once the lock is held, so it sees the row the previous holder committed.
            rest = _body_after_prev(at.isoformat(), actor, action, subject, detail)
            self.session.execute(_APPEND_CHAINED, {**row, "rest": rest, "genesis": GENESIS})
            return
        self.session.flush()
        prev = self.session.scalar(_LAST_HASH) or GENESIS
        row["prev_hash"] = prev
        row["hash"] = _row_hash(prev, at.isoformat(), actor, action, subject, detail)
        self.session.execute(insert(AUDIT), row)

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
