"""Where is a URL hosted? The operator's hosting file first, then DNS.

``HOTLINE_HOSTING_FILE`` (YAML, see the architecture's contract) maps host
names to addresses (used instead of DNS) and address ranges to country, ASN,
hoster and abuse contact. The most specific range wins. This is also how
tests and the demo resolve hosting offline.
"""

from __future__ import annotations

import ipaddress
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import yaml
from pydantic import BaseModel, ConfigDict, Field

from schemas.facts import HostingFacts

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


class NetworkEntry(BaseModel):
    model_config = ConfigDict(extra="forbid")

    range: str
    country: str = Field(min_length=2, max_length=2)
    asn: int | None = None
    hoster: str
    abuse: str | None = None


class HostingFile(BaseModel):
    model_config = ConfigDict(extra="forbid")

    hosts: dict[str, list[str]] = {}
    networks: list[NetworkEntry] = []


class Resolver(Protocol):
    def resolve(self, host: str) -> list[str]: ...


class SystemResolver:
    """Plain DNS via the operating system."""

    def resolve(self, host: str) -> list[str]:
        infos = socket.getaddrinfo(host, None, proto=socket.IPPROTO_TCP)
        seen: list[str] = []
        for info in infos:
            addr = str(info[4][0])
            if addr not in seen:
                seen.append(addr)
        return seen


class UnknownHost(LookupError):
    pass


@dataclass
class HostingDirectory:
    hosts: dict[str, list[str]]
    networks: list[tuple[IPNetwork, NetworkEntry]]

    @classmethod
    def empty(cls) -> HostingDirectory:
        return cls({}, [])

    @classmethod
    def from_file(cls, path: Path | str | None) -> HostingDirectory:
        if path is None:
            return cls.empty()
        data = HostingFile.model_validate(yaml.safe_load(Path(path).read_text()) or {})
        nets = [(ipaddress.ip_network(n.range, strict=False), n) for n in data.networks]
        nets.sort(key=lambda pair: pair[0].prefixlen, reverse=True)
        for addrs in data.hosts.values():
            for a in addrs:
                ipaddress.ip_address(a)  # fail loudly at start on a typo
        return cls({h.lower().rstrip("."): a for h, a in data.hosts.items()}, nets)

    def network_for(self, ip: str) -> NetworkEntry | None:
        addr = ipaddress.ip_address(ip)
        for net, entry in self.networks:
            if addr.version == net.version and addr in net:
                return entry
        return None


class HostingResolver:
    """Resolves names (hosting file, then DNS) and tells who hosts an address."""

    def __init__(self, directory: HostingDirectory, dns: Resolver | None = None) -> None:
        self.directory = directory
        self.dns = dns or SystemResolver()

    def addresses(self, host: str) -> list[str]:
        host = host.lower().rstrip(".")
        try:
            return [ipaddress.ip_address(host).compressed]
        except ValueError:
            pass
        if host in self.directory.hosts:
            return list(self.directory.hosts[host])
        try:
            return self.dns.resolve(host)
        except OSError as exc:
            raise UnknownHost(f"host name {host} does not resolve ({exc})") from exc

    def facts(self, host: str) -> HostingFacts:
        try:
            addrs = self.addresses(host)
        except UnknownHost:
            return HostingFacts(host=host, source="unknown")
        source = "hosting_file" if host.lower() in self.directory.hosts else "dns"
        for ip in addrs:
            entry = self.directory.network_for(ip)
            if entry is not None:
                return HostingFacts(
                    host=host,
                    ip=ip,
                    country=entry.country.upper(),
                    asn=entry.asn,
                    hoster=entry.hoster,
                    abuse=entry.abuse,
                    source="hosting_file",
                )
        return HostingFacts(host=host, ip=addrs[0] if addrs else None, source=source)
