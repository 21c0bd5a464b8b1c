"""The compiled X-ARF check (``services.notify.xarf_fast``) only ever says yes where the
``xarf`` package says yes: for a valid notice report and for each of many one-field changes to
it, a yes from ``surely_valid`` means ``xarf.parse`` finds no error or warning. Anything else
goes to the package, so ``validate`` keeps the package's verdict and messages."""

from __future__ import annotations

import copy
import json
from typing import Any

import pytest
import xarf

from services.notify.xarf_fast import surely_valid
from services.notify.xarf_report import XarfReportInvalid, build_report, validate
from tests.unit.stagekit import SENDER, notice_for


def report() -> dict[str, Any]:
    built: dict[str, Any] = json.loads(json.dumps(build_report(notice_for("i1"), SENDER, "Test hotline")))
    return built


def package_accepts(data: dict[str, Any]) -> bool:
    result = xarf.parse(copy.deepcopy(data))
    return not result.errors and not result.warnings and result.report is not None


def changed(path: str, value: Any) -> dict[str, Any]:
    data = report()
    *parents, last = path.split(".")
    node: Any = data
    for key in parents:
        node = node[int(key)] if isinstance(node, list) else node[key]
    if value is _DELETE:
        del node[last]
    elif isinstance(node, list):
        node[int(last)] = value
    else:
        node[last] = value
    return data


_DELETE = object()

CHANGES: list[tuple[str, Any]] = [
    ("country_code", "Netherlands"), ("country_code", "nl"), ("country_code", "NL\n"),
    ("url", "not a url"), ("url", "http://x y"), ("url", "ftp://img.hoster-a.test/a.jpg"), ("url", ""),
    ("domain", "Img.Hoster-A.test"), ("domain", "img.hoster-a.test\n"), ("domain", "localhost"),
    ("source_identifier", ""), ("source_identifier", 3), ("source_port", 0), ("source_port", 70000),
    ("source_port", "443"), ("asn", -3), ("asn", "64501"), ("classification", "C1"),
    ("classification", _DELETE), ("detection_method", "guess"), ("media_type", "sound"),
    ("report_id", "not-a-uuid"), ("report_id", "00000000-0000-0000-0000-00000000000g"),
    ("timestamp", "yesterday"), ("timestamp", "2026-02-30T10:00:00Z"), ("timestamp", "2026-01-01T10:00:00"),
    ("verified_at", "2026-13-01T00:00:00Z"), ("xarf_version", "3.0.0"), ("xarf_version", "4.0"),
    ("category", "messaging"), ("type", "spam"), ("type", _DELETE), ("category", _DELETE),
    ("reporter.contact", "not an e-mail"), ("reporter.contact", "a@"), ("reporter.domain", "b"),
    ("reporter.org", ""), ("sender", _DELETE), ("sender.extra", "x"), ("reporter", "Test hotline"),
    ("hash_values.md5", "not-a-hash"), ("hash_values.sha256", "0" * 63), ("hash_values.sha1", "G" * 40),
    ("hash_values.pdq", 7), ("hash_values", {}), ("evidence", []), ("evidence", [{}]),
    ("evidence.0.content_type", "image/jpeg"), ("evidence.0.payload", 5), ("evidence.0.hash", "md5:xyz"),
    ("evidence.0.unexpected", True), ("tags", ["Not A Tag"]), ("tags", "category:baseline"),
    ("tags", ["category:baseline", "category:baseline"]), ("description", "x" * 5000),
    ("content_removed", "no"), ("dns_records", {"a": ["999.1.1.1"]}), ("dns_records", {"aaaa": ["::g"]}),
    ("dns_records", {"mx": ["mx.hoster-a.test"]}), ("whois", {"registrar_abuse_contact": "nobody"}),
    ("registrar", 5), ("hosting_provider", ""), ("unknown_field", "x"), ("_internal", {"note": "x"}),
    ("verification_method", "looked"), ("confidence", 2), ("confidence", 0.5),
]


def test_a_valid_report_is_a_fast_yes() -> None:
    data = report()
    assert surely_valid(data) and package_accepts(data)


@pytest.mark.parametrize(("path", "value"), CHANGES, ids=[f"{p}={v!r}"[:60] for p, v in CHANGES])
def test_a_fast_yes_is_the_packages_yes(path: str, value: Any) -> None:
    data = changed(path, value)
    if surely_valid(data):
        assert package_accepts(data)


def test_validate_keeps_the_packages_verdict_and_message() -> None:
    with pytest.raises(XarfReportInvalid, match=r"X-ARF report for r1 does not validate: country_code: 'Netherlands'"):
        validate(changed("country_code", "Netherlands"), "r1")
    # Python's re lets a pattern's $ match before a final newline and the package accepts
    # this; the compiled check does not: the package decides, as it did before.
    lenient = changed("country_code", "NL\n")
    assert not surely_valid(lenient) and package_accepts(lenient)
    validate(lenient, "r2")
