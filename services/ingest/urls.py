"""Validate and normalize reported URLs, so the same resource reported twice is one item.

Pure functions, no I/O. The URL is parsed as a browser parses it (the WHATWG URL
standard, through ``ada-url``): what a reporter saw in the address bar is what the
hotline fetches, and the host spellings browsers accept (IDN, ``0x7f.1``,
``2130706433``) become the one host they mean. On top of that, normalization is
conservative: it only removes differences that cannot change what a server returns
(case of scheme and host, default ports, fragments, dot segments, escapes of
unreserved characters); query strings keep their order because some sites route on it.
"""

from __future__ import annotations

import ipaddress
import re
import string
from dataclasses import dataclass
from functools import lru_cache
from urllib.parse import SplitResult, quote, urlsplit, urlunsplit

import ada_url

MAX_URL_LENGTH = 2048
_DEFAULT_PORTS = {"http": 80, "https": 443}
_HOST_LABEL = re.compile(r"^(?!-)[a-z0-9-]{1,63}(?<!-)$")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_UNRESERVED = frozenset(string.ascii_letters + string.digits + "-._~")
_ESCAPE = re.compile(r"%([0-9A-Fa-f]{2})")
_STRAY_PERCENT = re.compile(r"%(?![0-9A-Fa-f]{2})")


class UrlRejected(ValueError):
    """A URL that cannot be processed; ``code`` is machine-readable, the message is for people."""

    def __init__(self, code: str, reason: str) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason


@dataclass(frozen=True)
class NormalizedUrl:
    url: str
    host: str  # ASCII: an IDN is in punycode; an IP literal in its compressed form, no brackets


def may_be_ip(host: str) -> bool:
    """False for a host that cannot be an IP literal (no ``:`` for IPv6, not starting with a
    digit for IPv4): those skip ``ipaddress``, which costs more than the rest of a normalization."""
    return bool(host) and (host[0].isdigit() or host[0] == "[" or ":" in host)


def _normalize_host(host: str) -> str:
    host = host.strip().rstrip(".").lower()
    if not host:
        raise UrlRejected("missing_host", "the URL has no host name")
    if may_be_ip(host):
        try:
            return ipaddress.ip_address(host.strip("[]")).compressed  # IP literal
        except ValueError:
            pass
    try:
        ascii_host = host.encode("idna").decode("ascii")
    except UnicodeError as exc:
        raise UrlRejected("invalid_host", f"host name {host!r} is not a valid domain name") from exc
    labels = ascii_host.split(".")
    if not all(_HOST_LABEL.match(label) for label in labels):
        raise UrlRejected("invalid_host", f"host name {host!r} is not a valid domain name")
    return ascii_host


def _normalize_escapes(path: str) -> str:
    """RFC 3986 6.2.2.1-2: decode escapes of unreserved characters only, upper-case the rest.

    Decoding everything would turn ``%2F`` into a path separator (or an invalid UTF-8 escape
    into U+FFFD) and so name, and fetch, a different resource than the one reported.
    """

    def fix(m: re.Match[str]) -> str:
        ch = chr(int(m.group(1), 16))
        return ch if ch in _UNRESERVED else "%" + m.group(1).upper()

    path = _STRAY_PERCENT.sub("%25", _ESCAPE.sub(fix, path))
    return quote(path, safe="/:@!$&'()*+,;=-._~%")


def _remove_dot_segments(path: str) -> str:
    """RFC 3986 5.2.4 for an absolute path; empty segments (``//``) are kept, they are data."""
    segments = path.split("/")[1:]
    out: list[str] = []
    for i, seg in enumerate(segments):
        last = i == len(segments) - 1
        if seg in (".", ".."):
            if seg == ".." and out:
                out.pop()
            if last:
                out.append("")
        else:
            out.append(seg)
    return "/" + "/".join(out)


def _why_not_a_url(raw: str, parts: SplitResult) -> UrlRejected:
    """The most specific reason a URL the WHATWG parser refused cannot be processed."""
    if " " in parts.netloc:
        return UrlRejected("invalid_host", "the host part contains spaces")
    try:
        parts.port  # noqa: B018 - raises on a port that is not a number in range
    except ValueError:
        return UrlRejected("invalid_port", "the port is not a number between 0 and 65535")
    return UrlRejected("invalid_host", f"{raw.strip()!r} is not a URL a browser could open")


def normalize_url(raw: str) -> NormalizedUrl:
    """Return the canonical form of a reported URL, or raise ``UrlRejected`` saying why not."""
    if not isinstance(raw, str):
        raise UrlRejected("not_a_string", "a URL must be a string")
    return _normalize_cached(raw)


# One report's URL is normalized twice on its way in (the request model's validator, then the
# host check) and again by ingest; each parse is several calls into ada-url, each releasing the
# GIL, which the busy stage threads of the embedded runtime are quick to take. A small cache
# makes the repeats free (pure function; a refused URL raises and is not cached).
@lru_cache(maxsize=1024)
def _normalize_cached(raw: str) -> NormalizedUrl:
    if not isinstance(raw, str):
        raise UrlRejected("not_a_string", "a URL must be a string")
    text = raw.strip()
    if not text:
        raise UrlRejected("empty_url", "the URL is empty")
    if len(text) > MAX_URL_LENGTH:
        raise UrlRejected("url_too_long", f"the URL is longer than {MAX_URL_LENGTH} characters")
    if _CONTROL.search(text):
        raise UrlRejected("invalid_characters", "the URL contains control characters")
    if "://" not in text:
        if re.match(r"^[a-zA-Z][a-zA-Z0-9+.-]*:", text) and not re.match(r"^[^:/]+:\d", text):
            scheme = text.split(":", 1)[0].lower()
            raise UrlRejected("unsupported_scheme", f"only http and https URLs can be processed, not {scheme}:")
        text = "http://" + text  # reporters often paste "example.com/page"
    try:
        parts = urlsplit(text)
    except ValueError as exc:  # "Invalid IPv6 URL": an unbalanced "[" (found by hypothesis)
        raise UrlRejected("invalid_host", f"{raw.strip()!r} is not a URL: {exc}") from exc
    scheme = parts.scheme.lower()
    if scheme not in _DEFAULT_PORTS:
        raise UrlRejected("unsupported_scheme", f"only http and https URLs can be processed, not {scheme}:")
    if not (parts.hostname or "").strip().rstrip("."):
        raise UrlRejected("missing_host", "the URL has no host name")
    try:
        parsed = ada_url.URL(text)
    except ValueError as exc:
        raise _why_not_a_url(raw, parts) from exc
    host = _normalize_host(parsed.hostname)
    netloc = f"[{host}]" if ":" in host else host
    # The port as a browser reads it: "http://127.0.0.1:9999\\@evil.test/" is port 9999 of
    # 127.0.0.1 (a backslash ends the authority), where urlsplit sees evil.test.
    port = int(parsed.port) if parsed.port else None
    if port is not None and port != _DEFAULT_PORTS[scheme]:
        netloc = f"{netloc}:{port}"
    # Re-quote consistently (unreserved characters unescaped), then resolve dot segments.
    path = _remove_dot_segments(_normalize_escapes(parsed.pathname or "/"))
    url = urlunsplit((scheme, netloc, path, parsed.search.removeprefix("?"), ""))
    return NormalizedUrl(url=url, host=host)
