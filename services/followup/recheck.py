"""One re-check: fetch the URL again through the guarded fetcher, hash what it serves in
memory (the same hash function classify uses) and compare it with the hashes the notice
named. Returns a ``CheckResult`` and what was seen, hashes only; bytes are dropped as soon as they
are hashed.

Each image has its own hoster: a matched image counts as still at the notified hoster when
it is served from one of the notice's image URLs, or from a host whose hoster (the hosting
lookup, ``hoster_of``) is the notified one or the hoster of one of those URLs. A matched
image served only from another hoster (the page now shows a copy from elsewhere, or the
URL redirects to another host) is ``moved``, with that image's URL, hashes and hosting.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from hashing.image import ImageHashes
from hashing.signals import SIGNAL_TYPES
from schemas.facts import HostingFacts
from services.classify.fetcher import Fetched, Fetcher, FetchError, Names, fetch_each
from services.classify.page import image_urls
from services.classify.stage import hash_fields, looks_like_image
from services.followup.logic import CheckResult

HashFn = Callable[[bytes], ImageHashes]
HosterFn = Callable[[str], HostingFacts]  # host name -> who hosts it (HostingResolver.facts)
GONE_STATUSES = (404, 410)


@dataclass(frozen=True)
class MovedTo:
    """Where the matched content is served now: the page that shows it, the image's URL, its
    hashes (``classify.stage.hash_fields``) and the hosting facts of the image's host."""

    page_url: str
    image_url: str
    hashes: dict[str, Any]
    hosting: HostingFacts

    @property
    def hoster(self) -> str:
        return hoster_name(self.hosting)


@dataclass(frozen=True)
class Observation:
    result: CheckResult
    detail: str
    seen: list[str] = field(default_factory=list)  # sha256 of the images found (at most 20)
    moved_to: MovedTo | None = None  # set when ``result`` is MOVED


def hoster_name(h: HostingFacts) -> str:
    """The name a notice and a follow-up know a hoster by (as ``classify.takedown_notice``)."""
    return h.hoster or h.host


def _host(url: str) -> str:
    return urlsplit(url).hostname or ""


def matches(h: ImageHashes, matched: Sequence[dict[str, Any]], pdq_radius: int) -> bool:
    """Is ``h`` one of the notice's images: the same SHA-256 or MD5, or a PDQ within the radius."""
    pdq = SIGNAL_TYPES["pdq"]
    for m in matched:
        if m.get("sha256") and m["sha256"] == h.sha256:
            return True
        if m.get("md5") and m["md5"] == h.md5:
            return True
        if m.get("pdq") and h.pdq and pdq.usable(h.pdq_quality) and pdq.distance(m["pdq"], h.pdq) <= pdq_radius:
            return True
    return False


class _Gone(Exception):
    def __init__(self, result: CheckResult, detail: str) -> None:
        super().__init__(detail)
        self.result, self.detail = result, detail


def _fetch_error(err: FetchError) -> _Gone:
    if err.code == "dns":
        return _Gone(CheckResult.GONE, f"the name no longer resolves ({err.reason})")
    return _Gone(CheckResult.UNREACHABLE, f"could not fetch ({err.code}): {err.reason}")


def observe(
    fetcher: Fetcher, hash_image: HashFn, url: str, matched: Sequence[dict[str, Any]],
    *, max_images: int = 50, pdq_radius: int = 31, hoster: str | None = None, hoster_of: HosterFn | None = None,
    deadline_seconds: float = 30.0, image_concurrency: int = 4, hash_lock: threading.Lock | None = None,
) -> Observation:
    """``hoster`` is the notified hoster; without it or ``hoster_of`` any match is ``online``.

    The page and all its images are fetched within ``deadline_seconds`` (as classify's item
    deadline), the images ``image_concurrency`` at a time, each hashed as it arrives (under
    ``hash_lock``, if given: one image's pixels in memory at a time) and its bytes dropped.
    An image the deadline cut off counts as not fetched (``unreachable`` unless a match
    was found), never as gone."""
    seen: list[str] = []
    deadline = time.monotonic() + deadline_seconds
    try:
        names = Names()  # each host resolved once for the page and its images (this check only)
        page = fetcher.get(url, deadline=deadline, names=names)
    except FetchError as err:
        e = _fetch_error(err)
        return Observation(e.result, e.detail)
    if page.status in GONE_STATUSES:
        return Observation(CheckResult.GONE, f"the URL answered HTTP {page.status}")
    if page.status >= 400:
        return Observation(CheckResult.UNREACHABLE, f"the URL answered HTTP {page.status}")
    hashed: list[tuple[str, ImageHashes]] = []
    unsure: list[str] = []
    if looks_like_image(page):
        try:
            hashed.append((page.final_url or url, hash_image(page.body)))
        except ValueError:  # not an image, or a broken one
            pass
    elif "html" in page.content_type:
        lock = hash_lock if hash_lock is not None else nullcontext()

        def one(img_url: str, result: Fetched | FetchError) -> tuple[str, ImageHashes | None, bool]:
            """(URL, hashes or None, unsure): fetched images are hashed here, bytes dropped."""
            if isinstance(result, FetchError):
                return img_url, None, _fetch_error(result).result is CheckResult.UNREACHABLE
            if result.status >= 400:
                return img_url, None, result.status not in GONE_STATUSES
            with lock:
                try:
                    return result.final_url or img_url, hash_image(result.body), False
                except ValueError:  # not an image, or a broken one
                    return img_url, None, False

        found_urls = image_urls(page.body.decode("utf-8", "replace"), page.final_url, max_images, deadline)
        for img_url, h, doubt in fetch_each(fetcher, found_urls, one, deadline=deadline,
                                            concurrency=image_concurrency, names=names):
            if h is not None:
                hashed.append((img_url, h))
            elif doubt:
                unsure.append(img_url)
    found = False
    elsewhere: list[tuple[str, ImageHashes]] = []
    home = _Home(matched, hoster, hoster_of)
    for img_url, h in hashed:
        if len(seen) < 20:
            seen.append(h.sha256)
        if matches(h, matched, pdq_radius):
            if home.serves(img_url):
                found = True
            else:
                elsewhere.append((img_url, h))
    if found:
        return Observation(CheckResult.ONLINE, "the matched image is still online", seen)
    if elsewhere:
        img_url, h = elsewhere[0]
        facts = home.facts(img_url)
        moved = MovedTo(page_url=page.final_url or url, image_url=img_url, hashes=hash_fields(h), hosting=facts)
        return Observation(
            CheckResult.MOVED,
            f"moved to {moved.hoster}: the matched image is now served from {img_url}", seen, moved,
        )
    if unsure:
        return Observation(CheckResult.UNREACHABLE, f"{len(unsure)} image(s) on the page could not be fetched", seen)
    return Observation(
        CheckResult.CHANGED,
        f"the URL no longer serves the matched image ({len(seen)} other image(s) found)", seen,
    )


class _Home:
    """Is an image URL still the notified hoster's? (Looked up once per host.)"""

    def __init__(self, matched: Sequence[dict[str, Any]], hoster: str | None, hoster_of: HosterFn | None) -> None:
        self.urls = {m["url"] for m in matched if m.get("url")}
        self.hoster_of = hoster_of
        self._facts: dict[str, HostingFacts] = {}
        self.names: set[str] = set()
        if hoster is not None and hoster_of is not None:
            self.names = {hoster} | {hoster_name(self.facts(u)) for u in self.urls}

    def facts(self, url: str) -> HostingFacts:
        host = _host(url)
        if host not in self._facts:
            assert self.hoster_of is not None
            self._facts[host] = self.hoster_of(host)
        return self._facts[host]

    def serves(self, url: str) -> bool:
        if not self.names or url in self.urls:
            return True
        return hoster_name(self.facts(url)) in self.names
