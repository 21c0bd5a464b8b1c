"""What the hotline did about an item: takedown notices, partner forwards, police
escalations and analysts' assessments."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any, cast

from sqlalchemy import Table, and_, bindparam, func, literal, or_, select, update
from sqlalchemy.orm import Session

from hotline.kernel.clock import now
from hotline.storage.deliveries import SqlForwardQueue
from hotline.storage.engine import held_row
from hotline.storage.models import Assessment, Escalation, Forward, Item, Notice

# Escalations the hold timer may release: never one on hold, never one already released.
ESCALATION_OPEN_FOR_TIMER = ("new", "received")


def new_notice(notice_id: str, item_id: str, hoster: str, abuse_email: str, message_id: str) -> Notice:
    return Notice(
        id=notice_id, item_id=item_id, hoster=hoster, abuse_email=abuse_email, message_id=message_id,
        status="sending", created_at=now(),
    )


def new_forward(forward_id: str, item_id: str, country: str, partner: str) -> Forward:
    return Forward(id=forward_id, item_id=item_id, country=country, partner=partner, status="pending", attempts=0)


class SqlNotices:
    def __init__(self, session: Session) -> None:
        self.session = session

    def get(self, notice_id: str) -> Notice | None:
        return self.session.get(Notice, notice_id)

    def look_up(self, notice_id: str, abuse_email: str, item_id: str) -> tuple[Notice | None, list[Notice], bool]:
        """``get``, ``held_for`` and "is the item stored" in one statement (notify asks all three
        of every new notice; three statements before)."""
        rows = self.session.execute(_LOOK_UP, {"id": notice_id, "email": abuse_email, "item": item_id}).all()
        found = [n for _, n in rows if n is not None]
        notice = next((n for n in found if n.id == notice_id), None)
        held = [n for n in found if n.status == "grouped" and n.abuse_email == abuse_email]
        return notice, held, bool(rows) and rows[0][0] is not None

    def reserve(self, notice_id: str, item_id: str, hoster: str, abuse_email: str, message_id: str) -> Notice:
        notice = new_notice(notice_id, item_id, hoster, abuse_email, message_id)
        self.session.add(notice)
        return notice

    def mark_sent(self, notice_id: str, at: datetime) -> bool:
        """Set the notice ``sent`` at ``at``; whether it exists. A notice this session holds is
        changed in place (flushed with the rest); otherwise by one ``UPDATE``, without loading
        the row first (notify's record step has the notice's id, not its row)."""
        held = held_row(self.session, Notice, notice_id)
        if held is not None:
            held.status, held.sent_at = "sent", at
            return True
        return bool(self.session.execute(_MARK_SENT, {"notice_id": notice_id, "sent": at}).rowcount)  # type: ignore[attr-defined]

    def lock(self, notice_id: str) -> Notice | None:
        q = select(Notice).where(Notice.id == notice_id).with_for_update()
        return self.session.scalars(q.execution_options(populate_existing=True)).first()

    def for_item(self, item_id: str) -> Sequence[Notice]:
        q = select(Notice).where(Notice.item_id == item_id).order_by(Notice.created_at, Notice.id)
        return self.session.scalars(q).all()

    def in_status(self, *statuses: str) -> Sequence[Notice]:
        q = select(Notice).where(Notice.status.in_(statuses)).order_by(Notice.created_at, Notice.id)
        return self.session.scalars(q).all()

    def last_sent_to(self, abuse_email: str) -> datetime | None:
        q = select(func.max(Notice.sent_at)).where(Notice.abuse_email == abuse_email, Notice.status == "sent")
        latest: datetime | None = self.session.scalar(q)
        return latest

    def held_for(self, abuse_email: str) -> Sequence[Notice]:
        q = (select(Notice).where(Notice.abuse_email == abuse_email, Notice.status == "grouped")
             .order_by(Notice.created_at, Notice.id))
        return self.session.scalars(q).all()

    def in_group(self, message_id: str) -> Sequence[Notice]:
        q = select(Notice).where(Notice.message_id == message_id).order_by(Notice.created_at, Notice.id)
        return self.session.scalars(q).all()

    def claim_held(self, at: datetime, until: datetime, limit: int) -> list[Notice]:
        q = (select(Notice).where(Notice.status == "grouped", Notice.held_until <= at)
             .order_by(Notice.held_until, Notice.created_at, Notice.id).limit(limit))
        if self.session.get_bind().dialect.name == "postgresql":
            q = q.with_for_update(skip_locked=True)
        taken = list(self.session.scalars(q).all())
        for notice in taken:
            notice.held_until = until
        return taken


NOTICES = cast(Table, Notice.__table__)  # for Core statements
_ONE_ROW = select(literal(1).label("one")).subquery()
_LOOK_UP = (
    # One row at least (the outer join from a one-row table), carrying whether the item exists,
    # with the notice and the notices held for its address, if any, oldest first.
    select(select(Item.id).where(Item.id == bindparam("item")).scalar_subquery().label("known"), Notice)
    .select_from(_ONE_ROW)
    .outerjoin(Notice, or_(Notice.id == bindparam("id"),
                           and_(Notice.abuse_email == bindparam("email"), Notice.status == "grouped")))
    .order_by(Notice.created_at, Notice.id)
)
_MARK_SENT = (update(NOTICES).where(NOTICES.c.id == bindparam("notice_id"))
              .values(status="sent", sent_at=bindparam("sent", type_=NOTICES.c.sent_at.type)))


class SqlForwards(SqlForwardQueue):
    def __init__(self, session: Session) -> None:
        self.session = session

    def get(self, forward_id: str) -> Forward | None:
        return self.session.get(Forward, forward_id)

    def open(self, forward_id: str, item_id: str, country: str, partner: str) -> Forward:
        forward = new_forward(forward_id, item_id, country, partner)
        self.session.add(forward)
        return forward


class SqlEscalations:
    def __init__(self, session: Session) -> None:
        self.session = session

    def add(
        self, escalation_id: str, item_id: str, payload: dict[str, Any], release_due_at: datetime | None = None,
    ) -> None:
        self.session.add(Escalation(id=escalation_id, item_id=item_id, payload=payload, created_at=now(),
                                    state="new", release_due_at=release_due_at))

    def add_released(self, escalation_id: str, item_id: str, payload: dict[str, Any], by: str, outcome: str) -> None:
        at = now()
        self.session.add(Escalation(id=escalation_id, item_id=item_id, payload=payload, created_at=at,
                                    state="released", released_at=at, released_by=by, outcome=outcome))

    def since(self, after: datetime | None = None) -> Sequence[Escalation]:
        q = select(Escalation).order_by(Escalation.created_at, Escalation.id)
        if after is not None:
            q = q.where(Escalation.created_at >= after)
        return self.session.scalars(q).all()

    def get(self, escalation_id: str) -> Escalation | None:
        return self.session.get(Escalation, escalation_id)

    def lock(self, escalation_id: str) -> Escalation | None:
        q = select(Escalation).where(Escalation.id == escalation_id).with_for_update()
        return self.session.scalars(q.execution_options(populate_existing=True)).first()

    def newest(self, limit: int = 200, start: datetime | None = None, end: datetime | None = None) -> Sequence[Escalation]:
        q = select(Escalation).order_by(Escalation.created_at.desc(), Escalation.id.desc()).limit(limit)
        if start is not None:
            q = q.where(Escalation.created_at >= start)
        if end is not None:
            q = q.where(Escalation.created_at < end)
        return self.session.scalars(q).all()

    def claim_due(self, at: datetime, limit: int) -> list[Escalation]:
        q = (select(Escalation).where(Escalation.state.in_(ESCALATION_OPEN_FOR_TIMER),
                                      Escalation.release_due_at.is_not(None), Escalation.release_due_at <= at)
             .order_by(Escalation.release_due_at, Escalation.id).limit(limit))
        if self.session.get_bind().dialect.name == "postgresql":
            q = q.with_for_update(skip_locked=True)
        return list(self.session.scalars(q).all())


class SqlAssessments:
    def __init__(self, session: Session) -> None:
        self.session = session

    def add(
        self, item_id: str, analyst: str, verdict: str, category: str | None, notes: str | None, *,
        images: list[Any] | None = None, answers: list[Any] | None = None,
        bank_entry_ids: list[int] | None = None, replaces_id: int | None = None,
    ) -> Assessment:
        row = Assessment(item_id=item_id, analyst=analyst, verdict=verdict, category=category, notes=notes, at=now(),
                         images=images, answers=answers, bank_entry_ids=bank_entry_ids, replaces_id=replaces_id)
        self.session.add(row)
        self.session.flush()
        return row

    def latest(self, item_id: str) -> Assessment | None:
        return self.session.scalars(
            select(Assessment).where(Assessment.item_id == item_id).order_by(Assessment.id.desc()).limit(1)
        ).first()

