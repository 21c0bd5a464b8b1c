"""The follow-up's decisions as pure functions of the clock's time and the follow-up's state:
when the next re-check is due, what a re-check result means (a removal is confirmed by a
second "gone" result), and which reminder or ladder step is next. No I/O here; tests drive
them with a ``FakeClock``'s times.

The steps, numbered from 1: the *reminder* to the same abuse contact, due
``deadline_seconds`` after the first notice; then each rung of the ladder (``ladder``,
e.g. upstream provider, registrar, authority), due ``ladder_step_seconds`` after the last
step that went out. A step is only ever decided on a re-check that found the content
still online; removed content gets nothing more. A rung with no known address is
skipped (with the reason), and the next rung follows at once.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum

LADDER_STEPS = ("upstream", "registrar", "authority")


class CheckResult(StrEnum):
    ONLINE = "online"  # the matched image is still served
    GONE = "gone"  # 404/410, or the name no longer resolves
    CHANGED = "changed"  # the URL serves something, but not the matched image
    UNREACHABLE = "unreachable"  # no answer that tells either way (timeout, 5xx, refused)
    MOVED = "moved"  # the matched content is now served from another hoster (a new notice goes there)


REMOVED_RESULTS = frozenset({CheckResult.GONE, CheckResult.CHANGED})
CONFIRMATIONS = 2  # "gone" results in a row that make a removal (one hiccup is not one)


@dataclass(frozen=True)
class Policy:
    recheck_seconds: float = 3600.0
    deadline_seconds: float = 86400.0
    confirm_seconds: float = 300.0
    jitter: float = 0.1
    ladder: tuple[str, ...] = LADDER_STEPS
    ladder_step_seconds: float = 86400.0

    @staticmethod
    def parse_ladder(text: str) -> tuple[str, ...]:
        steps = tuple(s.strip().lower() for s in text.split(",") if s.strip())
        unknown = [s for s in steps if s not in LADDER_STEPS]
        if unknown:
            raise ValueError(f"unknown ladder step(s) {', '.join(unknown)}; choose from {', '.join(LADDER_STEPS)}")
        return steps

    @property
    def steps(self) -> tuple[str, ...]:
        """Every step in order: the reminder, then the ladder."""
        return ("reminder", *self.ladder)


def _whole(t: datetime) -> datetime:
    """Due times in whole seconds, so they compare equal after any trip through JSON or SQL."""
    return t.replace(microsecond=0)


def jitter_seconds(item_id: str, checks: int, policy: Policy) -> float:
    """Up to ``policy.jitter`` of the interval, fixed per (item, check): spread out, reproducible."""
    if policy.jitter <= 0:
        return 0.0
    digest = hashlib.sha256(f"{item_id}:{checks}".encode()).digest()
    share = int.from_bytes(digest[:4], "big") / 2**32
    return share * policy.jitter * policy.recheck_seconds


def next_regular_check(item_id: str, checks: int, after: datetime, policy: Policy) -> datetime:
    return _whole(after + timedelta(seconds=policy.recheck_seconds + jitter_seconds(item_id, checks, policy)))


def first_check_at(item_id: str, first_notice_at: datetime, policy: Policy) -> datetime:
    return next_regular_check(item_id, 0, first_notice_at, policy)


@dataclass(frozen=True)
class CheckOutcome:
    misses: int
    first_gone_at: datetime | None
    next_check_at: datetime | None  # None: removed, no more checks
    removed_at: datetime | None  # set when this check confirmed the removal


def after_check(
    *, item_id: str, checks: int, misses: int, first_gone_at: datetime | None,
    checked_at: datetime, result: CheckResult, policy: Policy,
) -> CheckOutcome:
    """What a re-check result means. ``checks`` counts the checks before this one. ``moved``
    ends this follow-up at once (the content was positively seen at the other hoster; the
    new hoster's notice gets a follow-up of its own) and is no removal."""
    if result is CheckResult.MOVED:
        return CheckOutcome(0, None, None, None)
    if result in REMOVED_RESULTS:
        gone_at = first_gone_at or checked_at
        if misses + 1 >= CONFIRMATIONS:
            return CheckOutcome(misses + 1, gone_at, None, gone_at)
        return CheckOutcome(misses + 1, gone_at, _whole(checked_at + timedelta(seconds=policy.confirm_seconds)), None)
    if result is CheckResult.UNREACHABLE:
        # Says nothing either way: a removal being confirmed is looked at again soon, else as usual.
        if misses:
            return CheckOutcome(misses, first_gone_at, _whole(checked_at + timedelta(seconds=policy.confirm_seconds)), None)
        return CheckOutcome(0, None, next_regular_check(item_id, checks + 1, checked_at, policy), None)
    return CheckOutcome(0, None, next_regular_check(item_id, checks + 1, checked_at, policy), None)


_MOVED_SUFFIX = re.compile(r"-moved-(\d+)$")


def moves(notice_id: str) -> int:
    """How many times the content had moved when this notice was made (0: the first notice)."""
    m = _MOVED_SUFFIX.search(notice_id)
    return int(m.group(1)) if m else 0


def moved_notice_id(item_id: str, notice_id: str) -> str:
    """The notice to the next hoster after the content of ``notice_id`` moved: deterministic, so
    the same moved result recorded twice names one notice."""
    return f"ntd-{item_id}-moved-{moves(notice_id) + 1}"


def moved_forward_id(item_id: str, notice_id: str) -> str:
    return f"fwd-{item_id}-moved-{moves(notice_id) + 1}"


def step_due_at(position: int, first_notice_at: datetime, last_step_at: datetime | None, policy: Policy) -> datetime:
    deadline = first_notice_at + timedelta(seconds=policy.deadline_seconds)
    if position <= 1:
        return deadline
    return (last_step_at or deadline) + timedelta(seconds=policy.ladder_step_seconds)


def next_step(
    *, steps_taken: int, first_notice_at: datetime, last_step_at: datetime | None, at: datetime, policy: Policy,
) -> tuple[int, str] | None:
    """(position, kind) of the step due at ``at`` for content still online, or None."""
    kinds = policy.steps
    if steps_taken >= len(kinds):
        return None
    position = steps_taken + 1
    if at < step_due_at(position, first_notice_at, last_step_at, policy):
        return None
    return position, kinds[position - 1]


def words(delta: timedelta) -> str:
    """A duration for people: "45 min", "5 h 12 min", "3 days 2 h"."""
    minutes = max(int(delta.total_seconds() // 60), 0)
    days, rest = divmod(minutes, 24 * 60)
    hours, mins = divmod(rest, 60)
    if days:
        return f"{days} day{'s' if days != 1 else ''}" + (f" {hours} h" if hours else "")
    if hours:
        return f"{hours} h" + (f" {mins} min" if mins else "")
    return f"{mins} min"


def removal_reason(removed_at: datetime, first_notice_at: datetime, first_report_at: datetime, why: str) -> str:
    return (
        f"removed {words(removed_at - first_notice_at)} after the first notice "
        f"({words(removed_at - first_report_at)} after the first report): {why}"
    )
