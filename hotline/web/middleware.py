"""Pure ASGI middleware every response of the app goes through: a request body size limit and
the security headers. Pure ASGI (no ``BaseHTTPMiddleware``) so the body limit acts on the
byte stream before anything reads it into memory, and so neither buffers responses."""

from __future__ import annotations

import json
import re
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


_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")


def _control_character_at(node: Any, where: str = "") -> tuple[str, str] | None:
    """(field path, character) of the first string in a decoded JSON document holding a control
    character other than tab, line feed, carriage return; None if there is none."""
    if isinstance(node, str):
        m = _CONTROL.search(node)
        return (where or "body", m.group()) if m else None
    if isinstance(node, dict):
        for key, value in node.items():
            found = _control_character_at(key, where or "body") or _control_character_at(
                value, f"{where}.{key}" if where else str(key))
            if found:
                return found
    if isinstance(node, list):
        for i, value in enumerate(node):
            if found := _control_character_at(value, f"{where}[{i}]"):
                return found
    return None


async def read_body(receive: Any) -> tuple[bytes, list[Message]]:
    """The whole request body, and the ASGI messages it came in, so the app behind can be
    handed them again (``replaying``). The body size limit (``BodySizeLimit``, outside every
    middleware that reads bodies) bounds what is held here."""
    chunks: list[bytes] = []
    messages: list[Message] = []
    while True:
        message = await receive()
        messages.append(message)
        if message["type"] != "http.request":
            break
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            break
    return b"".join(chunks), messages


def replaying(messages: list[Message], receive: Any) -> Any:
    """A ``receive`` that gives ``messages`` first, then whatever ``receive`` gives."""
    replay = iter(messages)

    async def replayed() -> Message:
        try:
            return next(replay)
        except StopIteration:
            return await receive()

    return replayed


class RefuseControlCharacters:
    """422 for a JSON request body with a NUL or another control character (other than tab and
    line breaks) in any string, naming the field: no reporter or operator types them, and they
    break what comes after (PostgreSQL refuses NUL in text: a 500 and a lost request; logs and
    e-mails). JSON can carry them only escaped (``\\u0000``), so a body without ``\\u00`` (or a
    raw DEL) passes without being parsed; one with it is parsed once here and replayed to the app
    unchanged. ``skip``: path prefixes whose routes validate every string themselves (HashCheck's
    hex digits and URLs), where the extra parse of a 32 MB batch would cost."""

    def __init__(self, app: ASGIApp, skip: tuple[str, ...] = ()) -> None:
        self.app = app
        self.skip = skip

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        path = scope.get("path", "")
        if scope["type"] != "http" or scope.get("method") not in ("POST", "PUT", "PATCH") or path.startswith(self.skip):
            await self.app(scope, receive, send)
            return
        content_type = next((v for n, v in scope.get("headers", []) if n == b"content-type"), b"")
        if b"json" not in content_type.lower():
            await self.app(scope, receive, send)
            return
        body, messages = await read_body(receive)
        if b"\\u00" in body or b"\x7f" in body:
            try:
                found = _control_character_at(json.loads(body))
            except (ValueError, RecursionError):
                found = None  # not JSON: the app says so itself
            if found is not None:
                where, char = found
                payload = json.dumps({"detail": [{"field": where, "reason": f"contains the control "
                                      f"character U+{ord(char):04X}"}]}).encode()
                await send({"type": "http.response.start", "status": 422, "headers": [
                    (b"content-type", b"application/json"), (b"content-length", str(len(payload)).encode())]})
                await send({"type": "http.response.body", "body": payload})
                return
        await self.app(scope, replaying(messages, receive), send)


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
