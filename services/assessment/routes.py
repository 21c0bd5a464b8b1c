"""Analyst API: the queue of items waiting for assessment, the decision on one item (for the
whole item, or per image in ICCAM's fields), a senior analyst's change of a decision, and the
hotline's own questions."""

from __future__ import annotations

from typing import Any, Literal

from fastapi import APIRouter, Depends, HTTPException, Request
from pydantic import BaseModel, ConfigDict, Field

from hotline.kernel.clock import now
from hotline.kernel.states import ItemState
from hotline.storage.unit_of_work import SqlUnitOfWork
from hotline.web.auth import Caller, get_store, require_role
from schemas.notices import Answer
from services.assessment import questions
from services.assessment.classification import ClassificationInvalid, ImageDecision
from services.assessment.confirmation import decide
from services.assessment.logic import AssessmentRefused, revise
from services.bank.bank import retire

router = APIRouter(tags=["assessment"])


class AssessmentRequest(BaseModel):
    """The old body (``verdict``, ``category`` for the whole item) or, with ``images``, one
    decision per image (``sha256`` or ``url``, ICCAM's fields): the verdict then follows."""

    model_config = ConfigDict(extra="forbid")

    verdict: Literal["illegal", "not_illegal", "doubtful"] | None = None
    category: Literal["baseline", "national"] | None = None
    notes: str | None = Field(default=None, max_length=10_000)
    images: list[ImageDecision] | None = Field(default=None, max_length=500)
    answers: dict[str, str | bool] = {}


class ChangeRequest(AssessmentRequest):
    """A senior analyst's change: the new decision, and why."""

    reason: str = Field(min_length=1, max_length=2_000)


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


@router.get("/api/v1/assessment/questions")
def list_questions(request: Request, caller: Caller = Depends(require_role("analyst"))) -> dict[str, Any]:
    """The hotline's own questions every assessment answers (HOTLINE_ASSESSMENT_QUESTIONS_FILE)."""
    return {"questions": [q.model_dump() for q in hotline_questions(request)]}


def hotline_questions(request: Request) -> tuple[questions.Question, ...]:
    return questions.load(request.app.state.system.settings.assessment_questions_file)


def checked_answers(request: Request, given: dict[str, str | bool]) -> list[Answer]:
    """The answers, checked against the hotline's questions; 422 naming each question."""
    try:
        return questions.answers(hotline_questions(request), given)
    except questions.AnswersInvalid as exc:
        raise HTTPException(422, [{"field": f"answers.{qid}", "reason": msg} for qid, msg in exc.errors]) from exc


def invalid(exc: ClassificationInvalid) -> HTTPException:
    """422 in the app's one shape (``{"field", "reason"}``, as for every other 422): where
    (``images.N.field``) and what."""
    return HTTPException(422, [{"field": ".".join(str(p) for p in [*(["images"] if loc and isinstance(loc[0], int) else []), *loc]),
                                "reason": msg} for loc, msg in exc.errors])


@router.post("/api/v1/items/{item_id}/assessment")
def post_assessment(
    item_id: str,
    body: AssessmentRequest,
    request: Request,
    store: SqlUnitOfWork = Depends(get_store),
    caller: Caller = Depends(require_role("analyst")),
) -> dict[str, Any]:
    """Record an analyst's decision. ``illegal`` (any image baseline or national) escalates to
    the police at once and adds the illegal images' hashes to the bank; ``not_illegal`` (every
    image) closes the item; ``doubtful`` (some image doubtful, none illegal) keeps it with the
    analysts for a second look. With ``HOTLINE_SECOND_ANALYST`` an ``illegal`` waits for a second
    analyst; 409 while another analyst holds the item's lease."""
    answers = checked_answers(request, body.answers)
    try:
        # As the page does: refused (409) while another analyst holds the item's lease; with
        # HOTLINE_SECOND_ANALYST an "illegal" waits for a second analyst (services/assessment/confirmation.py).
        settings = request.app.state.system.settings
        outgoing = decide(store, item_id, verdict=body.verdict, category=body.category,
                          analyst=caller.name, notes=body.notes, images=body.images, answers=answers,
                          hold_seconds=settings.police_hold_seconds, second_analyst=bool(settings.second_analyst),
                          at=now(), lease_seconds=float(settings.assessment_lease_seconds))
    except AssessmentRefused as exc:
        store.rollback()
        raise HTTPException(exc.status, exc.reason) from exc
    except ClassificationInvalid as exc:
        store.rollback()
        raise invalid(exc) from exc
    store.enqueue(outgoing)
    store.commit()
    item = store.items.get(item_id)
    assert item is not None
    return {"item_id": item_id, "state": item.state, "reason": item.reason}


@router.post("/api/v1/items/{item_id}/assessment/change")
def change_assessment(
    item_id: str,
    body: ChangeRequest,
    request: Request,
    store: SqlUnitOfWork = Depends(get_store),
    caller: Caller = Depends(require_role("senior")),
) -> dict[str, Any]:
    """A senior analyst changes a decision (role ``senior``, or ``admin``); the old and the new
    decision go to the audit log. See ``services.assessment.logic.revise`` for what follows."""
    answers = checked_answers(request, body.answers)
    try:
        revision = revise(store, item_id, senior=caller.name, reason=body.reason,
                          retire=lambda entry_id, why: retire(store, entry_id, why, caller.name),
                          verdict=body.verdict, category=body.category, images=body.images, answers=answers,
                          notes=body.notes, hold_seconds=request.app.state.system.settings.police_hold_seconds)
    except AssessmentRefused as exc:
        store.rollback()
        raise HTTPException(exc.status, exc.reason) from exc
    except ClassificationInvalid as exc:
        store.rollback()
        raise invalid(exc) from exc
    store.enqueue(revision.outgoing)
    store.commit()
    if revision.retired:
        request.app.state.system.bank.forget(revision.retired)
    item = store.items.get(item_id)
    assert item is not None
    return {"item_id": item_id, "state": item.state, "reason": item.reason, "old": revision.old,
            "new": revision.new, "retired_bank_entries": revision.retired}
