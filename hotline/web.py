"""The FastAPI application: routes of every service behind one app, plus health and metrics."""

from __future__ import annotations

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse, RedirectResponse
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Gauge, generate_latest
from sqlalchemy import func, select

from hotline.bootstrap import System
from hotline.db.models import BusMessage, Item
from services.assessment.pages import router as analyst_pages_router
from services.assessment.routes import router as assessment_router
from services.hashcheck.routes import router as hashcheck_router
from services.ingest.routes import router as ingest_router


def create_app(system: System) -> FastAPI:
    app = FastAPI(
        title="hotline",
        description="Report intake, status, analyst assessment and HashCheck for a CSAM reporting hotline.",
        version="0.1.0",
    )
    app.state.system = system
    app.include_router(ingest_router)
    app.include_router(assessment_router)
    app.include_router(analyst_pages_router)
    app.include_router(hashcheck_router)

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
        with system.sessions() as s:
            s.execute(select(1))
        return {"status": "ok"}

    @app.get("/metrics", include_in_schema=False)
    def metrics() -> PlainTextResponse:
        registry = CollectorRegistry()
        items = Gauge("hotline_items", "Items by state", ["state"], registry=registry)
        backlog = Gauge("hotline_outbox_messages", "Messages in the bus/outbox table", registry=registry)
        with system.sessions() as s:
            for state, count in s.execute(select(Item.state, func.count()).group_by(Item.state)):
                items.labels(state).set(count)
            backlog.set(s.scalar(select(func.count()).select_from(BusMessage)) or 0)
        return PlainTextResponse(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    return app
