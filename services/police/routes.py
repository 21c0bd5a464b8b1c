"""The police API: the escalations with their state, and the police's actions on one.

``GET /api/v1/escalations`` (role police; admins pass too) lists them newest first, with
everything on ``escalations.police`` and the state, hold reason, release due time and outcome;
what it showed is appended to the audit log. ``POST /api/v1/escalations/{id}/received``,
``/hold`` (JSON ``{"reason": ...}``, required) and ``/release``: 404 for an unknown id, 409 when
the escalation is in a state the action does not start from (a second release is a 409), 422
for a hold without a reason. A call signed in by cookie alone must come from a page of this
site (the same origin check as the analyst pages), so another site cannot act through a
signed-in browser.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Depends, HTTPException, Query, Request
from pydantic import BaseModel, ConfigDict, Field

from hotline.storage.unit_of_work import SqlUnitOfWork
from hotline.web.auth import Caller, get_store, require_role
from schemas.notices import PoliceActionKind
from services.assessment.pages import same_origin
from services.police.logic import MAX_REASON, PoliceRefused, act, describe, shown

router = APIRouter(tags=["police"])

StoreDep = Annotated[SqlUnitOfWork, Depends(get_store)]
Police = Annotated[Caller, Depends(require_role("police"))]


class HoldRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    reason: str = Field(min_length=1, max_length=MAX_REASON)


def listing(store: SqlUnitOfWork, viewer: str, where: str, limit: int = 200,
            since: datetime | None = None) -> list[dict[str, Any]]:
    """The escalations newest first as the police see them; the showing is audited (committed)."""
    rows = list(store.escalations.newest(limit, start=since))
    shown(store, viewer, rows, where)
    store.commit()
    return [describe(r) for r in rows]


def apply(store: SqlUnitOfWork, escalation_id: str, action: PoliceActionKind, by: str,
          reason: str | None = None) -> dict[str, Any]:
    """Apply and commit one action with its message (outbox); the escalation as it is now.
    Raises PoliceRefused (rolled back, nothing changed)."""
    try:
        outgoing = act(store, escalation_id, action, by, reason)
    except PoliceRefused:
        store.rollback()
        raise
    store.enqueue(outgoing)
    store.commit()
    row = store.escalations.get(escalation_id)
    assert row is not None
    return describe(row)


@router.get("/api/v1/escalations")
def list_escalations(
    store: StoreDep, caller: Police,
    limit: Annotated[int, Query(ge=1, le=1000)] = 200,
    since: datetime | None = None,
) -> dict[str, Any]:
    """Escalations newest first (``since``: created at or after), with state and all facts."""
    return {"escalations": listing(store, caller.name, "GET /api/v1/escalations", limit, since)}


def _api(request: Request, store: SqlUnitOfWork, caller: Caller, escalation_id: str, action: PoliceActionKind,
         reason: str | None = None) -> dict[str, Any]:
    if "authorization" not in request.headers and not same_origin(request):
        raise HTTPException(403, "a call signed in by cookie must come from a page of this site; "
                                 "send Authorization: Bearer TOKEN")
    try:
        return apply(store, escalation_id, action, caller.name, reason)
    except PoliceRefused as exc:
        raise HTTPException(exc.status, exc.reason) from exc


@router.post("/api/v1/escalations/{escalation_id}/received")
def post_received(escalation_id: str, request: Request, store: StoreDep, caller: Police) -> dict[str, Any]:
    """The police acknowledge the escalation (from ``new``)."""
    return _api(request, store, caller, escalation_id, "received")


@router.post("/api/v1/escalations/{escalation_id}/hold")
def post_hold(escalation_id: str, body: HoldRequest, request: Request, store: StoreDep,
              caller: Police) -> dict[str, Any]:
    """Keep the takedown back (from ``new`` or ``received``): no notice until released; the
    hold timer never releases an escalation on hold."""
    return _api(request, store, caller, escalation_id, "hold", body.reason)


@router.post("/api/v1/escalations/{escalation_id}/release")
def post_release(escalation_id: str, request: Request, store: StoreDep, caller: Police) -> dict[str, Any]:
    """Let the takedown go: the NTD (or the forward, when hosted abroad) follows through the
    escalate stage. Released is final: a second release answers 409."""
    return _api(request, store, caller, escalation_id, "release")
