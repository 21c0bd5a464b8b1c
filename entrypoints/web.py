"""The assembled web app: the platform's shell with every service's routes."""

from __future__ import annotations

from fastapi import FastAPI

from entrypoints.bootstrap import System
from hotline.web.app import create_shell
from services.assessment.pages import router as analyst_pages_router
from services.assessment.routes import router as assessment_router
from services.hashcheck.routes import router as hashcheck_router
from services.ingest.fastpath import LeanReportIntake
from services.ingest.routes import router as ingest_router
from services.monitor.routes import router as monitor_router
from services.operations.routes import router as operations_router
from services.partners.routes import router as partners_router
from services.police.pages import router as police_pages_router
from services.police.routes import router as police_router


def create_app(system: System) -> FastAPI:
    return create_shell(
        system,
        system.sessions,
        [ingest_router, assessment_router, analyst_pages_router, hashcheck_router, monitor_router,
         operations_router, police_router, police_pages_router, partners_router],
        body_limits={"/api/v1/hashcheck": system.settings.hashcheck_max_body_bytes},
        inner_middleware=[LeanReportIntake],
    )


def create_app_from_environment() -> FastAPI:
    """The app for one of ``hotline serve --stage web --workers N``'s worker processes (uvicorn
    imports this factory in each): its own system, sessions and group committer, from the same
    environment as the parent. No migrations here (the parent ran them) and no outbox relay
    (the parent runs the one relay)."""
    from entrypoints.bootstrap import bootstrap
    from hotline.config import get_settings

    return create_app(bootstrap(get_settings(), run_migrations=False))
