"""Where is a URL hosted, and how do we know? The operator's hosting file first, then DNS
(A and AAAA), then RDAP; every live answer cached for a time to live, every fact with its
provenance (``HostingFacts.source``, ``looked_up_at``, ``reason``).

``HOTLINE_HOSTING_FILE`` (YAML, see the architecture's contract and README "Attribution")
maps host names to addresses (used instead of DNS) and address ranges (IPv4 or IPv6 CIDR) to
country, ASN, hoster and abuse contact; the most specific range wins. Two optional additions,
so every older file stays valid: a network may say ``cdn: true`` (content behind it goes to
the CDN's abuse desk, which forwards to its customer's hoster), and ``origins`` names a host's
origin addresses behind a CDN (the origin's hoster then gets the notice, the CDN a copy).

Look-ups run in classify's *act* step, outside any transaction; the cache
(``hotline.storage.hosting_cache``) owns its own short transactions (see its docstring).
"""

from __future__ import annotations

import ipaddress
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Protocol

import dns.exception
import dns.nameserver
import dns.resolver
from pydantic import BaseModel, ConfigDict, Field

from hotline.kernel import clock as clocks
from hotline.kernel.clock import Clock
from hotline.operator_files import load_file, load_text
from schemas.facts import HostingFacts
from services.classify.rdap import DomainFacts, NetworkFacts, RdapClient, RdapFailure

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
HOSTER_UNKNOWN = "hoster unknown"
NO_ABUSE_IN_RDAP = "no abuse contact in RDAP"


class NetworkEntry(BaseModel):
    model_config = ConfigDict(extra="forbid")

    range: str
    country: str = Field(min_length=2, max_length=2)
    asn: int | None = None
    hoster: str
    abuse: str | None = None
    name: str | None = None  # the network's name, as a registry would call it
    upstream: str | None = None  # the upstream provider's abuse contact (the ladder's rung)
    cdn: bool = False  # a CDN or reverse proxy: it forwards notices to its customer's hoster


class HostingFile(BaseModel):
    model_config = ConfigDict(extra="forbid")

    hosts: dict[str, list[str]] = {}
    networks: list[NetworkEntry] = []
    origins: dict[str, list[str]] = {}  # host behind a CDN -> its origin's addresses


class Resolver(Protocol):
    def resolve(self, host: str) -> list[str]:
        """The host's addresses; raises ``LookupError`` or ``OSError`` if it has none."""
        ...


class FactCache(Protocol):
    """``hotline.storage.hosting_cache.SqlHostingCache`` (or its memory twin)."""

    def get(self, key: str) -> Any: ...

    def put(self, key: str, value: dict[str, Any], source: str, ttl_seconds: float,
            looked_up_at: datetime | None = None) -> None: ...


class UnknownHost(LookupError):
    pass


def parse_nameservers(spec: str) -> list[tuple[str, int]]:
    """``"127.0.0.1:5353, [::1]:53, 192.0.2.53"`` -> [(address, port)] (port 53 by default)."""
    out: list[tuple[str, int]] = []
    for part in (p.strip() for p in spec.split(",")):
        if not part:
            continue
        if part.startswith("["):
            addr, _, rest = part[1:].partition("]")
            port = int(rest[1:]) if rest.startswith(":") else 53
        elif part.count(":") == 1:
            addr, port_text = part.split(":")
            port = int(port_text)
        else:
            addr, port = part, 53
        out.append((ipaddress.ip_address(addr).compressed, port))
    return out


class DnsResolver:
    """DNS with dnspython: A and AAAA. ``nameservers`` (``HOTLINE_DNS_SERVERS``) replaces the
    system's ``resolv.conf`` (the tests point it at a loopback server); ``timeout_seconds``
    bounds each name's look-up."""

    def __init__(self, nameservers: list[tuple[str, int]] | None = None, timeout_seconds: float = 5.0) -> None:
        self.nameservers = nameservers
        self.timeout_seconds = timeout_seconds
        self._resolver: dns.resolver.Resolver | None = None
        self._lock = threading.Lock()

    def _get(self) -> dns.resolver.Resolver:
        with self._lock:
            if self._resolver is None:
                r = dns.resolver.Resolver(configure=self.nameservers is None)
                if self.nameservers is not None:
                    r.nameservers = [dns.nameserver.Do53Nameserver(a, p) for a, p in self.nameservers]
                r.lifetime = self.timeout_seconds
                r.timeout = self.timeout_seconds
                self._resolver = r
            return self._resolver

    def resolve(self, host: str) -> list[str]:
        resolver = self._get()
        found: list[str] = []
        problems: list[str] = []
        for rdtype in ("A", "AAAA"):
            try:
                answer = resolver.resolve(host, rdtype, search=False)
            except dns.resolver.NXDOMAIN as exc:
                raise UnknownHost(f"host name {host} does not exist (NXDOMAIN)") from exc
            except dns.resolver.NoAnswer:
                continue
            except dns.exception.Timeout:
                problems.append(f"{rdtype} timed out")
                continue
            except dns.exception.DNSException as exc:
                problems.append(f"{rdtype}: {type(exc).__name__}")
                continue
            for rr in answer:
                addr = ipaddress.ip_address(rr.to_text()).compressed
                if addr not in found:
                    found.append(addr)
        if not found:
            why = "; ".join(problems) or "no A or AAAA record"
            raise UnknownHost(f"host name {host} does not resolve ({why})")
        return found


@dataclass
class HostingDirectory:
    hosts: dict[str, list[str]]
    networks: list[tuple[IPNetwork, NetworkEntry]]
    origins: dict[str, list[str]] = field(default_factory=dict)

    @classmethod
    def empty(cls) -> HostingDirectory:
        return cls({}, [])

    @classmethod
    def from_file(cls, path: Path | str | None) -> HostingDirectory:
        """The hosting file; ``OperatorFileError`` (one line: file and problem) if it is unusable."""
        if path is None:
            return cls.empty()
        return load_file(path, HostingFile, cls.from_model, "HOTLINE_HOSTING_FILE")

    @classmethod
    def from_text(cls, text: str) -> HostingDirectory:
        return load_text(text, HostingFile, cls.from_model, "HOTLINE_HOSTING_FILE")

    @classmethod
    def from_model(cls, data: HostingFile) -> HostingDirectory:
        nets = [(ipaddress.ip_network(n.range, strict=False), n) for n in data.networks]
        nets.sort(key=lambda pair: pair[0].prefixlen, reverse=True)

        def addresses(table: dict[str, list[str]]) -> dict[str, list[str]]:
            # fail loudly at start on a typo; IPv6 addresses kept in their compressed form
            return {h.lower().rstrip("."): [ipaddress.ip_address(a).compressed for a in addrs]
                    for h, addrs in table.items()}

        return cls(addresses(data.hosts), nets, addresses(data.origins))

    def network_for(self, ip: str) -> tuple[IPNetwork, NetworkEntry] | None:
        addr = ipaddress.ip_address(ip)
        for net, entry in self.networks:
            if addr.version == net.version and addr in net:
                return net, entry
        return None


def _literal(host: str) -> str | None:
    try:
        return ipaddress.ip_address(host.strip("[]")).compressed
    except ValueError:
        return None


class HostingResolver:
    """Resolves names (hosting file, then DNS) and tells who hosts an address (hosting file,
    then RDAP), caching DNS and RDAP answers for ``ttl_seconds``.

    ``rdap`` None: no RDAP look-ups (the default while ``HOTLINE_RDAP_URL`` is unset); an
    address no hosting-file network covers is then "hoster unknown". ``cache`` None: no cache
    (every fact looked up again).

    After an RDAP outage (timeout, 5xx, unreachable) RDAP is not asked for
    ``rdap_backoff_seconds``: a page with fifty images on fifty hosts must not wait fifty
    timeouts while the registry is down; those look-ups record the same reason."""

    def __init__(
        self,
        directory: HostingDirectory,
        dns: Resolver | None = None,
        *,
        rdap: RdapClient | None = None,
        cache: FactCache | None = None,
        ttl_seconds: float = 43200.0,
        clock: Clock | None = None,
        rdap_backoff_seconds: float = 60.0,
    ) -> None:
        self.directory = directory
        self.dns: Resolver = dns or DnsResolver()
        self.rdap = rdap
        self.cache = cache
        self.ttl_seconds = ttl_seconds
        self.clock = clock or clocks.CURRENT
        self.rdap_backoff_seconds = rdap_backoff_seconds
        self._rdap_down: tuple[float, str] | None = None  # (monotonic time until, reason)
        self._rdap_lock = threading.Lock()

    # ------------------------------------------------------------------ addresses

    def addresses(self, host: str) -> list[str]:
        """The addresses to connect to (the fetcher): the hosting file, else DNS asked now
        (not the cache: a re-check must see a name that no longer resolves)."""
        return self._addresses(host, cached=False)[0]

    def _addresses(self, host: str, cached: bool) -> tuple[list[str], str, datetime]:
        """(addresses, where from, when looked up)."""
        host = host.lower().rstrip(".")
        literal = _literal(host)
        if literal is not None:
            return [literal], "literal", self.clock.now()
        if host in self.directory.hosts:
            return list(self.directory.hosts[host]), "hosting_file", self.clock.now()
        key = f"dns:{host}"
        if cached and self.cache is not None:
            hit = self.cache.get(key)
            if hit is not None:
                return list(hit.value["addresses"]), "dns", hit.looked_up_at
        try:
            addrs = [ipaddress.ip_address(a).compressed for a in self.dns.resolve(host)]
        except LookupError:
            raise
        except (OSError, ValueError) as exc:
            raise UnknownHost(f"host name {host} does not resolve ({exc})") from exc
        if not addrs:
            raise UnknownHost(f"host name {host} has no address")
        at = self.clock.now()
        if cached and self.cache is not None:
            self.cache.put(key, {"addresses": addrs}, "dns", self.ttl_seconds, at)
        return addrs, "dns", at

    # ------------------------------------------------------------------ facts

    def facts(self, host: str) -> HostingFacts:
        """Who hosts ``host``, with provenance. Never raises for a look-up that fails: the
        facts then say why (``reason``), and routing puts the item before an analyst."""
        host = host.lower().rstrip(".").strip("[]")
        try:
            addrs, addr_source, at = self._addresses(host, cached=True)
        except LookupError as exc:
            return HostingFacts(host=host, source="unknown", looked_up_at=self.clock.now(), reason=str(exc))
        facts = self._attribute(host, addrs, addr_source, at)
        if facts.cdn is not None:
            facts = self._through_cdn(host, facts)
        if facts.source != "rdap" and "RDAP" in (facts.reason or ""):
            return facts  # the registry just failed us (or is off): no second wait for the registrar
        return self._with_registrar(host, facts)

    def _attribute(self, host: str, addrs: list[str], addr_source: str, at: datetime) -> HostingFacts:
        base: dict[str, Any] = {"host": host, "addresses": addrs, "address_source": addr_source}
        for ip in addrs:
            found = self.directory.network_for(ip)
            if found is not None:
                net, entry = found
                return HostingFacts(
                    **base, ip=ip, prefix=str(net), network=entry.name, country=entry.country.upper(),
                    asn=entry.asn, hoster=entry.hoster, abuse=entry.abuse, upstream_abuse=entry.upstream,
                    cdn=entry.hoster if entry.cdn else None, cdn_abuse=entry.abuse if entry.cdn else None,
                    source="hosting_file", looked_up_at=at,
                )
        ip = addrs[0]
        unattributed = "dns" if addr_source == "dns" else "unknown"
        if self.rdap is None:
            return HostingFacts(**base, ip=ip, source=unattributed, looked_up_at=at,
                                reason=f"{HOSTER_UNKNOWN}: no network in the hosting file covers {ip} (RDAP is off)")
        try:
            net_facts, rdap_at = self._rdap_ip(ip)
        except RdapFailure as failure:
            return HostingFacts(**base, ip=ip, source=unattributed, looked_up_at=self.clock.now(),
                                reason=f"{HOSTER_UNKNOWN}: {failure.reason} for {ip}")
        return HostingFacts(
            **base, ip=ip, prefix=net_facts.prefix, network=net_facts.name, country=net_facts.country,
            asn=net_facts.asn, hoster=net_facts.hoster, abuse=net_facts.abuse,
            upstream_abuse=net_facts.upstream_abuse, source="rdap", looked_up_at=rdap_at,
            reason=None if net_facts.abuse else f"{NO_ABUSE_IN_RDAP} for {net_facts.prefix or ip}",
        )

    def _through_cdn(self, host: str, cdn: HostingFacts) -> HostingFacts:
        """Behind a CDN: the origin's hoster when the file names the origin (the CDN gets a
        copy), else the CDN itself, which forwards to its customer's hoster."""
        origin_addrs = self.directory.origins.get(host)
        if not origin_addrs:
            return cdn.model_copy(update={"reason": (
                f"behind the CDN {cdn.cdn}; no origin is known for {host}: the notice goes to the CDN, "
                "which forwards it to its customer's hoster")})
        origin = self._attribute(host, origin_addrs, "hosting_file", self.clock.now())
        if origin.cdn is not None or not origin.abuse:
            why = origin.reason or "its hoster is itself a CDN"
            return cdn.model_copy(update={"reason": (
                f"behind the CDN {cdn.cdn}; the origin {origin_addrs[0]} named for {host} could not be "
                f"attributed ({why}): the notice goes to the CDN")})
        return origin.model_copy(update={
            "addresses": cdn.addresses, "cdn": cdn.cdn, "cdn_abuse": cdn.cdn_abuse,
            "reason": (f"behind the CDN {cdn.cdn} ({cdn.ip}); origin {origin.ip} named in the hosting file: "
                       f"the notice goes to the origin's hoster, a copy to the CDN"),
        })

    def _with_registrar(self, host: str, facts: HostingFacts) -> HostingFacts:
        if self.rdap is None or _literal(host) is not None or "." not in host:
            return facts
        try:
            domain = self._rdap_domain(host)
        except RdapFailure:
            return facts  # the registrar is for the ladder; the attribution stands without it
        if domain is None:
            return facts
        return facts.model_copy(update={"registrar": domain.registrar, "registrar_abuse": domain.registrar_abuse})

    # ------------------------------------------------------------------ RDAP, cached

    def _ask_rdap(self, call: Any, *args: str) -> Any:
        """One RDAP request, unless the registry is in back-off after an outage."""
        with self._rdap_lock:
            down = self._rdap_down
        if down is not None and time.monotonic() < down[0]:
            raise RdapFailure(f"{down[1]} a moment ago (RDAP not asked again for {self.rdap_backoff_seconds:g} s)", outage=True)
        try:
            return call(*args)
        except RdapFailure as failure:
            if failure.outage and self.rdap_backoff_seconds > 0:
                with self._rdap_lock:
                    self._rdap_down = (time.monotonic() + self.rdap_backoff_seconds, failure.reason)
            raise

    def _rdap_ip(self, ip: str) -> tuple[NetworkFacts, datetime]:
        assert self.rdap is not None
        key = f"rdap-ip:{ip}"
        if self.cache is not None:
            hit = self.cache.get(key)
            if hit is not None:
                return NetworkFacts.from_json(hit.value), hit.looked_up_at
        facts: NetworkFacts = self._ask_rdap(self.rdap.ip, ip)
        at = self.clock.now()
        if self.cache is not None:
            self.cache.put(key, facts.to_json(), "rdap", self.ttl_seconds, at)
        return facts, at

    def _rdap_domain(self, host: str) -> DomainFacts | None:
        assert self.rdap is not None
        key = f"rdap-domain:{host}"
        if self.cache is not None:
            hit = self.cache.get(key)
            if hit is not None:
                return DomainFacts.from_json(hit.value) if hit.value else None
        domain: DomainFacts | None = self._ask_rdap(self.rdap.domain, host)
        if self.cache is not None:
            self.cache.put(key, domain.to_json() if domain else {}, "rdap", self.ttl_seconds)
        return domain
