"""The operators' page and API: notices that need a person (``services.operations.logic``).

Who: admins and analysts may *see* the list (an analyst meets a bounced notice in the
assessment queue and wants to know its story); only **admins** may *act* (mark delivered,
resend, send elsewhere), because an action sends e-mail on the hotline's behalf or records
that it was delivered, on the strength of the mail server's log, which admins run.

The page's forms are protected like the analyst pages (the token cookie is SameSite=Strict and
every POST must come from a page of this host: ``services.assessment.pages.same_origin``). The
JSON API takes a bearer token; a call that authenticates with the cookie alone must pass the
same origin check, so another site cannot use a signed-in browser to act.
"""

from __future__ import annotations

import secrets
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import quote

from fastapi import APIRouter, Depends, Form, HTTPException, Request
from fastapi import Path as PathParam
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from fastapi.templating import Jinja2Templates
from pydantic import BaseModel, ConfigDict, Field

from hotline.kernel.clock import now
from hotline.kernel.messages import Outgoing
from hotline.storage.unit_of_work import SqlUnitOfWork
from hotline.web.auth import Caller, get_store, has_role, optional_caller, require_role
from services.assessment.pages import TOKEN_COOKIE, protect, read_flash, same_origin, set_flash
from services.operations import rejections
from services.operations.logic import (
    OperationRefused,
    PendingNotice,
    mark_delivered,
    needing_operator,
    resend,
    retry_delivery,
    send_elsewhere,
    undelivered,
)

router = APIRouter(tags=["operations"])
_HERE = Path(__file__).parent
# Our own pages first, then the analyst pages' base and error templates.
templates = Jinja2Templates(directory=[str(_HERE / "templates"), str(_HERE.parent / "assessment" / "templates")])

FLASH_COOKIE = "hotline_ops_flash"
VIEW_ROLES = ("analyst", "admin")
ACT_ROLE = "admin"
Action = Literal["mark-delivered", "resend", "send-elsewhere"]

StoreDep = Annotated[SqlUnitOfWork, Depends(get_store)]


class SendElsewhereRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    abuse_email: str = Field(max_length=320)


def _pending(request: Request, store: SqlUnitOfWork) -> list[PendingNotice]:
    settings = request.app.state.system.settings
    return needing_operator(store, now(), int(settings.notice_failed_alert_seconds))


def _apply(store: SqlUnitOfWork, notice_id: str, action: str, operator: str, abuse_email: str) -> str:
    """Run the action and commit its state changes with its messages (outbox); returns a
    sentence saying what happened. Raises OperationRefused (nothing changed)."""
    try:
        outgoing: list[Outgoing]
        if action == "mark-delivered":
            outgoing = mark_delivered(store, notice_id, operator=operator, at=now())
            done = f"notice {notice_id} marked delivered"
        elif action == "resend":
            outgoing = resend(store, notice_id, operator=operator)
            done = f"notice {notice_id} queued to be sent again"
        else:
            outgoing = send_elsewhere(store, notice_id, operator=operator, abuse_email=abuse_email)
            new = outgoing[0].message
            done = f"notice {notice_id} superseded: {getattr(new, 'notice_id', '?')} queued to {abuse_email.strip()}"
    except OperationRefused:
        store.rollback()
        raise
    store.enqueue(outgoing)
    store.commit()
    return done


# -- JSON API --------------------------------------------------------------


@router.get("/api/v1/operations/notices")
def list_notices(
    request: Request, store: StoreDep, caller: Annotated[Caller, Depends(require_role(*VIEW_ROLES))],
) -> dict[str, Any]:
    """Notices in ``delivery_unknown``, ``refused`` and long ``failed``, oldest first, with the
    actions each allows (for admins)."""
    return {"notices": [p.as_json() for p in _pending(request, store)]}


def _api_action(
    request: Request, store: SqlUnitOfWork, caller: Caller, notice_id: str, action: str, abuse_email: str = "",
) -> dict[str, Any]:
    if "authorization" not in request.headers and not same_origin(request):
        raise HTTPException(403, "a call signed in by cookie must come from a page of this site; "
                                 "send Authorization: Bearer TOKEN")
    try:
        done = _apply(store, notice_id, action, caller.name, abuse_email)
    except OperationRefused as exc:
        raise HTTPException(exc.status, exc.reason) from exc
    notice = store.notices.get(notice_id)
    item = store.items.get(notice.item_id) if notice else None
    return {"notice_id": notice_id, "status": notice.status if notice else None,
            "item_id": item.id if item else None, "item_state": item.state if item else None, "done": done}


Admin = Annotated[Caller, Depends(require_role(ACT_ROLE))]


@router.post("/api/v1/operations/notices/{notice_id}/mark-delivered")
def api_mark_delivered(notice_id: str, request: Request, store: StoreDep, caller: Admin) -> dict[str, Any]:
    """The notice is in the SMTP log: ``sent``, the item ``notice_sent``."""
    return _api_action(request, store, caller, notice_id, "mark-delivered")


@router.post("/api/v1/operations/notices/{notice_id}/resend")
def api_resend(notice_id: str, request: Request, store: StoreDep, caller: Admin) -> dict[str, Any]:
    """The notice was not delivered: notify sends the same notice again (once)."""
    return _api_action(request, store, caller, notice_id, "resend")


@router.post("/api/v1/operations/notices/{notice_id}/send-elsewhere")
def api_send_elsewhere(
    notice_id: str, body: SendElsewhereRequest, request: Request, store: StoreDep, caller: Admin,
) -> dict[str, Any]:
    """Send the notice to ``abuse_email`` as a new notice; this one becomes ``superseded``."""
    return _api_action(request, store, caller, notice_id, "send-elsewhere", body.abuse_email)


# -- page ------------------------------------------------------------------


def _render(request: Request, context: dict[str, Any], status_code: int = 200, name: str = "operations.html",
            ) -> HTMLResponse:
    nonce = secrets.token_urlsafe(16)
    ctx = {"hotline_name": request.app.state.system.settings.hotline_name, "nonce": nonce,
           "caller": None, "flash": None}
    ctx.update(context)
    return protect(templates.TemplateResponse(request, name, ctx, status_code=status_code), nonce)


def _error(request: Request, status_code: int, message: str, caller: Caller | None) -> HTMLResponse:
    return _render(request, {"status": status_code, "message": message, "caller": caller}, status_code,
                   "error.html")


def _gate(request: Request, store: SqlUnitOfWork, roles: tuple[str, ...]) -> Caller | Response:
    try:
        caller = optional_caller(request, store)
    except HTTPException:
        caller = None  # a stale or revoked cookie counts as signed out
    if caller is None:
        response = RedirectResponse(f"/login?next={quote('/operations')}", status_code=303)
        if TOKEN_COOKIE in request.cookies:
            response.delete_cookie(TOKEN_COOKIE, path="/", httponly=True, samesite="strict")
        return response
    if not has_role(caller.role, roles):
        what = "act on notices" if roles == (ACT_ROLE,) else "use the operations page"
        return _error(request, 403, f"The account {caller.name} ({caller.role}) may not {what}.", caller)
    return caller


@router.get("/operations", response_class=HTMLResponse, include_in_schema=False)
def operations_page(request: Request, store: StoreDep) -> Response:
    caller = _gate(request, store, VIEW_ROLES)
    if isinstance(caller, Response):
        return caller
    flash = read_flash(request, FLASH_COOKIE)
    response = _render(request, {"caller": caller, "pending": _pending(request, store), "flash": flash,
                                 "can_act": caller.role == ACT_ROLE, "now": now(),
                                 "deliveries": undelivered(store), "rejections": rejections.unresolved(store)})
    if flash is not None:
        response.delete_cookie(FLASH_COOKIE, path="/operations", httponly=True, samesite="strict")
    return response


@router.post("/operations/notices/{notice_id}/{action}", response_class=HTMLResponse, include_in_schema=False)
def operations_action(
    notice_id: str, action: Action, request: Request, store: StoreDep,
    abuse_email: Annotated[str, Form()] = "",
) -> Response:
    caller = _gate(request, store, (ACT_ROLE,))
    if isinstance(caller, Response):
        return caller
    if not same_origin(request):
        return _error(request, 403, "Action refused: the form was not sent from this site.", caller)
    try:
        kind, message = "ok", _apply(store, notice_id, action, caller.name, abuse_email)
    except OperationRefused as exc:
        kind, message = "error", exc.reason
    return set_flash(RedirectResponse("/operations", status_code=303), FLASH_COOKIE, "/operations", kind, message)


# -- deliveries to partner hotlines (forwards, status updates) -----------------------------

DeliveryKind = Literal["forward", "update"]


def _retry(store: SqlUnitOfWork, kind: str, delivery_id: str, operator: str) -> str:
    try:
        retry_delivery(store, kind, delivery_id, operator=operator, at=now())
    except OperationRefused:
        store.rollback()
        raise
    store.commit()
    return f"{kind} {delivery_id} queued to be delivered again"


@router.get("/api/v1/operations/deliveries")
def list_deliveries(
    store: StoreDep, caller: Annotated[Caller, Depends(require_role(*VIEW_ROLES))],
) -> dict[str, Any]:
    """Pending and refused forwards and partner status updates (attempts, last error, next
    attempt); a refused one allows ``retry`` (admins)."""
    return {"deliveries": [d.as_json() for d in undelivered(store)]}


@router.post("/api/v1/operations/{kind}s/{delivery_id}/retry")
def api_retry_delivery(kind: DeliveryKind, delivery_id: str, request: Request, store: StoreDep,
                       caller: Admin) -> dict[str, Any]:
    """A refused forward or status update goes back to pending (after the credentials were fixed)."""
    if "authorization" not in request.headers and not same_origin(request):
        raise HTTPException(403, "a call signed in by cookie must come from a page of this site; "
                                 "send Authorization: Bearer TOKEN")
    try:
        done = _retry(store, kind, delivery_id, caller.name)
    except OperationRefused as exc:
        raise HTTPException(exc.status, exc.reason) from exc
    return {"kind": kind, "id": delivery_id, "status": "pending", "done": done}


@router.post("/operations/deliveries/{kind}/{delivery_id}/retry", response_class=HTMLResponse,
             include_in_schema=False)
def operations_retry_delivery(kind: DeliveryKind, delivery_id: str, request: Request, store: StoreDep) -> Response:
    caller = _gate(request, store, (ACT_ROLE,))
    if isinstance(caller, Response):
        return caller
    if not same_origin(request):
        return _error(request, 403, "Action refused: the form was not sent from this site.", caller)
    try:
        kind_, message = "ok", _retry(store, kind, delivery_id, caller.name)
    except OperationRefused as exc:
        kind_, message = "error", exc.reason
    return set_flash(RedirectResponse("/operations", status_code=303), FLASH_COOKIE, "/operations", kind_, message)


# -- rejected reports and parked messages (services.operations.rejections) ------------------

RejectionAction = Literal["resubmit", "redrive", "dismiss"]


def _resolve(store: SqlUnitOfWork, rejection_id: int, action: str, operator: str, urls: str, note: str) -> str:
    try:
        if action == "resubmit":
            outgoing = rejections.resubmit(store, rejection_id, operator=operator, urls_text=urls)
            store.enqueue(outgoing)
            done = f"rejection {rejection_id} resubmitted as report {getattr(outgoing[0].message, 'report_id', '?')}"
        elif action == "redrive":
            rejections.redrive(store, rejection_id, operator=operator)
            done = f"parked message {rejection_id} re-driven"
        else:
            rejections.dismiss(store, rejection_id, operator=operator, note=note)
            done = f"rejection {rejection_id} dismissed"
    except OperationRefused:
        store.rollback()
        raise
    store.commit()
    return done


@router.get("/api/v1/operations/rejections")
def list_rejections(
    store: StoreDep, caller: Annotated[Caller, Depends(require_role(*VIEW_ROLES))],
) -> dict[str, Any]:
    """Rejected reports and parked messages no operator resolved yet, newest first, with the
    original payload, the stage, the reason and the actions each allows (admins)."""
    return {"rejections": [r.as_json() for r in rejections.unresolved(store)]}


class ResolveRejectionRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    urls: list[str] = Field(default_factory=list, max_length=500)
    note: str = Field(default="", max_length=2000)


# A row id: a number the database can hold (a larger one would be a 500 from the driver).
RejectionId = Annotated[int, PathParam(ge=1, le=2**63 - 1)]


@router.post("/api/v1/operations/rejections/{rejection_id}/{action}")
def api_resolve_rejection(rejection_id: RejectionId, action: RejectionAction, body: ResolveRejectionRequest,
                          request: Request, store: StoreDep, caller: Admin) -> dict[str, Any]:
    """Resubmit (the fixed ``urls`` as a new report), re-drive (a parked message, to its topic),
    or dismiss (with a ``note``)."""
    if "authorization" not in request.headers and not same_origin(request):
        raise HTTPException(403, "a call signed in by cookie must come from a page of this site; "
                                 "send Authorization: Bearer TOKEN")
    try:
        done = _resolve(store, rejection_id, action, caller.name, "\n".join(body.urls), body.note)
    except OperationRefused as exc:
        raise HTTPException(exc.status, exc.reason) from exc
    return {"id": rejection_id, "action": action, "done": done}


@router.post("/operations/rejections/{rejection_id}/{action}", response_class=HTMLResponse,
             include_in_schema=False)
def operations_resolve_rejection(
    rejection_id: RejectionId, action: RejectionAction, request: Request, store: StoreDep,
    urls: Annotated[str, Form()] = "", note: Annotated[str, Form()] = "",
) -> Response:
    caller = _gate(request, store, (ACT_ROLE,))
    if isinstance(caller, Response):
        return caller
    if not same_origin(request):
        return _error(request, 403, "Action refused: the form was not sent from this site.", caller)
    try:
        kind_, message = "ok", _resolve(store, rejection_id, action, caller.name, urls, note)
    except OperationRefused as exc:
        kind_, message = "error", exc.reason
    return set_flash(RedirectResponse("/operations#rejections", status_code=303), FLASH_COOKIE, "/operations", kind_, message)
