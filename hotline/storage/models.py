"""The tables. Image bytes never appear here: only hashes and metadata.

Both SQLite (embedded) and PostgreSQL (distributed) run these models; the
Alembic migrations in ``hotline/storage/migrations`` create them.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import JSON, BigInteger, DateTime, ForeignKey, Index, Integer, String, Text
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from sqlalchemy.types import TypeDecorator

from hotline.kernel import clock


class UTCDateTime(TypeDecorator[datetime]):
    """Timezone-aware datetimes on both backends (SQLite forgets the zone otherwise)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is not None:  # SQLite stores the wall-clock time and drops the offset
            value = value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)
        return value

    def process_result_value(self, value: datetime | None, dialect: Any) -> datetime | None:
        # Always UTC when read: PostgreSQL answers in the session's TimeZone, and the audit
        # chain hashes ``at.isoformat()``, which must not depend on the server's setting.
        if value is not None:
            value = value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)
        return value


def utcnow() -> datetime:
    return clock.now()


class Base(DeclarativeBase):
    type_annotation_map = {datetime: UTCDateTime, dict[str, Any]: JSON, list[Any]: JSON}


class Report(Base):
    __tablename__ = "reports"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    channel: Mapped[str] = mapped_column(String(16))
    description: Mapped[str | None] = mapped_column(Text)
    reporter_email: Mapped[str | None] = mapped_column(String(320))
    partner_reference: Mapped[str | None] = mapped_column(String(200))
    # The partner hotline that forwarded this report to us (its account's country): status
    # updates on the report go back to it (``services.partners``).
    partner_country: Mapped[str | None] = mapped_column(String(2))
    status: Mapped[str] = mapped_column(String(16), default="received")  # received|accepted|rejected
    reason: Mapped[str | None] = mapped_column(Text)
    idempotency_key: Mapped[str | None] = mapped_column(String(200), unique=True)
    submitted_at: Mapped[datetime] = mapped_column(default=utcnow)


class Item(Base):
    __tablename__ = "items"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    url: Mapped[str] = mapped_column(Text)
    state: Mapped[str] = mapped_column(String(32), default="received")
    reason: Mapped[str] = mapped_column(Text, default="")
    country: Mapped[str | None] = mapped_column(String(2))
    hoster: Mapped[str | None] = mapped_column(String(200))
    classification: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    first_seen: Mapped[datetime] = mapped_column(default=utcnow)
    last_seen: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)
    # The analyst lease (services/assessment/queue.py): who works on the item until when; an
    # expired lease is as good as none, so a closed browser never locks an item for long.
    claimed_by: Mapped[str | None] = mapped_column(String(100))
    claimed_until: Mapped[datetime | None] = mapped_column(index=True)

    __table_args__ = (Index("ix_items_url", "url"),)


class OpenUrl(Base):
    """At most one open item per normalized URL, enforced by the primary key, so two ingest
    workers racing on the same URL cannot both create an item (the loser retries and links)."""

    __tablename__ = "open_urls"

    url_sha256: Mapped[str] = mapped_column(String(64), primary_key=True)
    item_id: Mapped[str] = mapped_column(ForeignKey("items.id"), unique=True)


class ReportUrl(Base):
    """Each URL a report named: linked to its item, or rejected with the reason."""

    __tablename__ = "report_urls"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    report_id: Mapped[str] = mapped_column(ForeignKey("reports.id"), index=True)
    position: Mapped[int] = mapped_column(Integer)
    url_as_reported: Mapped[str] = mapped_column(Text)
    item_id: Mapped[str | None] = mapped_column(ForeignKey("items.id"), index=True)
    rejected_reason: Mapped[str | None] = mapped_column(Text)


class ItemEvent(Base):
    """The timeline of an item, shown to analysts and admins."""

    __tablename__ = "item_events"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    item_id: Mapped[str] = mapped_column(ForeignKey("items.id"), index=True)
    stage: Mapped[str] = mapped_column(String(32))
    kind: Mapped[str] = mapped_column(String(32))
    detail: Mapped[str] = mapped_column(Text, default="")
    at: Mapped[datetime] = mapped_column(default=utcnow)


class ItemImage(Base):
    """One image an item showed, by its SHA-256 (never its bytes): the same image reported
    through different URLs is linked ("also seen at"), so an analyst decides once."""

    __tablename__ = "item_images"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    item_id: Mapped[str] = mapped_column(ForeignKey("items.id"), index=True)
    sha256: Mapped[str] = mapped_column(String(64), index=True)
    url: Mapped[str] = mapped_column(Text)
    at: Mapped[datetime] = mapped_column(default=utcnow)


class BankEntry(Base):
    """A known hash set (any subset of the five types). Retired entries keep their reason."""

    __tablename__ = "bank_entries"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    md5: Mapped[str | None] = mapped_column(String(32), index=True)
    sha1: Mapped[str | None] = mapped_column(String(40), index=True)
    sha256: Mapped[str | None] = mapped_column(String(64), index=True)
    pdq: Mapped[str | None] = mapped_column(String(64))
    phash: Mapped[str | None] = mapped_column(String(16))
    category: Mapped[str] = mapped_column(String(32), default="baseline")
    source: Mapped[str] = mapped_column(String(200), default="")
    added_at: Mapped[datetime] = mapped_column(default=utcnow)
    retired_at: Mapped[datetime | None] = mapped_column(index=True)
    retired_reason: Mapped[str | None] = mapped_column(Text)


class Notice(Base):
    """A takedown notice. ``status`` goes sending -> sent; a notice found in ``sending`` after a
    crash is never re-sent automatically (the hoster may already have it): it is marked
    ``delivery_unknown`` for an operator to check against the SMTP log by Message-ID.

    Grouping (``HOTLINE_NOTICE_GROUP_SECONDS``, ``services.notify.stage``): a notice held to go
    out with others to the same abuse address is ``grouped``, keeps its ``TakedownNotice`` in
    ``payload`` and is due at ``held_until``; the notices of one e-mail share its
    ``message_id``."""

    __tablename__ = "notices"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    item_id: Mapped[str] = mapped_column(ForeignKey("items.id"), index=True)
    hoster: Mapped[str] = mapped_column(String(200))
    abuse_email: Mapped[str] = mapped_column(String(320))
    message_id: Mapped[str] = mapped_column(String(200))
    status: Mapped[str] = mapped_column(String(32), default="sending")
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    sent_at: Mapped[datetime | None] = mapped_column()
    held_until: Mapped[datetime | None] = mapped_column(index=True)  # grouped: due then
    payload: Mapped[dict[str, Any] | None] = mapped_column(JSON)  # grouped: its TakedownNotice

    __table_args__ = (Index("ix_notices_abuse_email", "abuse_email"),)


class Forward(Base):
    """A forward to a partner hotline abroad, and the durable queue of its delivery.

    ``status``: ``pending`` (not delivered yet: attempted again at ``next_attempt_at``,
    doubling the wait after each failure, for as long as it takes), ``sent`` (the partner
    answered 2xx), ``refused`` (the partner refused for good, e.g. HTTP 403: an operator
    fixes the credentials and retries it). ``payload`` is the ``forwards.partner`` message,
    so every attempt sends the same bytes with the same ``Idempotency-Key`` (the id).
    ``partner_status`` is the last ICCAM action code the partner reported back."""

    __tablename__ = "forwards"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    item_id: Mapped[str] = mapped_column(ForeignKey("items.id"), index=True)
    country: Mapped[str] = mapped_column(String(2))
    partner: Mapped[str] = mapped_column(String(200))
    status: Mapped[str] = mapped_column(String(32), default="pending")
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    last_error: Mapped[str | None] = mapped_column(Text)
    sent_at: Mapped[datetime | None] = mapped_column()
    payload: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    created_at: Mapped[datetime | None] = mapped_column()
    next_attempt_at: Mapped[datetime | None] = mapped_column(index=True)  # pending: due then
    dispatched_at: Mapped[datetime | None] = mapped_column()  # an attempt was handed to the stage
    partner_status: Mapped[str | None] = mapped_column(String(8))
    partner_status_at: Mapped[datetime | None] = mapped_column()


class ForwardStatus(Base):
    """What a partner hotline reported back about one forward (ICCAM action code), in order."""

    __tablename__ = "forward_statuses"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    forward_id: Mapped[str] = mapped_column(ForeignKey("forwards.id"), index=True)
    action: Mapped[str] = mapped_column(String(8))
    note: Mapped[str | None] = mapped_column(Text)
    by: Mapped[str] = mapped_column(String(100))
    at: Mapped[datetime] = mapped_column(default=utcnow)


class PartnerUpdate(Base):
    """A status update to send back to the partner hotline that forwarded a report to us
    (acknowledged, notice sent, removed, ...), delivered like a forward: ``pending`` until
    the partner's ``status_endpoint`` answers 2xx, retried with back-off, in order per
    report. The id is deterministic (report, item, step), so a step is sent once."""

    __tablename__ = "partner_updates"

    id: Mapped[str] = mapped_column(String(160), primary_key=True)
    country: Mapped[str] = mapped_column(String(2), index=True)
    report_id: Mapped[str] = mapped_column(ForeignKey("reports.id"), index=True)
    item_id: Mapped[str | None] = mapped_column(String(64))
    action: Mapped[str] = mapped_column(String(16))
    payload: Mapped[dict[str, Any]] = mapped_column(JSON)
    status: Mapped[str] = mapped_column(String(32), default="pending")
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    last_error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    next_attempt_at: Mapped[datetime | None] = mapped_column(index=True)
    dispatched_at: Mapped[datetime | None] = mapped_column()
    sent_at: Mapped[datetime | None] = mapped_column()


class Escalation(Base):
    """Every ``escalations.police`` message, and what the police did with it.

    ``state``: ``new`` (sent to the police), ``received`` (the police acknowledged it),
    ``on_hold`` (the police keep the takedown back, ``hold_reason`` says why), ``released``
    (the takedown may go: ``released_by`` is a police account, or ``hold-timer`` when
    ``release_due_at`` passed without a hold). Released is final. ``outcome`` records what
    the release produced (the notice or forward id, or why neither was possible)."""

    __tablename__ = "escalations"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    item_id: Mapped[str] = mapped_column(ForeignKey("items.id"), index=True)
    payload: Mapped[dict[str, Any]] = mapped_column(JSON)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    state: Mapped[str] = mapped_column(String(16), default="new", index=True)
    received_at: Mapped[datetime | None] = mapped_column()
    received_by: Mapped[str | None] = mapped_column(String(100))
    held_at: Mapped[datetime | None] = mapped_column()
    held_by: Mapped[str | None] = mapped_column(String(100))
    hold_reason: Mapped[str | None] = mapped_column(Text)
    released_at: Mapped[datetime | None] = mapped_column()
    released_by: Mapped[str | None] = mapped_column(String(100))
    release_due_at: Mapped[datetime | None] = mapped_column(index=True)  # HOTLINE_POLICE_HOLD_SECONDS
    outcome: Mapped[str | None] = mapped_column(Text)


class Assessment(Base):
    __tablename__ = "assessments"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    item_id: Mapped[str] = mapped_column(ForeignKey("items.id"), index=True)
    analyst: Mapped[str] = mapped_column(String(100))
    verdict: Mapped[str] = mapped_column(String(16))
    category: Mapped[str | None] = mapped_column(String(32))
    notes: Mapped[str | None] = mapped_column(Text)
    at: Mapped[datetime] = mapped_column(default=utcnow)
    # Per image: {"sha256", "url", ICCAM's fields, "xarf"} (services/assessment/classification.py);
    # None for a decision on the whole item only (the old API body).
    images: Mapped[list[Any] | None] = mapped_column(JSON)
    # The answers to the hotline's own questions: [{"id", "label", "value"}].
    answers: Mapped[list[Any] | None] = mapped_column(JSON)
    # The bank entries this decision added (retired when a senior analyst reverses it).
    bank_entry_ids: Mapped[list[Any] | None] = mapped_column(JSON)
    # A senior analyst's change: the assessment it replaces (the newest row is the decision).
    replaces_id: Mapped[int | None] = mapped_column(Integer)


class User(Base):
    """An account; only the SHA-256 of its API token is stored."""

    __tablename__ = "users"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    name: Mapped[str] = mapped_column(String(100), unique=True)
    role: Mapped[str] = mapped_column(String(16))
    country: Mapped[str | None] = mapped_column(String(2))  # a partner account's country
    token_sha256: Mapped[str] = mapped_column(String(64), unique=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class HashCheckStat(Base):
    """Per-hoster HashCheck usage per ISO week (checks and hits), for the monitor."""

    __tablename__ = "hashcheck_stats"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id"), index=True)
    week: Mapped[str] = mapped_column(String(10))  # e.g. 2026-W48
    checks: Mapped[int] = mapped_column(BigInteger, default=0)
    hits: Mapped[int] = mapped_column(BigInteger, default=0)

    __table_args__ = (Index("ux_hashcheck_user_week", "user_id", "week", unique=True),)


class AuditLog(Base):
    """Append-only audit trail; each row's hash covers the previous row's, so tampering shows."""

    __tablename__ = "audit_log"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    at: Mapped[datetime] = mapped_column(default=utcnow)
    actor: Mapped[str] = mapped_column(String(100))
    action: Mapped[str] = mapped_column(String(64))
    subject: Mapped[str] = mapped_column(String(200))
    detail: Mapped[str] = mapped_column(Text, default="")
    prev_hash: Mapped[str] = mapped_column(String(64))
    hash: Mapped[str] = mapped_column(String(64))


class BusMessage(Base):
    """The embedded runtime's topic log: durable, so a crash of the single process loses nothing."""

    __tablename__ = "bus_messages"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    topic: Mapped[str] = mapped_column(String(100), index=True)
    key: Mapped[str] = mapped_column(Text, default="")
    value: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class BusOffset(Base):
    """How far each embedded stage has consumed each topic (committed with the stage's effects)."""

    __tablename__ = "bus_offsets"

    consumer: Mapped[str] = mapped_column(String(64), primary_key=True)
    topic: Mapped[str] = mapped_column(String(100), primary_key=True)
    position: Mapped[int] = mapped_column(Integer, default=0)


class Followup(Base):
    """After a notice: one row per item whose takedown notice was sent, re-checked until the
    content is gone, with the reminder and ladder steps it has had (``services.followup``).

    The facts the public monitor computes time to removal from, kept simple on purpose:

    - ``first_notice_at``: when the first notice was sent (``Notice.sent_at``);
    - ``first_report_at``: when the URL was first reported (``Item.first_seen``), the start
      INHOPE counts from;
    - ``removed_at``: when the content was found gone (the first check that saw it gone,
      confirmed by a second shortly after); null while it is online;
    - ``hoster`` and ``country``: the item's hoster and hosting country at notice time.

    Time to removal is ``removed_at - first_notice_at`` (and ``- first_report_at``);
    ``status`` is ``new`` (opened by notify, not yet scheduled: the scheduler sets its first
    check), ``open`` (being re-checked), ``removed``, or ``moved`` (the content is served
    from another hoster now: no more checks or steps, ``removed_at`` stays null; the row
    starts over when the notice to that hoster is sent). The scheduler's work list is
    ``next_check_at <= now`` (indexed; null once removed), claimed by setting
    ``dispatched_at`` when a ``rechecks.due`` message for that due time is published.
    """

    __tablename__ = "followups"

    item_id: Mapped[str] = mapped_column(ForeignKey("items.id"), primary_key=True)
    notice_id: Mapped[str] = mapped_column(String(64))
    url: Mapped[str] = mapped_column(Text)
    hoster: Mapped[str] = mapped_column(String(200))
    country: Mapped[str | None] = mapped_column(String(2))
    abuse_email: Mapped[str] = mapped_column(String(320))
    # Hashes of the images the notice named (never bytes): [{"url", "sha256", "md5", "pdq"}].
    matched: Mapped[list[Any]] = mapped_column(JSON, default=list)
    status: Mapped[str] = mapped_column(String(16), default="new", index=True)  # new | open | removed | moved
    first_report_at: Mapped[datetime] = mapped_column()
    first_notice_at: Mapped[datetime] = mapped_column()
    next_check_at: Mapped[datetime | None] = mapped_column(index=True)  # null: new, or removed
    dispatched_at: Mapped[datetime | None] = mapped_column()
    checks: Mapped[int] = mapped_column(Integer, default=0)
    misses: Mapped[int] = mapped_column(Integer, default=0)  # consecutive "gone" results
    first_gone_at: Mapped[datetime | None] = mapped_column()
    last_result: Mapped[str | None] = mapped_column(String(16))  # online|gone|changed|unreachable
    last_checked_at: Mapped[datetime | None] = mapped_column()
    step: Mapped[int] = mapped_column(Integer, default=0)  # steps taken: 1 = the reminder, 2.. ladder
    last_step_at: Mapped[datetime | None] = mapped_column()
    step_pending: Mapped[int | None] = mapped_column(Integer, index=True)  # a step decided, not yet done
    step_dispatched_at: Mapped[datetime | None] = mapped_column()
    removed_at: Mapped[datetime | None] = mapped_column()
    removal_reason: Mapped[str | None] = mapped_column(Text)
    # The ladder's contacts from the notice's hosting facts (RDAP: the parent network's and the
    # registrar's abuse desks; the hosting file's ``upstream``), null when no look-up found them.
    upstream_abuse: Mapped[str | None] = mapped_column(String(320))
    registrar_abuse: Mapped[str | None] = mapped_column(String(320))

    __table_args__ = (Index("ix_followups_hoster", "hoster"),)


class FollowupStep(Base):
    """One reminder or ladder step of a follow-up (id ``<item id>:<position>``). Like a notice,
    ``sending`` is committed before the SMTP conversation; a step found still ``sending``
    after a crash is never re-sent (``delivery_unknown``). ``skipped`` steps name why."""

    __tablename__ = "followup_steps"

    id: Mapped[str] = mapped_column(String(100), primary_key=True)
    item_id: Mapped[str] = mapped_column(ForeignKey("items.id"), index=True)
    position: Mapped[int] = mapped_column(Integer)
    kind: Mapped[str] = mapped_column(String(32))  # reminder | upstream | registrar | authority
    recipient: Mapped[str | None] = mapped_column(String(320))
    message_id: Mapped[str | None] = mapped_column(String(200))
    status: Mapped[str] = mapped_column(String(32), default="sending")
    reason: Mapped[str] = mapped_column(Text, default="")
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    sent_at: Mapped[datetime | None] = mapped_column()


class HostingCacheEntry(Base):
    """One cached hosting fact (the architecture's "hosting cache"): a DNS answer or an RDAP
    answer, under a key such as ``dns:images.hoster-a.test`` or ``rdap-ip:2001:db8::1``, kept
    until ``expires_at`` (``HOTLINE_HOSTING_CACHE_SECONDS`` after ``looked_up_at``). ``value``
    is the fact as JSON (addresses, or the parsed RDAP facts), never a raw response body."""

    __tablename__ = "hosting_cache"

    key: Mapped[str] = mapped_column(String(400), primary_key=True)
    value: Mapped[dict[str, Any]] = mapped_column(JSON)
    source: Mapped[str] = mapped_column(String(32))  # dns | rdap
    looked_up_at: Mapped[datetime] = mapped_column()
    expires_at: Mapped[datetime] = mapped_column(index=True)


class Rejection(Base):
    """The operators' copy of every ``reports.rejected`` message (original payload, stage,
    reason), written with it in the same transaction (``SqlUnitOfWork.enqueue``), so the
    operators' page can show it and resolve it: resubmit a fixed report, re-drive a parked
    message (``reason_code == "processing_failed"``), or dismiss it."""

    __tablename__ = "rejections"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    at: Mapped[datetime] = mapped_column(default=utcnow)
    stage: Mapped[str] = mapped_column(String(32))
    source_topic: Mapped[str | None] = mapped_column(String(100))
    report_id: Mapped[str | None] = mapped_column(String(64), index=True)
    item_id: Mapped[str | None] = mapped_column(String(64))
    reason_code: Mapped[str] = mapped_column(String(64))
    reason: Mapped[str] = mapped_column(Text, default="")
    payload: Mapped[Any] = mapped_column(JSON, nullable=True)
    resolved_at: Mapped[datetime | None] = mapped_column(index=True)
    resolved_by: Mapped[str | None] = mapped_column(String(100))
    resolution: Mapped[str | None] = mapped_column(Text)
