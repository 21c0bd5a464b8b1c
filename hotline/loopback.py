"""Loopback stand-ins for the outside world, used by ``hotline demo`` and the tests:
a web site serving synthetic images as if from a hosting provider, a partner
hotline's forward endpoint, and an SMTP server that keeps what it receives.

All of them bind to 127.0.0.0/8 addresses only; nothing here can be reached
from, or talk to, another machine.
"""

from __future__ import annotations

import ipaddress
import json
import socket
import threading
from dataclasses import dataclass, field
from email import message_from_bytes
from email.message import Message
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


def _require_loopback(host: str) -> None:
    if not ipaddress.ip_address(host).is_loopback:
        raise ValueError(f"{host} is not a loopback address; test servers bind to loopback only")


def serve_app(app: Any, port: int, host: str = "127.0.0.1", timeout: float = 15.0) -> tuple[Any, threading.Thread]:
    """Run an ASGI app under uvicorn in a daemon thread on loopback; returns once it accepts
    connections. Stop it with ``server.should_exit = True`` and ``thread.join()``."""
    import time

    import uvicorn

    _require_loopback(host)
    server = uvicorn.Server(uvicorn.Config(app, host=host, port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + timeout
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError(f"the web app did not start on {host}:{port}")
        time.sleep(0.02)
    return server, thread


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True


class LoopbackSite:
    """Serves ``pages`` (path -> (content type, bytes)) on one loopback address; 404 otherwise."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0) -> None:
        _require_loopback(host)
        self.pages: dict[str, tuple[str, bytes]] = {}
        self.requests: list[str] = []
        site = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802
                site.requests.append(self.path)
                page = site.pages.get(self.path.split("?", 1)[0])
                if page is None:
                    self.send_error(404)
                    return
                ctype, body = page
                self.send_response(200)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = _Server((host, port), Handler)
        self.host, self.port = host, int(self.server.server_address[1])
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def add(self, path: str, content_type: str, body: bytes) -> None:
        self.pages[path] = (content_type, body)

    def start(self) -> LoopbackSite:
        self._thread.start()
        return self

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@dataclass
class ReceivedForward:
    path: str
    authorization: str | None
    body: dict[str, Any]


class PartnerEndpoint:
    """A partner hotline's forward intake: accepts JSON POSTs bearing the expected token."""

    def __init__(self, token: str, host: str = "127.0.0.1", fail_first: int = 0) -> None:
        _require_loopback(host)
        self.token = token
        self.received: list[ReceivedForward] = []
        self.refused = 0
        self._fail_left = fail_first
        endpoint = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802
                length = int(self.headers.get("Content-Length", "0"))
                raw = self.rfile.read(length)
                auth = self.headers.get("Authorization")
                if auth != f"Bearer {endpoint.token}":
                    endpoint.refused += 1
                    self.send_error(401)
                    return
                if endpoint._fail_left > 0:
                    endpoint._fail_left -= 1
                    self.send_error(503)
                    return
                endpoint.received.append(ReceivedForward(self.path, auth, json.loads(raw)))
                self.send_response(201)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = _Server((host, 0), Handler)
        self.url = f"http://{host}:{self.server.server_address[1]}/api/forwards"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def start(self) -> PartnerEndpoint:
        self._thread.start()
        return self

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@dataclass
class SmtpSink:
    """A real SMTP server (aiosmtpd) on loopback that keeps every message it accepts."""

    host: str = "127.0.0.1"
    port: int = 0
    messages: list[Message] = field(default_factory=list)

    def start(self) -> SmtpSink:
        from aiosmtpd.controller import Controller

        _require_loopback(self.host)
        sink = self

        class Handler:
            async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:  # noqa: N802
                msg = message_from_bytes(envelope.content)
                msg["X-Envelope-To"] = ", ".join(envelope.rcpt_tos)
                sink.messages.append(msg)
                return "250 Message accepted for delivery"

        self.port = self.port or free_port(self.host)
        self._controller = Controller(Handler(), hostname=self.host, port=self.port)
        self._controller.start()
        return self

    def stop(self) -> None:
        self._controller.stop()
