"""Item states as data: the one registry of what an item can be, which states are final
or open, what anonymous callers see, and which changes are allowed.

Every module reads states from here; ``ItemRepository.set_state`` checks each change
against ``TRANSITIONS`` so a stage that moves an item somewhere it cannot go fails loudly
(a bug: the failure policy parks the message) instead of rewriting history.
"""

from __future__ import annotations

from enum import StrEnum


class ItemState(StrEnum):
    RECEIVED = "received"
    NOTICE_QUEUED = "notice_queued"
    FORWARD_QUEUED = "forward_queued"
    AWAITING_ASSESSMENT = "awaiting_assessment"
    ESCALATED = "escalated"
    NOTICE_SENT = "notice_sent"
    NOTICE_UNCONFIRMED = "notice_unconfirmed"
    FORWARDED = "forwarded"
    REMOVED = "removed"
    CLOSED_OFFLINE = "closed_offline"
    CLOSED_NOT_ILLEGAL = "closed_not_illegal"
    # HOTLINE_SECOND_ANALYST: an analyst decided "illegal"; a second analyst confirms it (then
    # escalated) or disagrees (back to awaiting_assessment) (services/assessment/confirmation.py).
    AWAITING_CONFIRMATION = "awaiting_confirmation"


S = ItemState

# Final: the item is done; a URL reported again after this is new work (a new item).
FINAL: frozenset[ItemState] = frozenset({S.REMOVED, S.CLOSED_OFFLINE, S.CLOSED_NOT_ILLEGAL})
# Open: new reports of the same URL link to this item instead of creating new work.
OPEN: frozenset[ItemState] = frozenset(ItemState) - FINAL

# What a URL that never became an item (invalid, refused by ingest) shows in the status API.
REJECTED = "rejected"

# Anonymous callers of GET /api/v1/reports/{id} see only these coarse states.
COARSE: dict[str, str] = {
    S.RECEIVED: "received",
    S.AWAITING_ASSESSMENT: "in_progress",
    S.AWAITING_CONFIRMATION: "in_progress",
    S.NOTICE_QUEUED: "in_progress",
    S.FORWARD_QUEUED: "in_progress",
    S.NOTICE_UNCONFIRMED: "action_taken",
    S.ESCALATED: "action_taken",
    S.NOTICE_SENT: "action_taken",
    S.FORWARDED: "action_taken",
    S.REMOVED: "closed",
    S.CLOSED_OFFLINE: "closed",
    S.CLOSED_NOT_ILLEGAL: "closed",
    REJECTED: "rejected",
}
COARSE_REASON: dict[str, str] = {
    "received": "your report was received and is waiting to be processed",
    "in_progress": "the hotline is processing this address",
    "action_taken": "the hotline has taken action on this address",
    "closed": "the hotline has finished with this address",
    "rejected": "this address could not be processed",
}

# Allowed changes. Any open item may be put before an analyst (a parked message, a
# forward that failed, a partner saying "not illegal") and any open item may be found
# removed; final states never change.
_ANY_OPEN_TO = {S.AWAITING_ASSESSMENT, S.REMOVED}
TRANSITIONS: dict[ItemState, frozenset[ItemState]] = {
    # A Tor hidden service goes from classify straight to the police (escalated).
    S.RECEIVED: frozenset({S.NOTICE_QUEUED, S.FORWARD_QUEUED, S.CLOSED_OFFLINE, S.ESCALATED}),
    S.AWAITING_ASSESSMENT: frozenset({S.ESCALATED, S.CLOSED_NOT_ILLEGAL, S.NOTICE_QUEUED, S.FORWARD_QUEUED,
                                      S.AWAITING_CONFIRMATION}),
    # Confirmed: escalated; disagreed: back to awaiting_assessment (any open state may go there).
    S.AWAITING_CONFIRMATION: frozenset({S.ESCALATED}),
    S.NOTICE_QUEUED: frozenset({S.NOTICE_SENT, S.NOTICE_UNCONFIRMED}),
    S.FORWARD_QUEUED: frozenset({S.FORWARDED}),
    # A senior analyst who finds escalated material not illegal before the takedown closes it
    # (services/assessment/logic.py ``revise``).
    S.ESCALATED: frozenset({S.NOTICE_QUEUED, S.FORWARD_QUEUED, S.CLOSED_NOT_ILLEGAL}),
    S.NOTICE_SENT: frozenset(),
    # An operator who checked the SMTP log either confirms the delivery (-> notice_sent) or
    # finds it was not delivered and sends it again, to the same or another address
    # (-> notice_queued; services/operations).
    S.NOTICE_UNCONFIRMED: frozenset({S.NOTICE_SENT, S.NOTICE_QUEUED}),
    # A partner reports the content moved (ICCAM MO): the item is looked up again, from the
    # start (services/partners/logic.py).
    S.FORWARDED: frozenset({S.RECEIVED}),
    S.REMOVED: frozenset(),
    S.CLOSED_OFFLINE: frozenset(),
    # The one change out of a final state: a senior analyst finds it illegal after all, and it is
    # escalated (the URL's open slot is taken again; refused while another item holds it).
    S.CLOSED_NOT_ILLEGAL: frozenset({S.ESCALATED}),
}
TRANSITIONS = {
    state: (targets | _ANY_OPEN_TO) if state in OPEN else targets for state, targets in TRANSITIONS.items()
}


class IllegalTransition(ValueError):
    """A stage tried to move an item where it cannot go: a bug, never retried forever."""


def can_transition(current: str, new: str) -> bool:
    try:
        return ItemState(new) in TRANSITIONS[ItemState(current)]
    except ValueError:
        return False


def check_transition(current: str, new: str) -> ItemState:
    """The new state as an ``ItemState``; raises ``IllegalTransition`` when the change is not allowed."""
    try:
        frm, to = ItemState(current), ItemState(new)
    except ValueError as exc:
        raise IllegalTransition(f"unknown item state in {current!r} -> {new!r}") from exc
    if to not in TRANSITIONS[frm]:
        raise IllegalTransition(f"an item cannot go from {frm} to {to}")
    return to
