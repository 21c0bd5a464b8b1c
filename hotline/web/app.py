"""The app shell every service's routes are mounted on: 422s that name the field, health,
Prometheus metrics (behind a token), self-hosted API docs, and the hardening every route
shares: a body size limit, security headers, refusal of unknown tokens and the lockout after
repeated ones. It knows the tables it reports on, never the features' routes; the
composition root (``entrypoints.web``) includes those."""

from __future__ import annotations

import secrets
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from fastapi import APIRouter, Depends, FastAPI, HTTPException, Request
from fastapi.exception_handlers import http_exception_handler
from fastapi.exceptions import RequestValidationError
from fastapi.responses import (
    HTMLResponse,
    JSONResponse,
    PlainTextResponse,
    RedirectResponse,
    Response,
)
from fastapi.staticfiles import StaticFiles
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Gauge, generate_latest
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker
from starlette.exceptions import HTTPException as StarletteHTTPException

from hotline.storage.models import BusMessage, Item
from hotline.storage.unit_of_work import SqlUnitOfWork
from hotline.web.auth import CredentialGuard, check_bearer, get_store, optional_caller
from hotline.web.middleware import BodySizeLimit, RefuseControlCharacters, SecurityHeaders
from hotline.web.openapi import document_errors
from hotline.web.ratelimit import Lockout, RateLimiter

_DOCS = Path(__file__).parent / "docs"


def _swagger_assets() -> Path | None:
    """Swagger UI's JS and CSS as shipped inside the ``fastapi-offline`` wheel (served from
    this app: no page loads anything from a CDN)."""
    try:
        import fastapi_offline
    except ImportError:  # pragma: no cover - a dependency of the package
        return None
    static = Path(fastapi_offline.__file__).parent / "static"
    return static if (static / "swagger-ui-bundle.js").is_file() else None


def create_shell(
    system: Any, sessions: sessionmaker[Session], routers: Iterable[APIRouter],
    body_limits: Mapping[str, int] | None = None,
    inner_middleware: Iterable[Any] = (),
) -> FastAPI:
    """``system`` goes to ``app.state.system`` (routes read their adapters from it);
    ``sessions`` serve health and metrics; ``body_limits``: path prefix -> body limit for routes
    that need more than ``HOTLINE_MAX_BODY_BYTES``; ``inner_middleware``: pure ASGI middleware classes
placed inside the hardening (a feature's lean path for one hot route, which then still gets the
body limit, the control-character check and the security headers)."""
    settings = system.settings
    app = FastAPI(
        title="hotline",
        description="Report intake, status, analyst assessment and HashCheck for a CSAM reporting hotline.",
        version="0.1.0",
        docs_url=None,
        redoc_url=None,
        dependencies=[Depends(check_bearer)],
    )
    app.state.system = system
    app.state.credential_guard = CredentialGuard(
        Lockout(settings.auth_max_failures, settings.auth_lockout_seconds),
        RateLimiter(settings.login_per_minute),
    )
    for router in routers:
        app.include_router(router)
    for middleware in inner_middleware:
        app.add_middleware(middleware)
    # Added innermost first: the headers go on the body limit's 413s too, and the body is cut
    # off at its limit before anything buffers it.
    app.add_middleware(RefuseControlCharacters, skip=tuple(body_limits or ()))
    app.add_middleware(BodySizeLimit, limit=settings.max_body_bytes, per_path=dict(body_limits or {}))
    app.add_middleware(SecurityHeaders, hsts_always=settings.hsts_always)
    document_errors(app)

    assets = _swagger_assets()
    if assets is not None:
        app.mount("/docs/assets", StaticFiles(directory=assets), name="docs-assets")

    @app.get("/docs", include_in_schema=False)
    def docs() -> Response:
        if assets is None:
            return PlainTextResponse("API docs assets are not installed; the document is at /openapi.json")
        return HTMLResponse((_DOCS / "docs.html").read_text())

    @app.get("/docs/init.js", include_in_schema=False)
    def docs_init() -> Response:
        return Response((_DOCS / "init.js").read_text(), media_type="text/javascript")

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> Response:
        # One 422 shape everywhere: a route's own 422 with a sentence becomes a field list too.
        if exc.status_code == 422 and isinstance(exc.detail, str):
            return JSONResponse({"detail": [{"field": "body", "reason": exc.detail}]}, status_code=422,
                                headers=exc.headers)
        return await http_exception_handler(request, exc)

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        # 422 naming the field and the reason, in words a caller can act on.
        errors = [
            {"field": ".".join(str(p) for p in e["loc"] if p != "body"), "reason": str(e["msg"]).removeprefix("Value error, ")}
            for e in exc.errors()
        ]
        return JSONResponse({"detail": errors}, status_code=422)

    @app.get("/", include_in_schema=False)
    def root() -> RedirectResponse:
        return RedirectResponse("/report")

    @app.get("/healthz", include_in_schema=False)
    def health() -> dict[str, str]:
        with sessions() as s:
            s.execute(select(1))
        return {"status": "ok"}

    metrics_token = settings.metrics_token
    app.state.service_tokens = (metrics_token,) if metrics_token else ()

    def metrics_reader(request: Request, store: SqlUnitOfWork = Depends(get_store)) -> None:
        """An admin's token, or ``HOTLINE_METRICS_TOKEN`` (a scraper's): the counts per state
        and the backlog are operational intelligence, not public figures."""
        header = request.headers.get("authorization", "")
        presented = header[7:].strip() if header.lower().startswith("bearer ") else ""
        if metrics_token and presented and secrets.compare_digest(presented.encode(), metrics_token.encode()):
            return
        caller = optional_caller(request, store)
        if caller is None:
            raise HTTPException(401, "metrics need a token: an admin's or HOTLINE_METRICS_TOKEN",
                                headers={"WWW-Authenticate": "Bearer"})
        if caller.role != "admin":
            raise HTTPException(403, "metrics are for admins and the metrics token")

    @app.get("/metrics", include_in_schema=False, dependencies=[Depends(metrics_reader)])
    def metrics() -> PlainTextResponse:
        registry = CollectorRegistry()
        items = Gauge("hotline_items", "Items by state", ["state"], registry=registry)
        backlog = Gauge("hotline_outbox_messages", "Messages in the bus/outbox table", registry=registry)
        with sessions() as s:
            for state, count in s.execute(select(Item.state, func.count()).group_by(Item.state)):
                items.labels(state).set(count)
            backlog.set(s.scalar(select(func.count()).select_from(BusMessage)) or 0)
        return PlainTextResponse(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    return app
