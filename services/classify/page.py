"""Find the images an HTML page shows (img, srcset, picture sources, links to image files, og:image)."""

from __future__ import annotations

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


def image_urls(html: str, page_url: str, limit: int) -> list[str]:
    """Absolute http(s) image URLs on the page, first occurrence order, at most ``limit``."""
    parser = _ImageCollector()
    try:
        parser.feed(html)
        parser.close()
    except Exception:  # noqa: BLE001 - broken HTML: keep what was found so far
        pass
    base = urljoin(page_url, parser.base) if parser.base else page_url
    out: list[str] = []
    for ref in parser.found:
        if len(out) >= limit:
            break
        if ref.startswith("data:"):
            continue
        url = urljoin(base, ref.strip()).split("#", 1)[0]
        if urlsplit(url).scheme in ("http", "https") and url not in out:
            out.append(url)
    return out
