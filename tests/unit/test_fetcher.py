"""THE SAFETY TEST: the fetcher never connects to a private, loopback, link-local, multicast or
reserved address unless the operator allowed it, checks every redirect hop the same way, and caps
size, time and redirects.

These tests must never send a packet off loopback, even when the guard under test is broken:

* names resolve through a test resolver (a plain callable), never DNS;
* every connection goes through ``LoopbackOnlyTransport``, which records each attempt and
  refuses (raises) before connecting to anything that is not a loopback address.

So a broken guard shows up as a recorded non-loopback attempt (and a different error code),
never as traffic.
"""

from __future__ import annotations

import io
import ipaddress
import ssl
import struct
import threading
import time
import uuid
import zlib
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest
from PIL import Image

import services.classify.fetcher as fetcher_module
from doubles.loopback import LoopbackSite
from hashing.image import ImageError, hash_image
from hotline.kernel.stage import complete
from hotline.storage.engine import make_engine, make_sessionmaker, migrate
from hotline.storage.unit_of_work import SqlUnitOfWork
from schemas.items import ItemAccepted, ItemClassified
from services.classify.fetcher import Fetcher, FetchError, FetchPolicy, address_allowed
from services.classify.hosting import HostingDirectory, HostingResolver, NetworkEntry
from services.classify.stage import ClassifyStage

# --------------------------------------------------------------------------- test seams


_TLS = ssl.create_default_context()


class LoopbackOnlyTransport(httpx.HTTPTransport):
    """Records every connection attempt; refuses, without connecting, any non-loopback one."""

    def __init__(self) -> None:
        super().__init__(verify=_TLS)  # one TLS context for all tests: building one costs 0.1 s
        self.attempts: list[str] = []
        self.host_headers: list[str] = []

    @property
    def off_loopback(self) -> list[str]:
        return [h for h in self.attempts if not _is_loopback(h)]

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        host = request.url.host
        self.attempts.append(host)
        self.host_headers.append(request.headers.get("host", ""))
        if not _is_loopback(host):
            raise httpx.ConnectError(f"test transport refused a connection to non-loopback {host!r}")
        return super().handle_request(request)


def _is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a name reaching the transport would mean a second, unvetted lookup


class TestResolver:
    """Host name -> addresses from a table; IP literals resolve to themselves. Records calls."""

    __test__ = False  # not a pytest test class

    def __init__(self, table: dict[str, list[str]] | None = None) -> None:
        self.table = dict(table or {})
        self.calls: list[str] = []

    def __call__(self, host: str) -> list[str]:
        self.calls.append(host)
        try:
            return [ipaddress.ip_address(host).compressed]
        except ValueError:
            pass
        if host not in self.table:
            raise LookupError(f"{host} is not in the test resolver")
        return list(self.table[host])


@pytest.fixture
def transport() -> Iterator[LoopbackOnlyTransport]:
    t = LoopbackOnlyTransport()
    yield t
    t.close()


def make_fetcher(
    resolver: Callable[[str], list[str]], transport: httpx.BaseTransport, **policy: Any
) -> Fetcher:
    return Fetcher(FetchPolicy(**policy), resolve=resolver, transport=transport)


class ScriptedSite:
    """A loopback HTTP server whose paths are handled by test functions (redirects, slow bodies)."""

    def __init__(self, host: str = "127.0.0.1") -> None:
        assert ipaddress.ip_address(host).is_loopback
        self.routes: dict[str, Callable[[BaseHTTPRequestHandler], None]] = {}
        self.hits: list[str] = []
        self.stopping = threading.Event()
        site = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self) -> None:  # noqa: N802
                site.hits.append(self.path)
                route = site.routes.get(self.path.split("?", 1)[0])
                try:
                    if route is None:
                        self.send_error(404)
                    else:
                        route(self)
                except OSError:
                    pass  # the client hung up on purpose (caps)

            def log_message(self, *args: Any) -> None:
                pass

        class Server(ThreadingHTTPServer):
            daemon_threads = True

        self.server = Server((host, 0), Handler)
        self.host, self.port = host, int(self.server.server_address[1])
        self.thread = threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True)
        self.thread.start()

    def redirect(self, path: str, location: str, status: int = 302) -> None:
        def handle(h: BaseHTTPRequestHandler) -> None:
            h.send_response(status)
            h.send_header("Location", location)
            h.send_header("Content-Length", "0")
            h.end_headers()

        self.routes[path] = handle

    def body(self, path: str, data: bytes, content_type: str = "text/plain", length: int | None = None) -> None:
        def handle(h: BaseHTTPRequestHandler) -> None:
            h.send_response(200)
            h.send_header("Content-Type", content_type)
            if length is None:
                h.send_header("Connection", "close")  # body delimited by closing the connection
            else:
                h.send_header("Content-Length", str(length))
            h.end_headers()
            h.wfile.write(data)
            h.close_connection = True

        self.routes[path] = handle

    def stop(self) -> None:
        self.stopping.set()
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def site() -> Iterator[ScriptedSite]:
    s = ScriptedSite("127.0.0.1")
    yield s
    s.stop()


# --------------------------------------------------------------------------- the address policy

PRIVATE_AND_RESERVED = [
    "10.0.0.5",  # RFC 1918
    "172.16.0.1",  # RFC 1918
    "192.168.1.1",  # RFC 1918
    "169.254.169.254",  # link-local: cloud metadata service
    "127.0.0.1",  # loopback
    "127.0.0.2",  # loopback
    "0.0.0.0",  # unspecified: "this host"
    "100.64.0.1",  # carrier-grade NAT
    "192.0.2.10",  # TEST-NET-1 (documentation)
    "198.18.0.1",  # benchmarking
    "224.0.0.1",  # multicast
    "240.0.0.1",  # reserved
    "255.255.255.255",  # broadcast
    "fd00::1",  # unique local
    "fe80::1",  # link-local
    "::1",  # loopback
    "::",  # unspecified
    "ff02::1",  # multicast
    "::ffff:10.0.0.5",  # IPv4-mapped private
    "::ffff:127.0.0.1",  # IPv4-mapped loopback
    "::ffff:169.254.169.254",  # IPv4-mapped metadata service
    "64:ff9b::a00:5",  # NAT64 of 10.0.0.5: an IPv6-only network's gateway connects there
    "64:ff9b::a9fe:a9fe",  # NAT64 of the metadata service
    "64:ff9b:1::a00:5",  # local-use NAT64
    "2002:a9fe:a9fe::1",  # 6to4 of the metadata service
    "::a00:5",  # deprecated IPv4-compatible form of 10.0.0.5
]


@pytest.mark.parametrize("ip", PRIVATE_AND_RESERVED)
def test_address_policy_refuses_non_public(ip: str) -> None:
    assert address_allowed(ip, allow_private=False) is False


@pytest.mark.parametrize(
    "ip", ["8.8.8.8", "93.184.216.34", "2001:4860:4860::8888", "::ffff:8.8.8.8", "64:ff9b::808:808", "2002:808:808::1"]
)
def test_address_policy_allows_public(ip: str) -> None:
    assert address_allowed(ip, allow_private=False) is True


@pytest.mark.parametrize("ip", ["224.0.0.1", "ff02::1", "0.0.0.0", "::", "239.255.255.250"])
def test_multicast_and_unspecified_refused_even_when_private_allowed(ip: str) -> None:
    assert address_allowed(ip, allow_private=True) is False


@pytest.mark.parametrize("ip", ["127.0.0.1", "10.0.0.5", "192.168.1.1", "fd00::1", "::1"])
def test_private_allowed_when_operator_allows(ip: str) -> None:
    assert address_allowed(ip, allow_private=True) is True


# --------------------------------------------------------------------------- refusals, first hop


@pytest.mark.parametrize("ip", PRIVATE_AND_RESERVED)
def test_name_resolving_to_private_address_is_refused(ip: str, transport: LoopbackOnlyTransport) -> None:
    resolver = TestResolver({"innocent-looking.test": [ip]})
    f = make_fetcher(resolver, transport, allow_private=False)
    with pytest.raises(FetchError) as info:
        f.get("http://innocent-looking.test/image.jpg")
    assert info.value.code == "refused_address"
    assert ip in info.value.reason or ipaddress.ip_address(ip).compressed in info.value.reason
    assert resolver.calls == ["innocent-looking.test"]
    assert transport.attempts == []  # refused before any connection, loopback included


@pytest.mark.parametrize(
    "url",
    [
        "http://10.0.0.5/",
        "http://169.254.169.254/latest/meta-data/",
        "http://[fd00::1]:8080/x",
        "http://[::ffff:192.168.1.1]/",
        "https://172.16.0.1/",
        "http://127.0.0.1:1/",
    ],
)
def test_ip_literal_urls_are_vetted_too(url: str, transport: LoopbackOnlyTransport) -> None:
    f = make_fetcher(TestResolver(), transport, allow_private=False)
    with pytest.raises(FetchError) as info:
        f.get(url)
    assert info.value.code == "refused_address"
    assert transport.attempts == []


def test_one_private_address_among_public_ones_is_refused(transport: LoopbackOnlyTransport) -> None:
    # DNS rebinding style: a public address first, a private one second.
    resolver = TestResolver({"mixed.test": ["93.184.216.34", "10.0.0.5"]})
    f = make_fetcher(resolver, transport, allow_private=False)
    with pytest.raises(FetchError) as info:
        f.get("http://mixed.test/")
    assert info.value.code == "refused_address"
    assert transport.attempts == []


def test_multicast_refused_with_allow_private(transport: LoopbackOnlyTransport) -> None:
    f = make_fetcher(TestResolver({"mc.test": ["224.0.0.251"]}), transport, allow_private=True)
    with pytest.raises(FetchError) as info:
        f.get("http://mc.test/")
    assert info.value.code == "refused_address"
    assert transport.attempts == []


def test_real_hosting_resolver_path_refuses_private(transport: LoopbackOnlyTransport) -> None:
    # The resolver bootstrap wires in: hosting file first, then DNS (here: a DNS that refuses).
    class NoDns:
        def resolve(self, host: str) -> list[str]:
            raise OSError(f"no DNS in tests ({host})")

    directory = HostingDirectory({"metadata.test": ["169.254.169.254"]}, [])
    resolver = HostingResolver(directory, NoDns())
    f = Fetcher(FetchPolicy(allow_private=False), resolve=resolver.addresses, transport=transport)
    with pytest.raises(FetchError) as info:
        f.get("http://metadata.test/latest/meta-data/iam/")
    assert info.value.code == "refused_address"
    with pytest.raises(FetchError) as info:
        f.get("http://not-in-file.test/")
    assert info.value.code == "dns"
    assert transport.attempts == []


# --------------------------------------------------------------------------- DNS failures


def test_resolver_failures_are_fetch_errors(transport: LoopbackOnlyTransport) -> None:
    def lookup_error(host: str) -> list[str]:
        raise LookupError("NXDOMAIN")

    def os_error(host: str) -> list[str]:
        raise OSError("temporary failure in name resolution")

    def nothing(host: str) -> list[str]:
        return []

    for resolver in (lookup_error, os_error, nothing):
        with pytest.raises(FetchError) as info:
            make_fetcher(resolver, transport).get("http://x.test/")
        assert info.value.code == "dns"
    assert transport.attempts == []


# --------------------------------------------------------------------------- allowed fetches


def test_loopback_allowed_with_allow_private(transport: LoopbackOnlyTransport) -> None:
    site = LoopbackSite("127.0.0.2").start()
    try:
        site.add("/a.png", "image/png; charset=binary", b"\x89PNG fake bytes")
        resolver = TestResolver({"images.hoster-a.test": ["127.0.0.2"]})
        f = make_fetcher(resolver, transport, allow_private=True)
        got = f.get(f"http://images.hoster-a.test:{site.port}/a.png?x=1")
    finally:
        site.stop()
    assert got.status == 200
    assert got.body == b"\x89PNG fake bytes"
    assert got.content_type == "image/png"
    assert got.ip == "127.0.0.2"
    assert got.final_url == got.url == f"http://images.hoster-a.test:{site.port}/a.png?x=1"
    assert site.requests == ["/a.png?x=1"]
    # connected to the vetted address, with the name only in the Host header: no second lookup
    assert transport.attempts == ["127.0.0.2"]
    assert transport.host_headers == [f"images.hoster-a.test:{site.port}"]
    assert resolver.calls == ["images.hoster-a.test"]


def test_loopback_refused_without_allow_private(transport: LoopbackOnlyTransport) -> None:
    site = LoopbackSite("127.0.0.1").start()
    try:
        site.add("/a", "text/plain", b"hello")
        f = make_fetcher(TestResolver({"h.test": ["127.0.0.1"]}), transport, allow_private=False)
        with pytest.raises(FetchError) as info:
            f.get(f"http://h.test:{site.port}/a")
    finally:
        site.stop()
    assert info.value.code == "refused_address"
    assert site.requests == []
    assert transport.attempts == []


def test_http_error_status_is_returned_not_raised(site: ScriptedSite, transport: LoopbackOnlyTransport) -> None:
    f = make_fetcher(TestResolver({"h.test": ["127.0.0.1"]}), transport, allow_private=True)
    got = f.get(f"http://h.test:{site.port}/missing")
    assert got.status == 404


def test_a_hosters_cookie_is_never_sent_back(site: ScriptedSite, transport: LoopbackOnlyTransport) -> None:
    """A hoster that sets a cookie must not recognise the hotline's fetcher by it on the next
    fetch (a re-check, the next report), nor along a redirect."""
    cookies: list[str | None] = []

    def set_cookie(h: BaseHTTPRequestHandler) -> None:
        cookies.append(h.headers.get("Cookie"))
        h.send_response(302)
        h.send_header("Set-Cookie", "visitor=hotline-1; Path=/")
        h.send_header("Location", "/landing")
        h.send_header("Content-Length", "0")
        h.end_headers()

    def landing(h: BaseHTTPRequestHandler) -> None:
        cookies.append(h.headers.get("Cookie"))
        h.send_response(200)
        h.send_header("Content-Length", "2")
        h.end_headers()
        h.wfile.write(b"ok")

    site.routes["/"] = set_cookie
    site.routes["/landing"] = landing
    f = make_fetcher(TestResolver({"h.test": ["127.0.0.1"]}), transport, allow_private=True)
    assert f.get(f"http://h.test:{site.port}/").status == 200
    assert f.get(f"http://h.test:{site.port}/").status == 200
    assert cookies == [None, None, None, None]


# --------------------------------------------------------------------------- every redirect hop


def test_each_redirect_hop_is_resolved_and_vetted(transport: LoopbackOnlyTransport) -> None:
    a = ScriptedSite("127.0.0.1")
    b = LoopbackSite("127.0.0.2").start()
    try:
        b.add("/final.jpg", "image/jpeg", b"\xff\xd8\xff jpeg-ish")
        a.redirect("/start", f"http://second.test:{b.port}/final.jpg", 301)
        resolver = TestResolver({"first.test": ["127.0.0.1"], "second.test": ["127.0.0.2"]})
        f = make_fetcher(resolver, transport, allow_private=True)
        got = f.get(f"http://first.test:{a.port}/start")
    finally:
        a.stop()
        b.stop()
    assert got.body == b"\xff\xd8\xff jpeg-ish"
    assert got.final_url == f"http://second.test:{b.port}/final.jpg"
    assert got.ip == "127.0.0.2"
    assert resolver.calls == ["first.test", "second.test"]  # one lookup per hop, none skipped
    assert transport.attempts == ["127.0.0.1", "127.0.0.2"]


@pytest.fixture
def loopback_plays_public(monkeypatch: pytest.MonkeyPatch) -> None:
    """Let 127.0.0.1 (only) pass the policy as if it were a public web server.

    Without this, a refused second hop can only be tested with allow_private=False *and* a
    public first hop, which would mean traffic off loopback. Everything else (127.0.0.2,
    10.0.0.5, 169.254.169.254, ...) is judged by the real policy.
    """
    real = fetcher_module.address_allowed

    def policy(ip: str, allow_private: bool) -> bool:
        return ip == "127.0.0.1" or real(ip, allow_private)

    monkeypatch.setattr(fetcher_module, "address_allowed", policy)


@pytest.mark.parametrize(
    ("location", "table"),
    [
        ("http://internal.test/admin", {"internal.test": ["10.0.0.5"]}),
        ("http://router.test:8080/", {"router.test": ["192.168.1.1"]}),
        ("http://169.254.169.254/latest/meta-data/", {}),
        ("http://[fd00::1]/", {}),
        ("//169.254.169.254/latest/meta-data/", {}),  # scheme-relative
        ("http://user@10.0.0.5/", {}),
        ("http://corp.test/", {"corp.test": ["172.16.0.1"]}),
        ("http://localhost-alias.test:{port}/", {"localhost-alias.test": ["127.0.0.2"]}),
        ("/relative-but-host-stays-public", {}),  # control: same host, allowed
    ],
)
def test_redirect_to_private_address_is_refused(
    location: str,
    table: dict[str, list[str]],
    site: ScriptedSite,
    transport: LoopbackOnlyTransport,
    loopback_plays_public: None,
) -> None:
    site.redirect("/start", location.format(port=site.port))
    site.body("/relative-but-host-stays-public", b"ok", length=2)
    resolver = TestResolver({"public.test": ["127.0.0.1"], **table})
    f = make_fetcher(resolver, transport, allow_private=False)
    if location == "/relative-but-host-stays-public":
        assert f.get(f"http://public.test:{site.port}/start").body == b"ok"
        assert transport.attempts == ["127.0.0.1", "127.0.0.1"]
        return
    with pytest.raises(FetchError) as info:
        f.get(f"http://public.test:{site.port}/start")
    assert info.value.code == "refused_address"
    assert len(resolver.calls) == 2  # the second hop was looked up ...
    assert transport.attempts == ["127.0.0.1"]  # ... and never connected to
    assert transport.off_loopback == []
    assert site.hits == ["/start"]


def test_redirect_to_other_scheme_is_refused(site: ScriptedSite, transport: LoopbackOnlyTransport) -> None:
    for target in ("file:///etc/passwd", "ftp://files.test/x", "gopher://x.test/"):
        site.redirect("/start", target)
        f = make_fetcher(TestResolver({"h.test": ["127.0.0.1"]}), transport, allow_private=True)
        with pytest.raises(FetchError) as info:
            f.get(f"http://h.test:{site.port}/start")
        assert info.value.code == "bad_url"
    assert transport.off_loopback == []


def _chain(site: ScriptedSite, n: int) -> None:
    for i in range(n):
        site.redirect(f"/r{i}", f"/r{i + 1}")
    site.body(f"/r{n}", b"end", length=3)


def test_redirect_count_cap(site: ScriptedSite, transport: LoopbackOnlyTransport) -> None:
    _chain(site, 10)
    f = make_fetcher(TestResolver({"h.test": ["127.0.0.1"]}), transport, allow_private=True, max_redirects=3)
    with pytest.raises(FetchError) as info:
        f.get(f"http://h.test:{site.port}/r0")
    assert info.value.code == "too_many_redirects"
    assert site.hits == ["/r0", "/r1", "/r2", "/r3"]  # the first request and three redirects, no more


def test_exactly_max_redirects_is_fine(site: ScriptedSite, transport: LoopbackOnlyTransport) -> None:
    _chain(site, 3)
    f = make_fetcher(TestResolver({"h.test": ["127.0.0.1"]}), transport, allow_private=True, max_redirects=3)
    got = f.get(f"http://h.test:{site.port}/r0")
    assert got.body == b"end"
    assert got.final_url.endswith("/r3")


def test_redirect_loop_ends(site: ScriptedSite, transport: LoopbackOnlyTransport) -> None:
    site.redirect("/loop", "/loop")
    f = make_fetcher(TestResolver({"h.test": ["127.0.0.1"]}), transport, allow_private=True, max_redirects=5)
    with pytest.raises(FetchError) as info:
        f.get(f"http://h.test:{site.port}/loop")
    assert info.value.code == "too_many_redirects"
    assert len(site.hits) == 6


# --------------------------------------------------------------------------- hostile redirects and URLs
# A hostile page must produce a FetchError (recorded on the item), never another exception type:
# the runtime retries any other exception forever, which would wedge the classify stage.


def test_redirect_to_unencodable_host_name(site: ScriptedSite, transport: LoopbackOnlyTransport) -> None:
    class IdnaDns:  # what the system resolver does first: encode the name (UnicodeError if invalid)
        def resolve(self, host: str) -> list[str]:
            host.encode("idna")
            raise OSError("no DNS in tests")

    resolver = HostingResolver(HostingDirectory({"h.test": ["127.0.0.1"]}, []), IdnaDns())
    site.redirect("/start", "http://" + "a" * 64 + ".test/")
    f = Fetcher(FetchPolicy(allow_private=True), resolve=resolver.addresses, transport=transport)
    with pytest.raises(FetchError) as info:
        f.get(f"http://h.test:{site.port}/start")
    assert info.value.code == "dns"


def test_redirect_to_impossible_port(site: ScriptedSite, transport: LoopbackOnlyTransport) -> None:
    site.redirect("/start", "http://h.test:99999/")
    f = make_fetcher(TestResolver({"h.test": ["127.0.0.1"]}), transport, allow_private=True)
    with pytest.raises(FetchError) as info:
        f.get(f"http://h.test:{site.port}/start")
    assert info.value.code == "bad_url"


def test_url_with_control_character(transport: LoopbackOnlyTransport) -> None:
    # image_urls() decodes "&#1;" in an <img src> to U+0001
    f = make_fetcher(TestResolver({"h.test": ["127.0.0.1"]}), transport, allow_private=True)
    with pytest.raises(FetchError) as info:
        f.get("http://h.test:1/\x01.png")
    assert info.value.code == "bad_url"


# --------------------------------------------------------------------------- size and time caps


def test_declared_content_length_over_cap(site: ScriptedSite, transport: LoopbackOnlyTransport) -> None:
    site.body("/big", b"x" * 5000, length=5000)
    f = make_fetcher(TestResolver({"h.test": ["127.0.0.1"]}), transport, allow_private=True, max_bytes=1000)
    with pytest.raises(FetchError) as info:
        f.get(f"http://h.test:{site.port}/big")
    assert info.value.code == "too_large"
    assert "5000" in info.value.reason  # refused on the header


def test_streamed_body_over_cap(site: ScriptedSite, transport: LoopbackOnlyTransport) -> None:
    site.body("/stream", b"y" * 50_000, length=None)  # no Content-Length: counted while streaming
    f = make_fetcher(TestResolver({"h.test": ["127.0.0.1"]}), transport, allow_private=True, max_bytes=1000)
    with pytest.raises(FetchError) as info:
        f.get(f"http://h.test:{site.port}/stream")
    assert info.value.code == "too_large"


def test_gzip_bomb_counts_decoded_bytes(site: ScriptedSite, transport: LoopbackOnlyTransport) -> None:
    gz = zlib.compressobj(9, zlib.DEFLATED, 31)
    packed = gz.compress(b"\0" * 2_000_000) + gz.flush()

    def handle(h: BaseHTTPRequestHandler) -> None:
        h.send_response(200)
        h.send_header("Content-Type", "text/html")
        h.send_header("Content-Encoding", "gzip")
        h.send_header("Content-Length", str(len(packed)))
        h.end_headers()
        h.wfile.write(packed)

    site.routes["/bomb"] = handle
    f = make_fetcher(TestResolver({"h.test": ["127.0.0.1"]}), transport, allow_private=True, max_bytes=100_000)
    assert len(packed) < 100_000
    with pytest.raises(FetchError) as info:
        f.get(f"http://h.test:{site.port}/bomb")
    assert info.value.code == "too_large"


def test_body_exactly_at_cap_is_fine(site: ScriptedSite, transport: LoopbackOnlyTransport) -> None:
    site.body("/exact", b"z" * 1000, length=1000)
    site.body("/exact-stream", b"z" * 1000, length=None)
    f = make_fetcher(TestResolver({"h.test": ["127.0.0.1"]}), transport, allow_private=True, max_bytes=1000)
    assert len(f.get(f"http://h.test:{site.port}/exact").body) == 1000
    assert len(f.get(f"http://h.test:{site.port}/exact-stream").body) == 1000


def test_server_that_never_answers_times_out(site: ScriptedSite, transport: LoopbackOnlyTransport) -> None:
    def hang(h: BaseHTTPRequestHandler) -> None:
        site.stopping.wait(10)

    site.routes["/hang"] = hang
    f = make_fetcher(TestResolver({"h.test": ["127.0.0.1"]}), transport, allow_private=True, timeout_seconds=0.3)
    t0 = time.monotonic()
    with pytest.raises(FetchError) as info:
        f.get(f"http://h.test:{site.port}/hang")
    assert info.value.code == "timeout"
    assert time.monotonic() - t0 < 2.0


def test_slow_drip_body_hits_total_deadline(site: ScriptedSite, transport: LoopbackOnlyTransport) -> None:
    # Each chunk arrives well within the per-read timeout, so only a total deadline stops it.
    def drip(h: BaseHTTPRequestHandler) -> None:
        h.send_response(200)
        h.send_header("Content-Type", "text/plain")
        h.send_header("Transfer-Encoding", "chunked")
        h.end_headers()
        for _ in range(200):
            if site.stopping.is_set():
                return
            h.wfile.write(b"1\r\nx\r\n")
            h.wfile.flush()
            time.sleep(0.05)
        h.wfile.write(b"0\r\n\r\n")

    site.routes["/drip"] = drip
    f = make_fetcher(TestResolver({"h.test": ["127.0.0.1"]}), transport, allow_private=True, timeout_seconds=0.3)
    t0 = time.monotonic()
    with pytest.raises(FetchError) as info:
        f.get(f"http://h.test:{site.port}/drip")
    assert info.value.code == "timeout"
    assert time.monotonic() - t0 < 2.0  # the drip alone would take 10 s


# --------------------------------------------------------------------------- decompressed-pixel cap


def _png_header_claiming(width: int, height: int) -> bytes:
    """A tiny PNG whose IHDR claims ``width`` x ``height`` (8-bit grey) with almost no data."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


def _small_png(seed: int) -> bytes:
    img = Image.new("RGB", (96, 64))
    img.putdata([((x * 7 + seed) % 256, (y * 11) % 256, (x * y + seed * 3) % 256) for y in range(64) for x in range(96)])
    buf = io.BytesIO()
    img.save(buf, "PNG")
    return buf.getvalue()


def test_hash_image_refuses_header_over_pixel_cap() -> None:
    data = _png_header_claiming(5000, 5000)  # 25 Mpx declared, well under Pillow's own bomb limit
    assert len(data) < 200
    with pytest.raises(ImageError, match="too large"):
        hash_image(data, max_pixels=1_000_000)
    t0 = time.monotonic()
    with pytest.raises(ImageError):
        hash_image(_png_header_claiming(100_000, 100_000), max_pixels=1_000_000)
    assert time.monotonic() - t0 < 1.0  # refused from the header, nothing decoded


def test_hash_image_under_cap_still_works() -> None:
    h = hash_image(_small_png(1), max_pixels=96 * 64)
    assert (h.width, h.height) == (96, 64)
    with pytest.raises(ImageError):
        hash_image(_small_png(1), max_pixels=96 * 64 - 1)


@pytest.fixture
def store(tmp_path: Path) -> Iterator[SqlUnitOfWork]:
    url = f"sqlite:///{tmp_path / 'fetch.db'}"
    migrate(url)
    engine = make_engine(url)
    with make_sessionmaker(engine)() as session:
        yield SqlUnitOfWork(session)
    engine.dispose()


def test_classify_records_pixel_bomb_as_image_error(store: SqlUnitOfWork, transport: LoopbackOnlyTransport) -> None:
    site = LoopbackSite("127.0.0.2").start()
    try:
        site.add("/bomb.png", "image/png", _png_header_claiming(5000, 5000))
        site.add("/fine.png", "image/png", _small_png(2))
        site.add("/page.html", "text/html", b'<html><img src="/bomb.png"><img src="/fine.png"></html>')
        hosts = {"img.hoster.test": ["127.0.0.2"]}
        nets = [(ipaddress.ip_network("127.0.0.2/32"), NetworkEntry(range="127.0.0.2/32", country="NL", hoster="H", abuse="abuse@h.test"))]
        hosting = HostingResolver(HostingDirectory(hosts, nets))
        stage = ClassifyStage(
            fetcher=Fetcher(FetchPolicy(allow_private=True), resolve=hosting.addresses, transport=transport),
            hash_image=lambda data: hash_image(data, max_pixels=1_000_000),
            match=lambda images: [None] * len(images),
            hosting=hosting,
            partner_names={},
        )
        results = {}
        for path in ("/page.html", "/bomb.png"):
            item = store.items.create(f"http://img.hoster.test:{site.port}{path}")
            out = complete(stage.handle("items.accepted", ItemAccepted(item_id=item.id, url=item.url, report_ids=[uuid.uuid4().hex]), store), store)
            classified = out[0].message
            assert isinstance(classified, ItemClassified)
            results[path] = (classified, store.items.get(item.id))
    finally:
        site.stop()

    page, page_item = results["/page.html"]
    by_url = {i.url.rsplit("/", 1)[-1]: i for i in page.images}
    assert "too large" in (by_url["bomb.png"].error or "")
    assert by_url["bomb.png"].sha256 is None
    assert by_url["fine.png"].error is None and by_url["fine.png"].sha256
    assert page.route == "assessment" and "1 image(s)" in page.reason  # the bomb is not counted
    assert page_item is not None and page_item.state == "awaiting_assessment"

    direct, direct_item = results["/bomb.png"]
    assert len(direct.images) == 1 and "too large" in (direct.images[0].error or "")
    assert direct.route == "assessment" and "no images" in direct.reason
    assert direct_item is not None and direct_item.state == "awaiting_assessment"
    assert transport.off_loopback == []


@pytest.mark.parametrize("url", ["http://[fd00::1]/x.jpg", "http://[fd00::1]:8080/x.jpg", "https://[FD00::1]/"])
def test_classify_finds_hosting_of_ipv6_literal_urls(url: str, transport: LoopbackOnlyTransport) -> None:
    asked: list[str] = []

    class RecordingNoDns:
        def resolve(self, host: str) -> list[str]:
            asked.append(host)
            raise OSError("no DNS in tests")

    nets = [(ipaddress.ip_network("fd00::/8"), NetworkEntry(range="fd00::/8", country="NL", hoster="V6 B.V.", abuse="abuse@v6.test"))]
    hosting = HostingResolver(HostingDirectory({}, nets), RecordingNoDns())
    stage = ClassifyStage(
        fetcher=Fetcher(FetchPolicy(allow_private=False), resolve=hosting.addresses, transport=transport),
        hash_image=lambda data: hash_image(data),
        match=lambda images: [None] * len(images),
        hosting=hosting,
        partner_names={},
    )
    classified = stage.classify("item-1", url)
    assert classified.hosting is not None
    assert (classified.hosting.ip, classified.hosting.country, classified.hosting.hoster) == ("fd00::1", "NL", "V6 B.V.")
    assert asked == []  # an address literal needs no DNS query
    assert classified.route == "closed_offline" and "refused_address" in classified.reason
    assert transport.attempts == []


# --------------------------------------------------------------------------- names, once per item


def test_an_items_fetches_resolve_each_host_once_and_a_new_item_asks_again(transport: LoopbackOnlyTransport) -> None:
    from services.classify.fetcher import Names, fetch_each

    site = LoopbackSite("127.0.0.2").start()
    try:
        for k in range(4):
            site.add(f"/{k}.png", "image/png", b"\x89PNG fake %d" % k)
        resolver = TestResolver({"images.hoster-a.test": ["127.0.0.2"]})
        f = make_fetcher(resolver, transport, allow_private=True)
        urls = [f"http://images.hoster-a.test:{site.port}/{k}.png" for k in range(4)]
        names = Names()
        got = fetch_each(f, urls, lambda u, r: r, deadline=time.monotonic() + 10, concurrency=4, names=names)
        assert [g.body for g in got] == [b"\x89PNG fake %d" % k for k in range(4)]  # type: ignore[union-attr]
        assert resolver.calls == ["images.hoster-a.test"]  # four fetches, one look-up
        f.get(urls[0], names=Names())  # the next item sees DNS as it is now
        assert resolver.calls == ["images.hoster-a.test"] * 2
        assert set(transport.attempts) == {"127.0.0.2"}
    finally:
        site.stop()


def test_a_refused_name_stays_refused_for_every_fetch_of_the_item(transport: LoopbackOnlyTransport) -> None:
    from services.classify.fetcher import Names

    resolver = TestResolver({"evil.test": ["127.0.0.1"]})
    f = make_fetcher(resolver, transport, allow_private=False)
    names = Names()
    for k in range(3):
        with pytest.raises(FetchError) as err:
            f.get(f"http://evil.test/{k}.jpg", names=names)
        assert err.value.code == "refused_address"
    assert resolver.calls == ["evil.test"]
    assert transport.attempts == []  # never connected


def test_fetching_threads_are_kept_for_the_next_item_and_end_with_their_caller() -> None:
    """fetch_each reuses the calling thread's fetching threads (a pool per item cost a fifth
    of the item's CPU), each item still gets ``concurrency`` threads, and they go away with
    the thread that called it."""
    import gc

    from services.classify.fetcher import fetch_each

    class Stub:
        def get(self, url: str, deadline: float | None = None, names: Any = None) -> str:
            time.sleep(0.02)  # overlapping fetches: every thread of the pool gets one
            return url

    used: list[set[threading.Thread]] = []

    def items() -> None:
        for _ in range(2):
            seen: set[threading.Thread] = set()
            fetch_each(Stub(), [f"u{k}" for k in range(8)],  # type: ignore[arg-type]
                       lambda u, r, seen=seen: seen.add(threading.current_thread()),
                       deadline=time.monotonic() + 10, concurrency=4)
            used.append(seen)

    caller = threading.Thread(target=items)
    caller.start()
    caller.join(10)
    # Thread objects, not idents (an ident is reused once a thread ends). The pool creates its
    # threads lazily, so how many an item uses depends on the machine's load; what must hold is
    # that the second item ran on the first one's pool (a pool per item shares no thread) and
    # that the pool never grew past its bound.
    assert len(used) == 2 and used[0] & used[1] and len(used[0] | used[1]) <= 4
    gc.collect()
    deadline = time.monotonic() + 10
    while any(t.ident in used[0] for t in threading.enumerate()) and time.monotonic() < deadline:
        time.sleep(0.05)
        gc.collect()
    assert not any(t.ident in used[0] for t in threading.enumerate())
