"""A small RDAP client (RFC 7480 HTTP, RFC 9083 JSON): who holds an address, and who is the
registrar of a domain. Hand-written on httpx because the RDAP library on PyPI (``ipwhois``)
cannot be pointed at a given server: it finds the registry through Team Cymru's DNS service
and then calls the five RIRs' hard-coded URLs, and it has no domain look-ups (the ladder needs
the registrar). Here the base URL is a setting (``HOTLINE_RDAP_URL``): a registry's RDAP base,
a bootstrap redirector such as ``https://rdap.org`` (redirects are followed, a few hops), or
the tests' loopback server (``doubles.rdap.RdapServer``).

Every failure is a :class:`RdapFailure` whose ``reason`` is what an analyst reads on the item
("RDAP timed out", "RDAP error 500"); a network without an ``abuse`` entity is no failure, its
facts just have no ``abuse`` (the resolver records "no abuse contact in RDAP").
"""

from __future__ import annotations

import ipaddress
from dataclasses import asdict, dataclass
from typing import Any
from urllib.parse import quote, urljoin, urlsplit

import httpx

MAX_PARENT_LABELS = 6  # images.cdn.example.co.uk: at most this many names tried for a domain


class RdapFailure(Exception):
    """``outage``: the registry did not answer properly (timeout, 5xx, unreachable), as opposed
    to an answer that says there is nothing (no such network)."""

    def __init__(self, reason: str, outage: bool = False) -> None:
        super().__init__(reason)
        self.reason = reason
        self.outage = outage


@dataclass(frozen=True)
class NetworkFacts:
    """What an RDAP ``ip network`` object says about an address."""

    prefix: str | None = None
    name: str | None = None
    handle: str | None = None
    country: str | None = None
    asn: int | None = None
    hoster: str | None = None
    abuse: str | None = None
    upstream_abuse: str | None = None

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, value: dict[str, Any]) -> NetworkFacts:
        return cls(**{k: value.get(k) for k in cls.__dataclass_fields__})


@dataclass(frozen=True)
class DomainFacts:
    """What an RDAP ``domain`` object says: the registered name and its registrar."""

    name: str | None = None
    registrar: str | None = None
    registrar_abuse: str | None = None

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, value: dict[str, Any]) -> DomainFacts:
        return cls(**{k: value.get(k) for k in cls.__dataclass_fields__})


# ---------------------------------------------------------------- RFC 9083 parsing (pure)

def vcard_value(entity: dict[str, Any], prop: str) -> str | None:
    """The first ``prop`` (``fn``, ``email``) of an entity's jCard (RFC 7095)."""
    card = entity.get("vcardArray")
    if not (isinstance(card, list) and len(card) == 2 and isinstance(card[1], list)):
        return None
    for entry in card[1]:
        if isinstance(entry, list) and len(entry) >= 4 and entry[0] == prop and isinstance(entry[3], str):
            return entry[3].strip() or None
    return None


def find_entity(obj: dict[str, Any], role: str) -> dict[str, Any] | None:
    """The first entity with ``role``, depth first (registries nest the abuse entity inside
    the registrant's or the registrar's)."""
    for entity in obj.get("entities") or []:
        if not isinstance(entity, dict):
            continue
        if role in (entity.get("roles") or []):
            return entity
        nested = find_entity(entity, role)
        if nested is not None:
            return nested
    return None


def abuse_email(obj: dict[str, Any]) -> str | None:
    entity = find_entity(obj, "abuse")
    return vcard_value(entity, "email") if entity else None


def _prefix(obj: dict[str, Any]) -> str | None:
    for cidr in obj.get("cidr0_cidrs") or []:  # the cidr0 extension, as the RIRs send it
        base = cidr.get("v4prefix") or cidr.get("v6prefix")
        if base and cidr.get("length") is not None:
            return str(ipaddress.ip_network(f"{base}/{cidr['length']}", strict=False))
    start, end = obj.get("startAddress"), obj.get("endAddress")
    if start and end:
        nets = list(ipaddress.summarize_address_range(ipaddress.ip_address(start), ipaddress.ip_address(end)))
        if nets:
            return str(nets[0]) if len(nets) == 1 else f"{start} - {end}"
    return None


def _asn(obj: dict[str, Any]) -> int | None:
    for key in ("arin_originas0_originautnums", "originAutnums"):
        values = obj.get(key)
        if isinstance(values, list) and values:
            try:
                return int(values[0])
            except (TypeError, ValueError):
                return None
    return None


def parse_network(obj: dict[str, Any]) -> NetworkFacts:
    """An ``ip network`` object (RFC 9083 section 5.4) as facts; raises if it is none."""
    if obj.get("objectClassName") != "ip network":
        raise RdapFailure(f"RDAP answered a {obj.get('objectClassName')!r} object, not an ip network")
    registrant = find_entity(obj, "registrant")
    country = obj.get("country")
    return NetworkFacts(
        prefix=_prefix(obj),
        name=obj.get("name"),
        handle=obj.get("handle"),
        country=country.upper() if isinstance(country, str) and len(country) == 2 else None,
        asn=_asn(obj),
        hoster=(vcard_value(registrant, "fn") if registrant else None) or obj.get("name"),
        abuse=abuse_email(obj),
    )


def parse_domain(obj: dict[str, Any]) -> DomainFacts:
    """A ``domain`` object (RFC 9083 section 5.3): its registrar and the registrar's abuse
    contact (the ICANN RDAP profile nests it in the registrar entity)."""
    if obj.get("objectClassName") != "domain":
        raise RdapFailure(f"RDAP answered a {obj.get('objectClassName')!r} object, not a domain")
    registrar = find_entity(obj, "registrar")
    return DomainFacts(
        name=(obj.get("ldhName") or "").lower() or None,
        registrar=vcard_value(registrar, "fn") if registrar else None,
        registrar_abuse=abuse_email(registrar) if registrar else None,
    )


def up_link(obj: dict[str, Any]) -> str | None:
    """The parent network (``links`` with ``rel: up``, as registries link it)."""
    for link in obj.get("links") or []:
        if isinstance(link, dict) and link.get("rel") == "up" and isinstance(link.get("href"), str):
            return str(link["href"])
    return None


# ---------------------------------------------------------------- the client

class RdapClient:
    """Look-ups against one RDAP base URL, each bounded by ``timeout_seconds``."""

    def __init__(self, base_url: str, timeout_seconds: float = 5.0,
                 transport: httpx.BaseTransport | None = None) -> None:
        self.base_url = base_url.rstrip("/") + "/"
        self.origin = urlsplit(self.base_url)[:2]
        self.client = httpx.Client(
            timeout=timeout_seconds, follow_redirects=True, max_redirects=3, transport=transport,
            headers={"Accept": "application/rdap+json, application/json"},
        )

    def close(self) -> None:
        self.client.close()

    def ip(self, address: str) -> NetworkFacts:
        """The network holding ``address`` (IPv4 or IPv6), with the parent network's abuse
        contact as ``upstream_abuse`` when the registry links it."""
        addr = ipaddress.ip_address(address).compressed
        obj = self._get(f"ip/{quote(addr, safe=':.')}")
        if obj is None:
            raise RdapFailure(f"RDAP has no network for {addr}")
        facts = parse_network(obj)
        upstream = self._upstream(obj, facts.abuse)
        return NetworkFacts(**{**facts.to_json(), "upstream_abuse": upstream})

    def domain(self, host: str) -> DomainFacts | None:
        """The registration of ``host`` or the nearest name above it that is registered (a
        registry answers 404 for names that are not: ``images.example.nl`` -> ``example.nl``);
        None when no name up to the top-level domain is."""
        labels = host.lower().rstrip(".").split(".")
        for i in range(min(len(labels) - 1, MAX_PARENT_LABELS)):
            name = ".".join(labels[i:])
            obj = self._get(f"domain/{quote(name)}")
            if obj is not None:
                return parse_domain(obj)
        return None

    def _upstream(self, obj: dict[str, Any], own_abuse: str | None) -> str | None:
        href = up_link(obj)
        if href is None:
            return None
        url = urljoin(self.base_url, href)
        if urlsplit(url)[:2] != self.origin:  # only the configured registry: no look-up elsewhere
            return None
        try:
            parent = self._get_url(url)
        except RdapFailure:
            return None  # the upstream is a nice-to-have for the ladder, not worth failing for
        found = abuse_email(parent) if parent else None
        return found if found and found != own_abuse else None

    def _get(self, path: str) -> dict[str, Any] | None:
        return self._get_url(self.base_url + path)

    def _get_url(self, url: str) -> dict[str, Any] | None:
        """The JSON object at ``url``; None for 404 (no such object); raises :class:`RdapFailure`."""
        try:
            response = self.client.get(url)
        except httpx.TimeoutException as exc:
            raise RdapFailure("RDAP timed out", outage=True) from exc
        except httpx.HTTPError as exc:
            raise RdapFailure(f"RDAP unreachable ({type(exc).__name__})", outage=True) from exc
        if response.status_code == 404:
            return None
        if response.status_code >= 500:
            raise RdapFailure(f"RDAP error {response.status_code}", outage=True)
        if response.status_code != 200:
            raise RdapFailure(f"RDAP answered HTTP {response.status_code}")
        try:
            body = response.json()
        except ValueError as exc:
            raise RdapFailure("RDAP answer is not JSON") from exc
        if not isinstance(body, dict):
            raise RdapFailure("RDAP answer is not an RDAP object")
        return body
