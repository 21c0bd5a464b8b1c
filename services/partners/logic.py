"""A partner hotline reports back on a forward (``POST /api/v1/partner/forwards/{id}/status``)
with an ICCAM action code, and what that does here (``services.partners.iccam.EFFECT``):

- ``CR``/``CU``: the content is gone: the item becomes ``removed``, the time since the
  forward (and since the first report) in its reason, as the follow-up's re-check does;
- ``MO``: it moved: the item is looked up again: its classification is cleared, it goes back
  to ``received`` and ``items.accepted`` is published, so classify fetches, hashes and routes
  it anew; the next forward or notice gets a distinct id (``relookup_ids``);
- ``NI``: the partner found it not illegal: back to an analyst (``awaiting_assessment``) with
  the partner's note;
- ``LEA``/``ISP``: recorded on the timeline only.

Every report is a ``ForwardStatus`` row, ``Forward.partner_status``, an audit row and a
``partner_status`` event on the timeline. The same action on the same forward twice has the
effect of once (the second answers ``duplicate``). Only the partner of the forward's country
may report on it (an admin, who has no country, may report on any).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Literal

from hotline.kernel.messages import Outgoing
from hotline.kernel.ports import UnitOfWork
from hotline.kernel.stage import move_item
from hotline.kernel.states import FINAL, ItemState, can_transition
from hotline.storage.models import Forward, Item
from schemas.items import ItemAccepted
from schemas.notices import NoticeEvent
from services.followup.logic import words
from services.partners.iccam import ACTIONS

STAGE = "partners"
Action = Literal["CR", "CU", "MO", "NI", "LEA", "ISP"]


class StatusRefused(Exception):
    """The report cannot be applied; ``status`` is the HTTP code (403, 404)."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


@dataclass
class StatusRecorded:
    forward: Forward
    item: Item | None
    duplicate: bool
    effect: str
    out: list[Outgoing] = field(default_factory=list)

    def as_json(self) -> dict[str, object]:
        return {"forward_id": self.forward.id, "partner_status": self.forward.partner_status,
                "item_state": self.item.state if self.item else None, "duplicate": self.duplicate,
                "effect": self.effect}


def own_forward(uow: UnitOfWork, forward_id: str, country: str | None) -> Forward:
    """The forward, if the caller's country may see it; 404 when unknown, 403 when another
    country's (``country`` None: an admin)."""
    fwd = uow.forwards.lock(forward_id)
    if fwd is None:
        raise StatusRefused(404, f"no forward {forward_id}")
    if country is not None and fwd.country.upper() != country.upper():
        raise StatusRefused(403, f"forward {forward_id} went to the partner of {fwd.country}, not {country.upper()}")
    return fwd


def relookups(uow: UnitOfWork, item_id: str) -> int:
    """How many times a partner said an item's content moved (MO): 0 for a first lookup."""
    return uow.forwards.moved_count(item_id)


def relookup_ids(item_id: str, n: int) -> tuple[str, str]:
    """(notice id, forward id) of the ``n``-th new lookup after a partner's MO: distinct from
    the first (``ntd-<item>``, ``fwd-<item>``) and from the follow-up's ``-moved-<n>`` ids."""
    if n <= 0:
        return f"ntd-{item_id}", f"fwd-{item_id}"
    return f"ntd-{item_id}-mo-{n}", f"fwd-{item_id}-mo-{n}"


def record_status(uow: UnitOfWork, forward_id: str, *, action: Action, note: str | None, by: str,
                  country: str | None, at: datetime) -> StatusRecorded:
    fwd = own_forward(uow, forward_id, country)
    item = uow.items.get(fwd.item_id)
    if any(s.action == action for s in uow.forwards.statuses(fwd.id)):
        return StatusRecorded(fwd, item, True, "already recorded: nothing changed")
    uow.forwards.add_status(fwd.id, action, note, by, at)
    fwd.partner_status, fwd.partner_status_at = action, at
    if fwd.status != "sent":
        # The partner has it (its answer to an attempt was lost, or it came another way): no
        # more attempts.
        fwd.status, fwd.sent_at, fwd.next_attempt_at, fwd.dispatched_at = "sent", at, None, None
    said = f"{fwd.partner or fwd.country} reported {action} ({ACTIONS[action]}) on forward {fwd.id}"
    if note:
        said += f": {note}"
    uow.audit.append(by, "partner_status", fwd.id, f"{action} {note or ''}".strip())
    out = [Outgoing("notices.events", NoticeEvent(
        event_id=f"{fwd.id}:partner_status:{action}", item_id=fwd.item_id, kind="partner_status",
        forward_id=fwd.id, detail=said, at=at,
    ))]
    if item is None:
        return StatusRecorded(fwd, None, False, "recorded", out)
    uow.items.add_event(item.id, STAGE, "partner_status", said, at)
    effect = "recorded on the timeline"
    if action in ("CR", "CU"):
        since = fwd.sent_at or fwd.created_at or item.first_seen
        reason = (f"removed {words(at - since)} after the forward to {fwd.partner or fwd.country} "
                  f"({words(at - item.first_seen)} after the first report): {said}")
        effect = "removed" if can_transition(item.state, ItemState.REMOVED) else f"already {item.state}"
        move_item(uow, item.id, ItemState.REMOVED, reason, STAGE)
        out.append(Outgoing("notices.events", NoticeEvent(
            event_id=f"{fwd.id}:removed", item_id=item.id, kind="removed", forward_id=fwd.id, detail=reason, at=at,
        )))
    elif action == "MO":
        if can_transition(item.state, ItemState.RECEIVED):
            item.classification = None  # classify fetches and routes it again
            uow.items.set_state(item, ItemState.RECEIVED, f"{said}; looked up again", STAGE, at=at)
            out.append(Outgoing("items.accepted", ItemAccepted(
                item_id=item.id, url=item.url, report_ids=uow.items.report_ids(item.id), accepted_at=at,
            )))
            effect = "looked up again"
        else:
            effect = f"not looked up again: the item is {item.state}"
    elif action == "NI":
        if item.state not in FINAL:
            move_item(uow, item.id, ItemState.AWAITING_ASSESSMENT, f"{said}; an analyst decides", STAGE)
            effect = "back to an analyst"
        else:
            effect = f"not reassessed: the item is {item.state}"
    return StatusRecorded(fwd, item, False, effect, out)
