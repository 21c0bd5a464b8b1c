"""The one place that talks SQL: a unit of work handed to stages and web routes.

Stages call intention-revealing methods (``open_item_for_url``, ``set_state``)
instead of building queries, so their logic reads like the process it follows
and tests can check state without knowing the tables.
"""

from __future__ import annotations

import hashlib
import json
import threading
import uuid
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from sqlalchemy import delete, func, select, text
from sqlalchemy.orm import Session

from hotline.db.models import (
    FINAL_STATES,
    Assessment,
    AuditLog,
    BankEntry,
    BusMessage,
    Escalation,
    Forward,
    HashCheckStat,
    Item,
    ItemEvent,
    Notice,
    OpenUrl,
    Report,
    ReportUrl,
    User,
)

if TYPE_CHECKING:
    from hotline.stage import InvalidMessage, Outgoing
    from schemas.reports import ReportSubmitted


def now() -> datetime:
    return datetime.now(UTC)


def url_digest(url: str) -> str:
    return hashlib.sha256(url.encode()).hexdigest()


def token_digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


# Rows of the outbox/bus table are inserted and committed under this lock, so their ids
# become visible in order to the embedded runtime's readers (one process, many threads).
# Lock order: a unit of work takes its database locks first and this lock last (see
# ``Store.commit``), never the other way round; and SQLite does not need it at all.
OUTBOX_LOCK = threading.Lock()
AUDIT_LOCK_KEY = 0x686F746C  # "hotl": the advisory lock that serializes audit appends


class Store:
    def __init__(self, session: Session) -> None:
        self.session = session
        self.pending: list[Outgoing] = []
        self.pending_raw: list[tuple[str, str, str]] = []  # (topic, key, value)

    # -- transaction -------------------------------------------------------
    def enqueue(self, outgoing: Iterable[Outgoing]) -> None:
        """Publish messages *with* this unit of work (transactional outbox): they reach the bus
        if and only if the state changes commit."""
        self.pending.extend(outgoing)

    def enqueue_raw(self, topic: str, key: str, value: str) -> None:
        """Publish a value that is no valid message, as a broken producer would (tests use it to
        check that stages reject it): same outbox path, same ordering, as ``enqueue``."""
        self.pending_raw.append((topic, key, value))

    def commit(self) -> None:
        if not self.pending and not self.pending_raw:
            self.session.commit()
            return
        rows = [
            BusMessage(topic=o.topic, key=o.key, value=o.message.model_dump_json(), created_at=now())
            for o in self.pending
        ] + [BusMessage(topic=t, key=k, value=v, created_at=now()) for t, k, v in self.pending_raw]
        self.pending.clear()
        self.pending_raw.clear()
        if self.session.get_bind().dialect.name == "sqlite":
            # SQLite admits one writer at a time and these rows get their ids and commit under
            # that one write lock, so ids become visible in order without OUTBOX_LOCK. Taking it
            # here would deadlock: a unit of work that has already written (a stage) holds the
            # write lock and waits for OUTBOX_LOCK, while one whose first write is this insert
            # (a submission) holds OUTBOX_LOCK and waits for the write lock -- until the busy
            # timeout fails it with "database is locked".
            self.session.add_all(rows)
            self.session.commit()
            return
        # Row locks are taken before OUTBOX_LOCK (flush), never while holding it: inside it only
        # inserts into bus_messages and COMMIT, which wait for no other transaction.
        self.session.flush()
        with OUTBOX_LOCK:
            self.session.add_all(rows)
            self.session.commit()

    def rollback(self) -> None:
        self.pending.clear()
        self.pending_raw.clear()
        self.session.rollback()

    def flush(self) -> None:
        self.session.flush()

    # -- reports -----------------------------------------------------------
    def get_report(self, report_id: str) -> Report | None:
        return self.session.get(Report, report_id)

    def report_by_idempotency_key(self, key: str) -> Report | None:
        return self.session.scalar(select(Report).where(Report.idempotency_key == key))

    def create_report(self, msg: ReportSubmitted, idempotency_key: str | None = None) -> Report:
        report = Report(
            id=msg.report_id,
            channel=msg.channel,
            description=msg.description,
            reporter_email=msg.reporter_email,
            partner_reference=msg.partner_reference,
            status="received",
            idempotency_key=idempotency_key,
            submitted_at=msg.submitted_at,
        )
        self.session.add(report)
        self.session.flush()
        return report

    def report_urls(self, report_id: str) -> Sequence[ReportUrl]:
        return self.session.scalars(
            select(ReportUrl).where(ReportUrl.report_id == report_id).order_by(ReportUrl.position)
        ).all()

    def link_report_url(
        self,
        report_id: str,
        position: int,
        url_as_reported: str,
        item_id: str | None,
        rejected_reason: str | None = None,
    ) -> None:
        self.session.add(
            ReportUrl(
                report_id=report_id,
                position=position,
                url_as_reported=url_as_reported,
                item_id=item_id,
                rejected_reason=rejected_reason,
            )
        )

    def record_rejection(self, stage: str, err: InvalidMessage) -> None:
        """Make sure a rejected report is visible as rejected, whatever stage threw it out."""
        if err.report_id is None:
            self.audit(stage, "message_rejected", "-", f"{err.code}: {err.reason}")
            return
        report = self.get_report(err.report_id)
        if report is None:
            report = Report(id=err.report_id, channel="api", status="rejected", reason=err.reason)
            self.session.add(report)
        elif report.status == "received":
            report.status = "rejected"
            report.reason = err.reason
        self.audit(stage, "report_rejected", err.report_id, f"{err.code}: {err.reason}")

    # -- items -------------------------------------------------------------
    def get_item(self, item_id: str) -> Item | None:
        return self.session.get(Item, item_id)

    def open_item_for_url(self, url: str) -> Item | None:
        item_id = self.session.scalar(select(OpenUrl.item_id).where(OpenUrl.url_sha256 == url_digest(url)))
        return None if item_id is None else self.session.get(Item, item_id)

    def create_item(self, url: str) -> Item:
        """A new open item for ``url``. Raises IntegrityError (at flush) when another worker
        just opened one for the same URL; the caller's retry then links to that item."""
        item = Item(id=uuid.uuid4().hex, url=url, state="received", reason="waiting to be classified")
        self.session.add(item)
        self.session.flush()
        self.session.add(OpenUrl(url_sha256=url_digest(url), item_id=item.id))
        self.session.flush()
        return item

    def set_state(self, item: Item, state: str, reason: str, stage: str) -> None:
        item.state = state
        item.reason = reason
        item.updated_at = now()
        self.add_event(item.id, stage, state, reason)
        if state in FINAL_STATES:
            # A closed URL reported again is new work: free the slot.
            self.session.execute(delete(OpenUrl).where(OpenUrl.item_id == item.id))

    def add_event(self, item_id: str, stage: str, kind: str, detail: str = "") -> None:
        self.session.add(ItemEvent(item_id=item_id, stage=stage, kind=kind, detail=detail, at=now()))

    def events(self, item_id: str) -> Sequence[ItemEvent]:
        return self.session.scalars(
            select(ItemEvent).where(ItemEvent.item_id == item_id).order_by(ItemEvent.id)
        ).all()

    def report_ids_for_item(self, item_id: str) -> list[str]:
        rows = self.session.scalars(
            select(ReportUrl.report_id).where(ReportUrl.item_id == item_id).distinct()
        ).all()
        return sorted(rows)

    def items_in_state(self, state: str) -> Sequence[Item]:
        return self.session.scalars(select(Item).where(Item.state == state).order_by(Item.first_seen)).all()

    # -- bank --------------------------------------------------------------
    def add_bank_entry(self, *, category: str, source: str, **hashes: str | None) -> BankEntry:
        entry = BankEntry(category=category, source=source, added_at=now(), **hashes)
        self.session.add(entry)
        self.session.flush()
        return entry

    def active_bank_entries(self) -> Sequence[BankEntry]:
        return self.session.scalars(select(BankEntry).where(BankEntry.retired_at.is_(None))).all()

    def bank_version(self) -> tuple[int, int, int]:
        """Changes whenever an entry is added or retired: (max id, count, retired count)."""
        max_id, count = self.session.execute(select(func.max(BankEntry.id), func.count(BankEntry.id))).one()
        retired = self.session.scalar(
            select(func.count(BankEntry.id)).where(BankEntry.retired_at.is_not(None))
        )
        return int(max_id or 0), int(count or 0), int(retired or 0)

    # -- notices, forwards, escalations ------------------------------------
    def get_notice(self, notice_id: str) -> Notice | None:
        return self.session.get(Notice, notice_id)

    def add_notice(self, notice: Notice) -> None:
        self.session.add(notice)

    def get_forward(self, forward_id: str) -> Forward | None:
        return self.session.get(Forward, forward_id)

    def add_forward(self, forward: Forward) -> None:
        self.session.add(forward)

    def get_escalation(self, escalation_id: str) -> Escalation | None:
        return self.session.get(Escalation, escalation_id)

    def add_escalation(self, escalation_id: str, item_id: str, payload: dict[str, Any]) -> None:
        self.session.add(Escalation(id=escalation_id, item_id=item_id, payload=payload, created_at=now()))

    def escalations(self, after: datetime | None = None) -> Sequence[Escalation]:
        q = select(Escalation).order_by(Escalation.created_at, Escalation.id)
        if after is not None:
            q = q.where(Escalation.created_at >= after)
        return self.session.scalars(q).all()

    def add_assessment(self, assessment: Assessment) -> None:
        self.session.add(assessment)

    # -- users -------------------------------------------------------------
    def add_user(self, name: str, role: str, token: str) -> User:
        user = User(name=name, role=role, token_sha256=token_digest(token), created_at=now())
        self.session.add(user)
        self.session.flush()
        return user

    def user_by_token(self, token: str) -> User | None:
        return self.session.scalar(select(User).where(User.token_sha256 == token_digest(token)))

    def user_by_name(self, name: str) -> User | None:
        return self.session.scalar(select(User).where(User.name == name))

    # -- hashcheck statistics ---------------------------------------------
    def record_hashcheck(self, user_id: int, week: str, checks: int, hits: int) -> None:
        """Add one HashCheck request's counts to the hoster's row for ``week`` (e.g. 2026-W48).

        One atomic INSERT .. ON CONFLICT DO UPDATE, so concurrent requests of the
        same hoster never lose an increment and a request costs one statement.
        """
        values = {"user_id": user_id, "week": week, "checks": checks, "hits": hits}
        dialect = self.session.get_bind().dialect.name
        if dialect == "postgresql":
            from sqlalchemy.dialects.postgresql import insert as pg_insert

            stmt = pg_insert(HashCheckStat).values(**values)
        elif dialect == "sqlite":
            from sqlalchemy.dialects.sqlite import insert as sqlite_insert

            stmt = sqlite_insert(HashCheckStat).values(**values)  # type: ignore[assignment]
        else:  # pragma: no cover - only the two supported backends run here
            raise NotImplementedError(f"no upsert for database dialect {dialect}")
        self.session.execute(
            stmt.on_conflict_do_update(
                index_elements=[HashCheckStat.user_id, HashCheckStat.week],
                set_={
                    "checks": HashCheckStat.checks + stmt.excluded.checks,
                    "hits": HashCheckStat.hits + stmt.excluded.hits,
                },
            )
        )

    def hashcheck_stats(self, user_id: int | None = None) -> list[tuple[str, str, int, int]]:
        """(week, hoster name, checks, hits) per hoster per week, oldest week first;
        only ``user_id``'s rows when given."""
        q = (
            select(HashCheckStat.week, User.name, HashCheckStat.checks, HashCheckStat.hits)
            .join(User, User.id == HashCheckStat.user_id)
            .order_by(HashCheckStat.week, User.name)
        )
        if user_id is not None:
            q = q.where(HashCheckStat.user_id == user_id)
        return [(w, n, int(c), int(h)) for w, n, c, h in self.session.execute(q)]

    # -- audit -------------------------------------------------------------
    def audit(self, actor: str, action: str, subject: str, detail: str = "") -> None:
        """Append to the hash-chained audit log (each row commits to the previous row's hash).

        Appends are serialized until commit so that two writers cannot both chain onto the
        same predecessor: on PostgreSQL with a transaction-scoped advisory lock; SQLite
        already admits one writer at a time (a stale reader fails to upgrade and retries).
        """
        if self.session.get_bind().dialect.name == "postgresql":
            self.session.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": AUDIT_LOCK_KEY})
        prev = self.session.scalar(select(AuditLog.hash).order_by(AuditLog.id.desc()).limit(1)) or "0" * 64
        at = now()
        body = json.dumps([prev, at.isoformat(), actor, action, subject, detail])
        self.session.add(
            AuditLog(
                at=at,
                actor=actor,
                action=action,
                subject=subject,
                detail=detail,
                prev_hash=prev,
                hash=hashlib.sha256(body.encode()).hexdigest(),
            )
        )
        self.session.flush()

    def verify_audit_chain(self) -> list[int]:
        """Ids of audit rows whose hash does not match their content or predecessor."""
        bad = []
        prev = "0" * 64
        for row in self.session.scalars(select(AuditLog).order_by(AuditLog.id)):
            body = json.dumps([prev, row.at.isoformat(), row.actor, row.action, row.subject, row.detail])
            if row.prev_hash != prev or row.hash != hashlib.sha256(body.encode()).hexdigest():
                bad.append(row.id)
            prev = row.hash
        return bad


