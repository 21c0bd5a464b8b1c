"""Report intake over HTTP: the public form (works without JavaScript), the JSON API and the
status view. Input is validated here too, so callers get a 422 naming the field at once;
ingest validates again for channels that bypass HTTP (Kafka, CSV, partners)."""

from __future__ import annotations

import re
from collections.abc import Collection
from pathlib import Path
from typing import Any

from fastapi import APIRouter, Depends, Form, Header, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse
from fastapi.templating import Jinja2Templates
from pydantic import BaseModel, ConfigDict, Field, field_validator
from sqlalchemy.exc import IntegrityError

from hotline.kernel.messages import Outgoing
from hotline.kernel.states import COARSE, COARSE_REASON, REJECTED
from hotline.storage.unit_of_work import SqlUnitOfWork
from hotline.web.auth import Caller, get_store, optional_caller, require_role
from schemas.reports import ReportSubmitted
from services.ingest.hosts import accept_url
from services.ingest.stage import MAX_URLS_PER_REPORT
from services.ingest.urls import UrlRejected, normalize_url

router = APIRouter()
templates = Jinja2Templates(directory=str(Path(__file__).parent / "templates"))
EMAIL = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")

def url_problems(urls: list[str], operator_hosts: Collection[str] | None = None) -> list[str]:
    """Why each URL ingest could not process is refused, naming its position. Without
    ``operator_hosts`` only the URL's form is checked (the models' validator cannot see the
    hosting file); with them, also that the host can be on the internet."""
    problems = []
    for i, url in enumerate(urls):
        try:
            if operator_hosts is None:
                normalize_url(url)
            else:
                accept_url(url, operator_hosts)
        except UrlRejected as err:
            problems.append(f"urls[{i}] {url!r}: {err.reason}")
    return problems


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
    description: str | None = Field(default=None, max_length=10_000)
    reporter_email: str | None = Field(default=None, max_length=320)

    _valid_urls = field_validator("urls")(check_urls)

    @field_validator("reporter_email")
    @classmethod
    def _valid_email(cls, value: str | None) -> str | None:
        if value is not None and value.strip() == "":
            return None
        if value is not None and not EMAIL.match(value.strip()):
            raise ValueError("not a valid e-mail address")
        return value.strip() if value else value


class PartnerReportRequest(BaseModel):
    """A report forwarded to us by a partner hotline abroad (material hosted here)."""

    model_config = ConfigDict(extra="forbid")

    urls: list[str] = Field(min_length=1, max_length=MAX_URLS_PER_REPORT)
    partner_reference: str = Field(min_length=1, max_length=200)
    partner_country: str | None = Field(default=None, min_length=2, max_length=2)
    description: str | None = Field(default=None, max_length=10_000)

    _valid_urls = field_validator("urls")(check_urls)


def submit(
    store: SqlUnitOfWork,
    body: ReportRequest | PartnerReportRequest,
    channel: str,
    idempotency_key: str | None,
) -> str:
    if idempotency_key:
        existing = store.reports.by_idempotency_key(idempotency_key)
        if existing is not None:
            return existing.id
    msg = ReportSubmitted(
        channel=channel,  # type: ignore[arg-type]
        urls=body.urls,
        description=body.description,
        reporter_email=getattr(body, "reporter_email", None),
        partner_reference=getattr(body, "partner_reference", None),
        partner_country=getattr(body, "partner_country", None),
    )
    try:
        store.reports.create(msg, idempotency_key=idempotency_key)
        store.enqueue([Outgoing("reports.submitted", msg)])
        store.commit()
    except IntegrityError:
        # A retry that raced the first request with the same key: answer with the first report.
        store.rollback()
        existing = store.reports.by_idempotency_key(idempotency_key) if idempotency_key else None
        if existing is None:
            raise
        return existing.id
    return msg.report_id


def _channel_of(request: Request, store: SqlUnitOfWork) -> str:
    """``police`` for a report a police account sends with its token (assessed first,
    ``HOTLINE_PRIORITY_CHANNELS``), else ``api``; a bad token here is just anonymous."""
    try:
        caller = optional_caller(request, store)
    except HTTPException:
        return "api"
    return "police" if caller is not None and caller.role == "police" else "api"


@router.post("/api/v1/reports", status_code=202, tags=["reports"])
def post_report(
    request: Request,
    body: ReportRequest,
    store: SqlUnitOfWork = Depends(get_store),
    idempotency_key: str | None = Header(default=None, max_length=200),
) -> JSONResponse:
    """Submit a report. A retried request with the same ``Idempotency-Key`` returns the first report.
    A URL whose host cannot be on the internet (``intranet``, ``printer.local``) is refused
    with 422 naming it and why."""
    refuse_unreachable(request, body.urls)
    report_id = submit(store, body, _channel_of(request, store), idempotency_key)
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
    report_id = submit(store, body, "partner", key)
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


@router.get("/report", response_class=HTMLResponse, include_in_schema=False)
def report_form(request: Request) -> HTMLResponse:
    return templates.TemplateResponse(request, "report.html", _form_context(request))


def _form_context(request: Request, **extra: Any) -> dict[str, Any]:
    ctx: dict[str, Any] = {"hotline_name": request.app.state.system.settings.hotline_name, "urls": "",
                           "description": "", "reporter_email": "", "errors": [], "report_id": None}
    ctx.update(extra)
    return ctx


@router.post("/report", response_class=HTMLResponse, include_in_schema=False)
def report_form_post(
    request: Request,
    urls: str = Form(""),
    description: str = Form(""),
    reporter_email: str = Form(""),
    store: SqlUnitOfWork = Depends(get_store),
) -> HTMLResponse:
    lines = [u.strip() for u in urls.splitlines() if u.strip()]
    try:
        body = ReportRequest(urls=lines, description=description or None, reporter_email=reporter_email or None)
    except ValueError as exc:
        errors = [str(e["msg"]).removeprefix("Value error, ") for e in getattr(exc, "errors", lambda: [])()] or [str(exc)]
        if not lines:
            errors = ["please enter at least one web address"]
        ctx = _form_context(request, urls=urls, description=description, reporter_email=reporter_email, errors=errors)
        return templates.TemplateResponse(request, "report.html", ctx, status_code=422)
    unreachable = url_problems(body.urls, request.app.state.system.operator_hosts())
    if unreachable:
        ctx = _form_context(request, urls=urls, description=description, reporter_email=reporter_email,
                            errors=unreachable)
        return templates.TemplateResponse(request, "report.html", ctx, status_code=422)
    report_id = submit(store, body, "web", None)
    return templates.TemplateResponse(request, "report.html", _form_context(request, report_id=report_id))
