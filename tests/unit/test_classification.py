"""The classification rules and the ICCAM and X-ARF mappings, one table per field: every
combination that matters, each expected value written out."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from schemas.facts import BankMatch, HostingFacts, ImageClassification, ImageFacts
from schemas.notices import TakedownNotice
from services.assessment.classification import (
    ClassificationInvalid,
    category_of,
    check,
    problems,
    resolve,
    verdict_of,
    xarf_classification,
)
from services.notify.xarf_report import build_report, reported_images, validate

SHA_A, SHA_B, SHA_C = "a" * 64, "b" * 64, "c" * 64


def c(classification: str, **fields: Any) -> ImageClassification:
    return ImageClassification(classification=classification, **fields)  # type: ignore[arg-type]


def fields_of(found: list[tuple[str, str]]) -> list[str]:
    return [f for f, _ in found]


# -- classification × age group ----------------------------------------------------------------

@pytest.mark.parametrize(("classification", "age_group", "errors"), [
    ("baseline", "infant", []),
    ("baseline", "pre_pubescent", []),
    ("baseline", "pubescent", ["age_group"]),
    ("baseline", "not_determined", ["age_group"]),
    ("baseline", None, ["age_group"]),
    ("national", "infant", []),
    ("national", "pre_pubescent", []),
    ("national", "pubescent", []),
    ("national", "not_determined", []),
    ("national", None, []),
    ("doubtful", "pubescent", []),
    ("doubtful", "not_determined", []),
    ("doubtful", None, []),
    ("not_illegal", None, []),
    ("not_illegal", "pubescent", ["age_group"]),
    ("not_illegal", "not_determined", ["age_group"]),
])
def test_age_group_rules(classification: str, age_group: str | None, errors: list[str]) -> None:
    act = "sexual_activity" if classification in ("baseline", "national") else None
    assert fields_of(problems(c(classification, age_group=age_group, act=act))) == errors


# -- classification × act ------------------------------------------------------------------------

@pytest.mark.parametrize(("classification", "act", "errors"), [
    ("baseline", "sexual_activity", []),
    ("baseline", "lascivious_exhibition", []),
    ("baseline", None, ["act"]),
    ("national", "sexual_activity", []),
    ("national", "lascivious_exhibition", []),
    ("national", None, ["act"]),
    ("doubtful", "sexual_activity", []),
    ("doubtful", None, []),
    ("not_illegal", None, []),
    ("not_illegal", "lascivious_exhibition", ["act"]),
    ("not_illegal", "sexual_activity", ["act"]),
])
def test_act_rules(classification: str, act: str | None, errors: list[str]) -> None:
    age = "infant" if classification in ("baseline", "national") else None
    assert fields_of(problems(c(classification, age_group=age, act=act))) == errors


# -- classification × gender ---------------------------------------------------------------------

@pytest.mark.parametrize(("classification", "gender", "errors"), [
    ("baseline", "female", []),
    ("baseline", "male", []),
    ("baseline", "both", []),
    ("baseline", "not_determined", []),
    ("baseline", None, []),
    ("national", "both", []),
    ("doubtful", "male", []),
    ("not_illegal", None, []),
    ("not_illegal", "female", ["gender"]),
    ("not_illegal", "not_determined", ["gender"]),
])
def test_gender_rules(classification: str, gender: str | None, errors: list[str]) -> None:
    illegal = classification in ("baseline", "national")
    found = problems(c(classification, gender=gender, age_group="infant" if illegal else None,
                       act="sexual_activity" if illegal else None))
    assert fields_of(found) == errors


# -- flags -------------------------------------------------------------------------------------

@pytest.mark.parametrize(("classification", "flag", "errors"), [
    ("baseline", "virtual", ["virtual"]),
    ("baseline", "child_modelling", []),
    ("baseline", "user_generated", []),
    ("national", "virtual", []),
    ("national", "child_modelling", []),
    ("national", "user_generated", []),
    ("doubtful", "virtual", []),
    ("not_illegal", "virtual", []),
    ("not_illegal", "child_modelling", []),
    ("not_illegal", "user_generated", []),
])
def test_flag_rules(classification: str, flag: str, errors: list[str]) -> None:
    illegal = classification in ("baseline", "national")
    found = problems(c(classification, age_group="pre_pubescent" if illegal else None,
                       act="lascivious_exhibition" if illegal else None, **{flag: True}))
    assert fields_of(found) == errors


# -- site type and commerciality: any value with any classification --------------------------

@pytest.mark.parametrize(("field", "value", "accepted"), [
    ("site_type", "image_host", True),
    ("site_type", "forum", True),
    ("site_type", "social_network", True),
    ("site_type", "other", True),
    ("site_type", "darknet", False),
    ("commerciality", "commercial", True),
    ("commerciality", "non_commercial", True),
    ("commerciality", "unknown", True),
    ("commerciality", "paid", False),
    ("gender", "unknown", False),  # ICCAM's "not determined" is spelled not_determined here
    ("age_group", "teen", False),
    ("classification", "illegal", False),
])
def test_field_values(field: str, value: str, accepted: bool) -> None:
    base: dict[str, Any] = {"classification": "not_illegal"}
    if field == "classification":
        base = {}
    if field == "gender" or field == "age_group":
        base = {"classification": "national", "act": "sexual_activity"}
    if accepted:
        ImageClassification(**base, **{field: value})
    else:
        with pytest.raises(ValidationError):
            ImageClassification(**base, **{field: value})


# -- the X-ARF mapping ------------------------------------------------------------------------

@pytest.mark.parametrize(("classification", "age_group", "act", "xarf"), [
    ("baseline", "infant", "sexual_activity", "baseline"),
    ("baseline", "pre_pubescent", "sexual_activity", "baseline"),
    ("baseline", "pre_pubescent", "lascivious_exhibition", "baseline"),
    ("national", "infant", "sexual_activity", "A1"),
    ("national", "pre_pubescent", "sexual_activity", "A1"),
    ("national", "infant", "lascivious_exhibition", "A2"),
    ("national", "pre_pubescent", "lascivious_exhibition", "A2"),
    ("national", "pubescent", "sexual_activity", "B1"),
    ("national", "pubescent", "lascivious_exhibition", "B2"),
    ("national", "not_determined", "sexual_activity", "B1"),
    ("national", "not_determined", "lascivious_exhibition", "B2"),
    ("national", None, "sexual_activity", "B1"),
    ("national", None, "lascivious_exhibition", "B2"),
    ("doubtful", "pubescent", "sexual_activity", None),
    ("doubtful", None, None, None),
    ("not_illegal", None, None, None),
])
def test_xarf_mapping(classification: str, age_group: str | None, act: str | None, xarf: str | None) -> None:
    checked = check(c(classification, age_group=age_group, act=act))
    assert xarf_classification(checked) == xarf
    assert checked.xarf == xarf


def test_xarf_values_are_the_schema_enum() -> None:
    """The codes this module produces are exactly the csam schema's enum shipped with xarf."""
    import json
    from pathlib import Path

    import xarf

    schema = json.loads((Path(xarf.__file__).parent / "schemas/types/content-csam.json").read_text())
    enum = schema["allOf"][1]["properties"]["classification"]["enum"]
    from services.assessment.classification import XARF_CODES, XARF_VALUES

    assert list(XARF_VALUES) == enum
    assert set(XARF_CODES.values()) | {"baseline"} == set(enum)


# -- the item's verdict and category ----------------------------------------------------------

@pytest.mark.parametrize(("kinds", "verdict", "category"), [
    (["baseline"], "illegal", "baseline"),
    (["national"], "illegal", "national"),
    (["national", "baseline"], "illegal", "baseline"),
    (["not_illegal", "national"], "illegal", "national"),
    (["doubtful", "baseline"], "illegal", "baseline"),
    (["not_illegal"], "not_illegal", None),
    (["not_illegal", "not_illegal"], "not_illegal", None),
    (["doubtful"], "doubtful", None),
    (["doubtful", "not_illegal"], "doubtful", None),
])
def test_verdict_of_the_images(kinds: list[str], verdict: str, category: str | None) -> None:
    images = [c(k, age_group="infant" if k in ("baseline", "national") else None,
                act="sexual_activity" if k in ("baseline", "national") else None) for k in kinds]
    assert verdict_of(images) == verdict
    assert category_of(images) == category


# -- resolving decisions against the item's images --------------------------------------------

def images() -> list[ImageFacts]:
    return [ImageFacts(url="http://x.test/a.jpg", sha256=SHA_A),
            ImageFacts(url="http://x.test/b.jpg", sha256=SHA_B),
            ImageFacts(url="http://x.test/c.jpg", error="timeout"),
            ImageFacts(url="http://x.test/known.jpg", sha256=SHA_C,
                       match=BankMatch(entry_id=1, signal="sha256", distance=0, category="baseline", source="t"))]


BASE = {"classification": "baseline", "age_group": "infant", "act": "sexual_activity"}


def test_resolve_by_sha256_and_url() -> None:
    decided = resolve(images(), [{"sha256": SHA_A, **BASE},
                                 {"url": "http://x.test/b.jpg", "classification": "not_illegal"}])
    assert decided.verdict == "illegal" and decided.category == "baseline"
    assert [i.assessment.xarf if i.assessment else None for i in decided.images] == ["baseline", None, None, None]
    assert decided.images[1].assessment is not None and decided.images[1].assessment.classification == "not_illegal"


def test_the_same_image_twice_on_a_page_is_decided_once() -> None:
    twice = [ImageFacts(url="http://x.test/a.jpg", sha256=SHA_A), ImageFacts(url="http://x.test/a2.jpg", sha256=SHA_A)]
    decided = resolve(twice, [{"sha256": SHA_A, **BASE}])
    assert [i.assessment.classification for i in decided.images if i.assessment] == ["baseline", "baseline"]


@pytest.mark.parametrize(("decisions", "messages"), [
    ([{"sha256": SHA_A, **BASE}], ["image 2 (sha256 bbbbbbbbbbbb…) has no decision"]),
    ([{"sha256": SHA_A, "classification": "baseline", "act": "sexual_activity"},
      {"sha256": SHA_B, "classification": "not_illegal"}],
     ["images[0] (image 1, sha256 aaaaaaaaaaaa…): age_group: baseline needs the age group (infant or pre_pubescent)"]),
    ([{"sha256": SHA_A, **BASE}, {"sha256": SHA_B, "classification": "not_illegal", "act": "sexual_activity"}],
     ["images[1] (image 2, sha256 bbbbbbbbbbbb…): act: not_illegal describes no child: leave act out"]),
    ([{"sha256": "d" * 64, **BASE}, {"sha256": SHA_A, **BASE}, {"sha256": SHA_B, **BASE}],
     [f"images[0]: sha256: the item has no image with sha256 {'d' * 64}"]),
    ([{"sha256": SHA_A, **BASE}, {"sha256": SHA_A, **BASE}, {"sha256": SHA_B, **BASE}],
     ["images[1]: image 1 (sha256 aaaaaaaaaaaa…) is decided twice"]),
    ([{**BASE}, {"sha256": SHA_A, **BASE}, {"sha256": SHA_B, **BASE}],
     ["images[0]: sha256: name the image by its sha256 or its url"]),
])
def test_resolve_errors_name_the_image_and_the_field(decisions: list[dict[str, Any]], messages: list[str]) -> None:
    with pytest.raises(ClassificationInvalid) as info:
        resolve(images(), decisions)
    assert [m for _, m in info.value.errors] == messages


# -- X-ARF report of a notice built from analyst-classified images ----------------------------

def notice_of(assessed: list[ImageClassification | None]) -> TakedownNotice:
    imgs = [ImageFacts(url=f"http://img.hoster-a.test/{n}.jpg", sha256=f"{n:x}" * 64 if n < 10 else SHA_A,
                       md5="9e107d9d372bb6826bd81d3542a419d6",
                       assessment=check(a) if a is not None else None)
            for n, a in enumerate(assessed, 1)]
    return TakedownNotice(notice_id="ntd-i1", item_id="i1", url="http://img.hoster-a.test/page.html",
                          hoster="Hoster A B.V.", abuse_email="abuse@hoster-a.test", country="NL", images=imgs,
                          basis="police_release", category="national",
                          hosting=HostingFacts(host="img.hoster-a.test", ip="127.0.0.2", asn=64501))


@pytest.mark.parametrize(("assessed", "xarf", "reported"), [
    ([c("national", age_group="pubescent", act="lascivious_exhibition")], "B2", 1),
    ([c("national", age_group="pre_pubescent", act="sexual_activity")], "A1", 1),
    ([c("national", age_group="pubescent", act="sexual_activity"),
      c("national", age_group="infant", act="lascivious_exhibition")], "A2", 2),
    ([c("baseline", age_group="infant", act="sexual_activity"),
      c("national", age_group="pubescent", act="sexual_activity")], "baseline", 2),
    ([c("national", age_group="pubescent", act="sexual_activity"), c("not_illegal"), c("doubtful")], "B1", 1),
])
def test_the_notice_report_carries_the_analysts_classification(
    assessed: list[ImageClassification], xarf: str, reported: int,
) -> None:
    notice = notice_of(list(assessed))
    report = build_report(notice, "ntd@hotline.test", "Test Hotline")
    validate(report)
    assert report["classification"] == xarf
    assert len(reported_images(notice)) == reported
    assert len(report["evidence"]) == reported


def test_doubtful_and_not_illegal_images_never_make_a_notice() -> None:
    from services.notify.xarf_report import XarfReportInvalid

    with pytest.raises(XarfReportInvalid):
        build_report(notice_of([c("doubtful"), c("not_illegal")]), "ntd@hotline.test", "Test Hotline")
