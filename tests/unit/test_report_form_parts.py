"""The public form's parts that need no server: the message catalogue and language choice,
the rate limiter's arithmetic, and how a reporter's address is sealed and kept."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from hotline.storage.memory import MemoryUnitOfWork
from hotline.storage.reporter_address import (
    MAX_ADDRESS_BYTES,
    PREFIX,
    ReporterKeyInvalid,
    ReporterSeal,
    is_sealed,
    keep_address,
    new_key,
)
from schemas.reports import ReportSubmitted
from services.ingest import i18n
from services.ingest.ratelimit import RateLimiter, client_key
from services.ingest.stage import IngestStage

INGEST = Path(__file__).resolve().parents[2] / "services" / "ingest"

# --------------------------------------------------------------------------- catalogue


def test_every_message_exists_in_both_languages_with_the_same_placeholders() -> None:
    for key, forms in i18n.MESSAGES.items():
        assert set(forms) == set(i18n.LANGUAGES), key
        assert all(forms[lang].strip() for lang in i18n.LANGUAGES), key
        assert i18n.placeholders(forms["en"]) == i18n.placeholders(forms["nl"]), key
        assert forms["en"] != forms["nl"] or key == "url.other", key


def test_every_url_rejection_code_has_a_sentence_naming_the_url() -> None:
    source = "".join(p.read_text() for p in (INGEST / "urls.py", INGEST / "hosts.py"))
    codes = set(re.findall(r'UrlRejected\(\s*"([a-z_]+)"', source))
    assert {"unsupported_scheme", "not_on_internet", "invalid_onion", "url_too_long"} <= codes
    for code in codes - {"not_a_string", "empty_url"}:  # the form never sends those
        assert f"url.{code}" in i18n.MESSAGES, code
        for lang in i18n.LANGUAGES:
            sentence = i18n.url_problem(lang, code, "http://x.test/a", "x.test", max_length=2048)
            assert sentence.startswith("http://x.test/a: "), (code, lang)
    assert i18n.url_problem("nl", "something_new", "http://x.test/").startswith("http://x.test/: ")


def test_the_scheme_is_named_in_both_languages() -> None:
    assert i18n.url_problem("en", "unsupported_scheme", "ftp://f.test/x").endswith("not ftp:")
    assert i18n.url_problem("nl", "unsupported_scheme", "FTP://f.test/x").endswith("geen ftp:")


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        ("nl", "nl"), ("nl-BE", "nl"), ("NL-nl", "nl"), ("en-US,en;q=0.9", "en"),
        ("de;q=1, nl;q=0.2, en;q=0.1", "nl"), ("en;q=0.5, nl;q=0.6", "nl"), ("nl;q=0.5, en;q=0.5", "nl"),
        ("nl;q=0, *", "en"), ("nl;q=abc, en;q=0.1", "en"), ("", "en"), (None, "en"), ("fr", "en"),
        (",,;q=;", "en"),
    ],
)
def test_negotiate(header: str | None, expected: str) -> None:
    assert i18n.negotiate(header) == expected


def test_an_explicit_choice_wins_over_cookie_and_browser() -> None:
    assert i18n.negotiate("fr", default="nl") == "nl"
    assert i18n.choose("nl", None, "en", "en") == "nl"
    assert i18n.choose(None, "nl", "en", "en") == "nl"
    assert i18n.choose(None, None, "nl", "en") == "nl"
    assert i18n.choose("xx", "", "yy", "nl") == "nl"  # nonsense is ignored, not an error


# --------------------------------------------------------------------------- rate limit


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_a_burst_then_429_then_refill() -> None:
    clock = Clock()
    limiter = RateLimiter(6, clock=clock)  # one per 10 s, bursts of 6
    assert all(limiter.check("192.0.2.1").allowed for _ in range(6))
    refused = limiter.check("192.0.2.1")
    assert not refused.allowed and refused.retry_after_seconds == 10
    assert limiter.check("192.0.2.2").allowed  # another client has its own bucket
    clock.now = 4
    assert limiter.check("192.0.2.1").retry_after_seconds == 6
    clock.now = 10
    assert limiter.check("192.0.2.1").allowed and not limiter.check("192.0.2.1").allowed
    clock.now = 1000  # refills to the burst, never beyond
    assert sum(limiter.check("192.0.2.1").allowed for _ in range(10)) == 6


def test_zero_switches_it_off() -> None:
    limiter = RateLimiter(0)
    assert all(limiter.check("192.0.2.1").allowed for _ in range(1000))


def test_ipv6_counts_per_64() -> None:
    assert client_key("2001:db8:1:2:aaaa::1") == client_key("2001:db8:1:2:bbbb::2") == "2001:db8:1:2::/64"
    assert client_key("2001:db8:1:3::1") != client_key("2001:db8:1:2::1")
    assert client_key("::ffff:192.0.2.7") == "192.0.2.7"
    assert client_key("192.0.2.7") == "192.0.2.7" and client_key(None) == "-"


def test_memory_stays_bounded_under_a_spray_of_addresses() -> None:
    clock = Clock()
    limiter = RateLimiter(5, clock=clock, max_clients=100)
    for i in range(1000):
        limiter.check(f"10.0.{i // 250}.{i % 250}")
    assert limiter.tracked <= 101


# --------------------------------------------------------------------------- the reporter's address


def test_seal_and_open() -> None:
    seal = ReporterSeal(new_key())
    sealed = seal.seal("  Ann@Example.test ")
    assert sealed.startswith(PREFIX) and "ann" not in sealed.lower() and is_sealed(sealed)
    assert seal.open(sealed) == "Ann@Example.test"
    assert seal.seal("ann@example.test") != seal.seal("ann@example.test")  # random nonce: unlinkable
    with pytest.raises(ValueError, match="another key"):
        ReporterSeal(new_key()).open(sealed)
    with pytest.raises(ValueError):
        seal.open(sealed[:-4] + ("AAAA" if not sealed.endswith("AAAA") else "BBBB"))


def test_the_longest_address_fits_the_column() -> None:
    seal = ReporterSeal(new_key())
    longest = "é" * ((MAX_ADDRESS_BYTES - 7) // 2) + "@a.test"
    assert len(longest.encode()) <= MAX_ADDRESS_BYTES
    assert len(seal.seal(longest)) <= 320
    assert len(seal.seal("x" * (MAX_ADDRESS_BYTES - 7) + "@a.test")) <= 320
    with pytest.raises(ValueError):
        seal.seal("x" * MAX_ADDRESS_BYTES + "@a.test")


@pytest.mark.parametrize("key", ["", "short", "!!!not base64!!!", new_key()[:-4]])
def test_a_bad_key_is_refused(key: str) -> None:
    with pytest.raises(ReporterKeyInvalid):
        ReporterSeal(key)


def test_keep_address() -> None:
    seal = ReporterSeal(new_key())
    assert keep_address(None, "a@b.test") is None  # no key: not kept
    assert keep_address(seal, None) is None and keep_address(seal, "  ") is None
    assert keep_address(seal, "x" * 300 + "@b.test") is None  # too long to keep
    sealed = keep_address(seal, "a@b.test")
    assert sealed and seal.open(sealed) == "a@b.test" and keep_address(None, sealed) == sealed


def test_storage_never_keeps_a_clear_address() -> None:
    uow = MemoryUnitOfWork()
    report = uow.reports.create(ReportSubmitted(urls=["http://example.com/"], reporter_email="a@b.test"))
    assert report.reporter_email is None


def test_ingest_seals_a_clear_address_a_producer_put_on_the_topic() -> None:
    seal = ReporterSeal(new_key())
    uow = MemoryUnitOfWork()
    msg = ReportSubmitted(urls=["http://example.com/"], reporter_email="producer@b.test")
    IngestStage(reporter_seal=seal).handle("reports.submitted", msg, uow)
    kept = uow.reports.get(msg.report_id)
    assert kept is not None and is_sealed(kept.reporter_email)
    assert seal.open(kept.reporter_email or "") == "producer@b.test"
    unkeyed = MemoryUnitOfWork()
    IngestStage().handle("reports.submitted", msg, unkeyed)
    assert unkeyed.reports.get(msg.report_id).reporter_email is None  # type: ignore[union-attr]
