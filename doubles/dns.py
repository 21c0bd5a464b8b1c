"""A loopback DNS server for the tests and the demo (dnspython's wire format on a UDP socket):
answers A and AAAA queries from ``records`` (name -> addresses, IPv4 and IPv6), NXDOMAIN for
names it does not know, an empty answer for a type a known name has no record of. Point the
resolver at it (``DnsResolver([(server.host, server.port)])`` or
``HOTLINE_DNS_SERVERS=127.0.0.1:<port>``): no query leaves the machine. ``queries`` lists
every (name, type) asked, so tests see what was served from the cache."""

from __future__ import annotations

import ipaddress
import socket
import threading
from typing import Self

import dns.message
import dns.rcode
import dns.rdatatype
import dns.rrset


class DnsServer:
    def __init__(self, host: str = "127.0.0.1", ttl: int = 300) -> None:
        if not ipaddress.ip_address(host).is_loopback:
            raise ValueError(f"{host} is not a loopback address")
        self.records: dict[str, list[str]] = {}
        self.queries: list[tuple[str, str]] = []
        self.ttl = ttl
        self._lock = threading.Lock()
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self.sock = socket.socket(family, socket.SOCK_DGRAM)
        self.sock.bind((host, 0))
        self.sock.settimeout(0.2)
        self.host, self.port = host, int(self.sock.getsockname()[1])
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)

    def add(self, name: str, *addresses: str) -> None:
        with self._lock:
            self.records.setdefault(name.lower().rstrip("."), []).extend(addresses)

    def start(self) -> Self:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self.sock.close()

    def asked(self, name: str) -> list[str]:
        """The types asked for ``name`` so far, in order."""
        with self._lock:
            return [t for n, t in self.queries if n == name]

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                wire, peer = self.sock.recvfrom(4096)
            except TimeoutError:
                continue
            except OSError:
                return
            try:
                answer = self._answer(dns.message.from_wire(wire))
            except Exception:  # noqa: BLE001 - a garbled query is dropped, as servers do
                continue
            try:
                self.sock.sendto(answer.to_wire(), peer)
            except OSError:
                return

    def _answer(self, query: dns.message.Message) -> dns.message.Message:
        response = dns.message.make_response(query)
        question = query.question[0]
        name = question.name.to_text(omit_final_dot=True).lower()
        rdtype = dns.rdatatype.to_text(question.rdtype)
        with self._lock:
            self.queries.append((name, rdtype))
            addrs = self.records.get(name)
        if addrs is None:
            response.set_rcode(dns.rcode.NXDOMAIN)
            return response
        version = {"A": 4, "AAAA": 6}.get(rdtype)
        matching = [a for a in addrs if version and ipaddress.ip_address(a).version == version]
        if matching:
            response.answer.append(dns.rrset.from_text(question.name, self.ttl, "IN", rdtype, *matching))
        return response
