"""Attribution on loopback: every image to its own hoster, IPv4 and IPv6, DNS (a loopback DNS
server), RDAP (a loopback RDAP server: normal, slow, error, no abuse contact), CDNs with and
without a known origin, unknown ranges, and the hosting cache's time to live.

``test_route`` is the README's route table ("Attribution: every route classify takes"): one
case per row, by the row's id. Nothing here leaves 127.0.0.0/8 or ::1.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

from doubles.dns import DnsServer
from doubles.loopback import LoopbackSite
from doubles.rdap import RdapServer, domain, ip_network
from hashing.image import hash_image
from hashing.matcher import BankMatcher, BankRecord
from hashing.synthetic import photo_like_jpeg
from hotline.kernel.clock import FakeClock
from hotline.storage.engine import make_engine, make_sessionmaker, migrate
from hotline.storage.hosting_cache import MemoryHostingCache, SqlHostingCache
from schemas.items import ItemClassified
from services.classify.fetcher import Fetcher, FetchPolicy
from services.classify.hosting import (
    DnsResolver,
    FactCache,
    HostingDirectory,
    HostingFile,
    HostingResolver,
)
from services.classify.rdap import RdapClient
from services.classify.stage import (
    ClassifyStage,
    partner_forwards,
    takedown_notice,
    takedown_notices,
)
from services.notify.notice import render_notice
from services.notify.xarf_report import build_report

RDAP_TIMEOUT = 3.0  # the slow mode answers after 30 s (released at the end)

SITES = {  # host -> address; each address is one LoopbackSite
    "a.test": "127.0.0.2", "b.test": "127.0.0.3", "c.test": "127.0.0.4", "d.test": "127.0.0.5",
    "f.test": "127.0.0.6", "n.test": "127.0.0.7", "u.test": "127.0.0.8", "plain.test": "127.0.0.9",
    "shop.test": "127.0.0.9",
}
DNS_NAMES = {"r.test": ["127.0.0.10"], "dns4.test": ["127.0.0.3"], "v6.test": ["::1"],
             "dual.test": ["127.0.0.3", "::1"]}
HOSTING = {
    "hosts": {h: [ip] for h, ip in SITES.items()},
    "origins": {"shop.test": ["127.0.0.3"]},
    "networks": [
        {"range": "127.0.0.2/32", "country": "NL", "asn": 64501, "hoster": "Hoster A", "abuse": "abuse@a.test"},
        {"range": "127.0.0.3/32", "country": "NL", "asn": 64502, "hoster": "Hoster B", "abuse": "abuse@b.test"},
        {"range": "127.0.0.4/32", "country": "NL", "asn": 64503, "hoster": "Hoster C", "abuse": "abuse@c.test"},
        {"range": "127.0.0.5/32", "country": "DE", "hoster": "Hoster D GmbH", "abuse": "abuse@d.test"},
        {"range": "127.0.0.6/32", "country": "FR", "hoster": "Hoster F SAS", "abuse": "abuse@f.test"},
        {"range": "127.0.0.7/32", "country": "NL", "hoster": "Hoster N"},
        {"range": "127.0.0.9/32", "country": "NL", "asn": 64509, "hoster": "Edge CDN", "abuse": "abuse@cdn.test",
         "cdn": True},
        {"range": "::1/128", "country": "NL", "asn": 64506, "hoster": "Hoster Six", "abuse": "abuse@six.test",
         "name": "SIX-NET"},
    ],
}
KNOWN = photo_like_jpeg(320, 240, seed=1001)
UNKNOWN = photo_like_jpeg(320, 240, seed=1002)
PHASH_ONLY = photo_like_jpeg(320, 240, seed=1003)


class LoopbackOnly(httpx.HTTPTransport):
    def __init__(self) -> None:
        super().__init__()
        self.refused: list[str] = []

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        host = request.url.host.strip("[]")
        if not ipaddress.ip_address(host).is_loopback:
            self.refused.append(host)
            raise httpx.ConnectError(f"test transport refuses {host}")
        return super().handle_request(request)


@dataclass
class World:
    sites: dict[str, LoopbackSite]
    dns: DnsServer
    rdap: RdapServer
    bank: BankMatcher
    transport: LoopbackOnly = field(default_factory=LoopbackOnly)

    def url(self, host: str, path: str) -> str:
        site = self.sites[host]
        shown = f"[{site.host}]" if ":" in site.host else host
        return f"http://{shown if ':' in site.host else host}:{site.port}{path}"

    def page(self, host: str, path: str, *images: tuple[str, str]) -> str:
        tags = "".join(f'<img src="{self.url(h, p)}">' for h, p in images)
        self.sites[host].add(path, "text/html", f"<html><body><h1>x</h1>{tags}</body></html>".encode())
        return self.url(host, path)

    def resolver(self, cache: FactCache | None = None, clock: FakeClock | None = None,
                 rdap: bool = True, ttl: float = 43200, backoff: float = 60.0) -> HostingResolver:
        return HostingResolver(
            HostingDirectory.from_model(HostingFile.model_validate(HOSTING)),
            DnsResolver([(self.dns.host, self.dns.port)], 5.0),
            rdap=RdapClient(self.rdap.url, RDAP_TIMEOUT) if rdap else None,
            cache=cache, ttl_seconds=ttl, clock=clock, rdap_backoff_seconds=backoff,
        )

    def stage(self, hosting: HostingResolver | None = None) -> ClassifyStage:
        hosting = hosting or self.resolver()
        return ClassifyStage(
            fetcher=Fetcher(FetchPolicy(allow_private=True, timeout_seconds=10), resolve=hosting.addresses,
                            transport=self.transport),
            hash_image=hash_image, match=self.bank.match_batch, hosting=hosting, partner_names={"DE": "Partner DE"},
        )


@pytest.fixture(scope="module")
def world() -> Iterator[World]:
    sites: dict[str, LoopbackSite] = {}
    by_ip: dict[str, LoopbackSite] = {}
    for host, ip in [*SITES.items(), ("r.test", "127.0.0.10"), ("v6.test", "::1"), ("dns4.test", "127.0.0.3")]:
        if ip not in by_ip:
            by_ip[ip] = LoopbackSite(ip).start()
        sites[host] = by_ip[ip]
    for site in by_ip.values():
        site.add("/k.jpg", "image/jpeg", KNOWN)
        site.add("/u.jpg", "image/jpeg", UNKNOWN)
        site.add("/p.jpg", "image/jpeg", PHASH_ONLY)
        site.add("/empty.html", "text/html", b"<html><body>nothing to see</body></html>")
    dns = DnsServer().start()
    for name, addrs in DNS_NAMES.items():
        dns.add(name, *addrs)
    rdap = RdapServer(delay=30.0).start()
    rdap.add_network(ip_network("127.0.0.10/31", name="TRANSIT", hoster="Transit Carrier", country="NL",
                                abuse="abuse@transit.test"))
    rdap.add_network(ip_network("127.0.0.10/32", name="RDAP-HOSTER-NET", hoster="RDAP Hoster B.V.", country="NL",
                                abuse="abuse@rdap-hoster.test", asn=64510, parent="127.0.0.10/31"))
    rdap.add_domain(domain("r.test", registrar="Example Registrar", registrar_abuse="abuse@registrar.test"))
    k, p = hash_image(KNOWN), hash_image(PHASH_ONLY)
    bank = BankMatcher()
    bank.add([BankRecord(id=1, category="baseline", source="test", sha256=k.sha256, md5=k.md5, pdq=k.pdq),
              BankRecord(id=2, category="baseline", source="test", phash=p.phash)])
    w = World(sites, dns, rdap, bank)
    yield w
    rdap.stop()
    dns.stop()
    for site in by_ip.values():
        site.stop()
    assert w.transport.refused == []


@pytest.fixture()
def rdap_mode(world: World) -> Iterator[None]:
    yield
    world.rdap.mode = "normal"


# ------------------------------------------------------------------ the route table

@dataclass(frozen=True)
class Row:
    url: str  # "host/path", or a page spec "host/path <- host/img, host/img"
    route: str
    notices: dict[str, list[str]]  # abuse address -> copy_to
    forwards: tuple[str, ...] = ()
    reason: str = ""
    rdap: str = "normal"


ROUTES: dict[str, Row] = {
    "onion": Row("http://" + "c" * 56 + ".onion/k.jpg", "police", {}, reason="Tor hidden service"),
    "offline": Row("a.test/missing.jpg", "closed_offline", {}, reason="HTTP 404"),
    "not_in_bank": Row("a.test/u.jpg", "assessment", {}, reason="not in the bank"),
    "no_images": Row("a.test/empty.html", "assessment", {}, reason="no images found"),
    "phash_only": Row("a.test/p.jpg", "assessment", {}, reason="pHash near match only"),
    "known_home": Row("a.test/k.jpg", "ntd", {"abuse@a.test": []}),
    "known_no_abuse_contact": Row("n.test/k.jpg", "assessment", {}, reason="no abuse contact"),
    "known_partner_country": Row("d.test/k.jpg", "forward", {}, ("DE",)),
    "known_no_partner": Row("f.test/k.jpg", "ntd", {"abuse@f.test": []}, reason="no partner hotline is registered"),
    "hoster_unknown": Row("u.test/k.jpg", "assessment", {}, reason="hoster unknown"),
    "rdap_attributed": Row("r.test/k.jpg", "ntd", {"abuse@rdap-hoster.test": []}),
    "rdap_timed_out": Row("r.test/k.jpg", "assessment", {}, reason="RDAP timed out", rdap="slow"),
    "rdap_error": Row("r.test/k.jpg", "assessment", {}, reason="RDAP error 500", rdap="error"),
    "rdap_no_abuse_contact": Row("r.test/k.jpg", "assessment", {}, reason="no abuse contact in RDAP", rdap="no_abuse"),
    "cdn_without_origin": Row("plain.test/k.jpg", "ntd", {"abuse@cdn.test": []}, reason="behind the CDN Edge CDN"),
    "cdn_with_origin": Row("shop.test/k.jpg", "ntd", {"abuse@b.test": ["abuse@cdn.test"]}, reason="origin 127.0.0.3"),
    "ipv6": Row("v6.test/k.jpg", "ntd", {"abuse@six.test": []}),
    "images_on_two_other_hosters": Row("a.test/p1.html <- b.test/k.jpg, c.test/k.jpg", "ntd",
                                       {"abuse@a.test": [], "abuse@b.test": [], "abuse@c.test": []}),
    "image_on_hoster_abroad": Row("a.test/p2.html <- d.test/k.jpg", "ntd", {"abuse@a.test": []}, ("DE",)),
    "image_hoster_needs_analyst": Row("a.test/p3.html <- b.test/k.jpg, u.test/k.jpg", "assessment",
                                      {"abuse@a.test": [], "abuse@b.test": []}, reason="hoster unknown"),
}


def _url(world: World, spec: str) -> str:
    if spec.startswith("http://"):  # a URL no loopback site serves (and none may be asked)
        return spec
    page, _, images = spec.partition(" <- ")
    host, _, path = page.partition("/")
    if not images:
        return world.url(host, "/" + path)
    pairs = [tuple(i.strip().split("/", 1)) for i in images.split(",")]
    return world.page(host, "/" + path, *[(h, "/" + p) for h, p in pairs])


@pytest.mark.parametrize("row_id", list(ROUTES))
def test_route(world: World, rdap_mode: None, row_id: str) -> None:
    row = ROUTES[row_id]
    world.rdap.mode = row.rdap  # type: ignore[assignment]
    c = world.stage().classify(f"item-{row_id}", _url(world, row.url))

    assert c.route == row.route, c.reason
    assert row.reason in c.reason
    notices = takedown_notices(c)
    assert {n.abuse_email: n.copy_to for n in notices} == row.notices
    assert [n.notice_id for n in notices][:1] == ([f"ntd-item-{row_id}"] if row.notices else [])
    assert tuple(f.country for f in partner_forwards(c, {"DE": "Partner DE"}, "Hotline")) == row.forwards
    for n in notices:  # every notice's X-ARF report validates, IPv6 included
        build_report(n, "ntd@hotline.test", "Hotline")


# ------------------------------------------------------------------ IPv4 and IPv6

def test_ipv4_and_ipv6_from_dns_a_and_aaaa(world: World) -> None:
    hosting = world.resolver(rdap=False)
    v4, v6, dual = hosting.facts("dns4.test"), hosting.facts("v6.test"), hosting.facts("dual.test")

    assert (v4.ip, v4.prefix, v4.hoster, v4.source, v4.address_source) == (
        "127.0.0.3", "127.0.0.3/32", "Hoster B", "hosting_file", "dns")
    assert (v6.ip, v6.prefix, v6.hoster, v6.network, v6.asn) == ("::1", "::1/128", "Hoster Six", "SIX-NET", 64506)
    assert dual.addresses == ["127.0.0.3", "::1"]
    assert world.dns.asked("v6.test") == ["A", "AAAA"]


def test_an_ipv6_notice_names_the_address_in_x_arf(world: World) -> None:
    c = world.stage().classify("item-v6", world.url("v6.test", "/k.jpg"))
    [notice] = takedown_notices(c)
    report = build_report(notice, "ntd@hotline.test", "Hotline")
    assert report["source_identifier"] == "::1"
    assert report["dns_records"] == {"aaaa": ["::1"]}
    assert report["asn"] == 64506 and report["hosting_provider"] == "Hoster Six"


def test_an_ipv6_literal_url_is_attributed_without_dns(world: World) -> None:
    before = len(world.dns.queries)
    c = world.stage().classify("item-v6-literal", world.url("v6.test", "/k.jpg").replace("v6.test", "[::1]"))
    assert c.hosting is not None and (c.hosting.ip, c.hosting.address_source) == ("::1", "literal")
    assert c.route == "ntd" and len(world.dns.queries) == before


# ------------------------------------------------------------------ each image its own hoster

def test_a_page_on_one_hoster_showing_images_from_two_others(world: World) -> None:
    url = world.page("a.test", "/gallery.html", ("b.test", "/k.jpg"), ("c.test", "/k.jpg"), ("b.test", "/u.jpg"))
    c = world.stage().classify("item-g", url)

    assert c.hosting is not None and c.hosting.hoster == "Hoster A"
    assert [i.hosting.hoster if i.hosting else None for i in c.images] == ["Hoster B", "Hoster C", "Hoster B"]
    by_hoster = {n.hoster: n for n in takedown_notices(c)}
    assert [n.notice_id for n in by_hoster.values()] == ["ntd-item-g", "ntd-item-g-h2", "ntd-item-g-h3"]
    page, b, cc = by_hoster["Hoster A"], by_hoster["Hoster B"], by_hoster["Hoster C"]
    # the page's hoster: the page and every known image it shows
    assert (page.url, page.page_url) == (url, None)
    assert [i.url for i in page.images] == [world.url("b.test", "/k.jpg"), world.url("c.test", "/k.jpg")]
    # each image hoster: its own images, the page named as where they were shown
    assert (b.url, b.page_url, [i.url for i in b.images]) == (world.url("b.test", "/k.jpg"), url, [b.url])
    assert (cc.url, cc.hosting and cc.hosting.ip) == (world.url("c.test", "/k.jpg"), "127.0.0.4")
    assert "shown on " + url in render_notice(b, "ntd@hotline.test", "Hotline", "en").get_body().get_content()
    assert [r.page for r in c.attribution] == [True, False, False]
    # the stored classification rebuilds the same notices (operators resend them)
    again = ItemClassified.model_validate(c.model_dump(mode="json"))
    assert takedown_notices(again) == takedown_notices(c)
    assert takedown_notice(again, "ntd-item-g-h3") == cc
    # an operator's "send elsewhere" of B's notice rebuilds B's notice under the new id
    elsewhere = takedown_notice(again, "ntd-item-g-2", "desk@b.test", based_on="ntd-item-g-h2")
    assert elsewhere is not None
    assert (elsewhere.notice_id, elsewhere.abuse_email, elsewhere.url) == ("ntd-item-g-2", "desk@b.test", b.url)


# ------------------------------------------------------------------ CDNs

def test_behind_a_cdn_without_a_known_origin_the_cdn_gets_the_notice(world: World) -> None:
    c = world.stage().classify("item-cdn1", world.url("plain.test", "/k.jpg"))
    [notice] = takedown_notices(c)
    assert (notice.abuse_email, notice.copy_to, notice.hoster) == ("abuse@cdn.test", [], "Edge CDN")
    assert notice.hosting is not None and notice.hosting.cdn == "Edge CDN"
    assert "forwards it to its customer's hoster" in (notice.hosting.reason or "")


def test_behind_a_cdn_with_a_known_origin_the_origin_gets_it_and_the_cdn_a_copy(world: World) -> None:
    c = world.stage().classify("item-cdn2", world.url("shop.test", "/k.jpg"))
    [notice] = takedown_notices(c)
    h = notice.hosting
    assert h is not None
    assert (notice.abuse_email, notice.copy_to) == ("abuse@b.test", ["abuse@cdn.test"])
    assert (h.ip, h.addresses, h.cdn, h.cdn_abuse) == ("127.0.0.3", ["127.0.0.9"], "Edge CDN", "abuse@cdn.test")
    email = render_notice(notice, "ntd@hotline.test", "Hotline", "en")
    assert (email["To"], email["Cc"]) == ("abuse@b.test", "abuse@cdn.test")
    assert build_report(notice, "ntd@hotline.test", "Hotline")["source_identifier"] == "127.0.0.3"


# ------------------------------------------------------------------ RDAP

def test_rdap_facts_with_provenance_upstream_and_registrar(world: World) -> None:
    clock = FakeClock()
    h = world.resolver(MemoryHostingCache(clock), clock).facts("r.test")
    assert (h.source, h.address_source, h.looked_up_at) == ("rdap", "dns", clock.now())
    assert (h.prefix, h.network, h.country, h.asn) == ("127.0.0.10/32", "RDAP-HOSTER-NET", "NL", 64510)
    assert (h.hoster, h.abuse, h.upstream_abuse) == ("RDAP Hoster B.V.", "abuse@rdap-hoster.test", "abuse@transit.test")
    assert (h.registrar, h.registrar_abuse) == ("Example Registrar", "abuse@registrar.test")
    assert h.reason is None


@pytest.mark.parametrize(("mode", "reason"), [
    ("slow", "RDAP timed out"), ("error", "RDAP error 500"), ("no_abuse", "no abuse contact in RDAP"),
])
def test_an_rdap_failure_is_a_recorded_reason_and_classify_keeps_running(
    world: World, rdap_mode: None, mode: str, reason: str
) -> None:
    world.rdap.mode = mode  # type: ignore[assignment]
    stage = world.stage()
    failed = stage.classify(f"item-rdap-{mode}", world.url("r.test", "/k.jpg"))
    assert failed.route == "assessment" and reason in failed.reason
    assert failed.hosting is not None and reason in (failed.hosting.reason or "")
    assert takedown_notices(failed) == []
    # the same stage goes on with the next item
    assert stage.classify(f"item-next-{mode}", world.url("a.test", "/k.jpg")).route == "ntd"


# ------------------------------------------------------------------ the cache

@pytest.fixture(params=["memory", "sqlite"])
def cache_for(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[FactCache, FakeClock]]:
    clock = FakeClock()
    if request.param == "memory":
        yield MemoryHostingCache(clock), clock
        return
    url = f"sqlite:///{tmp_path / 'cache.db'}"
    migrate(url)  # migration 0007 creates the table
    engine = make_engine(url)
    yield SqlHostingCache(make_sessionmaker(engine), clock), clock
    engine.dispose()


def test_facts_come_from_the_cache_within_the_ttl_and_are_looked_up_after_it(
    world: World, cache_for: tuple[FactCache, FakeClock]
) -> None:
    cache, clock = cache_for
    hosting = world.resolver(cache, clock, ttl=3600)
    world.dns.add("cached.test", "127.0.0.10")
    rdap_before, dns_before = world.rdap.paths().count("/ip/127.0.0.10"), len(world.dns.asked("cached.test"))

    first = hosting.facts("cached.test")
    clock.advance(3599)
    second = hosting.facts("cached.test")
    assert world.rdap.paths().count("/ip/127.0.0.10") == rdap_before + 1
    assert len(world.dns.asked("cached.test")) == dns_before + 2  # A and AAAA, once
    assert first == second and second.looked_up_at == first.looked_up_at  # when it was really looked up

    clock.advance(2)
    third = hosting.facts("cached.test")
    assert world.rdap.paths().count("/ip/127.0.0.10") == rdap_before + 2
    assert len(world.dns.asked("cached.test")) == dns_before + 4
    assert third.looked_up_at == clock.now() and third.abuse == first.abuse


def test_a_failed_rdap_answer_is_not_cached(world: World, rdap_mode: None) -> None:
    clock = FakeClock()
    hosting = world.resolver(MemoryHostingCache(clock), clock, backoff=0)
    world.rdap.mode = "error"
    assert "RDAP error 500" in (hosting.facts("r.test").reason or "")
    world.rdap.mode = "normal"
    assert hosting.facts("r.test").abuse == "abuse@rdap-hoster.test"


def test_after_an_rdap_outage_rdap_is_left_alone_for_a_while(world: World, rdap_mode: None) -> None:
    hosting = world.resolver(backoff=600)
    world.dns.add("other.test", "127.0.0.11")
    world.rdap.mode = "error"
    before = len(world.rdap.paths())
    first, second = hosting.facts("r.test"), hosting.facts("other.test")
    assert len(world.rdap.paths()) == before + 1  # one request: the second host waits for no registry
    assert "RDAP error 500" in (first.reason or "") and "RDAP not asked again" in (second.reason or "")


def test_an_old_hosting_file_stays_valid() -> None:
    old = {"hosts": {"images.hoster-a.test": ["127.0.0.2"]},
           "networks": [{"range": "127.0.0.2/32", "country": "NL", "asn": 64501, "hoster": "Hoster A B.V.",
                         "abuse": "abuse@hoster-a.test"}]}
    directory = HostingDirectory.from_model(HostingFile.model_validate(old))
    h = HostingResolver(directory, DnsResolver([("127.0.0.1", 9)], 0.1)).facts("images.hoster-a.test")
    assert (h.abuse, h.cdn, h.source, h.address_source) == ("abuse@hoster-a.test", None, "hosting_file", "hosting_file")


def test_the_ladder_gets_the_upstream_and_registrar_contacts_from_the_notice(world: World) -> None:
    from hotline.storage.memory import MemoryUnitOfWork
    from services.followup.mail import Contacts
    from services.followup.opening import open_followup

    c = world.stage().classify("item-ladder", world.url("r.test", "/k.jpg"))
    [notice] = takedown_notices(c)
    uow = MemoryUnitOfWork()
    open_followup(uow, notice, FakeClock().now())
    f = uow.followups.get("item-ladder")
    assert f is not None
    contacts = Contacts()
    assert contacts.address("upstream", f) == ("abuse@transit.test", "")
    assert contacts.address("registrar", f) == ("abuse@registrar.test", "")


def test_the_analyst_page_shows_each_hoster_and_how_we_know(world: World, rdap_mode: None) -> None:
    from services.assessment.pages import templates

    world.rdap.mode = "error"
    url = world.page("a.test", "/why.html", ("b.test", "/k.jpg"), ("r.test", "/k.jpg"))
    c = world.stage().classify("item-why", url)
    item = type("ItemRow", (), {"id": "item-why", "url": url, "state": "awaiting_assessment", "reason": c.reason,
                                "country": "NL", "hoster": "Hoster A", "first_seen": FakeClock().now(),
                                "last_seen": FakeClock().now()})()
    html = templates.env.get_template("item.html").render(
        item=item, classified=c, hosting=c.hosting, images=c.images, events=[], report_ids=[], error=None,
        form={"verdict": "", "category": "national", "notes": ""}, categories=["baseline"], caller=None,
        flash=None, hotline_name="Hotline", nonce="n")
    assert "ntd-item-why-h2" in html and "Hoster B" in html
    assert "hoster unknown: RDAP error 500" in html and "for 127.0.0.10" in html
    assert "hosting_file · 127.0.0.3/32 · looked up" in html
