"""Intake refuses names that cannot be on the internet (the architecture's contract), and the
URL normalizer's promises hold for any input (property-based, with hypothesis)."""

from __future__ import annotations

import ipaddress
import string

import pytest
from hypothesis import HealthCheck, assume, example, given, settings
from hypothesis import strategies as st

from services.ingest.hosts import HostKind, accept_url, host_kind
from services.ingest.urls import UrlRejected, normalize_url

ONION = "a" * 20 + "234567" * 6  # 56 base32 characters
OPERATOR = frozenset({"images.hoster-a.test", "nas"})


@pytest.mark.parametrize(
    ("url", "kind"),
    [
        ("http://example.com/a.jpg", HostKind.PUBLIC),
        ("https://a.b.co.uk/", HostKind.PUBLIC),
        ("http://me.github.io/x", HostKind.PUBLIC),
        ("http://B\u00fccher.de/", HostKind.PUBLIC),  # IDN, to punycode
        ("http://192.0.2.7/", HostKind.IP),
        ("http://[2001:db8::1]/", HostKind.IP),
        ("http://2130706433/", HostKind.IP),  # how a browser reads it: 127.0.0.1
        (f"http://{ONION}.onion/", HostKind.ONION),
        (f"http://www.{ONION}.onion/x", HostKind.ONION),
        ("http://images.hoster-a.test/k.jpg", HostKind.OPERATOR),
        ("http://nas/share", HostKind.OPERATOR),  # the operator vouches for it
    ],
)
def test_accepted_hosts(url: str, kind: HostKind) -> None:
    assert accept_url(url, OPERATOR)[1] is kind


@pytest.mark.parametrize(
    ("url", "code"),
    [
        ("http://intranet/", "not_on_internet"),
        ("http://nas/", "not_on_internet"),  # without the operator's file
        ("http://printer.local/", "not_on_internet"),
        ("http://box.lan/", "not_on_internet"),
        ("http://x.internal/", "not_on_internet"),
        ("http://router.home.arpa/", "not_on_internet"),
        ("http://1.2.0.192.in-addr.arpa/", "not_on_internet"),
        ("http://notaurl/", "not_on_internet"),
        ("http://localhost/", "not_on_internet"),
        ("http://a.localhost/", "not_on_internet"),
        ("http://com/", "not_on_internet"),  # a bare suffix is not a host
        ("http://site.test/", "not_on_internet"),
        ("http://expyuzz4wqqyqhjn.onion/", "invalid_onion"),  # version 2: gone since 2021
        ("http://short.onion/", "invalid_onion"),
    ],
)
def test_refused_hosts_say_why(url: str, code: str) -> None:
    with pytest.raises(UrlRejected) as info:
        accept_url(url, frozenset() if "nas" in url else OPERATOR - {"nas"})
    assert info.value.code == code
    assert normalize_url(url).host in info.value.reason


def test_idn_keeps_one_item_for_both_spellings() -> None:
    assert normalize_url("http://B\u00fccher.de/x").url == normalize_url("http://xn--bcher-kva.de/x").url


# ------------------------------------------------------------------ properties

_label = st.text(alphabet=string.ascii_lowercase + string.digits, min_size=1, max_size=12)
_public_host = st.builds(lambda a, b, tld: f"{a}.{b}.{tld}", _label, _label,
                         st.sampled_from(["com", "nl", "de", "co.uk", "org", "io"]))
_path_char = st.sampled_from(list(string.ascii_letters + string.digits + "-._~!$&'()*+,;=:@/%? #[]\u00e9\u4e2d"))
_path = st.text(alphabet=_path_char, max_size=40)
_any_text = st.text(max_size=80)


@settings(max_examples=400, suppress_health_check=[HealthCheck.too_slow], deadline=None)
@given(st.one_of(_any_text, st.builds(lambda h, p: f"http://{h}/{p}", _public_host, _path)))
@example("http://[::ffff:127.0.0.1]/%2e%2E/a")
@example("HTTP://Example.COM:80/a/./b/../c%7e?q=1#f")
def test_normalize_never_crashes_and_is_idempotent(raw: str) -> None:
    try:
        norm = normalize_url(raw)
    except UrlRejected as err:
        assert err.code and err.reason  # a refusal always says why
        return
    assert normalize_url(norm.url) == norm  # idempotent: the key of an item is a fixed point
    assert normalize_url(norm.url).host == norm.host


@settings(max_examples=300, deadline=None)
@example("0.0.com", " ", "http", False, True)
@given(_public_host, _path, st.sampled_from(["http", "HTTP", "hTTp"]), st.booleans(), st.booleans())
def test_equivalent_spellings_map_to_one_key(host: str, path: str, scheme: str, port: bool, fragment: bool) -> None:
    assume(path == path.strip())  # surrounding blanks are trimmed from a whole URL only
    try:
        base = normalize_url(f"http://{host}/{path}")
    except UrlRejected:
        return
    spelling = f"{scheme}://{host.upper()}{':80' if port else ''}/{path}{'#frag' if fragment else ''}"
    assume("#" not in path)  # a '#' in the path starts the fragment in both spellings
    assert normalize_url(spelling).url == base.url


@settings(max_examples=300, deadline=None)
@given(_public_host, st.text(alphabet=string.ascii_letters + string.digits + "-_", min_size=1, max_size=20),
       st.text(alphabet=string.ascii_letters + string.digits + "-_", min_size=1, max_size=20))
def test_different_resources_do_not_collide(host: str, a: str, b: str) -> None:
    assume(a != b)
    # Different paths, different query strings, different ports, different schemes.
    pairs = [
        (f"http://{host}/{a}", f"http://{host}/{b}"),
        (f"http://{host}/p?{a}", f"http://{host}/p?{b}"),
        (f"http://{host}/{a}", f"https://{host}/{a}"),
        (f"http://{host}/{a}", f"http://{host}:8080/{a}"),
        (f"http://{host}/{a}/{b}", f"http://{host}/{a}%2F{b}"),
    ]
    for x, y in pairs:
        assert normalize_url(x).url != normalize_url(y).url, (x, y)


@settings(max_examples=500, deadline=None)
@given(st.one_of(_any_text, st.builds(lambda h, p: f"http://{h}/{p}", st.one_of(_label, _public_host), _path)))
@example("http://intranet/")
@example(f"http://{ONION}.onion/")
def test_no_accepted_host_is_outside_the_four_kinds(raw: str) -> None:
    try:
        norm, kind = accept_url(raw, OPERATOR)
    except UrlRejected:
        return
    host = norm.host
    if kind is HostKind.IP:
        ipaddress.ip_address(host)
    elif kind is HostKind.ONION:
        assert host.endswith(".onion") and len(host.split(".")[-2]) == 56
    elif kind is HostKind.OPERATOR:
        assert host in OPERATOR
    else:
        assert kind is HostKind.PUBLIC and "." in host
        with pytest.raises(ValueError):
            ipaddress.ip_address(host)
    assert host_kind(host, OPERATOR) is kind
