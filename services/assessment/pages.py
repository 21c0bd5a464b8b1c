"""Analyst pages: sign in with an API token, the assessment queue, one item with its live images,
and the decision form.

Why pages next to the JSON API (``routes.py``): analysts work in a browser, and a browser
cannot send ``Authorization: Bearer``. The login form therefore puts the token in an
HttpOnly, SameSite=Strict cookie, which ``hotline.web.auth`` already accepts. Because a cookie
rides along automatically, every state-changing form here also checks that the Origin (or
Referer) names this host, so another site cannot post on the analyst's behalf even in a
browser that ignores SameSite.

Images are never stored (architecture, "State"): the item page shows each image through
``/analyst/items/{id}/images/{n}``, which fetches the URL recorded by classify *at request
time* with the same safe ``Fetcher`` and policy as classify, and hands the bytes, held in
memory only, to the analyst with ``Cache-Control: no-store``. The page shows them blurred and
grey until the analyst chooses to see one.
"""

from __future__ import annotations

import logging
import secrets
from pathlib import Path
from typing import Annotated, Any, Protocol
from urllib.parse import quote, unquote, urlsplit

from fastapi import APIRouter, Depends, Form, HTTPException, Request
from fastapi.responses import HTMLResponse, PlainTextResponse, RedirectResponse, Response
from fastapi.templating import Jinja2Templates

from hashing.image import ImageError, check_viewable
from hotline.kernel.states import ItemState
from hotline.storage.unit_of_work import SqlUnitOfWork
from hotline.web.auth import (
    ROLES_WITH_PAGES,
    Caller,
    client_address,
    credential_guard,
    get_store,
    has_role,
    optional_caller,
    require_role,
)
from hotline.web.ratelimit import retry_after
from schemas.facts import HostingFacts, ImageFacts
from schemas.items import ItemClassified
from services.assessment import questions
from services.assessment.classification import ClassificationInvalid
from services.assessment.decision_form import (
    CHANGE_ROLES,
    DecisionForm,
    decision_context,
    form_fields,
)
from services.assessment.decision_form import read as read_decision_form
from services.assessment.logic import AssessmentRefused, assess, revise
from services.assessment.routes import hotline_questions
from services.bank.bank import retire
from services.classify.fetcher import Fetcher, FetchError

log = logging.getLogger(__name__)

router = APIRouter(include_in_schema=False)
templates = Jinja2Templates(directory=str(Path(__file__).parent / "templates"))

TOKEN_COOKIE = "hotline_token"  # the name hotline.web.auth reads
FLASH_COOKIE = "hotline_flash"
PAGE_ROLES = ("analyst", "admin", "senior")
VERDICTS = ("illegal", "not_illegal")
CATEGORIES = ("baseline", "national")

# What the image view will hand to a browser, recognised by the bytes themselves, never by the
# hoster's Content-Type: anything else (HTML, SVG, scripts) served from our origin could run
# in the analyst's session.
_MAGIC: tuple[tuple[bytes, int, str], ...] = (
    (b"\xff\xd8\xff", 0, "image/jpeg"),
    (b"\x89PNG\r\n\x1a\n", 0, "image/png"),
    (b"GIF87a", 0, "image/gif"),
    (b"GIF89a", 0, "image/gif"),
    (b"WEBP", 8, "image/webp"),  # after "RIFF" and the size
    (b"BM", 0, "image/bmp"),
)

_NO_STORE = {"Cache-Control": "no-store", "Pragma": "no-cache"}

StoreDep = Annotated[SqlUnitOfWork, Depends(get_store)]
AnalystDep = Annotated[Caller, Depends(require_role("analyst"))]


def raster_type(body: bytes) -> str | None:
    """The MIME type of a raster image format browsers show inertly, or None."""
    for magic, offset, mime in _MAGIC:
        if body[offset : offset + len(magic)] == magic and (mime != "image/webp" or body[:4] == b"RIFF"):
            return mime
    return None


# -- helpers ---------------------------------------------------------------


def _render(
    request: Request, name: str, context: dict[str, Any], status_code: int = 200
) -> HTMLResponse:
    """Render a page with a fresh CSP nonce: only our own inline script and style may run."""
    nonce = secrets.token_urlsafe(16)
    ctx = {"hotline_name": request.app.state.system.settings.hotline_name, "nonce": nonce,
           "caller": None, "flash": None}
    ctx.update(context)
    response = templates.TemplateResponse(request, name, ctx, status_code=status_code)
    return protect(response, nonce)


def protect(response: HTMLResponse, nonce: str) -> HTMLResponse:
    """The headers every signed-in page carries: never cached, only our own nonce'd inline
    script and style, no framing, no sniffing (the operators' pages use them too)."""
    response.headers.update(_NO_STORE)
    response.headers["Content-Security-Policy"] = (
        f"default-src 'none'; img-src 'self'; style-src 'nonce-{nonce}'; script-src 'nonce-{nonce}'; "
        "form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
    )
    response.headers["X-Frame-Options"] = "DENY"
    response.headers["X-Content-Type-Options"] = "nosniff"
    # same-origin keeps the Referer our CSRF check may fall back on, and never leaks item ids.
    response.headers["Referrer-Policy"] = "same-origin"
    return response


def _error(request: Request, status_code: int, message: str, caller: Caller | None = None) -> HTMLResponse:
    return _render(request, "error.html", {"status": status_code, "message": message, "caller": caller},
                   status_code)


def _page_caller(request: Request, store: SqlUnitOfWork) -> Caller | None:
    """The signed-in account, or None; a stale or revoked cookie counts as signed out."""
    try:
        return optional_caller(request, store)
    except HTTPException:
        return None


def _gate(request: Request, store: SqlUnitOfWork, back_to: str | None = None) -> Caller | Response:
    """An analyst or admin, or the page to show instead (login redirect, 403). ``back_to`` is
    where to return after signing in, when that is not this URL (a form handler)."""
    return page_gate(request, store, PAGE_ROLES, "the analyst pages", back_to)


def page_gate(
    request: Request, store: SqlUnitOfWork, roles: tuple[str, ...], what: str, back_to: str | None = None,
) -> Caller | Response:
    """The signed-in account if its role is one of ``roles``, or the page to show instead: the
    login form (coming back here, or to ``back_to``), or a 403 saying it may not use ``what``.
    Every page behind login (analyst, police) signs in through ``/login`` with this."""
    caller = _page_caller(request, store)
    if caller is None:
        response = RedirectResponse(f"/login?next={quote(back_to or request.url.path)}", status_code=303)
        if TOKEN_COOKIE in request.cookies:
            _clear_token(response)
        return response
    if not has_role(caller.role, roles):
        return _error(request, 403, f"The account {caller.name} ({caller.role}) may not use {what}.", caller)
    return caller


def set_flash(response: Response, cookie: str, path: str, kind: str, message: str) -> Response:
    """A one-shot message for the next view of ``path`` (a cookie, so no URL can fake one)."""
    response.set_cookie(cookie, quote(f"{kind}:{message}"[:600]), max_age=120, path=path,
                        httponly=True, samesite="strict")
    return response


def read_flash(request: Request, cookie: str) -> dict[str, str] | None:
    """The one-shot message ``set_flash`` left, if any (the caller deletes the cookie)."""
    raw = request.cookies.get(cookie)
    if not raw:
        return None
    kind, _, message = unquote(raw).partition(":")
    return {"kind": "error" if kind == "error" else "ok", "message": message}


def same_origin(request: Request) -> bool:
    """True when the browser says the form was posted from a page of this host.

    Origin is sent by browsers with every POST; Referer is the fallback for old ones. A request
    with neither, or with ``Origin: null`` (sandboxed or privacy-redirected), is refused.
    """
    host = request.headers.get("host", "").lower()
    if not host:
        return False
    source = request.headers.get("origin")
    if source is None:
        source = request.headers.get("referer")
    if not source or source == "null":
        return False
    return urlsplit(source).netloc.lower() == host


def _safe_next(target: str | None) -> str:
    """Only local paths: a login link must not be able to send the analyst to another site."""
    if target and target.startswith("/") and not target.startswith("//") and "\\" not in target:
        parts = urlsplit(target)
        if not parts.scheme and not parts.netloc:
            return target
    return "/analyst"


def _set_token(response: Response, token: str, secure: bool) -> None:
    # No max-age: the session ends with the browser, which is what a shared analyst desk needs.
    response.set_cookie(TOKEN_COOKIE, token, path="/", httponly=True, samesite="strict", secure=secure)


def _clear_token(response: Response) -> None:
    response.delete_cookie(TOKEN_COOKIE, path="/", httponly=True, samesite="strict")


def _with_flash(response: Response, kind: str, message: str) -> Response:
    """One-shot message for the next /analyst view; a cookie, so no URL can fake one."""
    response.set_cookie(FLASH_COOKIE, quote(f"{kind}:{message}"[:600]), max_age=120, path="/analyst",
                        httponly=True, samesite="strict")
    return response


def _classified(raw: dict[str, Any] | None) -> ItemClassified | None:
    return ItemClassified.model_validate(raw) if raw else None


def _images(classified: ItemClassified | None) -> list[ImageFacts]:
    return list(classified.images) if classified else []


class FetcherSource(Protocol):
    """What the pages need of the composition root (``entrypoints.bootstrap.System``)."""

    def build_fetcher(self) -> Fetcher: ...


def fetcher_for(system: FetcherSource) -> Fetcher:
    """Classify's fetcher: the analyst's live view must refuse exactly what classify refuses."""
    return system.build_fetcher()


# -- login -----------------------------------------------------------------


@router.get("/login", response_class=HTMLResponse)
def login_form(request: Request, next: str | None = None) -> HTMLResponse:
    return _render(request, "login.html", {"next": _safe_next(next), "error": None})


@router.post("/login", response_class=HTMLResponse)
def login(
    request: Request,
    store: StoreDep,
    token: Annotated[str, Form()] = "",
    next: Annotated[str, Form()] = "/analyst",
) -> Response:
    """Check the pasted token and keep it in an HttpOnly cookie (scripts cannot read it)."""
    target = _safe_next(next)
    if not same_origin(request):
        return _render(request, "login.html", {"next": target, "error": "Sign-in refused: the form was not "
                       "sent from this site."}, 403)
    guard, address = credential_guard(request), client_address(request)
    if guard is not None:
        wait = guard.lockout.blocked(address) or guard.logins.acquire(address)
        if wait is not None:
            refused = _render(request, "login.html", {"next": target, "error": "Too many sign-in attempts "
                              f"from this address; try again in {retry_after(wait)} s."}, 429)
            refused.headers["Retry-After"] = retry_after(wait)
            return refused
    token = token.strip()
    user = store.users.by_token(token) if token else None
    if user is None:
        if guard is not None:
            guard.lockout.failed(address)
        # The token is not echoed back: it is a secret, and a wrong one is useless to show.
        return _render(request, "login.html", {"next": target, "error": "Unknown or revoked token."}, 401)
    if user.role not in ROLES_WITH_PAGES:
        # No page is for this role: a cookie would only be a second copy of an API token.
        return _render(request, "login.html", {"next": target, "error": f"The account {user.name} "
                       f"({user.role}) has no pages; use the API with its token."}, 403)
    log.info("page sign-in by %s (%s)", user.name, user.role)
    response = RedirectResponse(target, status_code=303)
    _set_token(response, token, secure=request.url.scheme == "https")
    return response


@router.api_route("/logout", methods=["GET", "POST"])
def logout() -> Response:
    response = RedirectResponse("/login", status_code=303)
    _clear_token(response)
    return response


# -- queue and item --------------------------------------------------------


@router.get("/analyst", response_class=HTMLResponse)
def queue(request: Request, store: StoreDep) -> Response:
    """Items awaiting assessment, oldest first, with where they are hosted and their hashes."""
    caller = _gate(request, store)
    if isinstance(caller, Response):
        return caller
    entries = []
    for item in store.items.in_state(ItemState.AWAITING_ASSESSMENT):
        classified = _classified(item.classification)
        entries.append({"item": item, "images": _images(classified),
                        "hosting": classified.hosting if classified else None})
    flash = None
    raw = request.cookies.get(FLASH_COOKIE)
    if raw:
        kind, _, message = unquote(raw).partition(":")
        flash = {"kind": "error" if kind == "error" else "ok", "message": message}
    response = _render(request, "queue.html", {"caller": caller, "entries": entries, "flash": flash})
    if raw:
        response.delete_cookie(FLASH_COOKIE, path="/analyst", httponly=True, samesite="strict")
    return response


def _item_page(
    request: Request, store: SqlUnitOfWork, caller: Caller, item_id: str, error: str | None = None,
    status_code: int = 200, form: dict[str, str] | None = None,
) -> HTMLResponse:
    item = store.items.get(item_id)
    if item is None:
        return _error(request, 404, f"There is no item {item_id}.", caller)
    classified = _classified(item.classification)
    hosting: HostingFacts | None = classified.hosting if classified else None
    return _render(request, "item.html", {
        "caller": caller,
        "item": item,
        "classified": classified,
        "hosting": hosting,
        "images": _images(classified),
        "events": store.items.events(item_id),
        "report_ids": store.items.report_ids(item_id),
        "error": error,
        "form": form or {"verdict": "", "category": "national", "notes": ""},
        "categories": CATEGORIES,
        **decision_context(request, _images(classified), current=store.assessments.latest(item_id),
                           caller_role=caller.role, decided=item.state != ItemState.AWAITING_ASSESSMENT),
    }, status_code)


@router.get("/analyst/items/{item_id}", response_class=HTMLResponse)
def item_page(item_id: str, request: Request, store: StoreDep) -> Response:
    caller = _gate(request, store)
    if isinstance(caller, Response):
        return caller
    return _item_page(request, store, caller, item_id)


@router.get("/analyst/items/{item_id}/images/{n}")
def item_image(
    item_id: str,
    n: int,
    request: Request,
    store: StoreDep,
    caller: AnalystDep,
) -> Response:
    """The n-th image of an item, fetched live from where it is hosted, never kept.

    Only URLs that classify recorded for the item can be fetched, so this is no open proxy.
    """
    item = store.items.get(item_id)
    images = _images(_classified(item.classification)) if item is not None else []
    if item is None or not 0 <= n < len(images):
        return PlainTextResponse(f"item {item_id} has no image {n}", 404, headers=_NO_STORE)
    url = images[n].url
    store.rollback()  # end the read transaction: the fetch below may take seconds
    log.info("%s views image %d of item %s live (%s)", caller.name, n, item_id, url)
    fetcher = fetcher_for(request.app.state.system)
    try:
        fetched = fetcher.get(url)
    except FetchError as exc:
        return PlainTextResponse(f"could not fetch {url}: {exc.reason}", 502, headers=_NO_STORE)
    finally:
        fetcher.close()
    if fetched.status != 200:
        return PlainTextResponse(f"{url} answered HTTP {fetched.status}", 502, headers=_NO_STORE)
    mime = raster_type(fetched.body)
    if mime is None:
        return PlainTextResponse(f"{url} no longer serves a raster image ({fetched.content_type or 'no type'})",
                                 502, headers=_NO_STORE)
    try:  # classify's pixel caps (the fetcher applied its size cap): no bomb reaches the browser
        check_viewable(fetched.body, max_pixels=request.app.state.system.settings.fetch_max_pixels)
    except ImageError as exc:
        return PlainTextResponse(f"not shown: {exc}", 502, headers=_NO_STORE)
    return Response(fetched.body, media_type=mime, headers={
        **_NO_STORE,
        "X-Content-Type-Options": "nosniff",
        "Content-Security-Policy": "default-src 'none'; sandbox",
        "Content-Disposition": "inline",
        "Cross-Origin-Resource-Policy": "same-origin",
        "Referrer-Policy": "no-referrer",
    })


@router.post("/analyst/items/{item_id}/decision", response_class=HTMLResponse)
def decide(
    item_id: str,
    request: Request,
    store: StoreDep,
    fields: Annotated[dict[str, str], Depends(form_fields)],
    verdict: Annotated[str, Form()] = "",
    category: Annotated[str, Form()] = "",
    notes: Annotated[str, Form()] = "",
) -> Response:
    """Apply the analyst's decision exactly as the API does (``assess``), then back to the queue."""
    # Signed out meanwhile: the decision is not kept; after signing in they see the item again.
    caller = _gate(request, store, back_to=f"/analyst/items/{item_id}")
    if isinstance(caller, Response):
        return caller
    if not same_origin(request):
        return _error(request, 403, "Decision refused: the form was not sent from this site.", caller)
    form = {**fields, "verdict": verdict, "category": category, "notes": notes}
    item = store.items.get(item_id)
    parsed = read_decision_form(fields, _images(_classified(item.classification)) if item else [],
                                hotline_questions(request))
    if item is not None and (parsed.images or parsed.answers or hotline_questions(request)):
        return _decide_per_image(request, store, caller, item_id, parsed, form, notes)
    if verdict not in VERDICTS:
        return _item_page(request, store, caller, item_id, "Choose a verdict: illegal or not illegal.", 422, form)
    if verdict == "illegal" and category not in CATEGORIES:
        return _item_page(request, store, caller, item_id, "Choose a category: baseline or national.", 422, form)
    if len(notes) > 10_000:
        return _item_page(request, store, caller, item_id, "Notes are limited to 10,000 characters.", 422, form)
    try:
        outgoing = assess(store, item_id, verdict=verdict,  # type: ignore[arg-type]
                          category=category if verdict == "illegal" else None,
                          analyst=caller.name, notes=notes.strip() or None,
                          hold_seconds=request.app.state.system.settings.police_hold_seconds)
    except AssessmentRefused as exc:
        store.rollback()
        return _with_flash(RedirectResponse("/analyst", status_code=303), "error", exc.reason)
    store.enqueue(outgoing)
    store.commit()
    item = store.items.get(item_id)
    assert item is not None
    return _with_flash(RedirectResponse("/analyst", status_code=303), "ok",
                       f"{item.url} is now {item.state}: {item.reason}")


def _decide_per_image(
    request: Request, store: SqlUnitOfWork, caller: Caller, item_id: str, parsed: DecisionForm,
    form: dict[str, str], notes: str,
) -> Response:
    """The form with per-image rows or the hotline's questions: checked exactly as the API
    checks them; a refused decision shows the page again with every problem and the values."""
    try:
        answers = questions.answers(hotline_questions(request), parsed.answers)
        outgoing = assess(store, item_id, verdict=None if parsed.images else (form.get("verdict") or None),
                          category=None if parsed.images else (form.get("category") or None),
                          analyst=caller.name, notes=notes.strip()[:10_000] or None,
                          images=parsed.images or None, answers=answers,
                          hold_seconds=request.app.state.system.settings.police_hold_seconds)
    except (questions.AnswersInvalid, ClassificationInvalid) as exc:
        store.rollback()
        return _item_page(request, store, caller, item_id, str(exc), 422, form)
    except AssessmentRefused as exc:
        store.rollback()
        return _with_flash(RedirectResponse("/analyst", status_code=303), "error", exc.reason)
    store.enqueue(outgoing)
    store.commit()
    item = store.items.get(item_id)
    assert item is not None
    return _with_flash(RedirectResponse("/analyst", status_code=303), "ok",
                       f"{item.url} is now {item.state}: {item.reason}")


@router.post("/analyst/items/{item_id}/change", response_class=HTMLResponse)
def change(
    item_id: str,
    request: Request,
    store: StoreDep,
    fields: Annotated[dict[str, str], Depends(form_fields)],
    notes: Annotated[str, Form()] = "",
    reason: Annotated[str, Form()] = "",
) -> Response:
    """A senior analyst's change of a decision, exactly as the API does it (``revise``)."""
    caller = _gate(request, store, back_to=f"/analyst/items/{item_id}")
    if isinstance(caller, Response):
        return caller
    if caller.role not in CHANGE_ROLES:
        return _error(request, 403, f"The account {caller.name} ({caller.role}) may not change decisions: "
                      "that needs a senior analyst.", caller)
    if not same_origin(request):
        return _error(request, 403, "Change refused: the form was not sent from this site.", caller)
    form = {**fields, "notes": notes, "reason": reason}
    item = store.items.get(item_id)
    if item is None:
        return _error(request, 404, f"There is no item {item_id}.", caller)
    parsed = read_decision_form(fields, _images(_classified(item.classification)), hotline_questions(request))
    try:
        answers = questions.answers(hotline_questions(request), parsed.answers)
        revision = revise(store, item_id, senior=caller.name, reason=reason[:2_000],
                          retire=lambda entry_id, why: retire(store, entry_id, why, caller.name),
                          verdict=None if parsed.images else (fields.get("verdict") or None),
                          category=None if parsed.images else (fields.get("category") or None),
                          images=parsed.images or None, answers=answers, notes=notes.strip()[:10_000] or None,
                          hold_seconds=request.app.state.system.settings.police_hold_seconds)
    except (questions.AnswersInvalid, ClassificationInvalid) as exc:
        store.rollback()
        return _item_page(request, store, caller, item_id, str(exc), 422, form)
    except AssessmentRefused as exc:
        store.rollback()
        return _item_page(request, store, caller, item_id, exc.reason, exc.status, form)
    store.enqueue(revision.outgoing)
    store.commit()
    if revision.retired:
        request.app.state.system.bank.forget(revision.retired)
    item = store.items.get(item_id)
    assert item is not None
    return _with_flash(RedirectResponse("/analyst", status_code=303), "ok",
                       f"decision changed ({revision.old} -> {revision.new}): {item.url} is now {item.state}")
