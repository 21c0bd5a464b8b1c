"""Fetch what a reported URL serves, safely.

Why hand-written around httpx instead of plain ``httpx.get``: the fetcher must
(1) resolve the name itself (hosting file first, then DNS) and refuse
private, loopback and other non-public addresses unless the operator allowed
them, (2) connect to the very address it vetted (no second DNS lookup that a
rebinding attacker could answer differently), checking every redirect hop the
same way, and (3) cap time and size while streaming. Image bytes stay in
memory only; they are hashed and dropped by the caller.
"""

from __future__ import annotations

import ipaddress
import time
from collections.abc import Callable
from dataclasses import dataclass
from urllib.parse import urljoin, urlsplit, urlunsplit

import httpx


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


class Fetcher:
    def __init__(
        self,
        policy: FetchPolicy,
        resolve: Callable[[str], list[str]],
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self.policy = policy
        self.resolve = resolve
        self.client = httpx.Client(
            transport=transport,
            follow_redirects=False,
            timeout=httpx.Timeout(policy.timeout_seconds),
            headers={"User-Agent": policy.user_agent},
        )

    def close(self) -> None:
        self.client.close()

    def _vetted_address(self, host: str) -> str:
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

    def get(self, url: str) -> Fetched:
        deadline = time.monotonic() + self.policy.timeout_seconds * 2
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
            ip = self._vetted_address(host)
            ip_host = f"[{ip}]" if ":" in ip else ip
            netloc = f"{ip_host}:{port}" if port else ip_host
            target = urlunsplit((parts.scheme, netloc, parts.path or "/", parts.query, ""))
            host_header = parts.netloc.rsplit("@", 1)[-1]
            try:
                request = self.client.build_request(
                    "GET", target, headers={"Host": host_header}, extensions={"sni_hostname": host}
                )
            except (httpx.InvalidURL, ValueError) as exc:  # e.g. control characters from a page
                raise FetchError("bad_url", f"cannot fetch {current!r}: {exc}") from exc
            try:
                response = self._send(request)
            except httpx.TimeoutException as exc:
                raise FetchError("timeout", f"{host} did not answer in time") from exc
            except httpx.HTTPError as exc:
                raise FetchError("connect", f"could not fetch from {host}: {exc}") from exc
            try:
                if response.is_redirect and "location" in response.headers:
                    current = urljoin(current, response.headers["location"])
                    continue
                body = self._read_capped(response, deadline)
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

    def _send(self, request: httpx.Request) -> httpx.Response:
        """Send once more if a kept-alive connection turns out to have been closed by the server
        in the meantime ("disconnected without sending a response"): a GET is safe to repeat,
        and without this a page's second image could read as offline."""
        try:
            return self.client.send(request, stream=True)
        except httpx.RemoteProtocolError:
            return self.client.send(request, stream=True)

    def _read_capped(self, response: httpx.Response, deadline: float) -> bytes:
        declared = response.headers.get("content-length")
        if declared and declared.isdigit() and int(declared) > self.policy.max_bytes:
            raise FetchError("too_large", f"response of {declared} bytes exceeds the {self.policy.max_bytes} byte cap")
        chunks: list[bytes] = []
        size = 0
        try:
            for chunk in response.iter_bytes():
                size += len(chunk)
                if size > self.policy.max_bytes:
                    raise FetchError("too_large", f"response exceeds the {self.policy.max_bytes} byte cap")
                if time.monotonic() > deadline:
                    raise FetchError("timeout", "download took too long")
                chunks.append(chunk)
        except httpx.HTTPError as exc:
            raise FetchError("connect", f"download broke off: {exc}") from exc
        return b"".join(chunks)
