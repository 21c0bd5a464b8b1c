"""One re-check: fetch the URL again through the guarded fetcher, hash what it serves in
memory (the same hash function classify uses) and compare it with the hashes the notice
named. Returns a ``CheckResult`` and what was seen, hashes only; bytes are dropped here.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from hashing.image import ImageHashes
from hashing.signals import SIGNAL_TYPES
from services.classify.fetcher import Fetcher, FetchError
from services.classify.page import image_urls
from services.classify.stage import looks_like_image
from services.followup.logic import CheckResult

HashFn = Callable[[bytes], ImageHashes]
GONE_STATUSES = (404, 410)


@dataclass(frozen=True)
class Observation:
    result: CheckResult
    detail: str
    seen: list[str] = field(default_factory=list)  # sha256 of the images found (at most 20)


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
    *, max_images: int = 50, pdq_radius: int = 31,
) -> Observation:
    seen: list[str] = []
    try:
        page = fetcher.get(url)
    except FetchError as err:
        e = _fetch_error(err)
        return Observation(e.result, e.detail)
    if page.status in GONE_STATUSES:
        return Observation(CheckResult.GONE, f"the URL answered HTTP {page.status}")
    if page.status >= 400:
        return Observation(CheckResult.UNREACHABLE, f"the URL answered HTTP {page.status}")
    bodies: list[tuple[str, bytes]] = []
    unsure: list[str] = []
    if looks_like_image(page):
        bodies.append((url, page.body))
    elif "html" in page.content_type:
        for img_url in image_urls(page.body.decode("utf-8", "replace"), page.final_url, max_images):
            try:
                img = fetcher.get(img_url)
            except FetchError as err:
                if _fetch_error(err).result is CheckResult.UNREACHABLE:
                    unsure.append(img_url)
                continue
            if img.status >= 400:
                if img.status not in GONE_STATUSES:
                    unsure.append(img_url)
                continue
            bodies.append((img_url, img.body))
    found = False
    for _img_url, data in bodies:
        try:
            h = hash_image(data)
        except ValueError:  # not an image, or a broken one
            continue
        if len(seen) < 20:
            seen.append(h.sha256)
        found = found or matches(h, matched, pdq_radius)
    del bodies  # bytes live only as long as the hashing
    if found:
        return Observation(CheckResult.ONLINE, "the matched image is still online", seen)
    if unsure:
        return Observation(CheckResult.UNREACHABLE, f"{len(unsure)} image(s) on the page could not be fetched", seen)
    return Observation(
        CheckResult.CHANGED,
        f"the URL no longer serves the matched image ({len(seen)} other image(s) found)", seen,
    )
