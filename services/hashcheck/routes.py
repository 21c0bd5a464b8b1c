"""The HashCheck API for hosting providers (like the Dutch HashCheckService), its usage
statistics and the monitor page.

A hoster hashes the files on its own servers and asks, in batches, which are
known material; it can then remove them before anyone reports them. The body
is parsed by hand (``services.hashcheck.logic``) instead of by a pydantic
model per hash, which is what keeps a 10,000-hash batch in the millisecond
range; the pydantic models below only document the shape in OpenAPI.
"""

from __future__ import annotations

import threading
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal

import orjson
from fastapi import APIRouter, Depends, HTTPException, Request
from fastapi.responses import HTMLResponse, JSONResponse, Response
from fastapi.templating import Jinja2Templates
from pydantic import BaseModel, Field

from hashing.signals import NEAR_SIGNALS, SIGNAL_TYPES
from hotline.kernel.clock import now
from hotline.storage.unit_of_work import SqlUnitOfWork
from hotline.web.auth import Caller, get_store, require_role
from hotline.web.ratelimit import DailyBudget, RateLimiter, retry_after
from services.hashcheck.logic import (
    MAX_BATCH,
    BatchRejected,
    chart,
    check,
    iso_week,
    parse_batch,
)
from services.ingest.routes import ReportRequest, submit
from services.ingest.stage import MAX_URLS_PER_REPORT

JSON_LIBRARY = f"orjson {orjson.__version__}"


def _loads(raw: bytes) -> Any:
    """orjson: (de)serialising a 10,000-hash batch costs ~2.5 ms instead of ~17 ms with the
    stdlib, which halves the API's throughput (benchmarks/bench_hashcheck.py measures both)."""
    return orjson.loads(raw)


def _dumps(obj: Any) -> bytes:
    return orjson.dumps(obj)


router = APIRouter()
templates = Jinja2Templates(directory=str(Path(__file__).parent / "templates"))

CHART_WEEKS = 26
"""The monitor's charts show the last half year; more bars would not be readable."""

MAX_BODY_BYTES = 32 * 1024 * 1024
"""10,000 hashes plus 10,000 report URLs fit easily; more is refused before parsing."""


# -- documentation-only models (the body is parsed by services.hashcheck.logic) ----------------
# The accepted types are the registry's (hashing.signals); logic.parse_batch validates with it.
if TYPE_CHECKING:
    HashType = str
else:
    HashType = Literal[tuple(SIGNAL_TYPES)]

_HEX_DIGITS = ", ".join(f"{name} {signal.hex_length}" for name, signal in SIGNAL_TYPES.items())
_NEAR = "/".join(NEAR_SIGNALS)


class HashQuery(BaseModel):
    type: HashType = Field(description="hash type (case-insensitive)")
    value: str = Field(
        description=f"hex digits: {_HEX_DIGITS} (case-insensitive)",
        examples=["11accac1ac1507aefbfdf0948c9fbf39"],
    )


class HashCheckRequest(BaseModel):
    hashes: list[HashQuery] = Field(min_length=1, max_length=MAX_BATCH)
    report_hits: dict[str, str] | None = Field(
        default=None,
        description=(
            "optional: hash value -> URL where the hoster serves that file. For every hash "
            "that turns out known, the URL is reported to the hotline (channel api) so the "
            "item goes through ingest and classify and the hotline can follow up its removal. "
            "Keys must be hashes of this request; URLs are validated like report URLs."
        ),
    )


class HashResult(BaseModel):
    type: HashType
    value: str = Field(description="the hash as checked (lowercase hex)")
    known: bool
    distance: int | None = Field(
        default=None,
        description="only for accounts the operator trusts (HOTLINE_HASHCHECK_TRUSTED), absent "
        f"otherwise: 0 for an exact match; for {_NEAR} the Hamming distance to the nearest "
        "known hash (within the hotline's radius); null when not known",
    )


class ReportLink(BaseModel):
    report_id: str
    status_url: str
    urls: int


class HashCheckResponse(BaseModel):
    checked: int = Field(description="hashes in this request")
    known: int = Field(description="how many of this request's hashes are known")
    results: list[HashResult] = Field(description="one per input hash, in input order")
    reports: list[ReportLink] = Field(description="reports opened for report_hits (may be empty)")


class StatRow(BaseModel):
    week: str = Field(examples=["2026-W48"])
    hoster: str
    checks: int
    hits: int


class StatsResponse(BaseModel):
    stats: list[StatRow]


def _inline_schema(model: type[BaseModel]) -> dict[str, Any]:
    """The model's JSON Schema with its ``$defs`` inlined: an OpenAPI ``requestBody`` given by
    hand cannot point into the schema's own ``$defs``."""
    schema = model.model_json_schema()
    defs = schema.pop("$defs", {})

    def resolve(node: Any) -> Any:
        if isinstance(node, dict):
            ref = node.get("$ref")
            if isinstance(ref, str) and ref.startswith("#/$defs/"):
                return resolve(defs[ref.removeprefix("#/$defs/")])
            return {k: resolve(v) for k, v in node.items()}
        if isinstance(node, list):
            return [resolve(v) for v in node]
        return node

    return resolve(schema)  # type: ignore[no-any-return]


_ERROR_EXAMPLE = {"detail": [{"field": "hashes[3].value",
                              "reason": "md5 hash must be 32 hex characters (128 bits), got 31"}]}

def _type_list() -> str:
    """"md5, sha1, sha256, pdq (256-bit) and phash (64-bit)", from the registry."""
    names = [n if s.exact else f"{n} ({s.bits}-bit)" for n, s in SIGNAL_TYPES.items()]
    return f"{', '.join(names[:-1])} and {names[-1]}"


def _default_radii() -> str:
    """"PDQ 31 bits, pHash 8 bits", from the registry."""
    return ", ".join(f"{SIGNAL_TYPES[n].label} {SIGNAL_TYPES[n].default_radius} bits"
                     for n in NEAR_SIGNALS)


DESCRIPTION = f"""
Which of these hashes are known material? For hosting providers, authenticated by API key
(`Authorization: Bearer TOKEN` of an account with role `hoster`; admins may call too).

Body: `{{"hashes": [{{"type": "md5", "value": "..."}}, {{"type": "pdq", "value": "..."}}]}}`,
1 to {MAX_BATCH:,} hashes of types {_type_list()}, mixed
freely. Answer: one result per hash, in input order: `{{"type", "value", "known": bool}}`
(near matches for {_NEAR} are found within the hotline's fixed radius, {_default_radii()} by
default; a caller cannot widen it). Only accounts the operator names in
`HOTLINE_HASHCHECK_TRUSTED` also get `"distance"`: 0 for exact hashes, the Hamming distance
to the nearest known hash for {_NEAR} (distances let a caller walk a near miss to the bank's
exact hash). Nothing else about the bank is ever returned.

Limits per account: `HOTLINE_HASHCHECK_REQUESTS_PER_MINUTE` requests a minute and
`HOTLINE_HASHCHECK_DAILY_HASHES` hashes a UTC day; over either → 429 with `Retry-After`.

Optional `"report_hits": {{"<hash value>": "<url>"}}`: for each hash that is known, the hotline
opens a report of that URL (as `POST /api/v1/reports` would), follows up its removal, and the
answer lists the report ids (`GET /api/v1/reports/{{id}}` shows their progress).

Errors: empty batch or an invalid hash → 422 naming the position and the reason
(e.g. `hashes[3].value`); more than {MAX_BATCH:,} hashes → 413. Each call counts towards the
caller's weekly statistics (`GET /api/v1/hashcheck/stats`).
"""


async def _read_body(request: Request) -> bytes:
    """The raw body, refused early when too large (the JSON is parsed in bulk by the route)."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > MAX_BODY_BYTES:
        raise HTTPException(413, f"request body over {MAX_BODY_BYTES} bytes; send at most "
                                 f"{MAX_BATCH} hashes per request")
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > MAX_BODY_BYTES:
            raise HTTPException(413, f"request body over {MAX_BODY_BYTES} bytes; send at most "
                                     f"{MAX_BATCH} hashes per request")
        chunks.append(chunk)
    return b"".join(chunks)


RawBody = Annotated[bytes, Depends(_read_body)]
HosterOrAdmin = Annotated[Caller, Depends(require_role("hoster"))]
Admin = Annotated[Caller, Depends(require_role("admin"))]
StoreDep = Annotated[SqlUnitOfWork, Depends(get_store)]


@dataclass
class Limits:
    """Per account: a request rate and a daily budget of hashes (``hotline.web.ratelimit``;
    per web process, see there)."""

    requests: RateLimiter
    hashes: DailyBudget
    trusted: frozenset[str]


_LIMITS_LOCK = threading.Lock()


def limits(request: Request) -> Limits:
    """The app's HashCheck limits, made from its settings on first use."""
    state = request.app.state
    with _LIMITS_LOCK:
        found = getattr(state, "hashcheck_limits", None)
        if found is None:
            settings = state.system.settings
            found = Limits(RateLimiter(settings.hashcheck_requests_per_minute),
                           DailyBudget(settings.hashcheck_daily_hashes),
                           settings.hashcheck_trusted_names())
            state.hashcheck_limits = found
    return found  # type: ignore[no-any-return]


def _over(seconds: float, reason: str) -> JSONResponse:
    return JSONResponse({"detail": [{"field": "hashes", "reason": reason}]}, status_code=429,
                        headers={"Retry-After": retry_after(seconds)})


@router.post(
    "/api/v1/hashcheck",
    tags=["hashcheck"],
    summary="Check a batch of hashes against the bank of known material",
    description=DESCRIPTION,
    response_model=None,
    responses={
        200: {"model": HashCheckResponse},
        401: {"description": "no or unknown token"},
        403: {"description": "the token's role is not hoster or admin"},
        413: {"description": f"more than {MAX_BATCH} hashes", "content": {"application/json": {
            "example": {"detail": [{"field": "hashes", "reason": f"at most {MAX_BATCH} hashes per "
                                    "request, got 10001; split the batch"}]}}}},
        422: {"description": "empty batch, invalid hash or URL", "content": {
            "application/json": {"example": _ERROR_EXAMPLE}}},
        429: {"description": "over the account's requests a minute or hashes a day",
              "headers": {"Retry-After": {"description": "seconds", "schema": {"type": "integer"}}}},
    },
    openapi_extra={"requestBody": {"required": True, "content": {"application/json": {
        "schema": _inline_schema(HashCheckRequest),
    }}}},
)
def post_hashcheck(
    request: Request, caller: HosterOrAdmin, store: StoreDep, raw: RawBody
) -> Response:
    limit = limits(request)
    key = str(caller.user_id)
    if (wait := limit.requests.acquire(key)) is not None:
        return _over(wait, f"over {limit.requests.per_minute} requests a minute for this account; "
                           f"try again in {retry_after(wait)} s")
    try:
        data = _loads(raw)
    except ValueError as exc:
        return JSONResponse({"detail": [{"field": "body", "reason": f"not valid JSON: {exc}"}]},
                            status_code=422)
    try:
        batch = parse_batch(data, request.app.state.system.operator_hosts())
    except BatchRejected as exc:
        return JSONResponse({"detail": exc.errors}, status_code=exc.status)

    if (wait := limit.hashes.spend(key, batch.size)) is not None:
        return _over(wait, f"over {limit.hashes.per_day} hashes a day for this account "
                           f"({limit.hashes.remaining(key)} left today); the budget renews at 00:00 UTC")

    bank = request.app.state.system.bank
    bank.refresh()  # a cheap version check at most once a second, not a query per hash
    answer = check(bank.matcher, batch, reveal_distance=caller.name in limit.trusted)

    store.hashcheck.record(caller.user_id, iso_week(now()), batch.size, answer.known)
    reports: list[dict[str, Any]] = []
    for lo in range(0, len(answer.hit_urls), MAX_URLS_PER_REPORT):
        urls = answer.hit_urls[lo: lo + MAX_URLS_PER_REPORT]
        body = ReportRequest(
            urls=urls,
            description=f"HashCheck: hoster {caller.name} found {len(urls)} known file(s) on its "
                        "own servers; follow up removal",
        )
        report_id = submit(store, body, "api", None)  # commits the statistics with it
        reports.append({"report_id": report_id, "status_url": f"/api/v1/reports/{report_id}",
                        "urls": len(urls)})
    if not reports:
        store.commit()
    payload = {"checked": batch.size, "known": answer.known, "results": answer.results,
               "reports": reports}
    return Response(_dumps(payload), media_type="application/json")


@router.get("/api/v1/hashcheck/stats", tags=["hashcheck"], response_model=StatsResponse)
def get_stats(caller: HosterOrAdmin, store: StoreDep) -> dict[str, Any]:
    """Hashes checked and hits per ISO week: every hoster's for an admin, a hoster only its own."""
    rows = store.hashcheck.per_week(None if caller.role == "admin" else caller.user_id)
    return {"stats": [{"week": w, "hoster": n, "checks": c, "hits": h} for w, n, c, h in rows]}


@router.get("/monitor/hashcheck", response_class=HTMLResponse, include_in_schema=False)
def monitor(request: Request, caller: Admin, store: StoreDep) -> HTMLResponse:
    """Checks and hits per week per hoster, with bar charts drawn server-side (no JS, no CDN)."""
    rows = store.hashcheck.per_week()
    checks: dict[str, int] = defaultdict(int)
    hits: dict[str, int] = defaultdict(int)
    for week, _, c, h in rows:
        checks[week] += c
        hits[week] += h
    weeks = sorted(checks)[-CHART_WEEKS:]  # the table below keeps every week
    ctx = {
        "hotline_name": request.app.state.system.settings.hotline_name,
        "rows": [{"week": w, "hoster": n, "checks": c, "hits": h,
                  "rate": f"{100 * h / c:.2f} %" if c else "–"} for w, n, c, h in rows],
        "checks_chart": chart({w: checks[w] for w in weeks}),
        "hits_chart": chart({w: hits[w] for w in weeks}),
        "total_checks": sum(checks.values()),
        "total_hits": sum(hits.values()),
        "hosters": len({n for _, n, _, _ in rows}),
    }
    return templates.TemplateResponse(request, "monitor.html", ctx)
