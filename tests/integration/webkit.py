"""An embedded web app for the hardening tests: SQLite in a temporary directory, one account
per role, no stages running (these tests are about what the HTTP layer lets through), served
in-process (``TestClient``) or on loopback (``serve``) when real sockets matter."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fastapi import FastAPI
from fastapi.testclient import TestClient

from doubles.loopback import free_port
from entrypoints.bootstrap import System, bootstrap
from entrypoints.web import create_app
from hotline.config import Settings
from hotline.storage.unit_of_work import SqlUnitOfWork
from hotline.web.auth import ROLES, new_token


@dataclass
class WebApp:
    app: FastAPI
    system: System
    tokens: dict[str, str]  # role -> token of the account "test-<role>"
    client: TestClient

    def auth(self, role: str | None) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.tokens[role]}"} if role else {}


def build(tmp: Path, **settings: Any) -> tuple[FastAPI, System, dict[str, str]]:
    hosting = tmp / "hosting.yaml"
    hosting.write_text("hosts:\n  files.hoster-a.test: [127.0.0.2]\n  a.test: [127.0.0.9]\n")
    values: dict[str, Any] = {"database_url": f"sqlite:///{tmp / 'hotline.db'}", "kafka_brokers": None,
                              "index_dir": "none", "hosting_file": hosting}
    values.update(settings)
    system = bootstrap(Settings(**values))
    tokens = {role: new_token() for role in ROLES}
    with system.sessions() as session:
        store = SqlUnitOfWork(session)
        for role, token in tokens.items():
            store.users.add(f"test-{role}", role, token, **({"country": "DE"} if role == "partner" else {}))
        store.commit()
    return create_app(system), system, tokens


@contextmanager
def web_app(tmp: Path, **settings: Any) -> Iterator[WebApp]:
    app, system, tokens = build(tmp, **settings)
    with TestClient(app, raise_server_exceptions=False) as client:
        try:
            yield WebApp(app, system, tokens, client)
        finally:
            system.engine.dispose()


@contextmanager
def serve(app: FastAPI) -> Iterator[str]:
    """``app`` on a loopback port under uvicorn; yields its base URL."""
    import uvicorn

    port = free_port("127.0.0.1")
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 15
    while not server.started:
        assert time.monotonic() < deadline, "the web app did not start"
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(10)
