"""normalize_url: the same resource reported twice must become one item, and nothing else may.

Every expected value here is written out by hand from RFC 3986 and the module's promise
("only removes differences that cannot change what a server returns").
"""

from __future__ import annotations

import pytest

from services.ingest.urls import MAX_URL_LENGTH, UrlRejected, normalize_url


def norm(raw: str) -> str:
    return normalize_url(raw).url


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        # case of scheme and host goes, case of the path stays (servers may be case-sensitive)
        ("HTTP://Example.COM/Path/File.JPG", "http://example.com/Path/File.JPG"),
        ("HtTpS://WWW.EXAMPLE.ORG/", "https://www.example.org/"),
        # default ports
        ("http://example.com:80/a", "http://example.com/a"),
        ("https://example.com:443/a", "https://example.com/a"),
        # a port that is not the scheme's default is kept, including 443 on http
        ("http://example.com:8080/a", "http://example.com:8080/a"),
        ("http://example.com:443/a", "http://example.com:443/a"),
        ("https://example.com:80/a", "https://example.com:80/a"),
        # fragments never reach the server
        ("http://example.com/a.jpg#top", "http://example.com/a.jpg"),
        ("http://example.com/a?x=1#frag", "http://example.com/a?x=1"),
        # empty path is "/"
        ("http://example.com", "http://example.com/"),
        # trailing dot of a fully qualified name
        ("http://example.com./x", "http://example.com/x"),
        # query strings keep their order and content
        ("http://example.com/p?b=2&a=1", "http://example.com/p?b=2&a=1"),
        # percent-escapes of unreserved characters are decoded, others upper-cased
        ("http://example.com/%7Euser/%61bc", "http://example.com/~user/abc"),
        ("http://example.com/a%3fb", "http://example.com/a%3Fb"),
        # characters that must be escaped are escaped (UTF-8)
        ("http://example.com/caf\u00e9 au lait", "http://example.com/caf%C3%A9%20au%20lait"),
    ],
)
def test_normalizes(raw: str, expected: str) -> None:
    assert norm(raw) == expected


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("http://example.com/a/./b/../c", "http://example.com/a/c"),
        ("http://example.com/a/b/../../..", "http://example.com/"),
        ("http://example.com/../../etc", "http://example.com/etc"),
        ("http://example.com/a/b/..", "http://example.com/a/"),
        ("http://example.com/a/.", "http://example.com/a/"),
        ("http://example.com/dir/", "http://example.com/dir/"),
        # escaped dots are dots (unreserved), so they are dot segments too
        ("http://example.com/a/%2e%2E/b", "http://example.com/b"),
    ],
)
def test_dot_segments(raw: str, expected: str) -> None:
    assert norm(raw) == expected


@pytest.mark.parametrize(
    ("a", "b"),
    [
        # An escaped slash is data, not a separator: /a%2Fb is a different resource from /a/b.
        ("http://example.com/a%2Fb", "http://example.com/a/b"),
        # Empty path segments are significant to many servers.
        ("http://example.com/a//b", "http://example.com/a/b"),
        # Query differs -> different resource.
        ("http://example.com/p?a=1&b=2", "http://example.com/p?b=2&a=1"),
        # Path case differs -> different resource.
        ("http://example.com/A.jpg", "http://example.com/a.jpg"),
        # Different port -> different server.
        ("http://example.com:8080/", "http://example.com/"),
        # Different scheme.
        ("https://example.com/", "http://example.com/"),
    ],
)
def test_distinct_resources_stay_distinct(a: str, b: str) -> None:
    assert norm(a) != norm(b)


def test_escapes_are_not_reinterpreted() -> None:
    # What is fetched is the normalized URL: it must name the resource that was reported.
    assert norm("http://example.com/a%2Fb") == "http://example.com/a%2Fb"
    assert norm("http://example.com/a//b") == "http://example.com/a//b"
    # An escape that is not UTF-8 stays exactly that byte (no U+FFFD substitution).
    assert norm("http://example.com/%ff.jpg") == "http://example.com/%FF.jpg"
    # A lone percent sign is escaped rather than left as a broken escape.
    assert norm("http://example.com/100%") == "http://example.com/100%25"


def test_spellings_of_one_resource_agree() -> None:
    spellings = [
        "http://IMAGES.Hoster-A.test:80/img/./known1.jpg#top",
        "images.hoster-a.test/img/known1.jpg",
        "http://images.hoster-a.test/img/sub/../known1.jpg",
        "  http://images.hoster-a.test/img/known1.jpg  ",
        "http://images.hoster-a.test./img/%6Bnown1.jpg",
    ]
    assert {norm(s) for s in spellings} == {"http://images.hoster-a.test/img/known1.jpg"}


def test_idn_host_is_punycode() -> None:
    n = normalize_url("http://B\u00fccher.example/x")
    assert n.host == "xn--bcher-kva.example"
    assert n.url == "http://xn--bcher-kva.example/x"
    # the punycode spelling is the same item
    assert norm("http://xn--bcher-kva.example/x") == n.url


def test_ipv4_literal() -> None:
    n = normalize_url("http://192.0.2.7:8080/x")
    assert (n.url, n.host) == ("http://192.0.2.7:8080/x", "192.0.2.7")


@pytest.mark.parametrize(
    ("raw", "url", "host"),
    [
        ("http://[2001:DB8::1]/x", "http://[2001:db8::1]/x", "2001:db8::1"),
        ("http://[2001:db8:0:0:0:0:0:1]:8080/", "http://[2001:db8::1]:8080/", "2001:db8::1"),
        ("https://[::1]:443/", "https://[::1]/", "::1"),
    ],
)
def test_ipv6_literal(raw: str, url: str, host: str) -> None:
    n = normalize_url(raw)
    assert (n.url, n.host) == (url, host)


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("example.com/page", "http://example.com/page"),
        ("www.example.com", "http://www.example.com/"),
        ("example.com:8080/page", "http://example.com:8080/page"),
        ("192.0.2.1/a", "http://192.0.2.1/a"),
    ],
)
def test_missing_scheme_means_http(raw: str, expected: str) -> None:
    assert norm(raw) == expected


def test_credentials_are_not_kept() -> None:
    assert norm("http://user:secret@example.com/a") == "http://example.com/a"


@pytest.mark.parametrize(
    ("raw", "code"),
    [
        ("ftp://files.example.com/x.jpg", "unsupported_scheme"),
        ("mailto:abuse@example.com", "unsupported_scheme"),
        ("javascript:alert(1)", "unsupported_scheme"),
        ("file:///etc/passwd", "unsupported_scheme"),
        ("", "empty_url"),
        ("   \t ", "empty_url"),
        ("http://example.com/" + "a" * MAX_URL_LENGTH, "url_too_long"),
        ("http://example.com/a\nb", "invalid_characters"),
        ("http://example.com/a\x00b", "invalid_characters"),
        ("http://exam\x7fple.com/", "invalid_characters"),
        ("http://example.com:99999/", "invalid_port"),
        ("http://example.com:http/", "invalid_port"),
        ("http://exa mple.com/", "invalid_host"),
        ("http://-bad.example.com/", "invalid_host"),
        ("http://under_score.example.com/", "invalid_host"),
        ("http://" + "a" * 64 + ".example.com/", "invalid_host"),
        ("http:///path-only", "missing_host"),
    ],
)
def test_rejections_have_codes(raw: str, code: str) -> None:
    with pytest.raises(UrlRejected) as info:
        normalize_url(raw)
    assert info.value.code == code
    assert info.value.reason  # words for people, not empty
    assert str(info.value) == info.value.reason


def test_length_limit_is_exact() -> None:
    base = "http://example.com/"
    ok = base + "a" * (MAX_URL_LENGTH - len(base))
    assert len(ok) == MAX_URL_LENGTH
    assert norm(ok) == ok
    with pytest.raises(UrlRejected) as info:
        normalize_url(ok + "a")
    assert info.value.code == "url_too_long"


def test_not_a_string() -> None:
    with pytest.raises(UrlRejected) as info:
        normalize_url(None)  # type: ignore[arg-type]
    assert info.value.code == "not_a_string"


def test_idempotent() -> None:
    for raw in [
        "HTTP://Example.COM:80/a/./b/../c%7e?q=1#f",
        "http://[2001:DB8::1]:8080/x y",
        "http://b\u00fccher.example/%ff/a%2Fb//c",
        "example.com",
    ]:
        once = norm(raw)
        assert norm(once) == once


@pytest.mark.parametrize(
    ("raw", "url", "host"),
    [
        # A backslash ends the authority for a browser: this is port 9999 of 127.0.0.1, with
        # "@evil.test/x" in the path, not evil.test (what urlsplit would fetch).
        ("http://127.0.0.1:9999\\@evil.test/x", "http://127.0.0.1:9999/@evil.test/x", "127.0.0.1"),
        ("http://evil.test\\x", "http://evil.test/x", "evil.test"),
        # Numeric host spellings browsers accept are the address they mean.
        ("http://2130706433/", "http://127.0.0.1/", "127.0.0.1"),
        ("http://0x7f.1/", "http://127.0.0.1/", "127.0.0.1"),
        # An escape that is not UTF-8 is kept byte for byte, never turned into U+FFFD.
        ("http://a.example.com/%FF%FE", "http://a.example.com/%FF%FE", "a.example.com"),
    ],
)
def test_parsed_as_a_browser_parses_it(raw: str, url: str, host: str) -> None:
    n = normalize_url(raw)
    assert (n.url, n.host) == (url, host)
