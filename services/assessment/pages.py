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

import io
import logging
import secrets
import time
from pathlib import Path
from typing import Annotated, Any, Protocol
from urllib.parse import quote, unquote, urlencode, urlsplit

from fastapi import APIRouter, Depends, Form, HTTPException, Request
from fastapi.responses import HTMLResponse, PlainTextResponse, RedirectResponse, Response
from fastapi.templating import Jinja2Templates
from PIL import Image as PILImage

from hashing.image import ImageError, check_viewable
from hotline.kernel.clock import now
from hotline.kernel.messages import Outgoing
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
from services.assessment.confirmation import decide as decide_item
from services.assessment.confirmation import second_opinion
from services.assessment.decision_form import (
    CHANGE_ROLES,
    DecisionForm,
    decision_context,
    form_fields,
)
from services.assessment.decision_form import read as read_decision_form
from services.assessment.logic import AssessmentRefused, revise
from services.assessment.queue import (
    FILTERS,
    QUEUES,
    claim_next,
    decided_by,
    is_known,
    lease_until,
    view,
)
from services.assessment.routes import hotline_questions
from services.bank.bank import retire
from services.classify.fetcher import Fetcher, FetchError

log = logging.getLogger(__name__)

router = APIRouter(include_in_schema=False)
templates = Jinja2Templates(directory=str(Path(__file__).parent / "templates"))

TOKEN_COOKIE = "hotline_token"  # the name hotline.web.auth reads
FLASH_COOKIE = "hotline_flash"
WORK_COOKIE = "hotline_work"  # start:last of the current stretch of work (the break reminder)
_SCRIPT = Path(__file__).parent / "static" / "analyst.js"
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

# The item page lists known images (bank match) apart and never shows them.
templates.env.tests["known"] = is_known
templates.env.globals["enumerate"] = enumerate

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
        "connect-src 'self'; "
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
    """One-shot message for the next /analyst view."""
    return set_flash(response, FLASH_COOKIE, "/analyst", kind, message)


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


def _settings(request: Request) -> Any:
    return request.app.state.system.settings


def _priority_channels(request: Request) -> set[str]:
    return {c.strip() for c in str(_settings(request).priority_channels).split(",") if c.strip()}


def _queue_name(raw: str | None) -> str:
    return raw if raw in QUEUES else "assessment"


def _filters(values: dict[str, str | None]) -> dict[str, str]:
    return {f: (values.get(f) or "").strip()[:200] for f in FILTERS if (values.get(f) or "").strip()}


def _queue_url(queue_name: str, filters: dict[str, str]) -> str:
    query = {"queue": queue_name, **filters} if queue_name != "assessment" or filters else {}
    return "/analyst" + (f"?{urlencode(query)}" if query else "")


def work_stretch(request: Request, at: float) -> tuple[float, float]:
    """(start, last) of the analyst's current stretch of continuous work, from the cookie: a
    pause of ``assessment_idle_minutes`` or more starts a new one."""
    idle = float(_settings(request).assessment_idle_minutes) * 60
    try:
        start, last = (float(x) for x in request.cookies.get(WORK_COOKIE, "").split(":", 1))
    except ValueError:
        return at, at
    if at - last >= idle or start > at:
        return at, at
    return start, at


def _with_stretch(request: Request, response: Response, stretch: tuple[float, float]) -> Response:
    response.set_cookie(WORK_COOKIE, f"{stretch[0]:.0f}:{stretch[1]:.0f}", path="/analyst", httponly=True,
                        samesite="strict")
    return response


def _wellness(request: Request, stretch: tuple[float, float]) -> dict[str, Any]:
    """What every analyst page needs for the break reminder and the keyboard."""
    settings = _settings(request)
    worked = (stretch[1] - stretch[0]) / 60
    return {"worked_minutes": int(worked), "break_due": worked >= float(settings.break_reminder_minutes),
            "break_minutes": int(float(settings.break_reminder_minutes)),
            "undo_seconds": float(settings.undo_seconds), "second_analyst": bool(settings.second_analyst)}


@router.get("/analyst/static/analyst.js")
def analyst_script() -> Response:
    """The pages' keyboard, image toggles and lease heartbeat: our own file, no third party."""
    return Response(_SCRIPT.read_bytes(), media_type="text/javascript; charset=utf-8",
                    headers={"Cache-Control": "no-cache", "X-Content-Type-Options": "nosniff"})


@router.get("/analyst", response_class=HTMLResponse)
def queue(
    request: Request, store: StoreDep, queue: str | None = None, country: str | None = None,
    hoster: str | None = None, channel: str | None = None, reason: str | None = None,
) -> Response:
    """A queue in priority order (partners, police and new material first; oldest first),
    filtered by country, hoster, channel and reason, with counts per queue and who holds what."""
    caller = _gate(request, store)
    if isinstance(caller, Response):
        return caller
    name = _queue_name(queue)
    filters = _filters({"country": country, "hoster": hoster, "channel": channel, "reason": reason})
    at = now()
    shown = view(store, name, at, _priority_channels(request), filters)
    flash = read_flash(request, FLASH_COOKIE)
    stretch = work_stretch(request, time.time())
    response = _render(request, "queue.html", {
        "caller": caller, "view": shown, "entries": shown.entries, "flash": flash, "queue_name": name,
        "filters": filters, "filter_names": FILTERS, "queue_names": list(QUEUES), **_wellness(request, stretch),
    })
    if flash:
        response.delete_cookie(FLASH_COOKIE, path="/analyst", httponly=True, samesite="strict")
    return _with_stretch(request, response, stretch)


@router.post("/analyst/next")
def next_item(
    request: Request, store: StoreDep, queue: Annotated[str, Form()] = "assessment",
    country: Annotated[str, Form()] = "", hoster: Annotated[str, Form()] = "",
    channel: Annotated[str, Form()] = "", reason: Annotated[str, Form()] = "",
) -> Response:
    """Claim the best free item of the queue (with the queue page's filters) and open it."""
    caller = _gate(request, store, back_to="/analyst")
    if isinstance(caller, Response):
        return caller
    if not same_origin(request):
        return _error(request, 403, "Refused: the form was not sent from this site.", caller)
    name = _queue_name(queue)
    filters = _filters({"country": country, "hoster": hoster, "channel": channel, "reason": reason})
    got = claim_next(store, name, caller.name, now(), float(_settings(request).assessment_lease_seconds),
                     _priority_channels(request), filters)
    if got is None:
        store.rollback()
        return _with_flash(RedirectResponse(_queue_url(name, filters), status_code=303), "ok",
                           f"No free item in the {name} queue" + (" with these filters" if filters else "") + ".")
    store.audit.append(caller.name, "item_claimed", got, f"next in {name}")
    store.commit()
    return RedirectResponse(f"/analyst/items/{got}", status_code=303)


@router.post("/analyst/items/{item_id}/lease")
def renew_lease(item_id: str, request: Request, store: StoreDep, caller: AnalystDep) -> Response:
    """The item page's heartbeat: extend the caller's lease while the page is open (204), or
    409 when the item is no longer theirs (expired and claimed by someone else, or decided)."""
    if "authorization" not in request.headers and not same_origin(request):
        return PlainTextResponse("refused: not sent from this site", 403, headers=_NO_STORE)
    until = lease_until(now(), float(_settings(request).assessment_lease_seconds))
    item = store.items.get(item_id)
    if item is None or item.state not in QUEUES.values() or not store.leases.renew(item_id, caller.name, until):
        store.rollback()
        return PlainTextResponse(f"you no longer hold item {item_id}", 409, headers=_NO_STORE)
    store.commit()
    return Response(status_code=204, headers=_NO_STORE)


def _item_page(
    request: Request, store: SqlUnitOfWork, caller: Caller, item_id: str, error: str | None = None,
    status_code: int = 200, form: dict[str, str] | None = None, claim: bool = True,
) -> Response:
    item = store.items.get(item_id)
    if item is None:
        return _error(request, 404, f"There is no item {item_id}.", caller)
    at = now()
    settings = _settings(request)
    held_by_other = None
    own_decision = (item.state == ItemState.AWAITING_CONFIRMATION
                    and decided_by(store, item_id) == caller.name)
    if item.state in QUEUES.values() and not own_decision:  # never hold your own decision from the confirmer
        # Re-claim on every load: the lease is renewed without JavaScript, and a page opened by
        # URL takes a free item like "next" does.
        if claim and not store.leases.claim(item_id, caller.name,
                                            lease_until(at, float(settings.assessment_lease_seconds)), at,
                                            list(QUEUES.values())):
            held_by_other = store.leases.holder(item_id, at)
    holder = store.leases.holder(item_id, at)
    # Who saw what, when: every view of an item page by a person is in the audit chain.
    store.audit.append(caller.name, "item_viewed", item_id,
                       item.state + (f"; held by {held_by_other[0]}" if held_by_other else ""))
    store.commit()
    item = store.items.get(item_id)
    assert item is not None
    classified = _classified(item.classification)
    hosting: HostingFacts | None = classified.hosting if classified else None
    images = _images(classified)
    sha256s = [img.sha256 for img in images if img.error is None and img.sha256]
    copies: dict[str, list[dict[str, Any]]] = {}
    for other_id, sha, url in store.items.sharing_images(item_id, sha256s):
        other = store.items.get(other_id)
        copies.setdefault(sha, []).append({"item_id": other_id, "url": url,
                                           "state": other.state if other else "?"})
    first = store.assessments.latest(item_id) if item.state == ItemState.AWAITING_CONFIRMATION else None
    stretch = work_stretch(request, time.time())
    response = _render(request, "item.html", {
        "caller": caller,
        "item": item,
        "classified": classified,
        "hosting": hosting,
        "images": images,
        "copies": copies,
        "held_by_other": held_by_other,
        "holder": holder,
        "lease_seconds": float(settings.assessment_lease_seconds),
        "first_decision": first,
        "events": store.items.events(item_id),
        "report_ids": store.items.report_ids(item_id),
        "error": error,
        "form": form or {"verdict": "", "category": "national", "notes": ""},
        "categories": CATEGORIES,
        **_wellness(request, stretch),
        **decision_context(request, _images(classified), current=store.assessments.latest(item_id),
                           caller_role=caller.role, decided=item.state != ItemState.AWAITING_ASSESSMENT or bool(held_by_other)),
    }, status_code)
    return _with_stretch(request, response, stretch)


@router.get("/analyst/items/{item_id}", response_class=HTMLResponse)
def item_page(item_id: str, request: Request, store: StoreDep) -> Response:
    caller = _gate(request, store)
    if isinstance(caller, Response):
        return caller
    return _item_page(request, store, caller, item_id)


def still_frame(body: bytes) -> bytes | None:
    """The first frame of an animated image as PNG (in memory), or None when it is not animated:
    an animation plays only when the analyst asks for it."""
    try:
        with PILImage.open(io.BytesIO(body)) as im:
            if not getattr(im, "is_animated", False):
                return None
            im.seek(0)
            frame = im.convert("RGBA")
        out = io.BytesIO()
        frame.save(out, format="PNG")
        return out.getvalue()
    except (OSError, ValueError, PILImage.DecompressionBombError):
        return None


@router.get("/analyst/items/{item_id}/images/{n}")
def item_image(
    item_id: str,
    n: int,
    request: Request,
    store: StoreDep,
    caller: AnalystDep,
    animate: bool = False,
) -> Response:
    """The n-th image of an item, fetched live from where it is hosted, never kept.

    Only URLs that classify recorded for the item can be fetched, so this is no open proxy. An
    image the bank already knows is never shown again (410). An animation is served as its
    still first frame unless ``?animate=1``. Every view is in the audit chain, committed before
    the bytes are fetched.
    """
    item = store.items.get(item_id)
    images = _images(_classified(item.classification)) if item is not None else []
    if item is None or not 0 <= n < len(images):
        return PlainTextResponse(f"item {item_id} has no image {n}", 404, headers=_NO_STORE)
    if is_known(images[n]):
        return PlainTextResponse(f"image {n} of item {item_id} is known material (bank match): not shown again",
                                 410, headers=_NO_STORE)
    url = images[n].url
    store.audit.append(caller.name, "image_viewed", item_id, f"image {n}{' animated' if animate else ''}: {url}")
    store.commit()  # the view is recorded; end the transaction: the fetch below may take seconds
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
    body = fetched.body
    still = None if animate or mime not in ("image/gif", "image/webp") else still_frame(body)
    if still is not None:
        body, mime = still, "image/png"
    return Response(body, media_type=mime, headers={
        **_NO_STORE,
        "X-Content-Type-Options": "nosniff",
        "Content-Security-Policy": "default-src 'none'; sandbox",
        "Content-Disposition": "inline",
        "Cross-Origin-Resource-Policy": "same-origin",
        "Referrer-Policy": "no-referrer",
        "X-Hotline-Frame": "still" if still is not None else "original",
    })


def _decided(item_id: str, store: SqlUnitOfWork, outgoing: list[Outgoing], queue_name: str) -> Response:
    store.enqueue(outgoing)
    store.commit()
    item = store.items.get(item_id)
    assert item is not None
    return _with_flash(RedirectResponse(_queue_url(queue_name, {}), status_code=303), "ok",
                       f"{item.url} is now {item.state}: {item.reason}")


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
    """Apply the analyst's decision as the API does (``confirmation.decide``: the lease, the
    second analyst, then ``assess``), then back to the queue."""
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
    settings = _settings(request)
    try:
        outgoing = decide_item(store, item_id, verdict=verdict,  # type: ignore[arg-type]
                               category=category if verdict == "illegal" else None,
                               analyst=caller.name, notes=notes.strip() or None,
                               hold_seconds=settings.police_hold_seconds,
                               second_analyst=bool(settings.second_analyst), at=now(),
                               lease_seconds=float(settings.assessment_lease_seconds))
    except AssessmentRefused as exc:
        store.rollback()
        if exc.status == 409:
            return _refused(request, store, caller, item_id, exc.reason)
        return _with_flash(RedirectResponse("/analyst", status_code=303), "error", exc.reason)
    return _decided(item_id, store, outgoing, "assessment")


def _refused(request: Request, store: SqlUnitOfWork, caller: Caller, item_id: str, reason: str) -> Response:
    """409: someone else holds the item (or it was decided meanwhile); the item page says so."""
    return _item_page(request, store, caller, item_id, reason, 409, claim=False)


@router.post("/analyst/items/{item_id}/second-opinion", response_class=HTMLResponse)
def second_look(
    item_id: str,
    request: Request,
    store: StoreDep,
    opinion: Annotated[str, Form()] = "",
    notes: Annotated[str, Form()] = "",
) -> Response:
    """A second analyst confirms ("confirm": escalation) or disagrees ("disagree": back to the
    queue) with the first analyst's "illegal"."""
    caller = _gate(request, store, back_to=f"/analyst/items/{item_id}")
    if isinstance(caller, Response):
        return caller
    if not same_origin(request):
        return _error(request, 403, "Refused: the form was not sent from this site.", caller)
    if opinion not in ("confirm", "disagree") or len(notes) > 10_000:
        return _item_page(request, store, caller, item_id, "Choose confirm or disagree.", 422)
    settings = _settings(request)
    try:
        outgoing = second_opinion(store, item_id, agree=opinion == "confirm", analyst=caller.name,
                                  notes=notes.strip() or None, hold_seconds=settings.police_hold_seconds,
                                  at=now(), lease_seconds=float(settings.assessment_lease_seconds))
    except ClassificationInvalid as exc:  # the first decision no longer fits the item's images
        store.rollback()
        return _item_page(request, store, caller, item_id, str(exc), 422, claim=False)
    except AssessmentRefused as exc:
        store.rollback()
        return _item_page(request, store, caller, item_id, exc.reason, exc.status, claim=False)
    return _decided(item_id, store, outgoing, "confirmation")


@router.post("/analyst/break")
def took_a_break(request: Request, store: StoreDep) -> Response:
    """The analyst acknowledges the reminder (and, we hope, took the break): a new stretch."""
    caller = _gate(request, store, back_to="/analyst")
    if isinstance(caller, Response):
        return caller
    if not same_origin(request):
        return _error(request, 403, "Refused: the form was not sent from this site.", caller)
    at = time.time()
    return _with_stretch(request, RedirectResponse("/analyst", status_code=303), (at, at))


def _decide_per_image(
    request: Request, store: SqlUnitOfWork, caller: Caller, item_id: str, parsed: DecisionForm,
    form: dict[str, str], notes: str,
) -> Response:
    """The form with per-image rows or the hotline's questions: checked exactly as the API
    checks them; a refused decision shows the page again with every problem and the values."""
    try:
        answers = questions.answers(hotline_questions(request), parsed.answers)
        settings = _settings(request)
        outgoing = decide_item(store, item_id, verdict=None if parsed.images else (form.get("verdict") or None),
                               category=None if parsed.images else (form.get("category") or None),
                               analyst=caller.name, notes=notes.strip()[:10_000] or None,
                               images=parsed.images or None, answers=answers,
                               hold_seconds=settings.police_hold_seconds,
                               second_analyst=bool(settings.second_analyst), at=now(),
                               lease_seconds=float(settings.assessment_lease_seconds))
    except (questions.AnswersInvalid, ClassificationInvalid) as exc:
        store.rollback()
        return _item_page(request, store, caller, item_id, str(exc), 422, form)
    except AssessmentRefused as exc:
        store.rollback()
        if exc.status == 409:
            return _refused(request, store, caller, item_id, exc.reason)
        return _with_flash(RedirectResponse("/analyst", status_code=303), "error", exc.reason)
    return _decided(item_id, store, outgoing, "assessment")


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
