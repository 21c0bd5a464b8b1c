"""Value objects shared by several topic messages (hashes, bank matches, hosting facts)."""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict


class Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="ignore")


class BankMatch(Frozen):
    """A hit in the bank of known material: which entry, by which hash type, how far."""

    entry_id: int
    signal: str  # md5 | sha1 | sha256 | pdq | phash
    distance: int
    category: str
    source: str


class HostingFacts(Frozen):
    """Where a URL is hosted, as far as the hosting file, DNS and RDAP could tell, and how we
    know it (provenance), so an analyst sees why a notice went where it went.

    ``source`` says where the attribution (hoster, abuse contact) came from: ``hosting_file``
    (the operator's file), ``rdap`` (a live RDAP answer, RFC 9083), ``dns`` (the name resolved,
    but no source named its hoster) or ``unknown`` (not even an address). ``address_source``
    says where the address came from (``literal``, ``hosting_file``, ``dns``). ``looked_up_at``
    is when the attributing fact was looked up (older than the classification when it came
    from the hosting cache). ``reason`` says why a fact is missing ("RDAP timed out", "no
    abuse contact in RDAP", "hoster unknown") or how a CDN was handled.

    Behind a CDN: with the origin known (the hosting file's ``origins``) these are the
    origin's facts and ``cdn``/``cdn_abuse`` name the CDN, which gets a copy of the notice;
    without it these are the CDN's facts and ``cdn`` is its own name."""

    host: str
    ip: str | None = None
    addresses: list[str] = []  # every address of the host (A and AAAA), in DNS/file order
    prefix: str | None = None  # the network the address is in (CIDR, IPv4 or IPv6)
    network: str | None = None  # the network's name (RDAP ``name``, or the file's ``name``)
    country: str | None = None
    asn: int | None = None
    hoster: str | None = None
    abuse: str | None = None
    upstream_abuse: str | None = None  # the parent network's abuse contact (ladder: upstream)
    registrar: str | None = None  # the domain's registrar (RDAP domain, role ``registrar``)
    registrar_abuse: str | None = None  # the registrar's abuse contact (ladder: registrar)
    cdn: str | None = None  # the CDN in front of the host, if any
    cdn_abuse: str | None = None  # the CDN's abuse contact (a copy recipient when the origin is known)
    source: str = "unknown"  # hosting_file | rdap | dns | unknown
    address_source: str | None = None  # literal | hosting_file | dns
    looked_up_at: datetime | None = None
    reason: str | None = None


# ICCAM's per-image fields (INHOPE's case system), as the network exchanges them. The rules
# that tie them together and the mapping to X-ARF live in services/assessment/classification.py.
Classification = Literal["baseline", "national", "doubtful", "not_illegal"]
AgeGroup = Literal["infant", "pre_pubescent", "pubescent", "not_determined"]
Gender = Literal["female", "male", "both", "not_determined"]
# What the image shows, the second axis of the industry/X-ARF scheme (1: sexual activity,
# 2: lascivious exhibition, i.e. posing with a focus on the genital or anal region).
Act = Literal["sexual_activity", "lascivious_exhibition"]
SiteType = Literal[
    "website", "image_host", "file_host", "forum", "image_board", "blog", "social_network",
    "video_platform", "chat", "p2p", "redirector", "banner", "search_engine", "webmail", "other",
]
Commerciality = Literal["commercial", "non_commercial", "unknown"]
XarfClassification = Literal["baseline", "A1", "A2", "B1", "B2"]


class ImageClassification(Frozen):
    """An analyst's classification of one image (ICCAM's fields). ``xarf`` is the X-ARF v4
    ``classification`` it maps to (None: no notice is sent for it: doubtful, not illegal),
    filled in by the assessment so consumers (police, partners) need not know the mapping."""

    classification: Classification
    age_group: AgeGroup | None = None
    gender: Gender | None = None
    act: Act | None = None
    site_type: SiteType | None = None
    commerciality: Commerciality | None = None
    virtual: bool = False
    child_modelling: bool = False
    user_generated: bool = False
    xarf: XarfClassification | None = None


class ImageFacts(Frozen):
    """What classify learned about one image. Never the bytes: hashes and metadata only.
    ``hosting``: the image's own hoster, looked up by the image's own URL (each image has its
    own hoster: a page on hoster A may show images from hoster B)."""

    url: str
    md5: str | None = None
    sha1: str | None = None
    sha256: str | None = None
    pdq: str | None = None
    pdq_quality: int | None = None
    phash: str | None = None
    width: int | None = None
    height: int | None = None
    format: str | None = None
    byte_size: int | None = None
    error: str | None = None
    match: BankMatch | None = None
    hosting: HostingFacts | None = None
    # The analyst's classification of this image, once an analyst decided it (optional: images
    # of known material and messages written before it was added have none).
    assessment: ImageClassification | None = None

