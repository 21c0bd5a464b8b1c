"""Fetch what a reported URL serves, safely.

Why hand-written around httpx instead of plain ``httpx.get``: the fetcher must
(1) resolve the name itself (hosting file first, then DNS) and refuse
private, loopback and other non-public addresses unless the operator allowed
them, (2) connect to the very address it vetted (no second DNS lookup that a
rebinding attacker could answer differently), checking every redirect hop the
same way, and (3) cap time and size while streaming. Image bytes stay in
memory only; they are hashed and dropped by the caller.

Time is bounded by one wall-clock deadline per fetch (connect, TLS, headers, body and every
redirect hop together; ``FetchPolicy.total_seconds``), and callers may pass a tighter one (the
deadline of a whole item: a page and all its images, :func:`fetch_each`). httpx has no total
timeout: its read timeout applies to each ``recv``, so a server that sends its headers one byte
every 2 s is never "late" by that measure. Checking the clock between chunks of the body is not
enough either (the headers come before any chunk). So the deadline is enforced below httpx, in
the network backend of httpcore's pool (:class:`_DeadlineBackend`): every socket operation
(connect, each read, each write) gets the *remaining* time as its timeout and fails at once
when none is left, and a TLS handshake (several reads inside the ssl module) is cut by a
watchdog timer that shuts the socket down. A trickling server thus holds a fetch at most
until its deadline, whatever it sends. The deadline lives in a context variable set by
:meth:`Fetcher.get` in the calling thread, so one client (and its pool) serves many threads,
each with its own deadline.
"""

from __future__ import annotations

import contextvars
import ipaddress
import socket
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, TypeVar
from urllib.parse import urljoin, urlsplit, urlunsplit

import httpcore
import httpx

T = TypeVar("T")

DEADLINE_PASSED = "deadline passed"
"""How every reason of a fetch cut short by the item's deadline begins (``fetch_each``)."""


class FetchError(Exception):
    """The URL could not be fetched; ``code`` is machine-readable (``dns``, ``refused_address``...)."""

    def __init__(self, code: str, reason: str) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason


@dataclass(frozen=True)
class FetchPolicy:
    allow_private: bool = False
    timeout_seconds: float = 10.0
    max_bytes: int = 20_000_000
    max_redirects: int = 5
    user_agent: str = "hotline-classifier/0.1"
    # The whole fetch of one URL (connect, TLS, headers, body, every redirect hop); None: twice
    # ``timeout_seconds`` (the per-phase timeout), the overall bound the body read always had.
    total_seconds: float | None = None

    @property
    def total(self) -> float:
        return self.total_seconds if self.total_seconds is not None else 2 * self.timeout_seconds


@dataclass(frozen=True)
class Fetched:
    url: str
    final_url: str
    status: int
    content_type: str
    body: bytes
    ip: str


# IPv6 ranges that carry an IPv4 address a gateway or the kernel may connect to instead:
# NAT64 (RFC 6052, well-known prefix) and the deprecated IPv4-compatible form. 6to4 is
# handled through ``sixtofour``. Local-use NAT64 (RFC 8215) embeds at varying offsets,
# so it is never treated as public.
_NAT64 = ipaddress.ip_network("64:ff9b::/96")
_NAT64_LOCAL = ipaddress.ip_network("64:ff9b:1::/48")
_IPV4_COMPATIBLE = ipaddress.ip_network("::/96")


IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


def _effective(addr: IPAddress) -> IPAddress:
    """The address a connection really ends up at, as far as it can be told from the address."""
    if isinstance(addr, ipaddress.IPv6Address):
        if addr.ipv4_mapped:
            return addr.ipv4_mapped
        if addr in _NAT64 or addr in _IPV4_COMPATIBLE:
            return ipaddress.IPv4Address(int(addr) & 0xFFFFFFFF)
        if addr.sixtofour:
            return addr.sixtofour
    return addr


def address_allowed(ip: str, allow_private: bool) -> bool:
    raw = ipaddress.ip_address(ip)
    addr = _effective(raw)
    if addr.is_global and not addr.is_multicast and raw not in _NAT64_LOCAL:
        return True
    if not allow_private:
        return False
    # Even when private fetches are allowed, these never make sense to connect to.
    return not (addr.is_unspecified or addr.is_multicast)


_DEADLINE: contextvars.ContextVar[float | None] = contextvars.ContextVar("fetch_deadline", default=None)


def _bounded(timeout: float | None, late: type[Exception]) -> float | None:
    """``timeout`` cut to the time left before this thread's fetch deadline; ``late`` if none is."""
    deadline = _DEADLINE.get()
    if deadline is None:
        return timeout
    remaining = deadline - time.monotonic()
    if remaining <= 0:
        raise late(DEADLINE_PASSED)
    return remaining if timeout is None else min(timeout, remaining)


class _DeadlineStream(httpcore.NetworkStream):
    """A connection whose every operation ends by the deadline of the fetch using it (a kept-alive
    connection serves several fetches, each with its own deadline)."""

    def __init__(self, inner: httpcore.NetworkStream) -> None:
        self._inner = inner

    def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        return self._inner.read(max_bytes, _bounded(timeout, httpcore.ReadTimeout))

    def write(self, buffer: bytes, timeout: float | None = None) -> None:
        self._inner.write(buffer, _bounded(timeout, httpcore.WriteTimeout))

    def close(self) -> None:
        self._inner.close()

    def start_tls(
        self, ssl_context: Any, server_hostname: str | None = None, timeout: float | None = None
    ) -> httpcore.NetworkStream:
        # The handshake is many reads inside the ssl module, each with the socket's timeout:
        # a watchdog shuts the socket down when the deadline passes, which ends any of them.
        bound = _bounded(timeout, httpcore.ConnectTimeout)
        sock = self._inner.get_extra_info("socket")
        watchdog: threading.Timer | None = None
        if bound is not None and isinstance(sock, socket.socket):
            watchdog = threading.Timer(bound, _shutdown, (sock,))
            watchdog.daemon = True
            watchdog.start()
        try:
            return _DeadlineStream(self._inner.start_tls(ssl_context, server_hostname, bound))
        finally:
            if watchdog is not None:
                watchdog.cancel()

    def get_extra_info(self, info: str) -> Any:
        return self._inner.get_extra_info(info)


def _shutdown(sock: socket.socket) -> None:
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass  # already closed


class _DeadlineBackend(httpcore.NetworkBackend):
    """httpcore's network backend with every connection bounded by the fetch deadline."""

    def __init__(self, inner: httpcore.NetworkBackend) -> None:
        self._inner = inner

    def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.NetworkStream:
        bound = _bounded(timeout, httpcore.ConnectTimeout)
        return _DeadlineStream(self._inner.connect_tcp(host, port, bound, local_address, socket_options))

    def connect_unix_socket(
        self, path: str, timeout: float | None = None, socket_options: Iterable[Any] | None = None
    ) -> httpcore.NetworkStream:
        bound = _bounded(timeout, httpcore.ConnectTimeout)
        return _DeadlineStream(self._inner.connect_unix_socket(path, bound, socket_options))

    def sleep(self, seconds: float) -> None:
        self._inner.sleep(seconds)


def bound_by_deadlines(transport: httpx.BaseTransport) -> bool:
    """Make the connections of an httpx transport end by the fetch deadline (see the module
    docstring). Returns False for a transport without an httpcore pool (a mock), where only
    the checks between reads apply."""
    pool = getattr(transport, "_pool", None)
    if not isinstance(pool, httpcore.ConnectionPool):
        return False
    backend = getattr(pool, "_network_backend", None)
    if isinstance(backend, _DeadlineBackend):
        return True
    if backend is None:
        return False
    pool._network_backend = _DeadlineBackend(backend)
    return True


class Names:
    """The names one item's fetches resolved (its page and its images, every redirect hop):
    each host is resolved and vetted once per item, the first time it is needed, and every
    later fetch of the item connects to that same vetted address (or fails with the same
    error). Scoped to one item, so a later item (or a re-check) asks DNS again and sees a name
    that moved or stopped resolving. Thread-safe: ``fetch_each`` fetches from several threads;
    two threads needing a new host at once both resolve it, the first answer is kept."""

    def __init__(self) -> None:
        self._known: dict[str, str | FetchError] = {}
        self._lock = threading.Lock()

    def vetted(self, host: str, resolve: Callable[[str], str]) -> str:
        key = host.lower().rstrip(".")
        with self._lock:
            known = self._known.get(key)
        if known is None:
            try:
                known = resolve(host)
            except FetchError as err:
                known = err
            with self._lock:
                known = self._known.setdefault(key, known)
        if isinstance(known, FetchError):
            raise FetchError(known.code, known.reason)
        return known


class Fetcher:
    def __init__(
        self,
        policy: FetchPolicy,
        resolve: Callable[[str], list[str]],
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self.policy = policy
        self.resolve = resolve
        # An explicit transport, so that its connections can be bounded by the deadline (and
        # no proxy from the environment: it would defeat connecting to the vetted address).
        # Requests go to the transport itself, not through an ``httpx.Client``: the fetcher
        # follows redirects itself and needs none of the client's auth, cookie jar, hooks or
        # per-request logging, and those layers were a twelfth of classify's CPU (issue 13).
        # Without the jar, no hoster's cookie follows the hotline from one report to the next.
        if transport is None:
            transport = httpx.HTTPTransport()
        bound_by_deadlines(transport)
        self.transport = transport
        self.headers = {"Accept": "*/*", "Accept-Encoding": "gzip, deflate", "Connection": "keep-alive",
                        "User-Agent": policy.user_agent}

    def close(self) -> None:
        self.transport.close()

    def _vetted_address(self, host: str, names: Names | None = None) -> str:
        """The address to connect to for ``host``: resolved and vetted now, or, within one
        item (``names``), the one its first fetch of that host resolved and vetted (a page's
        fifty images on one host ask DNS once, not fifty times; failures are kept too)."""
        if names is None:
            return self._resolve_and_vet(host)
        return names.vetted(host, self._resolve_and_vet)

    def _resolve_and_vet(self, host: str) -> str:
        try:
            addrs = self.resolve(host)
        except LookupError as exc:
            raise FetchError("dns", str(exc)) from exc
        except (OSError, ValueError) as exc:  # ValueError: UnicodeError of an un-encodable name
            raise FetchError("dns", f"host name {host} does not resolve ({exc})") from exc
        if not addrs:
            raise FetchError("dns", f"host name {host} has no address")
        refused = [a for a in addrs if not address_allowed(a, self.policy.allow_private)]
        if refused:
            raise FetchError(
                "refused_address",
                f"{host} resolves to non-public address {refused[0]}; private fetches are not allowed",
            )
        return addrs[0]

    def get(self, url: str, deadline: float | None = None, names: Names | None = None) -> Fetched:
        """Fetch ``url`` (following redirects) within ``policy.total`` seconds, or by
        ``deadline`` (a ``time.monotonic()`` value: the item's) if that comes first.
        ``names``: the item's resolved names (see :class:`Names`)."""
        own = time.monotonic() + self.policy.total
        bound = own if deadline is None else min(own, deadline)
        token = _DEADLINE.set(bound)
        try:
            return self._get(url, bound, item=deadline is not None and deadline < own, names=names)
        finally:
            _DEADLINE.reset(token)

    def _late(self, item: bool) -> FetchError:
        if item:
            return FetchError("deadline", f"{DEADLINE_PASSED}: the item's time for its page and images ran out")
        return FetchError("timeout", f"the fetch did not finish within {self.policy.total:g} s "
                                     "(connect, headers, body and redirects together)")

    def _get(self, url: str, bound: float, item: bool, names: Names | None = None) -> Fetched:
        current = url
        for _hop in range(self.policy.max_redirects + 1):
            parts = urlsplit(current)
            if parts.scheme not in ("http", "https") or not parts.hostname:
                raise FetchError("bad_url", f"cannot fetch {current!r}")
            host = parts.hostname
            try:
                port = parts.port
            except ValueError as exc:
                raise FetchError("bad_url", f"cannot fetch {current!r}: {exc}") from exc
            ip = self._vetted_address(host, names)
            remaining = bound - time.monotonic()
            if remaining <= 0:
                raise self._late(item)
            ip_host = f"[{ip}]" if ":" in ip else ip
            netloc = f"{ip_host}:{port}" if port else ip_host
            target = urlunsplit((parts.scheme, netloc, parts.path or "/", parts.query, ""))
            host_header = parts.netloc.rsplit("@", 1)[-1]
            try:
                timeout = httpx.Timeout(min(self.policy.timeout_seconds, remaining))
                request = httpx.Request("GET", target, headers={**self.headers, "Host": host_header},
                                        extensions={"sni_hostname": host, "timeout": timeout.as_dict()})
            except (httpx.InvalidURL, ValueError) as exc:  # e.g. control characters from a page
                raise FetchError("bad_url", f"cannot fetch {current!r}: {exc}") from exc
            try:
                response = self._send(request, bound)
            except httpx.TimeoutException as exc:
                if time.monotonic() >= bound:
                    raise self._late(item) from exc
                raise FetchError("timeout", f"{host} did not answer in time") from exc
            except httpx.HTTPError as exc:
                raise FetchError("connect", f"could not fetch from {host}: {exc}") from exc
            try:
                if response.is_redirect and "location" in response.headers:
                    current = urljoin(current, response.headers["location"])
                    continue
                body = self._read_capped(response, bound, item)
                return Fetched(
                    url=url,
                    final_url=current,
                    status=response.status_code,
                    content_type=response.headers.get("content-type", "").split(";")[0].strip().lower(),
                    body=body,
                    ip=ip,
                )
            finally:
                response.close()
        raise FetchError("too_many_redirects", f"more than {self.policy.max_redirects} redirects")

    def _send(self, request: httpx.Request, bound: float) -> httpx.Response:
        """Send once more if a kept-alive connection turns out to have been closed by the server
        in the meantime ("disconnected without sending a response"): a GET is safe to repeat,
        and without this a page's second image could read as offline. The repeat runs within
        the same deadline as the first attempt. The body is not read here (it streams)."""
        try:
            return self._send_once(request)
        except httpx.RemoteProtocolError:
            if time.monotonic() >= bound:
                raise
            return self._send_once(request)

    def _send_once(self, request: httpx.Request) -> httpx.Response:
        response = self.transport.handle_request(request)
        response.request = request
        return response

    def _read_capped(self, response: httpx.Response, bound: float, item: bool) -> bytes:
        declared = response.headers.get("content-length")
        if declared and declared.isdigit() and int(declared) > self.policy.max_bytes:
            raise FetchError("too_large", f"response of {declared} bytes exceeds the {self.policy.max_bytes} byte cap")
        body = bytearray()
        try:
            for chunk in response.iter_bytes():
                if len(body) + len(chunk) > self.policy.max_bytes:
                    raise FetchError("too_large", f"response exceeds the {self.policy.max_bytes} byte cap")
                if time.monotonic() > bound:
                    raise self._late(item)
                body += chunk
        except httpx.TimeoutException as exc:
            if time.monotonic() >= bound:
                raise self._late(item) from exc
            raise FetchError("timeout", "the download stalled") from exc
        except httpx.HTTPError as exc:
            raise FetchError("connect", f"download broke off: {exc}") from exc
        return bytes(body)


def fetch_each(
    fetcher: Fetcher,
    urls: Sequence[str],
    then: Callable[[str, Fetched | FetchError], T],
    *,
    deadline: float,
    concurrency: int,
    names: Names | None = None,
) -> list[T]:
    """Fetch ``urls`` (a page's images) by one ``deadline`` (``time.monotonic()``), at most
    ``concurrency`` at a time, and hand each result to ``then`` in the fetching thread (so
    bytes are hashed and dropped as they come, not held for all images at once). A URL not
    started when the deadline passes gets a ``deadline`` error without being fetched; what
    was fetched before is kept. Results are in the order of ``urls``. ``names``: the item's
    resolved names (:class:`Names`), shared by its fetches."""

    def one(url: str) -> T:
        if time.monotonic() >= deadline:
            return then(url, FetchError("deadline", f"{DEADLINE_PASSED}: not fetched, the item's time ran out"))
        try:
            fetched = fetcher.get(url, deadline=deadline, names=names)
        except FetchError as err:
            return then(url, err)
        return then(url, fetched)

    if concurrency <= 1 or len(urls) <= 1:
        return [one(u) for u in urls]
    return list(_fetching_threads(concurrency).map(one, urls))


_THREADS = threading.local()


def _fetching_threads(concurrency: int) -> ThreadPoolExecutor:
    """The calling thread's own pool of ``concurrency`` fetching threads, kept for its next
    item: starting and joining a pool per item cost about a fifth of an item's CPU (issue 13,
    benchmarks/bench_classify.py). One pool per calling thread, so an item still has all
    ``concurrency`` threads to itself (the calling thread handles one item at a time), as
    with a pool per item. When the calling thread ends, its pool is collected and the pool's
    idle threads exit (``ThreadPoolExecutor`` workers stop once their executor is gone)."""
    pools: dict[int, ThreadPoolExecutor] | None = getattr(_THREADS, "pools", None)
    if pools is None:
        pools = _THREADS.pools = {}
    pool = pools.get(concurrency)
    if pool is None:
        pool = pools[concurrency] = ThreadPoolExecutor(concurrency, thread_name_prefix="fetch-image")
    return pool
