"""The police page: the escalations newest first, with the facts the police need (URL,
hashes, hosting, first/last seen, reports, the analyst's classification) and a button per
allowed action (mark received; hold, with a reason; release). Plain HTML forms, so it works
without JavaScript; nothing is loaded from anywhere else; never an image, only hashes.

Sign-in, cookie, headers and the CSRF check are the analyst pages' own
(``services.assessment.pages``: ``/login``, ``page_gate``, ``same_origin``, ``protect``), not a
copy. What the page showed is audited like the API's listing.
"""

from __future__ import annotations

import secrets
from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Form, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from fastapi.templating import Jinja2Templates

from hotline.storage.unit_of_work import SqlUnitOfWork
from hotline.web.auth import get_store
from schemas.notices import PoliceActionKind
from services.assessment.pages import page_gate, protect, read_flash, same_origin, set_flash
from services.police.logic import PoliceRefused
from services.police.routes import apply, listing

router = APIRouter(include_in_schema=False)
_HERE = Path(__file__).parent
# Our own pages first, then the analyst pages' base and error templates.
templates = Jinja2Templates(directory=[str(_HERE / "templates"), str(_HERE.parent / "assessment" / "templates")])

PAGE = "/police"
FLASH_COOKIE = "hotline_police_flash"
ROLES = ("police", "admin")
ACTIONS: dict[str, PoliceActionKind] = {"received": "received", "hold": "hold", "release": "release"}
DONE = {"received": "marked received", "hold": "put on hold", "release": "released: the takedown follows"}

StoreDep = Annotated[SqlUnitOfWork, Depends(get_store)]


def _render(request: Request, context: dict[str, Any], status_code: int = 200, name: str = "police.html",
            ) -> HTMLResponse:
    nonce = secrets.token_urlsafe(16)
    ctx = {"hotline_name": request.app.state.system.settings.hotline_name, "nonce": nonce,
           "caller": None, "flash": None}
    ctx.update(context)
    return protect(templates.TemplateResponse(request, name, ctx, status_code=status_code), nonce)


@router.get(PAGE, response_class=HTMLResponse)
def police_page(request: Request, store: StoreDep) -> Response:
    caller = page_gate(request, store, ROLES, "the police page")
    if isinstance(caller, Response):
        return caller
    flash = read_flash(request, FLASH_COOKIE)
    escalations = listing(store, caller.name, f"GET {PAGE}")
    response = _render(request, {"caller": caller, "escalations": escalations, "flash": flash})
    if flash:
        response.delete_cookie(FLASH_COOKIE, path=PAGE, httponly=True, samesite="strict")
    return response


@router.post(PAGE + "/escalations/{escalation_id}/{action}", response_class=HTMLResponse)
def police_action(
    escalation_id: str, action: str, request: Request, store: StoreDep,
    reason: Annotated[str, Form()] = "",
) -> Response:
    caller = page_gate(request, store, ROLES, "the police page", back_to=PAGE)
    if isinstance(caller, Response):
        return caller
    kind = ACTIONS.get(action)
    if kind is None:
        return _back("error", f"unknown action {action!r}")
    if not same_origin(request):
        return _render(request, {"caller": caller, "status": 403,
                                 "message": "Action refused: the form was not sent from this site."},
                       403, "error.html")
    try:
        apply(store, escalation_id, kind, caller.name, reason if kind == "hold" else None)
    except PoliceRefused as exc:
        return _back("error", exc.reason)
    return _back("ok", f"Escalation {escalation_id} {DONE[kind]}.")


def _back(kind: str, message: str) -> Response:
    return set_flash(RedirectResponse(PAGE, status_code=303), FLASH_COOKIE, PAGE, kind, message)
