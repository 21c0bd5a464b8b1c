"""Find the images an HTML page shows (img, srcset, picture sources, links to image files, og:image).

A hostile page costs parsing time: the parser is pure Python, some 10 us a tag, so 20 MB of
tiny nested tags would take minutes. The page is therefore fed in slices and parsing stops as
soon as ``limit`` images are known or the item's deadline has passed.
"""

from __future__ import annotations

import time
from html.parser import HTMLParser
from urllib.parse import urljoin, urlsplit

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".gif", ".webp", ".bmp", ".tif", ".tiff", ".avif")


class _ImageCollector(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.found: list[str] = []
        self.base: str | None = None

    def _srcset(self, value: str) -> None:
        for candidate in value.split(","):
            url = candidate.strip().split(" ")[0]
            if url:
                self.found.append(url)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = {k.lower(): (v or "") for k, v in attrs}
        if tag == "base" and a.get("href"):
            self.base = a["href"]
        elif tag == "img":
            for key in ("src", "data-src"):
                if a.get(key):
                    self.found.append(a[key])
            if a.get("srcset"):
                self._srcset(a["srcset"])
        elif tag == "source" and a.get("srcset"):
            self._srcset(a["srcset"])
        elif tag == "a" and a.get("href"):
            if urlsplit(a["href"]).path.lower().endswith(IMAGE_SUFFIXES):
                self.found.append(a["href"])
        elif tag == "meta" and a.get("property", a.get("name", "")).lower() in ("og:image", "twitter:image"):
            if a.get("content"):
                self.found.append(a["content"])


_SLICE = 65_536


def image_urls(html: str, page_url: str, limit: int, deadline: float | None = None) -> list[str]:
    """Absolute http(s) image URLs on the page, first occurrence order, at most ``limit``; only
    those found before ``deadline`` (a ``time.monotonic()`` value), if given."""
    parser = _ImageCollector()
    out: list[str] = []
    taken = 0
    try:
        for start in range(0, len(html), _SLICE):
            parser.feed(html[start : start + _SLICE])
            taken = _take(parser, page_url, limit, out, taken)
            if len(out) >= limit or (deadline is not None and time.monotonic() >= deadline):
                return out
        parser.close()
    except Exception:  # noqa: BLE001 - broken HTML: keep what was found so far
        pass
    _take(parser, page_url, limit, out, taken)
    return out


def _take(parser: _ImageCollector, page_url: str, limit: int, out: list[str], taken: int) -> int:
    """Add the references found since ``taken`` to ``out``; returns how many are taken now.
    (A ``<base>`` comes in the head, before any image, so resolving as they come is right.)"""
    base = urljoin(page_url, parser.base) if parser.base else page_url
    for ref in parser.found[taken:]:
        if len(out) >= limit:
            break
        if ref.startswith("data:"):
            continue
        url = urljoin(base, ref.strip()).split("#", 1)[0]
        if urlsplit(url).scheme in ("http", "https") and url not in out:
            out.append(url)
    return len(parser.found)
