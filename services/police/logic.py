"""What the police may do with an escalation, as one state machine both the police (routes,
page) and the hold timer (``services.escalate.hold_timer``) go through.

States: ``new`` (sent to the police) → ``received`` (acknowledged) → ``on_hold`` (the takedown
is kept back, with a reason) → ``released`` (the takedown may go). A hold is possible from
``new`` or ``received``; a release from any state but ``released``, which is final. Anything
else is refused with 409 and changes nothing: a second release is a 409 too (the first one
already produced the takedown; saying so beats pretending a second one did anything).

Every action is recorded in the same transaction as the state change: the escalation's own
columns, the audit log (``uow.audit.append``), the item's timeline, and a ``PoliceAction`` on
``escalations.actions`` through the outbox, so the escalate stage sees exactly the actions that
were committed. ``action_id`` is ``{escalation_id}:{action}``: each action happens at most once
per escalation, so a consumer dedupes by it. What the police *saw* is audited too
(:func:`shown`).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from hotline.kernel.clock import now
from hotline.kernel.messages import Outgoing
from hotline.kernel.ports import UnitOfWork
from hotline.storage.models import Escalation
from schemas.notices import PoliceAction, PoliceActionKind

TOPIC = "escalations.actions"
HOLD_TIMER = "hold-timer"  # ``by`` of a release because the hold time passed
STATES = ("new", "received", "on_hold", "released")
# action -> the states it may start from, and the state it leads to
ALLOWED: dict[str, tuple[str, ...]] = {
    "received": ("new",),
    "hold": ("new", "received"),
    "release": ("new", "received", "on_hold"),
}
LEADS_TO = {"received": "received", "hold": "on_hold", "release": "released"}
MAX_REASON = 2000
_VERB = {"received": "marked received", "hold": "put on hold", "release": "released (again)"}


class PoliceRefused(Exception):
    """The action cannot be applied (unknown escalation, wrong state, no reason): ``status`` is
    the HTTP code; nothing was changed."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


def act(
    uow: UnitOfWork, escalation_id: str, action: PoliceActionKind, by: str, reason: str | None = None,
) -> list[Outgoing]:
    """Apply a police action (locked row, state checked); the messages to commit with it."""
    reason = (reason or "").strip() or None
    if action == "hold" and reason is None:
        raise PoliceRefused(422, "a hold needs a reason")
    if reason is not None and len(reason) > MAX_REASON:
        raise PoliceRefused(422, f"the reason is limited to {MAX_REASON} characters")
    escalation = uow.escalations.lock(escalation_id)
    if escalation is None:
        raise PoliceRefused(404, f"no escalation {escalation_id}")
    if escalation.state not in ALLOWED[action]:
        raise PoliceRefused(409, f"escalation {escalation_id} is {escalation.state}: it cannot be {_VERB[action]}")
    return record(uow, escalation, action, by, reason)


def record(
    uow: UnitOfWork, escalation: Escalation, action: PoliceActionKind, by: str, reason: str | None = None,
    at: datetime | None = None,
) -> list[Outgoing]:
    """Record an allowed action on a locked escalation; the ``PoliceAction`` to publish with it."""
    at = at or now()
    escalation.state = LEADS_TO[action]
    if action == "received":
        escalation.received_at, escalation.received_by = at, by
        detail = f"received by the police ({by})"
    elif action == "hold":
        escalation.held_at, escalation.held_by, escalation.hold_reason = at, by, reason
        detail = f"police hold by {by}: {reason}"
    else:
        escalation.released_at, escalation.released_by = at, by
        detail = ("released automatically: hold time passed" if by == HOLD_TIMER
                  else f"released by police officer {by}")
    uow.audit.append(by, f"police_{action}", escalation.id, detail)
    if action != "release":  # the release's timeline entry says what it produced (escalate)
        uow.items.add_event(escalation.item_id, "police", f"police_{action}", detail, at)
    message = PoliceAction(action_id=f"{escalation.id}:{action}", escalation_id=escalation.id,
                           item_id=escalation.item_id, action=action, by=by, reason=reason, at=at)
    return [Outgoing(TOPIC, message)]


def describe(escalation: Escalation) -> dict[str, Any]:
    """One escalation as the police see it: everything on ``escalations.police`` (URL, hashes,
    hosting facts, first/last seen, report ids, the analyst's classification) and its state."""
    payload = dict(escalation.payload or {})
    payload.pop("schema_version", None)
    return {
        **payload,
        "escalation_id": escalation.id,
        "item_id": escalation.item_id,
        "state": escalation.state,
        "escalated_at": payload.get("escalated_at") or _iso(escalation.created_at),
        "release_due_at": _iso(escalation.release_due_at),
        "received_at": _iso(escalation.received_at),
        "received_by": escalation.received_by,
        "held_at": _iso(escalation.held_at),
        "held_by": escalation.held_by,
        "hold_reason": escalation.hold_reason,
        "released_at": _iso(escalation.released_at),
        "released_by": escalation.released_by,
        "outcome": escalation.outcome,
        "actions": allowed_actions(escalation),
    }


def allowed_actions(escalation: Escalation) -> list[str]:
    return [a for a, states in ALLOWED.items() if escalation.state in states]


def shown(uow: UnitOfWork, viewer: str, escalations: list[Escalation], where: str) -> None:
    """Audit what ``viewer`` was shown (the escalation ids), in the caller's transaction."""
    ids = " ".join(e.id for e in escalations)
    uow.audit.append(viewer, "police_viewed", where, f"{len(escalations)} escalation(s): {ids}"[:20_000])


def _iso(at: datetime | None) -> str | None:
    return at.isoformat() if at is not None else None
