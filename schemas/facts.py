"""Value objects shared by several topic messages (hashes, bank matches, hosting facts)."""

from __future__ import annotations

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


class ImageFacts(Frozen):
    """What classify learned about one image. Never the bytes: hashes and metadata only."""

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


class HostingFacts(Frozen):
    """Where a URL is hosted, as far as the hosting file (or a live lookup) could tell."""

    host: str
    ip: str | None = None
    country: str | None = None
    asn: int | None = None
    hoster: str | None = None
    abuse: str | None = None
    source: str = "unknown"  # hosting_file | dns | unknown
