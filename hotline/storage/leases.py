"""Analyst leases on items: who works on an item until when (``items.claimed_by``,
``items.claimed_until``).

A claim is one conditional UPDATE (the item is in a queue state, and nobody else holds a live
lease), so two analysts can never both get it: on SQLite writers are serialized; on PostgreSQL
the row lock makes the second UPDATE wait and re-check its WHERE against the committed row.
Choosing the *next* item on PostgreSQL also takes ``FOR UPDATE SKIP LOCKED`` on the candidates,
so concurrent "next" requests pass over an item someone is claiming instead of queueing behind
it. An expired lease counts as none: a closed browser frees its item after the lease time.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from datetime import datetime

from sqlalchemy import and_, or_, select, update
from sqlalchemy.orm import Session

from hotline.storage.engine import held_row
from hotline.storage.models import Item, Report, ReportUrl


class SqlLeases:
    def __init__(self, session: Session) -> None:
        self.session = session

    def _free_for(self, analyst: str, at: datetime) -> object:
        return or_(Item.claimed_by.is_(None), Item.claimed_until <= at, Item.claimed_by == analyst)

    def claim(self, item_id: str, analyst: str, until: datetime, at: datetime, states: Collection[str]) -> bool:
        """Take (or renew) the lease on one item; False when another analyst holds a live one
        or the item is not in one of ``states``."""
        result = self.session.execute(
            update(Item)
            .where(Item.id == item_id, Item.state.in_(list(states)), self._free_for(analyst, at))  # type: ignore[arg-type]
            .values(claimed_by=analyst, claimed_until=until)
            .execution_options(synchronize_session=False)
        )
        claimed = bool(result.rowcount)  # type: ignore[attr-defined]
        self._expire(item_id)
        return claimed

    def claim_first(
        self, candidates: Sequence[str], analyst: str, until: datetime, at: datetime, states: Collection[str],
    ) -> str | None:
        """The first of ``candidates`` (in their order) this analyst could claim, claimed; None
        when every one is taken."""
        if not candidates:
            return None
        postgres = self.session.get_bind().dialect.name == "postgresql"
        for item_id in candidates:
            if postgres:
                # Lock this one row if nobody else is claiming it right now; else move on at once.
                q = (select(Item.id)
                     .where(Item.id == item_id, Item.state.in_(list(states)), self._free_for(analyst, at))  # type: ignore[arg-type]
                     .with_for_update(skip_locked=True))
                if self.session.scalar(q) is None:
                    continue
            if self.claim(item_id, analyst, until, at, states):
                return item_id
        return None

    def renew(self, item_id: str, analyst: str, until: datetime) -> bool:
        """Extend this analyst's lease (the page's heartbeat); False when it is no longer theirs."""
        result = self.session.execute(
            update(Item).where(Item.id == item_id, Item.claimed_by == analyst)
            .values(claimed_until=until).execution_options(synchronize_session=False)
        )
        self._expire(item_id)
        return bool(result.rowcount)  # type: ignore[attr-defined]

    def release(self, item_id: str, analyst: str | None = None) -> None:
        """Drop the lease (the decision is recorded); ``analyst``: only if it is theirs."""
        q = update(Item).where(Item.id == item_id)
        if analyst is not None:
            q = q.where(Item.claimed_by == analyst)
        self.session.execute(q.values(claimed_by=None, claimed_until=None).execution_options(synchronize_session=False))
        self._expire(item_id)

    def holder(self, item_id: str, at: datetime) -> tuple[str, datetime] | None:
        """Who holds a live lease on the item, until when; None when nobody does."""
        row = self.session.execute(
            select(Item.claimed_by, Item.claimed_until).where(
                Item.id == item_id, and_(Item.claimed_by.is_not(None), Item.claimed_until > at))
        ).first()
        if row is None or row[0] is None or row[1] is None:
            return None
        return (row[0], row[1])

    def channels(self, item_ids: Sequence[str]) -> dict[str, set[str]]:
        """The channels of the reports that named each item (partner, police, web, ...)."""
        out: dict[str, set[str]] = {i: set() for i in item_ids}
        if not item_ids:
            return out
        q = (select(ReportUrl.item_id, Report.channel).join(Report, Report.id == ReportUrl.report_id)
             .where(ReportUrl.item_id.in_(list(item_ids))).distinct())
        for item_id, channel in self.session.execute(q):
            if item_id is not None:
                out.setdefault(item_id, set()).add(channel)
        return out

    def _expire(self, item_id: str) -> None:
        # The UPDATE bypassed the ORM: a loaded Item must read the lease columns afresh.
        item = held_row(self.session, Item, item_id)
        if item is not None:
            self.session.expire(item, ["claimed_by", "claimed_until"])
