"""Follow-ups after a notice: the re-check schedule of each item with a sent notice, and the
reminder/ladder steps it had (``models.Followup``, ``models.FollowupStep``).

``claim_due`` is the scheduler's work list: follow-ups whose ``next_check_at`` has come and
that no scheduler has dispatched yet (or dispatched so long ago, ``stale_before``, that its
message must have been lost), oldest first, at most ``limit``, and at most ``per_hoster``
in flight per hoster. On PostgreSQL the rows are read ``FOR UPDATE SKIP LOCKED``, so two
scheduler processes never claim the same one; SQLite has one writer at a time anyway.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from datetime import datetime
from typing import Any, Protocol, TypeVar, cast

from sqlalchemy import Table, func, inspect, select
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.orm import Session

from hotline.kernel.clock import now
from hotline.storage.models import Followup, FollowupStep


def new_followup(
    item_id: str, notice_id: str, url: str, hoster: str, country: str | None, abuse_email: str,
    matched: list[dict[str, Any]], first_report_at: datetime, first_notice_at: datetime,
    upstream_abuse: str | None = None, registrar_abuse: str | None = None,
) -> Followup:
    return Followup(
        item_id=item_id, notice_id=notice_id, url=url, hoster=hoster, country=country, abuse_email=abuse_email,
        matched=matched, status="new", first_report_at=first_report_at, first_notice_at=first_notice_at,
        next_check_at=None, dispatched_at=None, checks=0, misses=0, step=0,
        upstream_abuse=upstream_abuse, registrar_abuse=registrar_abuse,
    )


def reopen(existing: Followup, new: Followup) -> Followup:
    """The row of a follow-up whose content moved (status ``moved``) starts over for the notice
    to the hoster it moved to: that hoster's own first notice time, hashes, checks and steps
    (step ids name the notice, ``services.followup.mail.step_id``). ``first_report_at`` stays.
    A follow-up in any other state, or the same notice again, keeps its row."""
    if existing.status != "moved" or existing.notice_id == new.notice_id:
        return existing
    for name in ("notice_id", "url", "hoster", "country", "abuse_email", "matched", "status", "first_notice_at",
                 "next_check_at", "dispatched_at", "checks", "misses", "first_gone_at", "last_result",
                 "last_checked_at", "step", "step_pending", "step_dispatched_at", "last_step_at", "removed_at",
                 "removal_reason", "upstream_abuse", "registrar_abuse"):
        setattr(existing, name, getattr(new, name))
    return existing


def new_step(step_id: str, item_id: str, position: int, kind: str, recipient: str | None,
             message_id: str | None, status: str, reason: str = "") -> FollowupStep:
    return FollowupStep(
        id=step_id, item_id=item_id, position=position, kind=kind, recipient=recipient, message_id=message_id,
        status=status, reason=reason, created_at=now(),
    )


class _HasHoster(Protocol):
    @property
    def hoster(self) -> str: ...


C = TypeVar("C", bound=_HasHoster)


def pick_within_cap(candidates: Sequence[C], in_flight: Counter[str], per_hoster: int, limit: int) -> list[C]:
    """The candidates (oldest first) that keep every hoster at ``per_hoster`` checks in flight."""
    taken: list[C] = []
    load = Counter(in_flight)
    for f in candidates:
        if len(taken) >= limit:
            break
        if per_hoster > 0 and load[f.hoster] >= per_hoster:
            continue
        load[f.hoster] += 1
        taken.append(f)
    return taken


FOLLOWUPS = cast(Table, Followup.__table__)  # for Core statements


class SqlFollowups:
    def __init__(self, session: Session) -> None:
        self.session = session

    def get(self, item_id: str) -> Followup | None:
        return self.session.get(Followup, item_id)

    def get_for_update(self, item_id: str) -> Followup | None:
        """The row, locked until the transaction ends on PostgreSQL (SQLite has one writer at a
        time anyway). In READ COMMITTED a second locker waits, then reads the committed row."""
        if self.session.get_bind().dialect.name == "postgresql":
            return self.session.get(Followup, item_id, with_for_update=True)
        return self.session.get(Followup, item_id)

    def get_many_for_update(self, item_ids: Sequence[str]) -> dict[str, Followup]:
        ids = sorted(set(item_ids))
        if not ids:
            return {}
        query = (select(Followup).where(Followup.item_id.in_(ids)).order_by(Followup.item_id)
                 .execution_options(populate_existing=True))
        if self.session.get_bind().dialect.name == "postgresql":
            query = query.with_for_update()
        return {f.item_id: f for f in self.session.scalars(query).all()}

    def open(self, followup: Followup) -> Followup:
        """Start following an item up; an item already followed up keeps its row (``reopen``).

        PostgreSQL: the new row goes in by ``INSERT ... ON CONFLICT DO NOTHING``, one statement
        for the usual case (an item's first notice), where looking the row up and then
        inserting it took two; only an item already followed up has its row loaded (and
        ``reopen``-ed), as before. A row inserted so is not tracked by this session (``get``
        loads it); ``followup`` is returned as what was stored. On a row being opened at the
        same moment by another transaction the insert waits for it, then finds the conflict."""
        if self.session.get_bind().dialect.name == "postgresql" and self._insert_new(followup):
            return followup
        existing = self.session.get(Followup, followup.item_id)
        if existing is not None:
            return reopen(existing, followup)
        self.session.add(followup)
        return followup

    def _insert_new(self, followup: Followup) -> bool:
        """Insert ``followup``'s row unless its item has one; whether it did. The attributes set
        on it only, as a flush would: the columns' defaults fill the rest."""
        values = {k: v for k, v in inspect(followup).dict.items() if k in FOLLOWUPS.c}
        stmt = pg_insert(FOLLOWUPS).values(values).on_conflict_do_nothing(index_elements=[FOLLOWUPS.c.item_id])
        return self.session.execute(stmt.returning(FOLLOWUPS.c.item_id)).first() is not None

    def unplanned(self, limit: int) -> list[Followup]:
        """Follow-ups opened by notify that have no first check yet (status ``new``)."""
        query = select(Followup).where(Followup.status == "new").order_by(Followup.item_id).limit(limit)
        return list(self.session.scalars(self._for_update(query)).all())

    def _for_update(self, query: Any) -> Any:
        if self.session.get_bind().dialect.name == "postgresql":
            return query.with_for_update(skip_locked=True)
        return query

    def claim_due(self, at: datetime, limit: int, per_hoster: int, stale_before: datetime) -> list[Followup]:
        in_flight = Counter(
            dict(
                self.session.execute(  # type: ignore[arg-type]
                    select(Followup.hoster, func.count())
                    # A claimed row was due when claimed (``next_check_at <= at``) and keeps that
                    # due time until its result is recorded, so bounding ``next_check_at`` counts
                    # the same rows and lets the index skip the open follow-ups that are not due.
                    .where(Followup.next_check_at.is_not(None), Followup.next_check_at <= at,
                           Followup.dispatched_at >= stale_before)
                    .group_by(Followup.hoster)
                ).all()
            )
        )
        # The candidates as (item_id, hoster) only: with a cap, most of the ``limit * 4`` are
        # passed over, and building full ORM rows (``matched`` JSON and all) for them was most
        # of a tick's cost. PostgreSQL locks the candidate rows all the same (SKIP LOCKED).
        query = (
            select(Followup.item_id, Followup.hoster)
            .where(
                Followup.next_check_at <= at,
                (Followup.dispatched_at.is_(None)) | (Followup.dispatched_at < stale_before),
            )
            .order_by(Followup.next_check_at, Followup.item_id)
            .limit(limit * 4 if per_hoster > 0 else limit)
        )
        candidates = self.session.execute(self._for_update(query)).all()
        picked = [c.item_id for c in pick_within_cap(candidates, in_flight, per_hoster, limit)]
        if not picked:
            return []
        rows = {f.item_id: f for f in self.session.scalars(select(Followup).where(Followup.item_id.in_(picked)))}
        taken = [rows[i] for i in picked if i in rows]
        for f in taken:
            f.dispatched_at = at
        return taken

    def claim_pending_steps(self, at: datetime, limit: int, stale_before: datetime) -> list[Followup]:
        query = (
            select(Followup)
            .where(
                Followup.step_pending.is_not(None),
                (Followup.step_dispatched_at.is_(None)) | (Followup.step_dispatched_at < stale_before),
            )
            # step_pending first: the index on it finds the few pending rows (ordering by
            # item_id alone walks the primary key through every follow-up).
            .order_by(Followup.step_pending, Followup.item_id)
            .limit(limit)
        )
        taken = list(self.session.scalars(self._for_update(query)).all())
        for f in taken:
            f.step_dispatched_at = at
        return taken

    def get_step(self, step_id: str) -> FollowupStep | None:
        return self.session.get(FollowupStep, step_id)

    def add_step(self, step: FollowupStep) -> FollowupStep:
        self.session.add(step)
        return step

    def steps(self, item_id: str) -> Sequence[FollowupStep]:
        return self.session.scalars(
            select(FollowupStep).where(FollowupStep.item_id == item_id).order_by(FollowupStep.position)
        ).all()
