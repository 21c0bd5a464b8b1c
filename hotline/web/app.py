"""The app shell every service's routes are mounted on: 422s that name the field, health,
Prometheus metrics. It knows the tables it reports on, never the features' routes; the
composition root (``entrypoints.web``) includes those."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from fastapi import APIRouter, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse, RedirectResponse
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Gauge, generate_latest
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from hotline.storage.models import BusMessage, Item


def create_shell(system: Any, sessions: sessionmaker[Session], routers: Iterable[APIRouter]) -> FastAPI:
    """``system`` goes to ``app.state.system`` (routes read their adapters from it);
    ``sessions`` serve health and metrics."""
    app = FastAPI(
        title="hotline",
        description="Report intake, status, analyst assessment and HashCheck for a CSAM reporting hotline.",
        version="0.1.0",
    )
    app.state.system = system
    for router in routers:
        app.include_router(router)

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

    @app.get("/metrics", include_in_schema=False)
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
