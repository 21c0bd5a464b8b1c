"""The machine-readable half of a notice: one X-ARF v4 report (category ``content``, type
``csam``) for the notice's URL, built with the ``xarf`` package's generator and validated
against the X-ARF v4 JSON Schemas it ships (compiled once for a fast yes,
``services.notify.xarf_fast``; the package's validator decides anything else). Pure: no
sending here.

A report that does not validate is never sent: :func:`build_report` raises
:class:`XarfReportInvalid`, which the notify stage turns into a rejection with the reason
(``reports.rejected``, ``invalid_notice``): retrying cannot make it valid.

- One report per URL. A page showing several matched images is still one URL: the
  schema's ``hash_values`` holds one value per algorithm, so it carries the first matched
  image's hashes (plus its PDQ); every matched image's hashes are listed as ``evidence``
  items (``application/json``, hashes and match facts only, never image bytes).
- ``report_id`` is derived from the notice id (UUID, version-4 layout), so every rendering
  of one notice carries the same id; ``timestamp`` is when classify saw the content.
- ``classification``: an analyst's per-image classification maps by
  ``services.assessment.classification.xarf_classification`` (baseline, or A/B × 1/2 from
  the age group and the act); a bank category by :data:`CLASSIFICATION`; the most serious
  image's value is the report's. See README "Machine-readable notices" and "Classification".
"""

from __future__ import annotations

import hashlib
import ipaddress
import json
import re
import uuid
from datetime import UTC
from typing import Any
from urllib.parse import urlsplit

import orjson
import pydantic
import xarf

from schemas.facts import BankMatch, HostingFacts, ImageFacts
from schemas.notices import TakedownNotice
from services.assessment.classification import xarf_classification
from services.notify.xarf_fast import surely_valid

CATEGORY, TYPE = "content", "csam"

# X-ARF's own values, most serious first (baseline: INTERPOL's, illegal in virtually every
# country; A/B: ICCAM's prepubescent/pubescent, 1: sexual activity, 2: posing/focus).
XARF_CLASSIFICATIONS = ("baseline", "A1", "A2", "B1", "B2")

# The bank's and the analysts' categories onto X-ARF's. "national" (illegal under the
# hosting country's law, not INTERPOL baseline) has no X-ARF value: it is sent as "B2",
# the least serious CSAM value, so an automated pipeline removes it as CSAM without
# treating it as baseline (e.g. sharing its hashes as universally illegal); the real
# category goes along in ``tags`` ("category:national") and the description.
CLASSIFICATION: dict[str, str] = {"baseline": "baseline", "national": "B2"} | {
    c.lower(): c for c in XARF_CLASSIFICATIONS
}

# Hashes the schema names in ``hash_values`` (PDQ is added: the object is open).
_HASHES = ("md5", "sha1", "sha256")
_EXACT_SIGNALS = frozenset(_HASHES)
_MAX_EVIDENCE = 50  # the schema's maxItems
_DOMAIN = "^([a-z0-9]+(-[a-z0-9]+)*\\.)+[a-z]{2,}$"


class XarfReportInvalid(ValueError):
    """The notice cannot be expressed as a valid X-ARF v4 content/csam report."""


def report_id(notice_id: str) -> str:
    """A UUID (version-4 layout) derived from the notice id: stable across renderings."""
    return str(uuid.UUID(bytes=hashlib.sha256(notice_id.encode()).digest()[:16], version=4))


def classification_of(category: str) -> str:
    """The X-ARF ``classification`` for a bank/analyst category; raises if there is none."""
    value = CLASSIFICATION.get(category.strip().lower())
    if value is None:
        raise XarfReportInvalid(
            f"category {category!r} has no X-ARF classification (known: {', '.join(sorted(CLASSIFICATION))})"
        )
    return value


def matched_images(notice: TakedownNotice) -> list[ImageFacts]:
    return [i for i in notice.images if i.match is not None]


def reported_images(notice: TakedownNotice) -> list[ImageFacts]:
    """The images a notice is about: those the bank matched and those an analyst classified as
    illegal (baseline, national: ``ImageFacts.assessment``); when there are none and the notice
    says what the material is (``category``: an analyst confirmed the whole item, the police
    released it), every image with hashes. An image the analyst found doubtful or not illegal
    is never reported."""
    chosen = [i for i in notice.images if i.match is not None
              or (i.assessment is not None and xarf_classification(i.assessment) is not None)]
    if chosen or notice.category is None or any(i.assessment is not None for i in notice.images):
        return chosen
    return [i for i in notice.images if i.error is None and (i.sha256 or i.sha1 or i.md5)]


def xarf_of(notice: TakedownNotice, image: ImageFacts) -> str:
    """One reported image's X-ARF ``classification``: the analyst's per-image classification
    (services/assessment/classification.py), else its category's."""
    if image.match is None and image.assessment is not None:
        value = xarf_classification(image.assessment)
        if value is None:
            raise XarfReportInvalid(f"notice {notice.notice_id}: {image.url} is {image.assessment.classification}")
        return value
    return classification_of(category_of(notice, image))


def category_of(notice: TakedownNotice, image: ImageFacts) -> str:
    """What one reported image is: its bank entry's category, else the analyst's (per image,
    else the notice's)."""
    if image.match is not None:
        return image.match.category
    if image.assessment is not None:
        return image.assessment.classification
    if notice.category is None:
        raise XarfReportInvalid(f"notice {notice.notice_id}: {image.url} has no bank match and the notice no category")
    return notice.category


def is_exact(match: BankMatch) -> bool:
    return match.signal in _EXACT_SIGNALS


def detection_method(notice: TakedownNotice) -> str:
    """``hash_match`` for known material (exact cryptographic hash or PDQ near match: both are
    hash matches in X-ARF's vocabulary; which one is in ``tags``); ``manual_review`` when an
    analyst confirmed the material."""
    return "hash_match" if notice.basis == "known_material" else "manual_review"


def source_identifier(notice: TakedownNotice) -> str:
    """The address the content was fetched from (IPv4 or IPv6, compressed form: X-ARF's
    ``source_identifier`` is any address or name, there is no source type to set); the host
    name if the notice has none."""
    if notice.hosting is not None and notice.hosting.ip:
        return ipaddress.ip_address(notice.hosting.ip).compressed
    return urlsplit(notice.url).hostname or notice.url


def build_report(notice: TakedownNotice, sender: str, hotline_name: str) -> dict[str, Any]:
    """The X-ARF v4 report for ``notice``, validated; raises :class:`XarfReportInvalid`."""
    images = reported_images(notice)
    if not images:
        what = "no image with hashes" if notice.category is not None else "no matched image"
        raise XarfReportInvalid(f"notice {notice.notice_id} names {what}: nothing to classify")
    classes = [xarf_of(notice, i) for i in images]
    classification = min(classes, key=XARF_CLASSIFICATIONS.index)
    first = images[0]
    parts = urlsplit(notice.url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise XarfReportInvalid(f"notice {notice.notice_id}: {notice.url!r} is not an absolute http(s) URL")
    domain = sender.rsplit("@", 1)[-1]
    contact = {"org": hotline_name, "contact": sender, "domain": domain}
    fields: dict[str, Any] = {
        "url": notice.url,
        "classification": classification,
        "detection_method": detection_method(notice),
        "media_type": "image",
        "hash_values": _hash_values(first),
        "hosting_provider": notice.hoster,
        "content_removed": False,
        "verified_at": _iso(notice),
        "verification_method": "automated_crawler",
        "source_port": parts.port or (443 if parts.scheme == "https" else 80),
        "description": _description(notice, hotline_name, images)[:1000],
        "tags": _tags(notice, images),
        "evidence": [_evidence(i, n, len(images)) for n, i in enumerate(images[:_MAX_EVIDENCE], 1)],
    }
    host = parts.hostname.lower()
    if _is_domain(host):
        fields["domain"] = host
    if notice.hosting is not None:
        fields.update(_hosting_fields(notice.hosting))
    if notice.country:
        fields["country_code"] = notice.country.upper()
    # What ``xarf.create_report`` builds, with the notice's fixed id and time instead of a
    # fresh id and the current time, made into the package's typed model (pydantic: types and
    # defaults) without the generator's own schema validation: the report that is sent is
    # validated below, once. Validating it twice (the generator's draft, then the final
    # report) cost two jsonschema runs, a fifth of the notify stage's CPU.
    draft: dict[str, Any] = {
        **fields,
        "evidence": [e.model_dump(by_alias=True, exclude_none=True) for e in fields["evidence"]],
        "category": CATEGORY, "type": TYPE, "source_identifier": source_identifier(notice),
        "reporter": contact, "sender": dict(contact),
        "xarf_version": xarf.SPEC_VERSION, "report_id": report_id(notice.notice_id), "timestamp": _iso(notice),
    }
    try:
        model = xarf.CsamReport.model_validate(draft)
    except pydantic.ValidationError as exc:
        raise XarfReportInvalid(f"X-ARF report for {notice.notice_id} does not validate: {exc}") from exc
    report = model.model_dump(by_alias=True, exclude_none=True)
    # The model's own rendering of the time may differ; the notice's are fixed strings.
    report["report_id"] = report_id(notice.notice_id)
    report["timestamp"] = _iso(notice)
    validate(report, notice.notice_id)
    return report


def _hosting_fields(h: HostingFacts) -> dict[str, Any]:
    """ASN, the host's A and AAAA addresses (IPv4 and IPv6 alike) and the registrar, as far as
    the hosting look-up found them."""
    fields: dict[str, Any] = {}
    if h.asn:
        fields["asn"] = h.asn
    addrs = [ipaddress.ip_address(a) for a in (h.addresses or ([h.ip] if h.ip else []))]
    records = {"a": [a.compressed for a in addrs if a.version == 4],
               "aaaa": [a.compressed for a in addrs if a.version == 6]}
    if any(records.values()):
        fields["dns_records"] = {k: v for k, v in records.items() if v}
    if h.registrar:
        fields["registrar"] = h.registrar
    if h.registrar_abuse:
        fields["whois"] = {"registrar_abuse_contact": h.registrar_abuse}
    return fields


def validate(report: dict[str, Any], what: str = "report") -> None:
    """The package's checks (schema, formats, unknown fields, typed model): raises if anything
    is off. The compiled schemas answer first (``services.notify.xarf_fast``); only a report
    they do not pass goes to the package's own validator, which decides and explains."""
    data = json.loads(json.dumps(report))
    if surely_valid(data):
        return
    result = xarf.parse(data)
    if result.errors or result.warnings or result.report is None:
        raise XarfReportInvalid(_explain(what, result.errors, result.warnings))


def to_json(report: dict[str, Any]) -> bytes:
    """UTF-8 JSON indented by two spaces: the bytes ``json.dumps(report, indent=2,
    ensure_ascii=False)`` gives, from orjson (the standard encoder is pure Python once indented)."""
    return orjson.dumps(report, option=orjson.OPT_INDENT_2)


def _hash_values(image: ImageFacts) -> dict[str, str]:
    values = {name: getattr(image, name) for name in _HASHES if getattr(image, name)}
    if image.pdq:
        values["pdq"] = image.pdq
    return values


def _evidence(image: ImageFacts, n: int, total: int) -> xarf.XARFEvidence:
    match = image.match
    facts: dict[str, Any] = {"url": image.url, **_hash_values(image)}
    if image.phash:
        facts["phash"] = image.phash
    if match is not None:
        facts["match"] = {"signal": match.signal, "distance": match.distance, "category": match.category}
    elif image.assessment is not None:
        a = image.assessment  # what the hoster needs to act on it: never gender or other details
        facts["classification"] = {"category": a.classification, "age_group": a.age_group, "act": a.act,
                                   "xarf": xarf_classification(a)}
    what = "Hashes and match of matched image" if match is not None else "Hashes of analyst-confirmed image"
    return xarf.create_evidence(
        "application/json",
        json.dumps(facts, sort_keys=True),
        description=f"{what} {n} of {total} (no image data)",
    )


def _tags(notice: TakedownNotice, images: list[ImageFacts]) -> list[str]:
    tags: list[str] = []
    for image in images:
        how = ([f"match:{'exact' if is_exact(image.match) else 'perceptual'}", f"signal:{image.match.signal}"]
               if image.match is not None else ["match:none", "review:analyst"])
        for tag in (f"category:{category_of(notice, image).strip().lower()}", *how):
            if tag not in tags:
                tags.append(tag)
    return tags[:20]


def _description(notice: TakedownNotice, hotline_name: str, images: list[ImageFacts]) -> str:
    how = "confirmed by an analyst of" if notice.basis != "known_material" else "identified by hash match against the database of confirmed material of"
    categories = sorted({category_of(notice, i) for i in images})
    if not any(i.match is not None for i in images):
        return (f"Child sexual abuse material ({len(images)} image(s), category {', '.join(categories)}) "
                f"{how} {hotline_name}. Notice {notice.notice_id}.")
    return (f"Known child sexual abuse material ({len(images)} matched image(s), category "
            f"{', '.join(categories)}) {how} {hotline_name}. Notice {notice.notice_id}.")


def _iso(notice: TakedownNotice) -> str:
    at = notice.created_at
    at = at.replace(tzinfo=UTC) if at.tzinfo is None else at.astimezone(UTC)
    return at.isoformat().replace("+00:00", "Z")


def _is_domain(host: str) -> bool:
    return re.fullmatch(_DOMAIN, host) is not None


def _explain(what: str, errors: list[Any], warnings: list[Any]) -> str:
    problems = [f"{e.field or '(report)'}: {e.message}" for e in [*errors, *warnings]]
    return f"X-ARF report for {what} does not validate: " + ("; ".join(problems) or "no report")
