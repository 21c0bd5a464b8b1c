"""A loopback RDAP server (RFC 7480/9083) for the tests and the demo: answers
``/ip/<address>`` with the most specific registered ``ip network`` object and
``/domain/<name>`` with a registered ``domain`` object, as real registries do (entities with
roles and jCard ``vcardArray``s, the abuse entity nested in the registrant's, the ``cidr0``
extension, a ``links`` entry with ``rel: up`` to the parent network), 404 otherwise.

``mode`` plays a registry having a bad day: ``slow`` (answers after ``delay`` seconds, beyond
the client's timeout), ``error`` (HTTP 500), ``no_abuse`` (every object without its abuse
entity). ``requests`` lists every path asked, so tests see what was served from the cache.
"""

from __future__ import annotations

import ipaddress
import json
import threading
from typing import Any, Literal
from urllib.parse import unquote

from doubles.loopback import _HttpStandIn, _Quiet

Mode = Literal["normal", "slow", "error", "no_abuse"]


def vcard(fn: str, email: str | None = None, kind: str = "org") -> list[Any]:
    props: list[list[Any]] = [["version", {}, "text", "4.0"], ["fn", {}, "text", fn], ["kind", {}, "text", kind]]
    if email:
        props.append(["email", {}, "text", email])
    return ["vcard", props]


def ip_network(
    prefix: str, *, name: str, hoster: str, country: str, abuse: str | None,
    asn: int | None = None, parent: str | None = None, handle: str | None = None,
) -> dict[str, Any]:
    """An RFC 9083 ``ip network`` object for ``prefix`` (IPv4 or IPv6)."""
    net = ipaddress.ip_network(prefix, strict=False)
    v = "v4" if net.version == 4 else "v6"
    registrant: dict[str, Any] = {
        "objectClassName": "entity", "handle": f"ORG-{name}", "roles": ["registrant"], "vcardArray": vcard(hoster),
    }
    if abuse:
        registrant["entities"] = [{
            "objectClassName": "entity", "handle": f"ABUSE-{name}", "roles": ["abuse"],
            "vcardArray": vcard(f"{hoster} abuse desk", abuse, kind="group"),
        }]
    obj: dict[str, Any] = {
        "rdapConformance": ["rdap_level_0", "cidr0"],
        "objectClassName": "ip network",
        "handle": handle or f"NET-{name}",
        "startAddress": str(net.network_address),
        "endAddress": str(net.broadcast_address),
        "ipVersion": v,
        "name": name,
        "type": "ASSIGNED PA",
        "country": country,
        "cidr0_cidrs": [{f"{v}prefix": str(net.network_address), "length": net.prefixlen}],
        "entities": [registrant],
        "status": ["active"],
        "links": [{"value": f"/ip/{net}", "rel": "self", "href": f"/ip/{net}", "type": "application/rdap+json"}],
    }
    if asn is not None:
        obj["arin_originas0_originautnums"] = [asn]
    if parent is not None:
        obj["parentHandle"] = f"NET-PARENT-{parent}"
        obj["links"].append({"value": f"/ip/{parent}", "rel": "up", "href": f"/ip/{parent}",
                             "type": "application/rdap+json"})
    return obj


def domain(name: str, *, registrar: str, registrar_abuse: str | None) -> dict[str, Any]:
    """An RFC 9083 ``domain`` object with its registrar (abuse entity nested, ICANN profile)."""
    entity: dict[str, Any] = {"objectClassName": "entity", "handle": "1", "roles": ["registrar"],
                              "vcardArray": vcard(registrar)}
    if registrar_abuse:
        entity["entities"] = [{"objectClassName": "entity", "roles": ["abuse"],
                               "vcardArray": vcard("Abuse contact", registrar_abuse, kind="group")}]
    return {"rdapConformance": ["rdap_level_0", "icann_rdap_response_profile_0"],
            "objectClassName": "domain", "handle": f"D-{name}", "ldhName": name,
            "status": ["active"], "entities": [entity]}


def _strip_abuse(obj: Any) -> Any:
    if isinstance(obj, dict):
        out = {k: _strip_abuse(v) for k, v in obj.items()}
        if "entities" in out:
            out["entities"] = [e for e in out["entities"] if "abuse" not in (e.get("roles") or [])]
        return out
    if isinstance(obj, list):
        return [_strip_abuse(v) for v in obj]
    return obj


class RdapServer(_HttpStandIn):
    def __init__(self, host: str = "127.0.0.1", mode: Mode = "normal", delay: float = 3.0) -> None:
        self.networks: list[tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, dict[str, Any]]] = []
        self.domains: dict[str, dict[str, Any]] = {}
        self.mode: Mode = mode
        self.delay = delay
        self.requests: list[str] = []
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        server = self

        class Handler(_Quiet):
            def do_GET(self) -> None:  # noqa: N802
                path = unquote(self.path.split("?", 1)[0])
                with server._lock:
                    server.requests.append(path)
                    mode = server.mode
                if mode == "slow":
                    server._stopping.wait(server.delay)
                if mode == "error":
                    self._answer(500, {"errorCode": 500, "title": "Internal Server Error"})
                    return
                obj = server.lookup(path)
                if obj is None:
                    self._answer(404, {"errorCode": 404, "title": "Not Found"})
                    return
                self._answer(200, _strip_abuse(obj) if mode == "no_abuse" else obj)

            def _answer(self, status: int, body: dict[str, Any]) -> None:
                data = json.dumps(body).encode()
                try:
                    self.send_response(status)
                    self.send_header("Content-Type", "application/rdap+json")
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client gave up (the slow mode)

        self._bind(host, 0, Handler)
        shown = f"[{self.host}]" if ":" in self.host else self.host
        self.url = f"http://{shown}:{self.port}/"

    def add_network(self, obj: dict[str, Any]) -> None:
        net = ipaddress.ip_network(f"{obj['startAddress']}/{obj['cidr0_cidrs'][0]['length']}", strict=False)
        with self._lock:
            self.networks.append((net, obj))
            self.networks.sort(key=lambda pair: pair[0].prefixlen, reverse=True)

    def add_domain(self, obj: dict[str, Any]) -> None:
        with self._lock:
            self.domains[obj["ldhName"].lower()] = obj

    def lookup(self, path: str) -> dict[str, Any] | None:
        kind, _, value = path.lstrip("/").partition("/")
        with self._lock:
            if kind == "ip":
                try:
                    target = ipaddress.ip_network(value, strict=False)
                except ValueError:
                    return None
                for net, obj in self.networks:
                    if net.version == target.version and target.subnet_of(net):  # type: ignore[arg-type]
                        return obj
                return None
            if kind == "domain":
                return self.domains.get(value.lower().rstrip("."))
        return None

    def paths(self, prefix: str = "") -> list[str]:
        with self._lock:
            return [p for p in self.requests if p.startswith(prefix)]

    def stop(self) -> None:
        self._stopping.set()
        super().stop()
