"""Pure ASGI middleware every response of the app goes through: a request body size limit and
the security headers. Pure ASGI (no ``BaseHTTPMiddleware``) so the body limit acts on the
byte stream before anything reads it into memory, and so neither buffers responses."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

Scope = dict[str, Any]
Message = dict[str, Any]
ASGIApp = Any


class BodyTooLarge(Exception):
    """Raised from ``receive`` when a streamed body passes its limit; the middleware answers 413."""


def _too_large(limit: int) -> tuple[Message, Message]:
    body = json.dumps({"detail": [{"field": "body", "reason": f"request body over {limit} bytes; "
                                   "send less (split the batch or shorten the text)"}]}).encode()
    start = {"type": "http.response.start", "status": 413, "headers": [
        (b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
        (b"connection", b"close")]}
    return start, {"type": "http.response.body", "body": body}


class BodySizeLimit:
    """Refuse request bodies over a limit with 413 and a JSON reason, by ``Content-Length``
    before the app runs and by counting while the body streams in (chunked uploads, or a
    ``Content-Length`` that lies), so at most ``limit`` bytes are ever held.

    ``per_path`` gives routes a different limit (HashCheck's 10,000-hash batches): the longest
    matching path prefix wins."""

    def __init__(self, app: ASGIApp, limit: int, per_path: Mapping[str, int] | None = None) -> None:
        self.app = app
        self.limit = limit
        self.per_path = sorted((per_path or {}).items(), key=lambda kv: -len(kv[0]))

    def limit_for(self, path: str) -> int:
        for prefix, limit in self.per_path:
            if path == prefix or path.startswith(prefix.rstrip("/") + "/"):
                return limit
        return self.limit

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.limit_for(scope.get("path", ""))
        for name, value in scope.get("headers", []):
            if name == b"content-length":
                try:
                    declared = int(value)
                except ValueError:
                    declared = -1
                if declared > limit:
                    for message in _too_large(limit):
                        await send(message)
                    return
        received = 0
        exceeded = False
        started = False

        async def limited_receive() -> Message:
            nonlocal received, exceeded
            message: Message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    exceeded = True
                    raise BodyTooLarge(f"request body over {limit} bytes")
            return message

        async def guarded_send(message: Message) -> None:
            nonlocal started
            if exceeded and not started:
                # The app turned the aborted read into its own answer (FastAPI: a 400); the
                # caller gets the 413 that says what happened instead.
                return
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, limited_receive, guarded_send)
        except BodyTooLarge:
            pass
        except Exception:
            if not exceeded:
                raise
        if exceeded and not started:
            for message in _too_large(limit):
                await send(message)


DEFAULT_CSP = ("default-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; "
               "object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'")
"""For every response that does not set its own: scripts only from this origin (no inline
script, nothing from third parties); inline ``<style>`` blocks are allowed because the public
pages carry theirs inline. Pages with a stricter policy (the analyst pages' nonces) keep it."""


class SecurityHeaders:
    """The security headers on every response (pages, API, errors, static files), set here once
    instead of per page. A header a route already set is left as it is (a stricter CSP, a
    ``Referrer-Policy: same-origin`` a CSRF check relies on). HSTS when the request came over
    https, or always with ``hsts_always`` (TLS terminated by a proxy in front)."""

    def __init__(self, app: ASGIApp, *, hsts_always: bool = False, hsts_seconds: int = 31_536_000) -> None:
        self.app = app
        self.hsts_always = hsts_always
        self.hsts = f"max-age={hsts_seconds}; includeSubDomains".encode()

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        https = scope.get("scheme") == "https"

        async def with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                present = {name.lower() for name, _ in headers}
                wanted = [
                    (b"content-security-policy", DEFAULT_CSP.encode()),
                    (b"x-frame-options", b"DENY"),
                    (b"x-content-type-options", b"nosniff"),
                    (b"referrer-policy", b"no-referrer"),
                ]
                if https or self.hsts_always:
                    wanted.append((b"strict-transport-security", self.hsts))
                headers.extend((n, v) for n, v in wanted if n not in present)
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, with_headers)
