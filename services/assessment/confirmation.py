"""Deciding an item, with the optional second analyst (``HOTLINE_SECOND_ANALYST``).

Without it, a decision is applied at once (``logic.assess``). With it, "illegal" does not yet
escalate: the item moves to ``awaiting_confirmation`` (its own queue) with the decision on its
timeline; a *different* analyst then **confirms** it (the escalation path of ``assess``:
police, bank, copies) or **disagrees** (the item goes back to ``awaiting_assessment`` with both
decisions on its timeline, for a third look). "Not illegal" closes at once either way: the
second look guards escalations, the costly and irreversible step.

The lease (``queue.py``) is checked here too: a decision on an item another analyst holds a
live lease on is refused (409), and a decision releases the decider's lease.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from hotline.kernel.messages import Outgoing
from hotline.kernel.states import ItemState
from hotline.storage.unit_of_work import SqlUnitOfWork
from schemas.notices import Answer
from services.assessment.classification import ImageDecision
from services.assessment.logic import AssessmentRefused, assess
from services.assessment.queue import QUEUES, lease_until

STAGE = "assessment"


def hold_lease(store: SqlUnitOfWork, item_id: str, analyst: str, at: datetime, lease_seconds: float) -> None:
    """Make sure ``analyst`` holds the item's lease for the decision (claiming it when nobody
    does); AssessmentRefused(409) when another analyst holds a live one."""
    holder = store.leases.holder(item_id, at)
    if holder is not None and holder[0] != analyst:
        raise AssessmentRefused(409, f"item {item_id} is being assessed by {holder[0]} "
                                     f"until {holder[1].strftime('%H:%M:%S UTC')}: your decision was not recorded")
    if not store.leases.claim(item_id, analyst, lease_until(at, lease_seconds), at, list(QUEUES.values())):
        holder = store.leases.holder(item_id, at)
        if holder is not None and holder[0] != analyst:
            raise AssessmentRefused(409, f"item {item_id} was just claimed by {holder[0]}: "
                                         "your decision was not recorded")
        # Not in a queue state: ``assess`` refuses it with the reason.


def decide(
    store: SqlUnitOfWork,
    item_id: str,
    *,
    analyst: str,
    hold_seconds: float | None,
    second_analyst: bool,
    at: datetime,
    lease_seconds: float,
    **decision: Any,
) -> list[Outgoing]:
    """A first decision on an item awaiting assessment: the lease, then ``assess`` with the
    decision as the form or the API sent it (``verdict``, ``category``, ``notes``, ``images``,
    ``answers``). The caller enqueues and commits."""
    hold_lease(store, item_id, analyst, at, lease_seconds)
    outgoing = assess(store, item_id, analyst=analyst, hold_seconds=hold_seconds, second_analyst=second_analyst,
                      **decision)
    store.leases.release(item_id)
    return outgoing


def _replayed_images(first: Any) -> list[dict[str, Any]] | None:
    """The first analyst's per-image decisions as ``assess`` takes them (the row also keeps the
    derived X-ARF code, which is recomputed)."""
    if not first.images:
        return None
    fields = set(ImageDecision.model_fields)
    return [{k: v for k, v in row.items() if k in fields} for row in first.images]


def second_opinion(
    store: SqlUnitOfWork,
    item_id: str,
    *,
    agree: bool,
    analyst: str,
    notes: str | None,
    hold_seconds: float | None,
    at: datetime,
    lease_seconds: float,
) -> list[Outgoing]:
    """A second analyst confirms (the first decision is applied, escalation included) or
    disagrees (back to the assessment queue)."""
    item = store.items.get(item_id)
    if item is None:
        raise AssessmentRefused(404, f"no item {item_id}")
    if item.state != ItemState.AWAITING_CONFIRMATION:
        raise AssessmentRefused(409, f"item {item_id} is {item.state}: there is no decision to confirm")
    first = store.assessments.latest(item_id)
    if first is None:
        raise AssessmentRefused(409, f"item {item_id} has no decision to confirm")
    if first.analyst == analyst:
        raise AssessmentRefused(403, "a second analyst must confirm: you made this decision yourself")
    hold_lease(store, item_id, analyst, at, lease_seconds)
    said = f"{first.analyst} decided illegal ({first.category})"
    if agree:
        combined = f"confirms {first.analyst}'s decision" + (f"; {first.notes}" if first.notes else "") + (
            f"; {notes}" if notes else "")
        images = _replayed_images(first)
        outgoing = assess(store, item_id, verdict=None if images else "illegal",
                          category=None if images else first.category, analyst=analyst, notes=combined,
                          hold_seconds=hold_seconds, images=images,
                          answers=[Answer.model_validate(a) for a in first.answers or []],
                          states=(ItemState.AWAITING_CONFIRMATION,))
        store.audit.append(analyst, "assessment_confirmed", item_id, said)
    else:
        store.assessments.add(item_id, analyst, "disagree", None, notes)
        store.audit.append(analyst, "assessment_disagreed", item_id, said)
        store.items.set_state(item, ItemState.AWAITING_ASSESSMENT,
                              f"{said}; {analyst} disagreed" + (f" ({notes})" if notes else "")
                              + ": back to the queue for another look", STAGE)
        outgoing = []
    store.leases.release(item_id)
    return outgoing
