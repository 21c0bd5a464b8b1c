"""The one table between this hotline and INHOPE's ICCAM action codes, so operators can
mirror every case in ICCAM (and read what a partner reports back).

ICCAM's codes: ``LEA`` reported to law enforcement, ``ISP`` reported to the hosting
provider, ``CR`` content removed, ``CU`` content unavailable, ``MO`` moved (hosted
elsewhere now), ``NI`` not illegal. ``None`` where ICCAM has no code for the step (the
case is still being worked on, or it is ICCAM's own forwarding).
"""

from __future__ import annotations

from typing import Literal, get_args

from hotline.kernel.states import ItemState
from schemas.notices import IccamAction, PartnerStatusUpdate

S = ItemState

ACTIONS: dict[str, str] = {
    "LEA": "reported to the police",
    "ISP": "reported to the hosting provider",
    "CR": "content removed",
    "CU": "content unavailable",
    "MO": "moved to another hoster",
    "NI": "not illegal",
}

# Every item state -> the ICCAM code a case in that state has (tests/unit: every state is here).
STATE_ACTION: dict[ItemState, IccamAction | None] = {
    S.RECEIVED: None,
    S.NOTICE_QUEUED: None,
    S.FORWARD_QUEUED: None,
    S.AWAITING_ASSESSMENT: None,
    S.AWAITING_CONFIRMATION: None,
    S.ESCALATED: "LEA",
    S.NOTICE_SENT: "ISP",
    S.NOTICE_UNCONFIRMED: "ISP",
    S.FORWARDED: None,  # in ICCAM the case is assigned to the partner's country
    S.REMOVED: "CR",
    S.CLOSED_OFFLINE: "CU",
    S.CLOSED_NOT_ILLEGAL: "NI",
}

Step = Literal["acknowledged", "notice_sent", "removed", "forwarded", "escalated", "not_illegal", "offline",
               "rejected"]

# Every step of a status update to a partner -> its ICCAM code.
STEP_ACTION: dict[str, IccamAction | None] = {
    "acknowledged": None,
    "notice_sent": "ISP",
    "removed": "CR",
    "forwarded": None,
    "escalated": "LEA",
    "not_illegal": "NI",
    "offline": "CU",
    "rejected": None,
}

# What a partner's code does to the item here (services.partners.logic).
EFFECT: dict[str, str] = {
    "CR": "the item is removed (the time since the forward in its reason)",
    "CU": "the item is removed (the time since the forward in its reason)",
    "MO": "the item is looked up again (a new classification; a new forward or notice)",
    "NI": "the item goes back to an analyst with the partner's note",
    "LEA": "recorded on the item's timeline",
    "ISP": "recorded on the item's timeline",
}


def table_rows() -> list[tuple[str, str, str]]:
    """(what, our state or step, ICCAM code) for the README and ``hotline partners iccam``."""
    rows: list[tuple[str, str, str]] = [("item state", str(state), STATE_ACTION[state] or "-") for state in ItemState]
    rows += [("status update", step, STEP_ACTION[step] or "-") for step in STEP_ACTION]
    return rows


def _check() -> None:
    steps = set(get_args(PartnerStatusUpdate.model_fields["step"].annotation))
    assert steps == set(STEP_ACTION) == set(get_args(Step)), "STEP_ACTION must name every step of PartnerStatusUpdate"


_check()
