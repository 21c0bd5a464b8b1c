"""Durable delivery queues to partner hotlines: forwards (``forwards``) and status updates
back to a partner (``partner_updates``). Both tables have the same queue columns
(``status`` pending|sent|refused, ``next_attempt_at``, ``dispatched_at``, ``created_at``) and
are delivered *in order per group*: a row waits while an older row of its group (the
forward's item, the update's report) is still pending. The claim helpers here are shared by
both repositories; the delivery logic is ``services.escalate.forwards``."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import Any, Protocol, TypeVar, cast

from sqlalchemy import Table, and_, bindparam, exists, func, or_, select, update
from sqlalchemy.orm import InstrumentedAttribute, Session, aliased

from hotline.storage.engine import held_row
from hotline.storage.models import Forward, ForwardStatus, PartnerUpdate


class Queued(Protocol):
    id: Any
    status: Any
    created_at: Any
    next_attempt_at: Any
    dispatched_at: Any


Q = TypeVar("Q", bound=Queued)

_EPOCH = datetime.min


def queue_order(row: Queued) -> tuple[Any, str]:
    created = row.created_at
    return (created.replace(tzinfo=None) if created is not None else _EPOCH, str(row.id))


def older_pending_in(rows: Iterable[Q], row: Q, group_of: Any) -> bool:
    """Whether an older row of ``row``'s group is still pending (in-memory form)."""
    key = queue_order(row)
    group = group_of(row)
    return any(r.status == "pending" and r.id != row.id and group_of(r) == group and queue_order(r) < key for r in rows)


def claim_in(rows: Sequence[Q], group_of: Any, at: datetime, limit: int, stale_before: datetime) -> list[Q]:
    """Due pending rows not in flight, without an older pending row in their group, oldest
    due first; marked dispatched at ``at`` (in-memory form of ``claim_sql``)."""
    due = sorted(
        (r for r in rows if r.status == "pending" and r.next_attempt_at is not None and r.next_attempt_at <= at
         and (r.dispatched_at is None or r.dispatched_at < stale_before) and not older_pending_in(rows, r, group_of)),
        key=lambda r: (r.next_attempt_at, str(r.id)),
    )[:limit]
    for r in due:
        r.dispatched_at = at
    return due


M = TypeVar("M", Forward, PartnerUpdate)


def _older_clause(model: type[M], group: InstrumentedAttribute[Any]) -> Any:
    older = aliased(model)
    return exists().where(
        getattr(older, group.key) == group,
        older.status == "pending",
        or_(older.created_at < model.created_at, and_(older.created_at == model.created_at, older.id < model.id)),
    )


# The statements below are built once per model (and dialect) with bound parameters and then
# only executed: the escalate stage runs ``lock`` twice and ``older_pending`` once per forward
# and the dispatcher ``claim_due`` every tick, and building them each time (the aliased
# self-join above makes SQLAlchemy copy every column of the table) cost several times what
# running them did (issue 13: ~18 % of the escalate process's CPU in the pipeline).
_STATEMENTS: dict[tuple[Any, ...], Any] = {}


def _statement(key: tuple[Any, ...], build: Any) -> Any:
    stmt = _STATEMENTS.get(key)
    if stmt is None:
        stmt = _STATEMENTS[key] = build()
    return stmt


def _postgres(session: Session) -> bool:
    return session.get_bind().dialect.name == "postgresql"


def claim_sql(session: Session, model: type[M], group: InstrumentedAttribute[Any], at: datetime, limit: int,
              stale_before: datetime) -> list[M]:
    """Due pending rows, one claimer each (PostgreSQL: ``FOR UPDATE SKIP LOCKED``), none while
    an older row of its group is pending; ``dispatched_at`` set to ``at``."""
    postgres = _postgres(session)

    def build() -> Any:
        q = (select(model)
             .where(model.status == "pending", model.next_attempt_at <= bindparam("at"),
                    or_(model.dispatched_at.is_(None), model.dispatched_at < bindparam("stale_before")),
                    ~_older_clause(model, group))
             .order_by(model.next_attempt_at, model.id).limit(bindparam("limit")))
        return q.with_for_update(skip_locked=True, of=model) if postgres else q

    q = _statement(("claim", model, group.key, postgres), build)
    taken = list(session.scalars(q, {"at": at, "stale_before": stale_before, "limit": limit}).all())
    for row in taken:
        row.dispatched_at = at
    return taken


def older_pending_sql(session: Session, row: M, group: InstrumentedAttribute[Any]) -> bool:
    model = type(row)
    created = row.created_at

    def build() -> Any:
        q = select(model.id).where(getattr(model, group.key) == bindparam("group"), model.status == "pending",
                                   model.id != bindparam("id"))
        if created is not None:
            q = q.where(or_(model.created_at < bindparam("created"),
                            and_(model.created_at == bindparam("created"), model.id < bindparam("id"))))
        else:
            q = q.where(model.created_at.is_(None), model.id < bindparam("id"))
        return q.limit(1)

    q = _statement(("older", model, group.key, created is not None), build)
    params: dict[str, Any] = {"group": getattr(row, group.key), "id": row.id}
    if created is not None:
        params["created"] = created
    # Without flushing first: the question is about *other* rows, and a new ``row`` flushed
    # here would be inserted now and updated a moment later with its attempt (two statements
    # where the commit's flush inserts it once, attempt and all).
    with session.no_autoflush:
        return session.scalar(q, params) is not None


def lock_sql(session: Session, model: type[M], row_id: str) -> M | None:
    postgres = _postgres(session)

    def build() -> Any:
        q = select(model).where(model.id == bindparam("id"))
        return (q.with_for_update() if postgres else q).execution_options(populate_existing=True)

    return session.scalars(_statement(("lock", model, postgres), build), {"id": row_id}).first()


def mark_sent_in(row: Any, at: datetime) -> int | None:
    """``mark_sent_sql`` on a loaded (locked) row, or None."""
    if row is None or row.status == "sent":
        return None
    row.status, row.sent_at = "sent", at
    row.next_attempt_at = row.dispatched_at = None
    return int(row.attempts)


def mark_sent_sql(session: Session, model: type[M], row_id: str, at: datetime) -> int | None:
    """Record a delivered row ``sent`` at ``at`` unless it is already: its ``attempts`` then, or
    None when it was ``sent`` before (or is missing).

    PostgreSQL: one ``UPDATE ... WHERE status <> 'sent' RETURNING`` where locking the row
    (``lock_sql``: the whole row, its payload JSON too) and then updating it took two
    statements; the update locks the row all the same, and in READ COMMITTED a concurrent
    attempt's committed ``sent`` makes it match nothing, as the lock-then-check did. A row this
    session holds, and SQLite, go the ORM way (the held row stays current)."""
    held = held_row(session, model, row_id)
    if held is not None or not _postgres(session):
        return mark_sent_in(lock_sql(session, model, row_id), at)

    def build() -> Any:
        table = cast(Table, model.__table__)
        return (update(table).where(table.c.id == bindparam("row_id"), table.c.status != "sent")
                .values(status="sent", sent_at=bindparam("at", type_=table.c.sent_at.type),
                        next_attempt_at=None, dispatched_at=None)
                .returning(table.c.attempts))

    attempts = session.scalar(_statement(("sent", model), build), {"row_id": row_id, "at": at})
    return None if attempts is None else int(attempts)


class SqlForwardQueue:
    """The queue and partner-status half of the forwards repository (mixed into ``SqlForwards``)."""

    session: Session

    def lock(self, forward_id: str) -> Forward | None:
        return lock_sql(self.session, Forward, forward_id)

    def mark_sent(self, forward_id: str, at: datetime) -> int | None:
        return mark_sent_sql(self.session, Forward, forward_id, at)

    def for_item(self, item_id: str) -> Sequence[Forward]:
        q = select(Forward).where(Forward.item_id == item_id).order_by(Forward.created_at, Forward.id)
        return self.session.scalars(q).all()

    def for_country(self, country: str) -> Sequence[Forward]:
        q = select(Forward).where(Forward.country == country.upper()).order_by(Forward.created_at.desc(), Forward.id)
        return self.session.scalars(q).all()

    def in_status(self, *statuses: str) -> Sequence[Forward]:
        q = select(Forward).where(Forward.status.in_(statuses)).order_by(Forward.created_at, Forward.id)
        return self.session.scalars(q).all()

    def older_pending(self, forward: Forward) -> bool:
        return older_pending_sql(self.session, forward, Forward.item_id)

    def claim_due(self, at: datetime, limit: int, stale_before: datetime) -> list[Forward]:
        return claim_sql(self.session, Forward, Forward.item_id, at, limit, stale_before)

    def add_status(self, forward_id: str, action: str, note: str | None, by: str, at: datetime) -> ForwardStatus:
        row = ForwardStatus(forward_id=forward_id, action=action, note=note, by=by, at=at)
        self.session.add(row)
        return row

    def statuses(self, forward_id: str) -> Sequence[ForwardStatus]:
        q = select(ForwardStatus).where(ForwardStatus.forward_id == forward_id).order_by(ForwardStatus.id)
        return self.session.scalars(q).all()

    def moved_count(self, item_id: str) -> int:
        return int(self.session.scalar(_MOVED_COUNT, {"item_id": item_id}) or 0)


_MOVED_COUNT = (
    select(func.count(func.distinct(Forward.id)))
    .join(ForwardStatus, ForwardStatus.forward_id == Forward.id)
    .where(Forward.item_id == bindparam("item_id"), ForwardStatus.action == "MO")
)
"""Built once (``moved_count`` runs for every item classify records; building an ORM query
per call cost more than running it)."""


class SqlPartnerUpdates:
    def __init__(self, session: Session) -> None:
        self.session = session

    def get(self, update_id: str) -> PartnerUpdate | None:
        return self.session.get(PartnerUpdate, update_id)

    def lock(self, update_id: str) -> PartnerUpdate | None:
        return lock_sql(self.session, PartnerUpdate, update_id)

    def mark_sent(self, update_id: str, at: datetime) -> int | None:
        return mark_sent_sql(self.session, PartnerUpdate, update_id, at)

    def add(self, update: PartnerUpdate) -> PartnerUpdate:
        self.session.add(update)
        return update

    def for_report(self, report_id: str) -> Sequence[PartnerUpdate]:
        q = select(PartnerUpdate).where(PartnerUpdate.report_id == report_id).order_by(
            PartnerUpdate.created_at, PartnerUpdate.id)
        return self.session.scalars(q).all()

    def in_status(self, *statuses: str) -> Sequence[PartnerUpdate]:
        q = select(PartnerUpdate).where(PartnerUpdate.status.in_(statuses)).order_by(
            PartnerUpdate.created_at, PartnerUpdate.id)
        return self.session.scalars(q).all()

    def older_pending(self, update: PartnerUpdate) -> bool:
        return older_pending_sql(self.session, update, PartnerUpdate.report_id)

    def claim_due(self, at: datetime, limit: int, stale_before: datetime) -> list[PartnerUpdate]:
        return claim_sql(self.session, PartnerUpdate, PartnerUpdate.report_id, at, limit, stale_before)
