"""Can a host be on the internet? Intake refuses names that cannot (the architecture's contract).

A host is accepted when it is

- an IP literal (the fetcher decides later whether the address is public);
- a Tor hidden service: a v3 ``.onion`` name (56 base32 characters; v2 names are gone
  from the Tor network since 2021 and are refused as such);
- a name in the operator's ``HOTLINE_HOSTING_FILE`` (how tests and demos name hosts under
  ``.test``, and how an operator vouches for a name);
- a name under a public suffix of the Public Suffix List (the ``publicsuffixlist``
  package's bundled snapshot, never downloaded at run time), with at least one label of
  its own: ``example.com``, ``a.co.uk``, ``me.github.io``.

Everything else (``intranet``, ``nas``, ``printer.local``, ``x.internal``, ``router.home.arpa``)
cannot be reached from the internet, so nothing there can be noticed: the reporter learns so
at once instead of the item failing at DNS time.

Why the PSL and not "has a dot": ``printer.local``, ``box.lan`` and ``x.internal`` have dots;
only a list of the suffixes under which the public can register names tells them apart, and
the PSL is the list browsers use. Special-use names that the PSL lists for other reasons
(``home.arpa``, reverse-DNS zones under ``arpa``) are refused explicitly.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Collection
from enum import StrEnum
from functools import lru_cache

from publicsuffixlist import PublicSuffixList

from services.ingest.urls import NormalizedUrl, UrlRejected, may_be_ip, normalize_url

_ONION_V3 = re.compile(r"^[a-z2-7]{56}$")
_ONION_V2 = re.compile(r"^[a-z2-7]{16}$")
# Under a public suffix in the PSL, but special-use: never a host on the public internet.
_SPECIAL_USE = ("arpa",)


class HostKind(StrEnum):
    IP = "ip"
    ONION = "onion"
    OPERATOR = "hosting_file"
    PUBLIC = "public_suffix"


@lru_cache(maxsize=1)
def _psl() -> PublicSuffixList:
    # accept_unknown=False: a name whose top-level label is not in the list has no suffix,
    # instead of the list's implicit "*" rule making every last label a suffix.
    return PublicSuffixList(accept_unknown=False)


def is_onion(host: str) -> bool:
    return host == "onion" or host.endswith(".onion")


def host_kind(host: str, operator_hosts: Collection[str] = ()) -> HostKind:
    """Why ``host`` (as ``normalize_url`` returns it: lower case, punycode, no trailing dot)
    can be on the internet; raises ``UrlRejected`` (code ``not_on_internet``, or
    ``invalid_onion``) saying why it cannot."""
    if may_be_ip(host):
        try:
            ipaddress.ip_address(host)
            return HostKind.IP
        except ValueError:
            pass
    if is_onion(host):
        service = host.split(".")[-2] if host.count(".") >= 1 else ""
        if _ONION_V3.match(service):
            return HostKind.ONION
        if _ONION_V2.match(service):
            raise UrlRejected(
                "invalid_onion",
                f"{host} is a version 2 onion address; the Tor network stopped serving those in 2021",
            )
        raise UrlRejected("invalid_onion", f"{host} is not a valid Tor onion address (56 base32 characters)")
    if host in operator_hosts:
        return HostKind.OPERATOR
    if "." in host and host.rsplit(".", 1)[-1] not in _SPECIAL_USE and _psl().publicsuffix(host) is not None:
        return HostKind.PUBLIC
    raise UrlRejected(
        "not_on_internet",
        f"the host {host} cannot be on the internet: it is not an IP address, a .onion name or a "
        "name under a public domain suffix (local network names such as 'intranet' or "
        "'printer.local' cannot be reported)",
    )


def accept_url(raw: str, operator_hosts: Collection[str] = ()) -> tuple[NormalizedUrl, HostKind]:
    """What intake does with every reported URL: normalize it and check that its host can be
    on the internet. Raises ``UrlRejected`` with the code and the reason in words."""
    norm = normalize_url(raw)
    return norm, host_kind(norm.host, operator_hosts)
