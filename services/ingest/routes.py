"""Report intake over HTTP: the public form (works without JavaScript), the JSON API and the
status view. Input is validated here too, so callers get a 422 naming the field at once;
ingest validates again for channels that bypass HTTP (Kafka, CSV, partners)."""

from __future__ import annotations

import logging
import threading
from collections.abc import Collection
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fastapi import APIRouter, Depends, Form, Header, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, Response
from fastapi.templating import Jinja2Templates
from pydantic import BaseModel, ConfigDict, Field, field_validator
from sqlalchemy.exc import IntegrityError
from starlette.concurrency import run_in_threadpool

from hotline.kernel.states import COARSE, COARSE_REASON, REJECTED
from hotline.storage.reporter_address import MAX_ADDRESS_BYTES, ReporterSeal
from hotline.storage.unit_of_work import SqlUnitOfWork
from hotline.web.auth import Caller, get_store, has_token, optional_caller, require_role
from schemas.base import new_id
from services.ingest import i18n, intake
from services.ingest.fields import check_email, check_text
from services.ingest.hosts import accept_url
from services.ingest.ratelimit import Decision, RateLimiter
from services.ingest.stage import MAX_URLS_PER_REPORT
from services.ingest.urls import MAX_URL_LENGTH, UrlRejected, normalize_url

router = APIRouter()
log = logging.getLogger(__name__)
TEMPLATES_DIR = Path(__file__).parent / "templates"
templates = Jinja2Templates(directory=str(TEMPLATES_DIR))
MAX_DESCRIPTION = 10_000
HONEYPOT = "website"  # a name form-filling bots cannot resist; people never see the field

def url_rejections(
    urls: list[str], operator_hosts: Collection[str] | None = None
) -> list[tuple[int, str, UrlRejected]]:
    """Each URL ingest could not process: its position, the URL and why (``err.code``). Without
    ``operator_hosts`` only the URL's form is checked (the models' validator cannot see the
    hosting file); with them, also that the host can be on the internet."""
    refused = []
    for i, url in enumerate(urls):
        try:
            if operator_hosts is None:
                normalize_url(url)
            else:
                accept_url(url, operator_hosts)
        except UrlRejected as err:
            refused.append((i, url, err))
    return refused


def url_problems(urls: list[str], operator_hosts: Collection[str] | None = None) -> list[str]:
    """Why each URL ingest could not process is refused, naming its position."""
    return [f"urls[{i}] {url!r}: {err.reason}" for i, url, err in url_rejections(urls, operator_hosts)]


def check_urls(urls: list[str]) -> list[str]:
    """Every URL must be one ingest can process; the error names each bad position and why."""
    problems = url_problems(urls)
    if problems:
        raise ValueError("; ".join(problems))
    return urls


def refuse_unreachable(request: Request, urls: list[str]) -> None:
    """422, in FastAPI's own error format, for URLs whose host cannot be on the internet."""
    problems = url_problems(urls, request.app.state.system.operator_hosts())
    if problems:
        raise RequestValidationError(
            [{"type": "value_error", "loc": ("body", "urls"), "msg": "; ".join(problems), "input": urls}]
        )


class ReportRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    urls: list[str] = Field(min_length=1, max_length=MAX_URLS_PER_REPORT)
    description: str | None = Field(default=None, max_length=MAX_DESCRIPTION)
    reporter_email: str | None = Field(default=None, max_length=MAX_ADDRESS_BYTES)

    _valid_urls = field_validator("urls")(check_urls)

    _plain_text = field_validator("description")(check_text)

    @field_validator("reporter_email")
    @classmethod
    def _valid_email(cls, value: str | None) -> str | None:
        value = check_email(value)
        if value is not None and len(value.encode("utf-8")) > MAX_ADDRESS_BYTES:
            raise ValueError(f"the e-mail address is longer than {MAX_ADDRESS_BYTES} bytes")
        return value


class PartnerReportRequest(BaseModel):
    """A report forwarded to us by a partner hotline abroad (material hosted here)."""

    model_config = ConfigDict(extra="forbid")

    urls: list[str] = Field(min_length=1, max_length=MAX_URLS_PER_REPORT)
    partner_reference: str = Field(min_length=1, max_length=200)
    partner_country: str | None = Field(default=None, min_length=2, max_length=2)
    description: str | None = Field(default=None, max_length=10_000)

    _valid_urls = field_validator("urls")(check_urls)
    _plain_text = field_validator("description", "partner_reference")(check_text)


def submit(
    store: SqlUnitOfWork,
    body: ReportRequest | PartnerReportRequest,
    channel: str,
    idempotency_key: str | None,
    seal: ReporterSeal | None = None,
) -> str:
    """Record the report and put it on ``reports.submitted`` in one transaction of its own (the
    path without group commit, and the one callers outside a web process use). The reporter's
    address is sealed first (``seal``; without one it is not kept)."""
    idempotency_key = intake.clean_key(idempotency_key)
    job = intake.record_job(intake.new_message(body, channel, seal), idempotency_key)
    try:
        report_id = job(store)
        store.commit()
    except IntegrityError:
        # A retry that raced the first request with the same key: answer with the first report.
        store.rollback()
        existing = store.reports.by_idempotency_key(idempotency_key) if idempotency_key else None
        if existing is None:
            raise
        return existing.id
    return report_id


def submit_from(
    request: Request,
    store: SqlUnitOfWork,
    body: ReportRequest | PartnerReportRequest,
    channel: str,
    idempotency_key: str | None,
    seal: ReporterSeal | None = None,
) -> str:
    """``submit`` from a sync route (a worker thread): through the process's group committer
    (``HOTLINE_INTAKE_GROUP_COMMIT``), else in the request's own transaction."""
    grouped = intake.committer(request.app.state)
    if grouped is None:
        return submit(store, body, channel, idempotency_key, seal)
    msg = intake.new_message(body, channel, seal)
    return intake.record_now(grouped, msg, intake.clean_key(idempotency_key))


def _channel_of(request: Request, store: SqlUnitOfWork) -> str:
    """``police`` for a report a police account sends with its token (assessed first,
    ``HOTLINE_PRIORITY_CHANNELS``), else ``api``; a bad token here is just anonymous."""
    try:
        caller = optional_caller(request, store)
    except HTTPException:
        return "api"
    return "police" if caller is not None and caller.role == "police" else "api"


async def _channel_async(request: Request) -> str:
    """``_channel_of`` without a thread for the common case: an anonymous request (no token)
    needs no database; one with a token looks it up in a worker thread."""
    if not has_token(request):
        return "api"

    def lookup() -> str:
        with request.app.state.system.request_sessions()() as session:
            return _channel_of(request, SqlUnitOfWork(session))

    return await run_in_threadpool(lookup)


def _submit_alone(request: Request, body: ReportRequest, channel: str, idempotency_key: str | None,
                  seal: ReporterSeal | None) -> str:
    with request.app.state.system.request_sessions()() as session:
        return submit(SqlUnitOfWork(session), body, channel, idempotency_key, seal)


@router.post("/api/v1/reports", status_code=202, tags=["reports"])
async def post_report(
    request: Request,
    body: ReportRequest,
    idempotency_key: str | None = Header(default=None, max_length=200),
) -> JSONResponse:
    """Submit a report. A retried request with the same ``Idempotency-Key`` returns the first report.
    A URL whose host cannot be on the internet (``intranet``, ``printer.local``) is refused
    with 422 naming it and why. More than ``HOTLINE_REPORT_RATE_PER_MINUTE`` reports a minute
    from one client address get 429 with ``Retry-After``. The reporter's e-mail address is kept
    sealed (``HOTLINE_REPORTER_KEY``), and not at all without a key. 202 means committed: the
    report shares a transaction with others arriving at the same moment (group commit,
    ``HOTLINE_INTAKE_GROUP_COMMIT``) and the answer waits for that commit."""
    refuse = rate_limited(request)
    if refuse is not None:
        return refuse
    refuse_unreachable(request, body.urls)
    return await accept_report(request, body, await _channel_async(request), idempotency_key)


def rate_limited(request: Request) -> JSONResponse | None:
    """The 429 for a client over ``HOTLINE_REPORT_RATE_PER_MINUTE``, or None (a token taken)."""
    decision = rate_limit(request)
    if decision.allowed:
        return None
    return JSONResponse(
        {"detail": f"too many reports from your address; try again in {decision.retry_after_seconds} seconds"},
        status_code=429, headers={"Retry-After": str(decision.retry_after_seconds)},
    )


async def accept_report(request: Request, body: ReportRequest, channel: str, idempotency_key: str | None) -> JSONResponse:
    """Record a checked report (group commit, or its own transaction) and answer 202 after the
    commit. Shared by ``post_report`` and its lean path (``services.ingest.fastpath``)."""
    seal = request.app.state.system.reporter_seal()
    grouped = intake.committer(request.app.state)
    if grouped is None:
        report_id = await run_in_threadpool(_submit_alone, request, body, channel, idempotency_key, seal)
    else:
        msg = intake.new_message(body, channel, seal)
        report_id = await intake.record(grouped, msg, intake.clean_key(idempotency_key))
    return JSONResponse({"report_id": report_id, "status_url": f"/api/v1/reports/{report_id}"}, status_code=202)


@router.post("/api/v1/partner/reports", status_code=202, tags=["reports"])
def post_partner_report(
    request: Request,
    body: PartnerReportRequest,
    store: SqlUnitOfWork = Depends(get_store),
    caller: Caller = Depends(require_role("partner")),
    idempotency_key: str | None = Header(default=None, max_length=200),
) -> JSONResponse:
    """Intake for partner hotlines (role ``partner``): same pipeline, channel ``partner``, with
    the partner's own case reference kept on the report. ``Idempotency-Key`` defaults to it.
    The report's country is the partner account's (``hotline users add --country``); a body
    ``partner_country`` naming another country is refused (403). Status updates on the report
    go back to that country's partner (``services.partners.updates``)."""
    refuse_unreachable(request, body.urls)
    if caller.role == "partner":
        if not caller.country:
            raise HTTPException(403, f"the partner account {caller.name} has no country: "
                                     "create it with hotline users add NAME --role partner --country XX")
        if body.partner_country and body.partner_country.upper() != caller.country.upper():
            raise HTTPException(403, f"partner_country {body.partner_country!r}: this account reports for "
                                     f"{caller.country} only")
        body = body.model_copy(update={"partner_country": caller.country.upper()})
    key = idempotency_key or f"partner:{caller.name}:{body.partner_reference}"
    report_id = submit_from(request, store, body, "partner", key)
    return JSONResponse({"report_id": report_id, "status_url": f"/api/v1/reports/{report_id}"}, status_code=202)


@router.get("/api/v1/reports/{report_id}", tags=["reports"])
def get_report(
    report_id: str, store: SqlUnitOfWork = Depends(get_store), caller: Caller | None = Depends(optional_caller)
) -> dict[str, Any]:
    """Each item's state and the reason in words. Anonymous callers see a coarse state only;
    admins and analysts see the full state and timeline."""
    report = store.reports.get(report_id)
    if report is None:
        raise HTTPException(404, f"no report {report_id}")
    full = caller is not None and caller.role in ("admin", "analyst")
    items = []
    for link in store.reports.urls(report_id):
        if link.item_id is None:
            entry: dict[str, Any] = {"item_id": None, "url": link.url_as_reported, "state": REJECTED,
                                     "reason": link.rejected_reason or REJECTED}
            if full:
                entry["events"] = []
            items.append(entry)
            continue
        item = store.items.get(link.item_id)
        assert item is not None
        if full:
            items.append({
                "item_id": item.id, "url": item.url, "state": item.state, "reason": item.reason,
                "country": item.country, "hoster": item.hoster,
                "events": [{"at": e.at.isoformat(), "stage": e.stage, "kind": e.kind, "detail": e.detail}
                           for e in store.items.events(item.id)],
            })
        else:
            coarse = COARSE.get(item.state, "in_progress")
            items.append({"item_id": item.id, "url": item.url, "state": coarse, "reason": COARSE_REASON[coarse]})
    status = report.status
    return {"report_id": report.id, "status": status, "reason": report.reason if full or status == "rejected" else None,
            "submitted_at": report.submitted_at.isoformat(), "items": items}


# --------------------------------------------------------------------------- the public form


_limiter_lock = threading.Lock()


def rate_limit(request: Request) -> Decision:
    """One token from the client address's bucket (``HOTLINE_REPORT_RATE_PER_MINUTE``), shared
    by the form and the API. Refusals are logged without the address: a flood is worth an
    operator's look, the address of a reporter is not worth keeping."""
    state = request.app.state
    with _limiter_lock:
        limiter = getattr(state, "report_limiter", None)
        if limiter is None:
            limiter = state.report_limiter = RateLimiter(state.system.settings.report_rate_per_minute)
    decision: Decision = limiter.check(request.client.host if request.client else None)
    if not decision.allowed:
        log.warning("report rate limit: refused a report on %s (retry after %d s)", request.url.path,
                    decision.retry_after_seconds)
    return decision


@dataclass(frozen=True)
class FieldError:
    """One error on the form: the message, and the id of the field it is about (None: the
    whole form), so the summary can link to the field and the field can point back."""

    message: str
    field: str | None = None


def _language(request: Request, chosen: str | None = None) -> i18n.Language:
    default = request.app.state.system.settings.form_default_language
    return i18n.choose(request.query_params.get("lang"), chosen, request.cookies.get(i18n.COOKIE),
                       request.headers.get("accept-language"), default)


def _page(request: Request, template: str, lang: i18n.Language, status_code: int = 200,
          headers: dict[str, str] | None = None, **extra: Any) -> HTMLResponse:
    settings = request.app.state.system.settings
    errors: list[FieldError] = extra.pop("errors", [])
    ctx: dict[str, Any] = {
        "hotline_name": settings.hotline_name, "lang": lang, "t": i18n.catalogue(lang),
        "switch": [(code, i18n.LANGUAGE_NAMES[code]) for code in i18n.LANGUAGES if code != lang],
        "ask_email": request.app.state.system.reporter_seal() is not None,
        "limits": {"max_urls": MAX_URLS_PER_REPORT, "max_length": MAX_URL_LENGTH, "max_chars": MAX_DESCRIPTION,
                   "email_chars": MAX_ADDRESS_BYTES},
        "urls": "", "description": "", "reporter_email": "", "report_id": None, "honeypot": HONEYPOT,
        "errors": errors,
        "field_errors": {f: [e.message for e in errors if e.field == f] for f in ("urls", "description", "reporter_email")},
    }
    ctx.update(extra)
    response = templates.TemplateResponse(request, template, ctx, status_code=status_code, headers=headers)
    response.headers["Content-Language"] = lang
    response.headers["Vary"] = "Accept-Language, Cookie"
    if i18n.as_language(request.query_params.get("lang")) == lang:
        # The switch was used: remember it (a preference, not an identifier) for the next visit.
        response.set_cookie(i18n.COOKIE, lang, max_age=365 * 86400, path="/", samesite="lax", httponly=True)
    return response


@router.get("/report", response_class=HTMLResponse, include_in_schema=False)
def report_form(request: Request) -> HTMLResponse:
    """The public form, in the browser's language (``Accept-Language``) unless the reporter
    chose one with the switch (``?lang=nl``, remembered in a cookie)."""
    return _page(request, "report.html", _language(request))


@router.get("/report/form.css", include_in_schema=False)
def report_form_css() -> Response:
    """The form's style sheet, served by the app itself: the page loads nothing from elsewhere."""
    return FileResponse(TEMPLATES_DIR / "report.css", media_type="text/css",
                        headers={"Cache-Control": "public, max-age=3600"})


def _form_errors(request: Request, lang: i18n.Language, lines: list[str], description: str,
                 reporter_email: str) -> list[FieldError]:
    errors: list[FieldError] = []
    if not lines:
        errors.append(FieldError(i18n.text(lang, "no_urls"), "urls"))
    elif len(lines) > MAX_URLS_PER_REPORT:
        errors.append(FieldError(i18n.text(lang, "too_many_urls", max_urls=MAX_URLS_PER_REPORT, count=len(lines)),
                                 "urls"))
    else:
        for _, url, err in url_rejections(lines, request.app.state.system.operator_hosts()):
            try:
                host: str | None = normalize_url(url).host
            except UrlRejected:
                host = None
            errors.append(FieldError(i18n.url_problem(lang, err.code, url, host, max_length=MAX_URL_LENGTH), "urls"))
    if len(description) > MAX_DESCRIPTION:
        errors.append(FieldError(i18n.text(lang, "description_too_long", max_chars=MAX_DESCRIPTION,
                                           count=len(description)), "description"))
    address = reporter_email.strip()
    try:
        check_email(address)
        valid = True
    except ValueError:
        valid = False
    if address and not valid:
        errors.append(FieldError(i18n.text(lang, "email_invalid"), "reporter_email"))
    elif len(address.encode("utf-8")) > MAX_ADDRESS_BYTES:
        errors.append(FieldError(i18n.text(lang, "email_too_long", max_chars=MAX_ADDRESS_BYTES), "reporter_email"))
    return errors


@router.post("/report", response_class=HTMLResponse, include_in_schema=False)
def report_form_post(
    request: Request,
    urls: str = Form(""),
    description: str = Form(""),
    reporter_email: str = Form(""),
    lang: str = Form(""),
    website: str = Form("", alias=HONEYPOT),
    store: SqlUnitOfWork = Depends(get_store),
) -> HTMLResponse:
    """Submit the form. Errors come back on the form, in its language, next to the field they
    are about, with what was typed kept; a filled honeypot looks like success to the bot and
    creates nothing."""
    language = _language(request, lang)
    seal = request.app.state.system.reporter_seal()
    if seal is None:
        reporter_email = ""  # not asked for, and could not be kept
    typed: dict[str, Any] = {"urls": urls, "description": description, "reporter_email": reporter_email}
    decision = rate_limit(request)
    if not decision.allowed:
        seconds = decision.retry_after_seconds
        return _page(request, "report.html", language, 429, {"Retry-After": str(seconds)},
                     errors=[FieldError(i18n.text(language, "rate_limited", seconds=seconds))], **typed)
    if website.strip():
        # Only a program fills a field nobody can see or reach: record that it happened (for
        # the operators' audit trail, without the client's address) and answer as if all went well.
        log.warning("report form: honeypot field filled, report discarded")
        store.audit.append("web", "honeypot_filled", "-", "a report from the public form was discarded")
        store.commit()
        return _page(request, "report_thanks.html", language, report_id=new_id())
    lines = [u.strip() for u in urls.splitlines() if u.strip()]
    errors = _form_errors(request, language, lines, description, reporter_email)
    if errors:
        return _page(request, "report.html", language, 422, errors=errors, **typed)
    body = ReportRequest(urls=lines, description=description or None, reporter_email=reporter_email or None)
    report_id = submit_from(request, store, body, "web", None, seal)
    return _page(request, "report_thanks.html", language, report_id=report_id)
