"""The lean path for ``POST /api/v1/reports``: the common, valid, anonymous report accepted
without FastAPI's per-request machinery.

Under load most of the web process's CPU per report went to FastAPI itself: routing through
the included routers, solving the app-wide and the route's dependencies, validating headers
one by one, building the request handler's context (``docs/benchmarks-intake.md``). This pure
ASGI middleware sits inside the hardening middleware (body size limit, control characters,
security headers: they still act on every request) and answers a request itself only when it
is the plain case: JSON content, no token or cookie, one short ``Idempotency-Key`` at most, a
body that ``ReportRequest`` accepts and URLs whose hosts can be on the internet. Then it runs
what the route runs (rate limit, ``accept_report``: group commit, 202 after the commit).

Anything else (a token, bad JSON, a field error, an unreachable host, another content type)
goes on, with the body replayed, to the FastAPI route ``services.ingest.routes.post_report``,
so every error answer (the documented 422 shape, 401s) comes from the same code as before
and the OpenAPI document is the route's. The lean path never answers an error of its own
except the rate limit's 429, which is built by the same function the route uses."""

from __future__ import annotations

import json
from typing import Any

from pydantic import ValidationError
from starlette.requests import Request

from hotline.web.middleware import read_body, replaying
from services.ingest.routes import ReportRequest, accept_report, rate_limited, url_problems

PATH = "/api/v1/reports"
_JSON = (b"application/json", b"application/json; charset=utf-8")
_FIELDS = frozenset(ReportRequest.model_fields)
Scope = dict[str, Any]


def _plain_headers(scope: Scope) -> tuple[bool, str | None]:
    """(whether the request is the plain case, its Idempotency-Key)."""
    json_type = False
    key: str | None = None
    for name, value in scope.get("headers", ()):
        if name == b"content-type":
            if json_type or value.lower() not in _JSON:
                return False, None
            json_type = True
        elif name in (b"authorization", b"cookie"):
            return False, None  # a caller with a token: the route checks it (401, police channel)
        elif name == b"idempotency-key":
            if key is not None:
                return False, None
            key = value.decode("latin-1")
            if len(key) > 200:
                return False, None  # the route's 422
    return json_type, key


class LeanReportIntake:
    """``POST /api/v1/reports`` for the plain case; everything else to ``app`` unchanged."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope.get("method") != "POST" or scope.get("path") != PATH:
            await self.app(scope, receive, send)
            return
        plain, key = _plain_headers(scope)
        if not plain:
            await self.app(scope, receive, send)
            return
        raw, messages = await read_body(receive)
        body = self._plain_body(scope, raw)
        if body is None:
            await self.app(scope, replaying(messages, receive), send)
            return
        request = Request(scope)
        response = rate_limited(request) or await accept_report(request, body, "api", key)
        await response(scope, receive, send)

    @staticmethod
    def _plain_body(scope: Scope, raw: bytes) -> ReportRequest | None:
        """The report if the body is one the route would accept as it is, else None."""
        if not raw.startswith(b"{") or raw[1:2] == b"\x00":
            return None  # not an object in UTF-8 (or empty): the route says what it is
        try:
            # What Starlette's request.json() does (json.loads of the bytes), without its
            # encoding detection: a body starting with "{" and no NUL next is UTF-8 to it too.
            data = json.loads(raw.decode("utf-8", "surrogatepass"))
        except (ValueError, RecursionError):
            return None
        if not isinstance(data, dict) or not data.keys() <= _FIELDS:
            return None
        try:
            body = ReportRequest.model_validate(data)
        except ValidationError:
            return None
        if url_problems(body.urls, scope["app"].state.system.operator_hosts()):
            return None  # the route's 422 naming the URL
        return body
