"""Items: one per unique open URL, with its state, reason and timeline."""

from __future__ import annotations

import functools
import hashlib
import uuid
from collections.abc import Sequence
from datetime import datetime
from typing import Any, cast

from sqlalchemy import (
    CursorResult,
    Executable,
    Select,
    Table,
    bindparam,
    delete,
    func,
    select,
    union_all,
)
from sqlalchemy.orm import Session

from hotline.kernel.clock import now
from hotline.kernel.ports import ItemWork
from hotline.kernel.states import FINAL, ItemState, check_transition
from hotline.storage.engine import held_row
from hotline.storage.models import (
    Forward,
    ForwardStatus,
    Item,
    ItemEvent,
    ItemImage,
    OpenUrl,
    ReportUrl,
)


def url_digest(url: str) -> str:
    return hashlib.sha256(url.encode()).hexdigest()


def new_item(url: str) -> Item:
    t = now()
    return Item(
        id=uuid.uuid4().hex, url=url, state=ItemState.RECEIVED, reason="waiting to be classified",
        first_seen=t, last_seen=t, updated_at=t,
    )


def apply_state(item: Item, state: str, reason: str) -> ItemState:
    """Check and apply a state change to the entity; the repositories add the event."""
    new = check_transition(item.state, state)
    item.state = new
    item.reason = reason
    item.updated_at = now()
    return new


_ITEM_IMAGES = cast(Table, ItemImage.__table__)  # for Core statements
_IMAGE = _ITEM_IMAGES.c
"""The sightings statements name table columns, not the entity's attributes: a Core statement
skips the ORM's compile and result steps (they cost more CPU than the statements' work)."""


def _other_sightings(*columns: Any) -> Select[Any]:
    """Rows of ``item_images`` showing the image ``:sha256`` in an item other than ``:me``."""
    return select(*columns).where(_IMAGE.sha256 == bindparam("sha256"), _IMAGE.item_id != bindparam("me"))

_PROBES_PER_STATEMENT = 16
"""Images probed per statement (a gallery's 50 images: four statements)."""


def _probe(i: int) -> Select[str, str, str]:
    """The first other sighting of the image ``:sha<i>``: an index probe (``LIMIT 1``)."""
    return (select(_IMAGE.item_id, _IMAGE.sha256, _IMAGE.url)
            .where(_IMAGE.sha256 == bindparam(f"sha{i}"), _IMAGE.item_id != bindparam("me"))
            .order_by(_IMAGE.id).limit(1))


@functools.cache
def _first_sightings(n: int) -> Executable:
    """The probes of ``n`` images in one statement (one round trip per item instead of one
    per image); each probe a subquery, as SQLite allows ``LIMIT`` in a compound select only
    there. Built once per ``n``."""
    if n == 1:
        return _probe(0)
    parts = [_probe(i).subquery(f"p{i}") for i in range(n)]
    return union_all(*(select(p.c.item_id, p.c.sha256, p.c.url) for p in parts))


_capped = _other_sightings(_IMAGE.item_id).limit(bindparam("up_to")).subquery()
_SIGHTINGS_COUNT = select(func.count(func.distinct(_capped.c.item_id)))


class SqlItems:
    def __init__(self, session: Session) -> None:
        self.session = session
        # Items ``create_deferred`` opened in this unit of work, by their URL's digest: their
        # rows may still be pending, so ``open_for_url`` answers them itself.
        self._deferred: dict[str, Item] = {}

    def get(self, item_id: str) -> Item | None:
        return self.session.get(Item, item_id)

    def work_of(self, item_id: str) -> ItemWork | None:
        """One Core statement (no entity: no identity map, no loader), the partners' MO answers
        counted in it as a subquery (a second round trip per item before). A Core select does
        not autoflush: when the session holds the ``Item`` (it may have pending changes) it
        flushes first, so the answer is what ``get`` would show."""
        if held_row(self.session, Item, item_id) is not None:
            self.session.flush()
        row = self.session.execute(_WORK_OF, {"id": item_id}).first()
        return None if row is None else ItemWork(*row)

    def classify(self, item_id: str, work: ItemWork, classification: dict[str, Any],
                 hosting: tuple[str | None, str | None] | None, state: str, reason: str, stage: str,
                 *, if_unchanged: bool = False) -> bool:
        """A Core ``UPDATE`` of the columns it sets (the entity's load and flush cost more CPU than
        the statements), unless the session holds the ``Item`` already: then through it, which
        a Core statement would leave stale. ``if_unchanged``: the ``UPDATE``'s own condition
        (so classify need not read the item again in its record transaction)."""
        held = held_row(self.session, Item, item_id)
        if held is not None:
            item = cast(Item, held)
            if if_unchanged and (item.classification is not None or item.state != work.state):
                return False
            item.classification = classification
            if hosting is not None:
                item.country, item.hoster = hosting
            self.set_state(item, state, reason, stage)
            return True
        new = check_transition(work.state, state)
        values: dict[str, Any] = {"item_id": item_id, "classification": classification, "state": new,
                                  "reason": reason, "updated_at": now()}
        if hosting is not None:
            values["country"], values["hoster"] = hosting
        if if_unchanged:
            done = self.session.execute(_UPDATE_UNCLASSIFIED, {**values, "was": str(work.state)})
            if cast(CursorResult[Any], done).rowcount != 1:
                return False
        else:
            self.session.execute(_UPDATE_ITEM, values)
        # Its event by a Core insert too: else the next flush (``add_images``') would run the
        # ORM's unit of work for this one row. Still before any event added after it.
        self.session.execute(_INSERT_EVENT, {"item_id": item_id, "stage": stage, "kind": str(new),
                                                     "detail": reason, "at": now()})
        self._slot_after(item_id, work.url, work.state in FINAL, new)
        return True

    def reload(self, item: Item) -> Item:
        self.session.refresh(item)
        return item

    def lock(self, item_ids: Sequence[str]) -> list[Item]:
        """Lock the items' rows until the transaction ends, in one order (their ids), so two
        transactions recording outcomes on the same items wait for each other instead of
        deadlocking or both finding "no follow-up yet"; returns them, loaded by that one
        statement (hold them: ``get`` then finds them without a query). SQLite: every
        transaction already holds the one write lock (``BEGIN IMMEDIATE``)."""
        ids = sorted(set(item_ids))
        if not ids:
            return []
        if self.session.get_bind().dialect.name != "postgresql":
            return [i for i in (self.session.get(Item, x) for x in ids) if i is not None]
        return list(self.session.scalars(_LOCK_ITEMS, {"ids": ids}).all())

    def forget_deferred(self) -> None:
        """The unit of work committed or rolled back: ``open_for_url`` asks the database again."""
        self._deferred.clear()

    def open_for_url(self, url: str) -> Item | None:
        """The open item of ``url``, without flushing the session first: ``open_urls`` rows are
        pending only as ``create_deferred`` left them (answered from ``_deferred``); ``create``
        flushes and ``set_state`` executes its own at once, so no other pending change can
        alter the answer. Autoflush here cost ingest a flush per URL."""
        digest = url_digest(url)
        deferred = self._deferred.get(digest)
        if deferred is not None:
            return deferred
        with self.session.no_autoflush:
            item_id = self.session.scalar(_OPEN_ITEM, {"sha": digest})
            return None if item_id is None else self.session.get(Item, item_id)

    def create(self, url: str) -> Item:
        """A new open item for ``url``, flushed at once (the port's promise: a lost race raises
        here; and other repositories may refer to the item by Core statements): its ``items``
        and ``open_urls`` rows in one flush (the unit of work inserts the item first)."""
        item = self.create_deferred(url)
        self.session.flush()
        self._deferred.pop(url_digest(url), None)
        return item

    def create_deferred(self, url: str) -> Item:
        """As ``create``, its rows left for the next flush (the commit's, for ingest)."""
        item = new_item(url)
        digest = url_digest(url)
        self.session.add(item)
        self.session.add(OpenUrl(url_sha256=digest, item_id=item.id))
        self._deferred[digest] = item
        return item

    def set_state(self, item: Item, state: str, reason: str, stage: str, at: datetime | None = None) -> None:
        was_final = item.state in FINAL
        new = apply_state(item, state, reason)
        self.add_event(item.id, stage, new, reason, at)
        self._slot_after(item.id, item.url, was_final, new)

    def _slot_after(self, item_id: str, url: str, was_final: bool, new: ItemState) -> None:
        """The URL's open-item slot after a state change to ``new``."""
        if new in FINAL:
            # A closed URL reported again is new work: free the slot.
            self._deferred.pop(url_digest(url), None)
            self.session.execute(delete(OpenUrl).where(OpenUrl.item_id == item_id))
        elif was_final:
            # Reopened (a senior analyst's change): the item holds its URL's slot again.
            self.session.add(OpenUrl(url_sha256=url_digest(url), item_id=item_id))
            self.session.flush()

    def add_event(self, item_id: str, stage: str, kind: str, detail: str = "", at: datetime | None = None) -> None:
        self.session.add(ItemEvent(item_id=item_id, stage=stage, kind=str(kind), detail=detail, at=at or now()))

    def events(self, item_id: str) -> Sequence[ItemEvent]:
        return self.session.scalars(
            select(ItemEvent).where(ItemEvent.item_id == item_id).order_by(ItemEvent.id)
        ).all()

    def report_ids(self, item_id: str) -> list[str]:
        rows = self.session.scalars(select(ReportUrl.report_id).where(ReportUrl.item_id == item_id).distinct()).all()
        return sorted(rows)

    def add_images(self, item_id: str, images: Sequence[tuple[str, str]]) -> None:
        """Record the (sha256, image URL) pairs an item showed."""
        if images:  # one multi-row INSERT (nothing reads the rows back as objects)
            at = now()
            # The session's changes first (as the ORM statement's autoflush did: the item may be
            # pending), then a Core insert on the table: the ORM's bulk-insert path cost more
            # CPU than the statement itself.
            self.session.flush()
            rows = [{"item_id": item_id, "sha256": sha256, "url": url, "at": at} for sha256, url in images]
            # One row (most items): a plain execute; psycopg runs an executemany in pipeline
            # mode, which costs more CPU than the statement.
            self.session.execute(_INSERT_IMAGES, rows[0] if len(rows) == 1 else rows)

    def sharing_images(self, item_id: str, sha256s: Sequence[str]) -> list[tuple[str, str, str]]:
        """(other item id, sha256, image URL) of every other item that showed one of ``sha256s``."""
        if not sha256s:
            return []
        q = (select(ItemImage.item_id, ItemImage.sha256, ItemImage.url)
             .where(ItemImage.sha256.in_(list(sha256s)), ItemImage.item_id != item_id)
             .order_by(ItemImage.id))
        return [(i, s, u) for i, s, u in self.session.execute(q)]

    def in_state(self, state: str) -> Sequence[Item]:
        return self.session.scalars(select(Item).where(Item.state == state).order_by(Item.first_seen)).all()

    def first_sightings(self, item_id: str, sha256s: Sequence[str], count_up_to: int) -> list[tuple[str, str, str, int]]:
        """(first other item id, sha256, its image URL, other items showing it, counted up to
        ``count_up_to``) for each of ``sha256s`` another item showed: an index probe per image
        (``LIMIT 1``), all of an item's probes in one statement (:func:`_first_sightings`), and,
        for an image shown elsewhere, a bounded count, however many copies exist. The
        statements are built once: building them per call cost four times what running them did."""
        wanted = list(dict.fromkeys(sha256s))
        found: dict[str, tuple[str, str]] = {}
        for k in range(0, len(wanted), _PROBES_PER_STATEMENT):
            chunk = wanted[k:k + _PROBES_PER_STATEMENT]
            params: dict[str, Any] = {f"sha{i}": sha for i, sha in enumerate(chunk)}
            params["me"] = item_id
            for first_id, sha256, first_url in self.session.execute(_first_sightings(len(chunk)), params):
                found[sha256] = (first_id, first_url)
        out: list[tuple[str, str, str, int]] = []
        for sha256 in wanted:
            if sha256 not in found:
                continue
            first_id, first_url = found[sha256]
            count = self.session.scalar(_SIGHTINGS_COUNT, {"sha256": sha256, "me": item_id, "up_to": count_up_to}) or 0
            out.append((first_id, sha256, first_url, int(count)))
        return out

    def exists(self, item_id: str) -> bool:
        """Whether the item is stored: its id only (``get`` loads the whole row, classification
        JSON included, which the notify stage's check for a known item does not need)."""
        if held_row(self.session, Item, item_id) is not None:
            return True
        return self.session.scalar(_ITEM_EXISTS, {"id": item_id}) is not None


_ITEMS = cast(Table, Item.__table__)
_ITEM_EVENTS = cast(Table, ItemEvent.__table__)
_INSERT_EVENT = _ITEM_EVENTS.insert().inline()
_INSERT_IMAGES = _ITEM_IMAGES.insert().inline()
"""``inline``: no ``RETURNING`` of the new row's id for a one-row insert (nobody reads it)."""
_FORWARDS, _FORWARD_STATUSES = cast(Table, Forward.__table__), cast(Table, ForwardStatus.__table__)
_MOVED = (select(func.count(func.distinct(_FORWARDS.c.id)))
          .select_from(_FORWARDS.join(_FORWARD_STATUSES, _FORWARD_STATUSES.c.forward_id == _FORWARDS.c.id))
          .where(_FORWARDS.c.item_id == _ITEMS.c.id, _FORWARD_STATUSES.c.action == "MO")
          .scalar_subquery())
"""``SqlForwardQueue.moved_count`` of the row's item, correlated (table columns throughout: a
Core statement skips the ORM's compile and execute steps)."""
_WORK_OF = (select(_ITEMS.c.url, _ITEMS.c.state, _ITEMS.c.classification, _ITEMS.c.first_seen,
                   _ITEMS.c.last_seen, _MOVED)
            .where(_ITEMS.c.id == bindparam("id")))
_UPDATE_ITEM = _ITEMS.update().where(_ITEMS.c.id == bindparam("item_id"))
_UPDATE_UNCLASSIFIED = _UPDATE_ITEM.where(_ITEMS.c.classification.is_(None), _ITEMS.c.state == bindparam("was"))
"""``classify(if_unchanged=True)``: an item stored as JSON ``null`` rather than SQL NULL does
not match, and the caller reads it again (``ClassifyStage._record``)."""
_ITEM_EXISTS = select(Item.id).where(Item.id == bindparam("id"))
_LOCK_ITEMS = (select(Item).where(Item.id.in_(bindparam("ids", expanding=True))).order_by(Item.id)
               .with_for_update().execution_options(populate_existing=True))

_OPEN_ITEM = select(OpenUrl.item_id).where(OpenUrl.url_sha256 == bindparam("sha"))
