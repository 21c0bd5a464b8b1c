"""Time to removal, as pure functions: from one row per noticed item to figures per hoster and
per week. No SQL here (``services.monitor.queries`` reads the rows) and no clock: every
function that needs "now" is handed it, so the figures are deterministic in tests.

Definitions (the README's "Public monitor and statistics" repeats them):

- an item counts once it has a *sent* notice; ``first_notice`` is the earliest one's
  ``sent_at`` and its ``hoster`` the hoster of that notice;
- it is *removed* when its state is ``removed`` and its timeline has a ``removed`` event
  (the earliest one is the removal time);
- *time to removal* = removal time - first notice (and, as INHOPE counts it, removal time -
  first report, ``Item.first_seen``); a negative difference (clock skew) counts as 0;
- *median* and *90th percentile* by the **nearest-rank** method: sort the n values, take the
  value at rank ceil(p/100 * n) (1-based). The median is the 50th percentile, so of an even
  count it is the lower of the two middle values; every figure is a time that really occurred;
- *still online*: noticed, open (not in a final state) and not removed;
- *open past the deadline*: still online and ``now - first_notice > deadline``;
- *share within the deadline* = removed within the deadline / (removed + open past the
  deadline): items still online and inside their deadline are not decided yet and count in
  neither; ``None`` when nothing is decided;
- *week*: the ISO week (``2026-W07``) of the first notice, so each week's figures are those of
  the notices sent that week.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from hotline.kernel.states import OPEN, ItemState

UNKNOWN_HOSTER = "unknown"


@dataclass(frozen=True)
class NoticedItem:
    """One item with a sent notice, as read from the database."""

    item_id: str
    url: str
    hoster: str
    country: str | None
    state: str
    first_seen: datetime  # first report
    first_notice: datetime  # earliest sent notice
    removed_at: datetime | None  # earliest ``removed`` event, if any

    @property
    def removed(self) -> bool:
        return self.state == ItemState.REMOVED and self.removed_at is not None

    @property
    def still_online(self) -> bool:
        return not self.removed and self.state in OPEN

    def seconds_to_removal(self) -> float | None:
        if not self.removed or self.removed_at is None:
            return None
        return max((self.removed_at - self.first_notice).total_seconds(), 0.0)

    def seconds_from_report(self) -> float | None:
        if not self.removed or self.removed_at is None:
            return None
        return max((self.removed_at - self.first_seen).total_seconds(), 0.0)

    def age(self, now: datetime) -> float:
        """Seconds since the first notice."""
        return max((now - self.first_notice).total_seconds(), 0.0)

    def past_deadline(self, now: datetime, deadline_seconds: float) -> bool:
        return self.still_online and self.age(now) > deadline_seconds


def percentile(values: Iterable[float], p: float) -> float | None:
    """The p-th percentile by nearest rank: the value at 1-based rank ceil(p/100 * n) of the sorted
    values (rank 1 for p = 0); ``None`` for no values."""
    if not 0 <= p <= 100:
        raise ValueError(f"a percentile is between 0 and 100, got {p}")
    ordered = sorted(values)
    if not ordered:
        return None
    rank = max(math.ceil(p / 100 * len(ordered)), 1)
    return ordered[rank - 1]


def median(values: Iterable[float]) -> float | None:
    """The 50th percentile by nearest rank (the lower middle value of an even count)."""
    return percentile(values, 50)


@dataclass(frozen=True)
class Figures:
    """Time-to-removal figures of a group of noticed items (a hoster, a week, everything)."""

    notices: int  # items with a sent notice
    removals: int
    still_online: int
    open_past_deadline: int
    removed_within_deadline: int
    median_seconds: float | None  # from first notice
    p90_seconds: float | None
    median_from_report_seconds: float | None  # from first report (INHOPE)
    p90_from_report_seconds: float | None
    share_within_deadline: float | None  # 0..1, see the module docstring

    def public(self) -> dict[str, Any]:
        """JSON-ready, durations in whole seconds."""
        return {
            "notices": self.notices,
            "removals": self.removals,
            "still_online": self.still_online,
            "open_past_deadline": self.open_past_deadline,
            "removed_within_deadline": self.removed_within_deadline,
            "median_seconds": _seconds(self.median_seconds),
            "p90_seconds": _seconds(self.p90_seconds),
            "median_from_report_seconds": _seconds(self.median_from_report_seconds),
            "p90_from_report_seconds": _seconds(self.p90_from_report_seconds),
            "share_within_deadline": self.share_within_deadline,
        }


def _seconds(value: float | None) -> int | None:
    return None if value is None else round(value)


def figures(rows: Iterable[NoticedItem], now: datetime, deadline_seconds: float) -> Figures:
    rows = list(rows)
    times = [t for r in rows if (t := r.seconds_to_removal()) is not None]
    from_report = [t for r in rows if (t := r.seconds_from_report()) is not None]
    within = sum(1 for t in times if t <= deadline_seconds)
    overdue = sum(1 for r in rows if r.past_deadline(now, deadline_seconds))
    decided = len(times) + overdue
    return Figures(
        notices=len(rows),
        removals=len(times),
        still_online=sum(1 for r in rows if r.still_online),
        open_past_deadline=overdue,
        removed_within_deadline=within,
        median_seconds=median(times),
        p90_seconds=percentile(times, 90),
        median_from_report_seconds=median(from_report),
        p90_from_report_seconds=percentile(from_report, 90),
        share_within_deadline=within / decided if decided else None,
    )


def iso_week(t: datetime) -> str:
    year, week, _ = t.isocalendar()
    return f"{year}-W{week:02d}"


@dataclass(frozen=True)
class HosterFigures:
    hoster: str
    countries: tuple[str, ...]
    overall: Figures
    weeks: dict[str, Figures] = field(default_factory=dict)  # ISO week -> figures, in order


def by_week(rows: Iterable[NoticedItem], now: datetime, deadline_seconds: float) -> dict[str, Figures]:
    """Figures per ISO week of the first notice, weeks in order."""
    groups: dict[str, list[NoticedItem]] = defaultdict(list)
    for r in rows:
        groups[iso_week(r.first_notice)].append(r)
    return {w: figures(groups[w], now, deadline_seconds) for w in sorted(groups)}


def ranking_key(h: HosterFigures) -> tuple[int, float, int, str]:
    """Slowest first: hosters with open cases past the deadline and no removal at all (slower than
    any time measured), then by median time to removal from first notice, longest first; last
    the hosters with nothing to judge yet. Ties: more open past the deadline first, then name."""
    f = h.overall
    if f.median_seconds is None:
        group = 0 if f.open_past_deadline else 2
        return (group, 0.0, -f.open_past_deadline, h.hoster.casefold())
    return (1, -f.median_seconds, -f.open_past_deadline, h.hoster.casefold())


def by_hoster(rows: Iterable[NoticedItem], now: datetime, deadline_seconds: float) -> list[HosterFigures]:
    """Figures per hoster, ranked slowest first (``ranking_key``)."""
    groups: dict[str, list[NoticedItem]] = defaultdict(list)
    for r in rows:
        groups[r.hoster or UNKNOWN_HOSTER].append(r)
    out = [
        HosterFigures(
            hoster=name,
            countries=tuple(sorted({r.country for r in group if r.country})),
            overall=figures(group, now, deadline_seconds),
            weeks=by_week(group, now, deadline_seconds),
        )
        for name, group in groups.items()
    ]
    return sorted(out, key=ranking_key)


@dataclass(frozen=True)
class OpenCase:
    """An item still online past its deadline: for analysts only (it names the URL)."""

    item_id: str
    url: str
    hoster: str
    country: str | None
    state: str
    first_notice: datetime
    age_seconds: float
    overdue_seconds: float


def open_past_deadline(rows: Iterable[NoticedItem], now: datetime, deadline_seconds: float) -> list[OpenCase]:
    """The open cases past their deadline, oldest first."""
    cases = [
        OpenCase(r.item_id, r.url, r.hoster, r.country, r.state, r.first_notice, r.age(now),
                 r.age(now) - deadline_seconds)
        for r in rows
        if r.past_deadline(now, deadline_seconds)
    ]
    return sorted(cases, key=lambda c: (-c.age_seconds, c.item_id))


# The distribution chart's buckets of time to removal (upper bounds in seconds, inclusive).
BUCKETS: Sequence[tuple[str, float]] = (
    ("≤ 1 h", 3600),
    ("1–6 h", 6 * 3600),
    ("6–24 h", 24 * 3600),
    ("1–3 d", 3 * 86400),
    ("3–7 d", 7 * 86400),
    ("> 7 d", math.inf),
)


def distribution(rows: Iterable[NoticedItem]) -> dict[str, int]:
    """How many removals took how long (from first notice), in ``BUCKETS``."""
    counts = {label: 0 for label, _ in BUCKETS}
    for r in rows:
        t = r.seconds_to_removal()
        if t is None:
            continue
        for label, upper in BUCKETS:
            if t <= upper:
                counts[label] += 1
                break
    return counts


def human_duration(seconds: float | None) -> str:
    """``None`` -> "–"; else minutes, hours (under two days) or days, with one decimal unless it is 0."""
    if seconds is None:
        return "–"
    if seconds < 3600:
        return f"{seconds / 60:.0f} min"
    if seconds < 2 * 86400:
        return f"{seconds / 3600:.1f}".removesuffix(".0") + " h"
    return f"{seconds / 86400:.1f}".removesuffix(".0") + " d"


def human_share(share: float | None) -> str:
    return "–" if share is None else f"{100 * share:.0f} %"
