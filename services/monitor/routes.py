"""The monitor's routes: the public figures per hoster (JSON, CSV and a page with SVG charts), the
analysts' list of open cases past their deadline, and the annual statistics page.

Public output is built from ``Figures.public()`` and hoster names only: it never carries a URL
or an item id (``tests/integration/test_monitor_api.py`` checks it). Nothing here writes.
"""

from __future__ import annotations

import csv
import io
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Query, Request
from fastapi import Path as PathParam
from fastapi.responses import HTMLResponse, JSONResponse, Response
from fastapi.templating import Jinja2Templates

from hotline.kernel.clock import now
from hotline.storage.unit_of_work import SqlUnitOfWork
from hotline.web.auth import Caller, get_store, require_role
from services.monitor import charts, queries
from services.monitor.annual import annual
from services.monitor.figures import (
    BUCKETS,
    Figures,
    HosterFigures,
    NoticedItem,
    by_hoster,
    by_week,
    distribution,
    figures,
    human_duration,
    human_share,
    open_past_deadline,
)

router = APIRouter()
templates = Jinja2Templates(directory=str(Path(__file__).parent / "templates"))
templates.env.globals.update(duration=human_duration, share=human_share)

CHART_WEEKS = 26
"""The weekly charts show the last half year; the JSON and CSV keep every week."""

PERCENTILE_METHOD = "nearest-rank"

StoreDep = Annotated[SqlUnitOfWork, Depends(get_store)]
Analyst = Annotated[Caller, Depends(require_role("analyst"))]
Format = Annotated[Literal["json", "csv"], Query(description="json (default) or csv")]
By = Annotated[Literal["hoster", "week"], Query(description="csv rows: one per hoster (default) or per hoster and week")]


def _deadline(request: Request) -> int:
    return int(request.app.state.system.settings.removal_deadline_seconds)


def _hotline_name(request: Request) -> str:
    return str(request.app.state.system.settings.hotline_name)


def _rows(store: SqlUnitOfWork) -> list[NoticedItem]:
    return queries.noticed_items(store.session)


# -- the public figures --------------------------------------------------------------------------

def public_monitor(rows: list[NoticedItem], at: datetime, deadline: int) -> dict[str, Any]:
    """The public JSON: publishable facts only (counts, durations, shares, hoster names)."""
    hosters = by_hoster(rows, at, deadline)
    return {
        "generated_at": at.isoformat(),
        "deadline_seconds": deadline,
        "percentile_method": PERCENTILE_METHOD,
        "weeks_by": "ISO week of the first notice",
        "totals": figures(rows, at, deadline).public(),
        "hosters": [
            {"rank": rank, "hoster": h.hoster, "countries": list(h.countries), **h.overall.public(),
             "weeks": [{"week": w, **f.public()} for w, f in h.weeks.items()]}
            for rank, h in enumerate(hosters, 1)
        ],
        "weeks": [{"week": w, **f.public()} for w, f in by_week(rows, at, deadline).items()],
    }


CSV_FIGURES = list(Figures.__dataclass_fields__)


def _cell(value: Any) -> Any:
    """No spreadsheet formulas from hoster names (they may come from RDAP, i.e. from anyone)."""
    if isinstance(value, str) and value[:1] in ("=", "+", "-", "@", "\t", "\r"):
        return "'" + value
    return "" if value is None else value


def hosters_csv(data: dict[str, Any], by: str = "hoster") -> str:
    out = io.StringIO()
    w = csv.writer(out, lineterminator="\n")
    if by == "week":
        w.writerow(["week", "rank", "hoster", *CSV_FIGURES])
        for h in data["hosters"]:
            for wk in h["weeks"]:
                w.writerow([wk["week"], h["rank"], _cell(h["hoster"]), *(_cell(wk[k]) for k in CSV_FIGURES)])
    else:
        w.writerow(["rank", "hoster", "countries", *CSV_FIGURES])
        for h in data["hosters"]:
            w.writerow([h["rank"], _cell(h["hoster"]), " ".join(h["countries"]), *(_cell(h[k]) for k in CSV_FIGURES)])
    return out.getvalue()


def _csv_response(text: str, filename: str) -> Response:
    return Response(text, media_type="text/csv; charset=utf-8",
                    headers={"Content-Disposition": f'attachment; filename="{filename}"'})


# What the OpenAPI document says these answer (JSON, or CSV with ?format=csv).
_JSON_OR_CSV: dict[int | str, dict[str, Any]] = {
    200: {"content": {"application/json": {}, "text/csv": {"schema": {"type": "string"}}}}}
_CSV: dict[int | str, dict[str, Any]] = {200: {"content": {"text/csv": {"schema": {"type": "string"}}}}}


@router.get("/api/v1/monitor/hosters", tags=["monitor"], response_model=None, responses=_JSON_OR_CSV)
def get_hosters(request: Request, store: StoreDep, format: Format = "json", by: By = "hoster") -> Response:
    """Per hoster, slowest first: notices, removals, median and 90th-percentile time to removal
    (from first notice and from first report; nearest-rank), share removed within the deadline,
    still online and open past the deadline; plus totals and the same per ISO week. Public:
    publishable facts only, never a URL or item id. ``?format=csv`` for a spreadsheet."""
    data = public_monitor(_rows(store), now(), _deadline(request))
    if format == "csv":
        return _csv_response(hosters_csv(data, by), "monitor-hosters.csv")
    return JSONResponse(data)


@router.get("/api/v1/monitor/hosters.csv", tags=["monitor"], response_model=None, responses=_CSV)
def get_hosters_csv(request: Request, store: StoreDep, by: By = "hoster") -> Response:
    """The same as ``/api/v1/monitor/hosters?format=csv``."""
    return _csv_response(hosters_csv(public_monitor(_rows(store), now(), _deadline(request)), by),
                         "monitor-hosters.csv")


def _ranking_chart(hosters: list[HosterFigures]) -> dict[str, Any]:
    points = []
    for h in hosters:
        f = h.overall
        if f.median_seconds is not None:
            points.append(charts.Point(h.hoster, f.median_seconds, human_duration(f.median_seconds)))
        else:
            points.append(charts.Point(h.hoster, 0, f"none removed, {f.open_past_deadline} overdue"
                                       if f.open_past_deadline else "nothing to judge yet"))
    return charts.rows(points)


def _weekly_charts(weeks: dict[str, Figures]) -> tuple[dict[str, Any], dict[str, Any]]:
    recent = list(weeks.items())[-CHART_WEEKS:]
    median_chart = charts.columns([
        charts.Point(w[5:], f.median_seconds or 0, human_duration(f.median_seconds)) for w, f in recent
    ])
    share_chart = charts.columns([
        charts.Point(w[5:], f.share_within_deadline or 0, human_share(f.share_within_deadline)) for w, f in recent
    ])
    return median_chart, share_chart


@router.get("/monitor", response_class=HTMLResponse, include_in_schema=False)
def monitor_page(request: Request, store: StoreDep) -> HTMLResponse:
    """The public monitor: the ranking, the distribution and the weekly trends as inline SVG."""
    at, deadline = now(), _deadline(request)
    rows = _rows(store)
    hosters = by_hoster(rows, at, deadline)
    weeks = by_week(rows, at, deadline)
    dist = distribution(rows)
    still_online = sum(1 for r in rows if r.still_online)
    median_chart, share_chart = _weekly_charts(weeks)
    ctx = {
        "hotline_name": _hotline_name(request),
        "generated_at": at,
        "deadline": deadline,
        "totals": figures(rows, at, deadline),
        "hosters": hosters,
        "ranking_chart": _ranking_chart(hosters),
        "distribution_chart": charts.columns(
            [charts.Point(label, dist[label], str(dist[label])) for label, _ in BUCKETS]
            + [charts.Point("still online", still_online, str(still_online))]
        ),
        "median_chart": median_chart,
        "share_chart": share_chart,
        "chart_weeks": CHART_WEEKS,
    }
    return templates.TemplateResponse(request, "monitor.html", ctx)


# -- the internal variant (analysts) -------------------------------------------------------------

def open_cases(rows: list[NoticedItem], at: datetime, deadline: int) -> dict[str, Any]:
    return {
        "generated_at": at.isoformat(),
        "deadline_seconds": deadline,
        "open": [
            {"item_id": c.item_id, "url": c.url, "hoster": c.hoster, "country": c.country, "state": c.state,
             "first_notice": c.first_notice.isoformat(), "age_seconds": c.age_seconds,
             "overdue_seconds": c.overdue_seconds}
            for c in open_past_deadline(rows, at, deadline)
        ],
    }


@router.get("/api/v1/monitor/open", tags=["monitor"], response_model=None, responses=_JSON_OR_CSV)
def get_open(request: Request, caller: Analyst, store: StoreDep, format: Format = "json") -> Response:
    """Analysts and admins: the open cases past their deadline, oldest first (item id, URL,
    hoster, age since the first notice)."""
    data = open_cases(_rows(store), now(), _deadline(request))
    if format == "csv":
        out = io.StringIO()
        w = csv.writer(out, lineterminator="\n")
        fields = ["item_id", "url", "hoster", "country", "state", "first_notice", "age_seconds", "overdue_seconds"]
        w.writerow(fields)
        for c in data["open"]:
            w.writerow([_cell(c[k]) for k in fields])
        return _csv_response(out.getvalue(), "monitor-open.csv")
    return JSONResponse(data)


@router.get("/monitor/internal", response_class=HTMLResponse, include_in_schema=False)
def internal_page(request: Request, caller: Analyst, store: StoreDep) -> HTMLResponse:
    at, deadline = now(), _deadline(request)
    rows = _rows(store)
    ctx = {
        "hotline_name": _hotline_name(request),
        "generated_at": at,
        "deadline": deadline,
        "caller": caller,
        "cases": open_past_deadline(rows, at, deadline),
        "hosters": by_hoster(rows, at, deadline),
    }
    response = templates.TemplateResponse(request, "internal.html", ctx)
    response.headers["Cache-Control"] = "no-store"
    response.headers["Referrer-Policy"] = "same-origin"
    return response


# -- the annual statistics -----------------------------------------------------------------------

Year = Annotated[int, PathParam(ge=2000, le=9998, description="calendar year (UTC)")]


def annual_stats(store: SqlUnitOfWork, year: int, at: datetime, deadline: int) -> dict[str, Any]:
    return annual(queries.annual_rows(store.session, year), at, deadline)


@router.get("/api/v1/stats/{year}", tags=["monitor"])
def get_annual(request: Request, store: StoreDep, year: Year) -> dict[str, Any]:
    """The year's published figures: reports per channel and month, share illegal, new vs known,
    hosting countries, forwards per partner, police escalations, time to removal."""
    return annual_stats(store, year, now(), _deadline(request))


MONTH_NAMES = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")


@router.get("/stats/{year}", response_class=HTMLResponse, include_in_schema=False)
def annual_page(request: Request, store: StoreDep, year: Year) -> HTMLResponse:
    stats = annual_stats(store, year, now(), _deadline(request))
    per_month = stats["reports"]["per_month"]
    ctx = {
        "hotline_name": _hotline_name(request),
        "stats": stats,
        "months": MONTH_NAMES,
        "reports_chart": charts.columns(
            [charts.Point(m, n, str(n)) for m, n in zip(MONTH_NAMES, per_month, strict=True)]
        ),
    }
    return templates.TemplateResponse(request, "annual.html", ctx)
