"""The lean path for ``POST /api/v1/reports`` (``services.ingest.fastpath``) answers exactly as
the FastAPI route does: the same requests, sent to the app with and without it, get the same
status, the same error body and the same kind of 202; the plain case is taken by the lean path
(the FastAPI route never runs) and everything else is handed to the route."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select

from entrypoints.bootstrap import System, bootstrap
from entrypoints.web import create_app
from hotline.config import Settings
from hotline.storage.models import BusMessage, Report
from hotline.web.app import create_shell
from services.ingest import routes
from services.ingest.routes import router as ingest_router

pytestmark = pytest.mark.integration

LONG_KEY = "k" * 201
CASES: list[tuple[str, dict[str, str], bytes]] = [
    ("plain", {"content-type": "application/json"}, b'{"urls":["http://example.com/a.jpg"]}'),
    ("with key", {"content-type": "application/json", "idempotency-key": "abc"}, b'{"urls":["http://example.com/b.jpg"]}'),
    ("charset", {"content-type": "application/json; charset=utf-8"}, b'{"urls":["http://example.com/c.jpg"], "description": "x"}'),
    ("bad json", {"content-type": "application/json"}, b'{"urls":['),
    ("empty body", {"content-type": "application/json"}, b""),
    ("not an object", {"content-type": "application/json"}, b'["http://example.com/"]'),
    ("extra field", {"content-type": "application/json"}, b'{"urls":["http://example.com/"],"x":1}'),
    ("no urls", {"content-type": "application/json"}, b'{"urls":[]}'),
    ("bad url", {"content-type": "application/json"}, b'{"urls":["ftp://example.com/"]}'),
    ("intranet", {"content-type": "application/json"}, b'{"urls":["http://intranet/x"]}'),
    ("long key", {"content-type": "application/json", "idempotency-key": LONG_KEY}, b'{"urls":["http://example.com/"]}'),
    ("text/plain", {"content-type": "text/plain"}, b'{"urls":["http://example.com/d.jpg"]}'),
    ("no content type", {}, b'{"urls":["http://example.com/e.jpg"]}'),
    ("bad email", {"content-type": "application/json"}, b'{"urls":["http://example.com/"],"reporter_email":"no"}'),
    ("unknown token", {"content-type": "application/json", "authorization": "Bearer nope"},
     b'{"urls":["http://example.com/f.jpg"]}'),
    ("nul", {"content-type": "application/json"}, b'{"urls":["http://example.com/\\u0000"]}'),
]


@pytest.fixture
def system(tmp_path: Path) -> Iterator[System]:
    s = bootstrap(Settings(database_url=f"sqlite:///{tmp_path / 'hotline.db'}", index_dir="none",
                           report_rate_per_minute=0))
    yield s
    s.close()


def _route_only(system: System) -> Any:
    """The app as it was before the lean path: the FastAPI route answers every request."""
    return create_shell(system, system.sessions, [ingest_router])


def _answer(client: TestClient, headers: dict[str, str], body: bytes) -> tuple[int, Any, str]:
    r = client.post("/api/v1/reports", content=body, headers=headers)
    try:
        data: Any = r.json()
    except json.JSONDecodeError:
        data = r.text
    if r.status_code == 202:
        data = sorted(data)  # ids differ; the keys must not
    return r.status_code, data, r.headers.get("content-security-policy", "")


def test_lean_path_answers_as_the_route_does(system: System) -> None:
    with TestClient(create_app(system)) as lean, TestClient(_route_only(system)) as plain:
        for name, headers, body in CASES:
            assert _answer(lean, headers, body) == _answer(plain, headers, body), name


def test_plain_report_skips_the_route_and_is_stored_with_its_message(system: System, monkeypatch: pytest.MonkeyPatch) -> None:
    called: list[str] = []
    original = routes.refuse_unreachable

    def spy(request: Any, urls: list[str]) -> None:
        called.append("route")
        original(request, urls)

    monkeypatch.setattr(routes, "refuse_unreachable", spy)
    with TestClient(create_app(system)) as client:
        r = client.post("/api/v1/reports", json={"urls": ["http://example.com/lean.jpg"]})
        assert r.status_code == 202
        assert called == []  # the lean path took it
        again = client.post("/api/v1/reports", json={"urls": ["http://example.com/lean.jpg"]},
                            headers={"idempotency-key": "same"})
        twice = client.post("/api/v1/reports", json={"urls": ["http://example.com/lean.jpg"]},
                            headers={"idempotency-key": "same"})
        assert again.json()["report_id"] == twice.json()["report_id"]
        r = client.post("/api/v1/reports", json={"urls": ["http://intranet/x"]})
        assert r.status_code == 422 and called == ["route"]  # handed on: the route's 422
        assert r.headers["x-content-type-options"] == "nosniff"
    with system.sessions() as s:
        assert s.scalar(select(func.count()).select_from(Report)) == 2
        assert s.scalar(select(func.count()).select_from(BusMessage).where(BusMessage.topic == "reports.submitted")) == 2
