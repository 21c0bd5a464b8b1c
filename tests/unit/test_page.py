"""image_urls: every way a page shows an image, resolved to absolute http(s) URLs."""

from __future__ import annotations

from services.classify.page import image_urls

PAGE = "http://site.test/gallery/index.html"


def urls(html: str, page: str = PAGE, limit: int = 50) -> list[str]:
    return image_urls(html, page, limit)


def test_img_src_relative_and_absolute() -> None:
    html = '<img src="a.jpg"><img src="/b.png"><IMG SRC="http://other.test/c.gif"><img src="//cdn.test/d.webp">'
    assert urls(html) == [
        "http://site.test/gallery/a.jpg",
        "http://site.test/b.png",
        "http://other.test/c.gif",
        "http://cdn.test/d.webp",
    ]


def test_lazy_data_src() -> None:
    assert urls('<img src="data:image/gif;base64,R0lGOD" data-src="/real.jpg">') == ["http://site.test/real.jpg"]


def test_srcset_every_candidate() -> None:
    html = '<img src="s.jpg" srcset="m.jpg 2x, /l.jpg 800w,  http://x.test/xl.jpg 1600w">'
    assert urls(html) == [
        "http://site.test/gallery/s.jpg",
        "http://site.test/gallery/m.jpg",
        "http://site.test/l.jpg",
        "http://x.test/xl.jpg",
    ]


def test_picture_source() -> None:
    html = (
        "<picture>"
        '<source srcset="/p.avif" type="image/avif">'
        '<source srcset="/p.webp 1x, /p2.webp 2x" type="image/webp">'
        '<img src="/p.jpg">'
        "</picture>"
    )
    assert urls(html) == [
        "http://site.test/p.avif",
        "http://site.test/p.webp",
        "http://site.test/p2.webp",
        "http://site.test/p.jpg",
    ]


def test_links_to_image_files_but_not_to_pages() -> None:
    html = (
        '<a href="/full/1.JPG">1</a>'
        '<a href="/full/2.jpeg?size=big">2</a>'
        '<a href="/next.html">next</a>'
        '<a href="/photo.jpg.html">trap</a>'
        '<a href="mailto:x@y.test">mail</a>'
    )
    assert urls(html) == ["http://site.test/full/1.JPG", "http://site.test/full/2.jpeg?size=big"]


def test_og_and_twitter_image() -> None:
    html = (
        '<meta property="og:image" content="http://site.test/og.jpg">'
        '<meta name="twitter:image" content="/tw.png">'
        '<meta property="og:title" content="/not-an-image.jpg">'
    )
    assert urls(html) == ["http://site.test/og.jpg", "http://site.test/tw.png"]


def test_base_href_changes_resolution() -> None:
    html = '<head><base href="http://static.test/assets/"></head><img src="x.jpg"><img src="/y.jpg">'
    assert urls(html) == ["http://static.test/assets/x.jpg", "http://static.test/y.jpg"]


def test_relative_base_href() -> None:
    assert urls('<base href="/media/"><img src="z.png">') == ["http://site.test/media/z.png"]


def test_data_and_non_http_schemes_skipped() -> None:
    html = (
        '<img src="data:image/png;base64,iVBORw0KGgo=">'
        '<img src="javascript:alert(1)">'
        '<img src="ftp://files.test/a.jpg">'
        '<img src="file:///etc/passwd">'
        '<img src="ok.jpg">'
    )
    assert urls(html) == ["http://site.test/gallery/ok.jpg"]


def test_fragments_dropped_and_duplicates_collapsed() -> None:
    html = '<img src="a.jpg#x"><img src="a.jpg"><a href="/gallery/a.jpg">a</a><img src="b.jpg">'
    assert urls(html) == ["http://site.test/gallery/a.jpg", "http://site.test/gallery/b.jpg"]


def test_limit() -> None:
    html = "".join(f'<img src="/{i}.jpg">' for i in range(100))
    got = urls(html, limit=7)
    assert got == [f"http://site.test/{i}.jpg" for i in range(7)]
    assert urls(html, limit=1) == ["http://site.test/0.jpg"]


def test_limit_zero_fetches_nothing() -> None:
    assert urls('<img src="/a.jpg"><img src="/b.jpg">', limit=0) == []


def test_broken_html_keeps_what_it_can() -> None:
    html = '<html><body><div><img src="/one.jpg"<p>unclosed <img src=/two.jpg><img src="/three.jpg" <b>'
    got = urls(html)
    assert "http://site.test/two.jpg" in got
    assert all(u.startswith("http://site.test/") for u in got)


def test_garbage_does_not_raise() -> None:
    for html in ["", "<<<>>>", "<img", "<img src=", "\x00\x01<img src='/x.jpg'>", "<!--", "<![CDATA[", "</>" * 100]:
        assert isinstance(urls(html), list)


def test_entities_are_decoded() -> None:
    assert urls('<img src="/a.jpg?x=1&amp;y=2">') == ["http://site.test/a.jpg?x=1&y=2"]


def test_no_images() -> None:
    assert urls("<html><body><p>Hello</p><a href='/about'>about</a></body></html>") == []
