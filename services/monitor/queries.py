"""The rows the monitor and the annual statistics are computed from, read through SQLAlchemy
from the recorded states (notices, the items' timelines, reports, assessments, forwards,
escalations): no second bookkeeping, nothing written."""

from __future__ import annotations

from datetime import UTC, datetime

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from hotline.storage.models import Assessment, Escalation, Forward, Item, ItemEvent, Notice, Report
from services.monitor.annual import AnnualRows, AssessedItem, ReportRow
from services.monitor.figures import UNKNOWN_HOSTER, NoticedItem

REMOVED_EVENT = "removed"
MOVED_EVENT = "moved"  # the content moved to another hoster (services.followup): no removal
SENT = "sent"


def noticed_items(session: Session, since: datetime | None = None, until: datetime | None = None) -> list[NoticedItem]:
    """Every item with a sent notice (first notice in ``[since, until)`` when given), with the
    hoster of its earliest sent notice and its earliest ``removed`` event. An item whose
    content moved to another hoster is not removed by the hoster noticed first: a removal
    after the move (the new hoster's) does not count as that hoster's."""
    first = (
        select(Notice.item_id, func.min(Notice.sent_at).label("first_notice"))
        .where(Notice.status == SENT, Notice.sent_at.is_not(None))
        .group_by(Notice.item_id)
        .subquery()
    )
    removed = (
        select(ItemEvent.item_id, func.min(ItemEvent.at).label("removed_at"))
        .where(ItemEvent.kind == REMOVED_EVENT)
        .group_by(ItemEvent.item_id)
        .subquery()
    )
    moved = (
        select(ItemEvent.item_id, func.min(ItemEvent.at).label("moved_at"))
        .where(ItemEvent.kind == MOVED_EVENT)
        .group_by(ItemEvent.item_id)
        .subquery()
    )
    q = (
        select(Item.id, Item.url, Item.hoster, Item.country, Item.state, Item.first_seen,
               first.c.first_notice, removed.c.removed_at, moved.c.moved_at)
        .join(first, first.c.item_id == Item.id)
        .outerjoin(removed, removed.c.item_id == Item.id)
        .outerjoin(moved, moved.c.item_id == Item.id)
    )
    if since is not None:
        q = q.where(first.c.first_notice >= since)
    if until is not None:
        q = q.where(first.c.first_notice < until)
    rows = session.execute(q).all()
    # The hoster noticed first (an image has its own hoster; later notices may climb a ladder).
    noticed: dict[str, str] = {}
    for item_id, hoster in session.execute(
        select(Notice.item_id, Notice.hoster)
        .where(Notice.status == SENT, Notice.sent_at.is_not(None))
        .order_by(Notice.sent_at.desc(), Notice.id.desc())
    ):
        noticed[item_id] = hoster  # the last write per item is its earliest notice
    return [
        NoticedItem(
            item_id=item_id, url=url, hoster=noticed.get(item_id) or hoster or UNKNOWN_HOSTER,
            country=country, state=state, first_seen=_utc(first_seen), first_notice=_utc(first_notice),
            removed_at=None if removed_at is None or moved_at is not None else _utc(removed_at),
        )
        for item_id, url, hoster, country, state, first_seen, first_notice, removed_at, moved_at in rows
    ]


def _utc(value: datetime | str) -> datetime:
    """Aggregates (min) over SQLite may come back as text; columns come back aware (UTC)."""
    if isinstance(value, str):
        value = datetime.fromisoformat(value)
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def annual_rows(session: Session, year: int) -> AnnualRows:
    """What the annual statistics of ``year`` (UTC) are computed from."""
    start, end = datetime(year, 1, 1, tzinfo=UTC), datetime(year + 1, 1, 1, tzinfo=UTC)
    reports = [
        ReportRow(channel, _utc(at))
        for channel, at in session.execute(
            select(Report.channel, Report.submitted_at).where(Report.submitted_at >= start, Report.submitted_at < end)
        )
    ]
    # The items first reported this year, each with the verdict of its latest assessment
    # (whenever it was made: a report of 31 December may be assessed in January).
    in_year = (Item.first_seen >= start) & (Item.first_seen < end)
    verdicts: dict[str, str] = {}
    for item_id, verdict in session.execute(
        select(Assessment.item_id, Assessment.verdict)
        .join(Item, Item.id == Assessment.item_id)
        .where(in_year)
        .order_by(Assessment.at, Assessment.id)
    ):
        verdicts[item_id] = verdict
    items = [
        AssessedItem(
            country=country,
            known=bool((classification or {}).get("known")),
            analyst_verdict=verdicts.get(item_id),
        )
        for item_id, country, classification in session.execute(
            select(Item.id, Item.country, Item.classification).where(in_year)
        )
    ]
    forwards = [
        partner
        for (partner,) in session.execute(
            select(Forward.partner).where(Forward.status == SENT, Forward.sent_at >= start, Forward.sent_at < end)
        )
    ]
    escalations = [
        _utc(at)
        for (at,) in session.execute(
            select(Escalation.created_at).where(Escalation.created_at >= start, Escalation.created_at < end)
        )
    ]
    return AnnualRows(
        year=year,
        reports=reports,
        items=items,
        forwards=forwards,
        escalations=escalations,
        noticed=noticed_items(session, start, end),
    )
