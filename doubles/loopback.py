"""Loopback stand-ins for the outside world, used by ``hotline demo`` and the tests:
a web site serving synthetic images as if from a hosting provider, a partner
hotline's forward endpoint, and an SMTP server that keeps what it receives.

All of them bind to loopback addresses only (127.0.0.0/8, or ``::1``); nothing here can be reached
from, or talk to, another machine.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import random
import socket
import sys
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from email import message_from_bytes
from email.message import Message
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Literal, Self


def _require_loopback(host: str) -> None:
    if not ipaddress.ip_address(host).is_loopback:
        raise ValueError(f"{host} is not a loopback address; test servers bind to loopback only")


def serve_app(app: Any, port: int, host: str = "127.0.0.1", timeout: float = 15.0) -> tuple[Any, threading.Thread]:
    """Run an ASGI app under uvicorn in a daemon thread on loopback; returns once it accepts
    connections. Stop it with ``server.should_exit = True`` and ``thread.join()``."""
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


_HANDED_OUT: set[int] = set()
_HANDED_OUT_LOCK = threading.Lock()


def _ephemeral_low() -> int:
    """The lowest port the kernel hands out as a connection's source port (Linux: 32768)."""
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


def free_port(host: str = "127.0.0.1") -> int:
    """A port nothing listens on, for a server that is about to start (often in another process).

    Chosen *below* the kernel's ephemeral range, never with ``bind(0)``: a ``bind(0)`` port is
    from the range the kernel also gives outgoing connections as source ports, so between this
    check and the server's own bind any process's new connection (a Kafka or database client,
    many of them on a busy machine) could take it, and the server died with EADDRINUSE (a CI
    run lost ``hotline serve --stage web`` that way). A port is also never handed out twice by
    one process, so two servers prepared one after the other cannot be given the same one."""
    low = _ephemeral_low()
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with _HANDED_OUT_LOCK:
        for _ in range(2000):
            port = random.randrange(max(1024, low - 12000), low)
            if port in _HANDED_OUT:
                continue
            with socket.socket(family) as s:
                try:
                    s.bind((host, port))
                except OSError:
                    continue  # someone listens there (or it is reserved): try another
            _HANDED_OUT.add(port)
            return port
    raise RuntimeError(f"no free port below {low} on {host}")


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def handle_error(self, request: Any, client_address: Any) -> None:
        # A client that goes away mid-answer is expected (the tests kill fetching workers).
        if isinstance(sys.exc_info()[1], ConnectionError):
            return
        super().handle_error(request, client_address)


class _Server6(_Server):
    """The same on an IPv6 loopback address (``::1``): attribution is tested on IPv6 too."""

    address_family = socket.AF_INET6


class _Quiet(BaseHTTPRequestHandler):
    def log_message(self, *args: Any) -> None:
        pass


class _HttpStandIn:
    """An HTTP server on a loopback address, served from a daemon thread after ``start``."""

    def _bind(self, host: str, port: int, handler: type[BaseHTTPRequestHandler]) -> None:
        _require_loopback(host)
        server_cls = _Server6 if ipaddress.ip_address(host).version == 6 else _Server
        self.server = server_cls((host, port), handler)
        self.host, self.port = host, int(self.server.server_address[1])
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def start(self) -> Self:
        self._thread.start()
        return self

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


class LoopbackSite(_HttpStandIn):
    """Serves ``pages`` (path -> (content type, bytes)) on one loopback address; 404 otherwise
    (so ``remove`` plays a hoster taking content down).

    ``requests`` lists every request path as asked, ``hits`` counts them by path (without
    the query). ``delay`` slows every answer down, so a batch takes long enough for a test
    to kill the worker fetching it.
    """

    def __init__(self, host: str = "127.0.0.1", port: int = 0, delay: float = 0.0) -> None:
        self.pages: dict[str, tuple[str, bytes]] = {}
        self.requests: list[str] = []
        self.hits: Counter[str] = Counter()
        self.delay = delay
        self._lock = threading.Lock()
        site = self

        class Handler(_Quiet):
            def do_GET(self) -> None:  # noqa: N802
                path = self.path.split("?", 1)[0]
                with site._lock:
                    site.requests.append(self.path)
                    site.hits[path] += 1
                if site.delay:
                    time.sleep(site.delay)
                page = site.pages.get(path)
                if page is None:
                    self.send_error(404)
                    return
                ctype, body = page
                self.send_response(200)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self._bind(host, port, Handler)

    def add(self, path: str, content_type: str, body: bytes) -> None:
        self.pages[path] = (content_type, body)

    def remove(self, path: str) -> bool:
        """Take ``path`` down: from the next request on it answers 404. False if it was not served."""
        with self._lock:
            return self.pages.pop(path, None) is not None


@dataclass
class ReceivedForward:
    path: str
    authorization: str | None
    body: dict[str, Any]
    idempotency_key: str | None = None
    status: int = 0  # what the endpoint answered (in ``posts``: every POST, failed ones too)
    at: float = 0.0  # time.monotonic() when it arrived


class PartnerEndpoint(_HttpStandIn):
    """A partner hotline's API on loopback: forwards at ``url`` (``/api/forwards``), status
    updates at ``status_url`` (``/api/status``).

    Every POST is recorded in ``posts`` with its headers and the answer. A POST without the
    expected bearer token gets 401 (counted in ``refused``); the first ``fail_first`` good ones
    get 503 (a partner that is down, then recovers); while ``down`` is set every request gets
    503. The partner dedupes by ``Idempotency-Key`` as the contract asks: a key it has handled
    is answered 200 again without being handled twice (``handled`` counts per key, ``received``
    holds each handled forward once, ``status_updates`` each handled status update once).
    ``OPTIONS`` (``hotline partners check``) answers 204 with a good token, 401 without."""

    def __init__(
        self, token: str, host: str = "127.0.0.1", fail_first: int = 0, accept_status: int = 201
    ) -> None:
        self.token = token
        self.accept_status = accept_status
        self.received: list[ReceivedForward] = []
        self.status_updates: list[ReceivedForward] = []
        self.posts: list[ReceivedForward] = []
        self.handled: Counter[str] = Counter()
        self.refused = 0
        self.down = False
        self._fail_left = fail_first
        self._lock = threading.Lock()
        endpoint = self

        class Handler(_Quiet):
            def _answer(self, status: int) -> None:
                if status >= 400:
                    self.send_error(status)
                    return
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def do_OPTIONS(self) -> None:  # noqa: N802
                with endpoint._lock:
                    if endpoint.down:
                        status = 503
                    elif self.headers.get("Authorization") != f"Bearer {endpoint.token}":
                        status = 401
                    else:
                        status = 204
                self._answer(status)

            def do_POST(self) -> None:  # noqa: N802
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length)
                auth = self.headers.get("Authorization")
                key = self.headers.get("Idempotency-Key")
                try:
                    body = json.loads(raw)
                except ValueError:
                    body = {}
                with endpoint._lock:
                    if endpoint.down:
                        status = 503
                    elif auth != f"Bearer {endpoint.token}":
                        endpoint.refused += 1
                        status = 401
                    elif endpoint._fail_left > 0:
                        endpoint._fail_left -= 1
                        status = 503
                    elif key is not None and endpoint.handled[key] > 0:
                        status = 200  # already handled: the same answer, no second case
                    else:
                        status = endpoint.accept_status
                        if key is not None:
                            endpoint.handled[key] += 1
                        got = ReceivedForward(self.path, auth, body, key, status, time.monotonic())
                        (endpoint.status_updates if self.path.endswith("/status") else endpoint.received).append(got)
                    endpoint.posts.append(ReceivedForward(self.path, auth, body, key, status, time.monotonic()))
                self._answer(status)

        self._bind(host, 0, Handler)
        self.url = f"http://{host}:{self.port}/api/forwards"
        self.status_url = f"http://{host}:{self.port}/api/status"

    def fail_next(self, n: int) -> None:
        """The next ``n`` good POSTs get 503."""
        with self._lock:
            self._fail_left = n

    def forwards_for(self, item_id: str) -> list[ReceivedForward]:
        """What was accepted for ``item_id`` so far."""
        with self._lock:
            return [f for f in self.received if f.body.get("item_id") == item_id]

    def updates_for(self, report_id: str) -> list[ReceivedForward]:
        """The status updates accepted about ``report_id`` so far, in the order they came."""
        with self._lock:
            return [u for u in self.status_updates if u.body.get("report_id") == report_id]

    def snapshot(self) -> list[ReceivedForward]:
        """Every POST so far (failed ones too)."""
        with self._lock:
            return list(self.posts)


@dataclass
class ReceivedMail:
    rcpt_tos: list[str]
    message: Message
    answered: bool = True  # False: the server kept it but never sent the final reply

    @property
    def notice_id(self) -> str | None:
        return self.message["X-Hotline-Notice-Id"]


SmtpMode = Literal["accept", "no_reply", "drop", "tempfail", "refuse_rcpt"]


@dataclass
class SmtpSink:
    """A real SMTP server (aiosmtpd) on loopback that keeps every message it accepts:
    ``messages`` (with the envelope recipients in ``X-Envelope-To``) and, with the envelope
    beside each, ``mails``; ``received`` counts them.

    ``delay`` is spent before accepting DATA, like a slow mail server; while ``hold`` is set
    DATA is not answered at all (``held`` counts the senders that waited), so a sender can be
    killed inside the conversation. ``stop`` takes the server away ("connection refused")
    until ``start`` brings it back on the same port.

    ``mode`` (read at each step, so it can be changed between sends) makes it misbehave:

    - ``"accept"``: a normal server (the default).
    - ``"no_reply"``: answers DATA with 354 and reads the whole message, keeps it (as if it
      had stored the mail and then hung), and never sends the final reply: the connection
      stays silent until the client closes it or the sink stops.
    - ``"drop"``: reads and keeps the whole message, then closes the connection without a
      final reply (a server that crashed after storing the mail).
    - ``"tempfail"``: reads the message and answers ``451`` to the end of data; keeps nothing.
    - ``"refuse_rcpt"``: answers ``550`` to every RCPT TO.

    The kept messages of ``no_reply`` and ``drop`` have ``answered=False``; ``refused`` counts
    the refusals of ``tempfail`` and ``refuse_rcpt``.

    ``connections`` counts the connections clients opened (a sender that reuses connections
    opens fewer than it sends messages); ``drop_connections`` closes the open ones from the
    server's side, like a server's idle timeout.
    """

    host: str = "127.0.0.1"
    port: int = 0
    messages: list[Message] = field(default_factory=list)
    delay: float = 0.0
    mails: list[ReceivedMail] = field(default_factory=list)
    hold: threading.Event = field(default_factory=threading.Event, compare=False)
    held: int = 0
    mode: SmtpMode = "accept"
    refused: int = 0
    connections: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock, init=False, repr=False, compare=False)
    _controller: Any = field(default=None, init=False, repr=False, compare=False)
    _transports: set[Any] = field(default_factory=set, init=False, repr=False, compare=False)

    def start(self) -> SmtpSink:
        from aiosmtpd.controller import Controller
        from aiosmtpd.smtp import SMTP

        if self._controller is not None:
            return self
        _require_loopback(self.host)
        sink = self

        def keep(envelope: Any, answered: bool) -> None:
            msg = message_from_bytes(envelope.original_content or envelope.content)
            msg["X-Envelope-To"] = ", ".join(envelope.rcpt_tos)
            with sink._lock:
                sink.messages.append(msg)
                sink.mails.append(ReceivedMail(list(envelope.rcpt_tos), msg, answered))

        class Handler:
            async def handle_RCPT(  # noqa: N802
                self, server: Any, session: Any, envelope: Any, address: str, rcpt_options: list[str]
            ) -> str:
                if sink.mode == "refuse_rcpt":
                    with sink._lock:
                        sink.refused += 1
                    return "550 5.1.1 Mailbox unavailable (SmtpSink refuse_rcpt mode)"
                envelope.rcpt_tos.append(address)
                envelope.rcpt_options.extend(rcpt_options)
                return "250 OK"

            async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:  # noqa: N802
                if sink.hold.is_set():
                    with sink._lock:
                        sink.held += 1
                    while sink.hold.is_set():
                        await asyncio.sleep(0.02)
                if sink.delay:
                    await asyncio.sleep(sink.delay)
                mode = sink.mode
                if mode == "tempfail":
                    with sink._lock:
                        sink.refused += 1
                    return "451 4.3.0 Try again later (SmtpSink tempfail mode)"
                if mode in ("no_reply", "drop"):
                    keep(envelope, answered=False)
                    if mode == "drop":
                        server.transport.close()
                    # Never answer: the client's close (or ``stop``) cancels this wait.
                    await asyncio.Event().wait()
                keep(envelope, answered=True)
                return "250 Message accepted for delivery"

        class CountingSMTP(SMTP):
            def connection_made(self, transport: Any) -> None:
                with sink._lock:
                    sink.connections += 1
                    sink._transports.add(transport)
                super().connection_made(transport)

            def connection_lost(self, error: Exception | None) -> None:
                with sink._lock:
                    sink._transports.discard(self.transport)
                super().connection_lost(error)

        class CountingController(Controller):
            def factory(self) -> SMTP:
                return CountingSMTP(self.handler, **self.SMTP_kwargs)

        self.port = self.port or free_port(self.host)
        # A new Controller each time: an aiosmtpd Controller cannot be started again.
        self._controller = CountingController(Handler(), hostname=self.host, port=self.port)
        self._controller.start()
        with self._lock:
            # Not counted: the connection the Controller opens itself to see that the server
            # is up (it has read the greeting, so it was counted, before ``start`` returns).
            self.connections -= 1
        return self

    @property
    def received(self) -> int:
        """How many messages the server took in full and kept (answered or not)."""
        with self._lock:
            return len(self.mails)

    def stop(self) -> None:
        if self._controller is not None:
            self._controller.stop()
            self._controller = None

    def drop_connections(self) -> int:
        """Close every open client connection from the server's side and return how many;
        returns once they are closed."""

        async def close_all() -> int:
            with self._lock:
                transports = list(self._transports)
            for transport in transports:
                transport.close()
            return len(transports)

        if self._controller is None:
            return 0
        return asyncio.run_coroutine_threadsafe(close_all(), self._controller.loop).result(5.0)

    def snapshot(self) -> list[ReceivedMail]:
        with self._lock:
            return list(self.mails)

    def count_by_notice(self) -> Counter[str]:
        """How many times each notice arrived, by ``X-Hotline-Notice-Id`` ("?" without one)."""
        return Counter(m.notice_id or "?" for m in self.snapshot())
