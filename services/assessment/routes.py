"""Analyst API: the queue of items waiting for assessment, and the decision on one item."""

from __future__ import annotations

from typing import Any, Literal

from fastapi import APIRouter, Depends, HTTPException, Request
from pydantic import BaseModel, ConfigDict, Field

from hotline.kernel.clock import now
from hotline.kernel.states import ItemState
from hotline.storage.unit_of_work import SqlUnitOfWork
from hotline.web.auth import Caller, get_store, require_role
from services.assessment.confirmation import decide
from services.assessment.logic import AssessmentRefused

router = APIRouter(tags=["assessment"])


class AssessmentRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    verdict: Literal["illegal", "not_illegal"]
    category: Literal["baseline", "national"] | None = None
    notes: str | None = Field(default=None, max_length=10_000)


@router.get("/api/v1/items")
def list_items(
    state: str = ItemState.AWAITING_ASSESSMENT,
    store: SqlUnitOfWork = Depends(get_store),
    caller: Caller = Depends(require_role("analyst")),
) -> dict[str, Any]:
    """Items in a state (default: the analyst queue), oldest first. Hashes and metadata only."""
    return {
        "items": [
            {"item_id": i.id, "url": i.url, "state": i.state, "reason": i.reason, "country": i.country,
             "hoster": i.hoster, "first_seen": i.first_seen.isoformat()}
            for i in store.items.in_state(state)
        ]
    }


@router.post("/api/v1/items/{item_id}/assessment")
def post_assessment(
    item_id: str,
    body: AssessmentRequest,
    request: Request,
    store: SqlUnitOfWork = Depends(get_store),
    caller: Caller = Depends(require_role("analyst")),
) -> dict[str, Any]:
    """Record an analyst's decision. ``illegal`` escalates to the police at once and adds the
    item's hashes to the bank (with ``HOTLINE_SECOND_ANALYST``: once a second analyst confirms
    it); ``not_illegal`` closes the item. 409 while another analyst holds the item's lease."""
    settings = request.app.state.system.settings
    try:
        # As the page does: refused (409) while another analyst holds the item's lease; with
        # HOTLINE_SECOND_ANALYST an "illegal" waits for a second analyst (services/assessment/confirmation.py).
        outgoing = decide(store, item_id, verdict=body.verdict, category=body.category,
                          analyst=caller.name, notes=body.notes, hold_seconds=settings.police_hold_seconds,
                          second_analyst=bool(settings.second_analyst), at=now(),
                          lease_seconds=float(settings.assessment_lease_seconds))
    except AssessmentRefused as exc:
        store.rollback()
        raise HTTPException(exc.status, exc.reason) from exc
    store.enqueue(outgoing)
    store.commit()
    item = store.items.get(item_id)
    assert item is not None
    return {"item_id": item_id, "state": item.state, "reason": item.reason}
