"""The analysts' queues: which items wait, in which order, and who works on which.

Two queues: ``assessment`` (items awaiting an analyst) and, with ``HOTLINE_SECOND_ANALYST``,
``confirmation`` (an "illegal" decision waiting for a second analyst). An analyst works on an
item under a lease (``hotline.storage.leases``) of ``HOTLINE_ASSESSMENT_LEASE_SECONDS``: the
item page claims it on every load (so it is renewed without JavaScript), the page's heartbeat
renews it while it is open, and a decision by anyone else is refused (409) while the lease is
live. "Next item" hands out the best item nobody holds.

Order (``priority``): reports from partner hotlines and the police (``HOTLINE_PRIORITY_CHANNELS``)
and new material (an image no bank entry knows) come first; oldest first within a priority. The
order is computed here, in Python, from each item's classification and report channels: queues
are hundreds of items, not millions, and the rule stays readable; the claim itself is the
storage's atomic conditional UPDATE.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from hotline.kernel.states import ItemState
from hotline.storage.models import Item
from hotline.storage.unit_of_work import SqlUnitOfWork
from schemas.facts import ImageFacts
from schemas.items import ItemClassified

QUEUES: dict[str, ItemState] = {
    "assessment": ItemState.AWAITING_ASSESSMENT,
    "confirmation": ItemState.AWAITING_CONFIRMATION,
}
FILTERS = ("country", "hoster", "channel", "reason")
PRIORITY_NAMES = {0: "first", 1: "high", 2: "normal"}


def reason_kind(item: Item) -> str:
    """Why the item waits for a person, as a filterable word (from the reason classify,
    notify, followup, parking or a second analyst recorded)."""
    text = (item.reason or "").lower()
    if "parked" in text:
        return "parked"
    if "disagree" in text:
        return "second_look"
    if "doubtful" in text:
        return "doubtful"
    if "phash" in text:
        return "weak_match"
    if "abuse contact" in text or "refused" in text or "notice" in text:
        return "no_notice"
    if "partner" in text:
        return "partner_said"
    if item.state == ItemState.AWAITING_CONFIRMATION:
        return "confirm_illegal"
    return "unknown_material"


@dataclass
class Entry:
    """One row of a queue."""

    item: Item
    classified: ItemClassified | None
    channels: set[str]
    new_material: bool
    from_priority_channel: bool
    holder: str | None = None  # who holds a live lease
    held_until: datetime | None = None
    known: int = 0  # images the bank knows (never shown again)
    reason: str = ""

    @property
    def priority(self) -> int:
        return 2 - int(self.new_material) - int(self.from_priority_channel)

    @property
    def priority_name(self) -> str:
        return PRIORITY_NAMES[self.priority]

    @property
    def images(self) -> list[ImageFacts]:
        return list(self.classified.images) if self.classified else []

    @property
    def hosting(self) -> Any:
        return self.classified.hosting if self.classified else None

    def values(self) -> dict[str, set[str]]:
        return {"country": {self.item.country or "?"}, "hoster": {self.item.hoster or "unknown"},
                "channel": self.channels or {"?"}, "reason": {self.reason}}


def is_known(img: ImageFacts) -> bool:
    """A bank match by exact hash or PDQ: nobody needs to look at it again. A pHash-only match
    (weaker) is still shown: it is why the item is here."""
    return img.match is not None and img.match.signal != "phash"


def _entry(item: Item, channels: set[str], priority_channels: set[str], at: datetime) -> Entry:
    classified = ItemClassified.model_validate(item.classification) if item.classification else None
    images = list(classified.images) if classified else []
    new = any(img.error is None and img.match is None for img in images)
    live = item.claimed_by is not None and item.claimed_until is not None and item.claimed_until > at
    return Entry(item, classified, channels, new, bool(channels & priority_channels),
                 item.claimed_by if live else None, item.claimed_until if live else None,
                 sum(1 for i in images if is_known(i)), reason_kind(item))


@dataclass
class QueueView:
    name: str
    entries: list[Entry]
    counts: dict[str, dict[str, int]] = field(default_factory=dict)  # queue -> {total, free, claimed}
    options: dict[str, list[tuple[str, int]]] = field(default_factory=dict)  # filter -> (value, count)


def entries(store: SqlUnitOfWork, queue: str, at: datetime, priority_channels: set[str]) -> list[Entry]:
    """Every item of ``queue`` in priority order (claimed ones included)."""
    items = list(store.items.in_state(QUEUES[queue]))
    channels = store.leases.channels([i.id for i in items])
    rows = [_entry(i, channels.get(i.id, set()), priority_channels, at) for i in items]
    rows.sort(key=lambda e: (e.priority, e.item.first_seen, e.item.id))
    return rows


def matches(entry: Entry, filters: dict[str, str]) -> bool:
    values = entry.values()
    return all(not wanted or wanted in values[name] for name, wanted in filters.items())


def view(store: SqlUnitOfWork, queue: str, at: datetime, priority_channels: set[str],
         filters: dict[str, str]) -> QueueView:
    """The queue page: the filtered rows, counts per queue, and the filter values with counts."""
    counts: dict[str, dict[str, int]] = {}
    shown: list[Entry] = []
    options: dict[str, Counter[str]] = {f: Counter() for f in FILTERS}
    for name in QUEUES:
        rows = entries(store, name, at, priority_channels)
        counts[name] = {"total": len(rows), "free": sum(1 for r in rows if r.holder is None),
                        "claimed": sum(1 for r in rows if r.holder is not None)}
        if name == queue:
            for r in rows:
                for f, vs in r.values().items():
                    options[f].update(vs)
            shown = [r for r in rows if matches(r, filters)]
    return QueueView(queue, shown, counts, {f: sorted(c.items()) for f, c in options.items()})


def lease_until(at: datetime, lease_seconds: float) -> datetime:
    return at + timedelta(seconds=lease_seconds)


def claim_next(store: SqlUnitOfWork, queue: str, analyst: str, at: datetime, lease_seconds: float,
               priority_channels: set[str], filters: dict[str, str]) -> str | None:
    """Claim the best item of ``queue`` (matching ``filters``) nobody else holds; its id, or
    None when there is none. In the confirmation queue an analyst is never handed their own
    decision. The caller commits."""
    rows = [e for e in entries(store, queue, at, priority_channels) if matches(e, filters)]
    if queue == "confirmation":
        rows = [e for e in rows if decided_by(store, e.item.id) != analyst]
    candidates = [e.item.id for e in rows if e.holder in (None, analyst)]
    until = lease_until(at, lease_seconds)
    for start in range(0, len(candidates), 50):
        got = store.leases.claim_first(candidates[start:start + 50], analyst, until, at, [QUEUES[queue]])
        if got is not None:
            return got
    return None


def decided_by(store: SqlUnitOfWork, item_id: str) -> str | None:
    """The analyst of the item's latest assessment (the decision a second analyst confirms)."""
    latest = store.assessments.latest(item_id)
    return latest.analyst if latest is not None else None
