"""Hostile servers (``doubles.hostile``): each is bounded in time and memory, with a reason.

Real loopback servers; nothing leaves loopback (names resolve through a table). The per-phase
timeout of these fetchers is 1 s and the hostile server trickles a byte every 0.2 s, so httpx's
own read timeout never fires: only the whole-fetch deadline (2 x 1 s) or the item deadline can
end a fetch. Every server gives up by itself after ``max_seconds`` (15 s), so a fetcher that is
not bounded makes these tests fail on their time bound instead of hanging. The bounds are
asserted with generous margins (the machine is busy): deadline + 6 s, never tight figures.
"""

from __future__ import annotations

import threading
import time
import tracemalloc
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from doubles import hostile
from doubles.hostile import HostileSite
from hashing.image import ImageError, check_viewable, hash_image
from hashing.synthetic import photo_like_jpeg
from schemas.facts import HostingFacts
from services.classify.fetcher import Fetcher, FetchError, FetchPolicy
from services.classify.stage import ClassifyStage
from services.followup.logic import CheckResult
from services.followup.recheck import observe

MARGIN = 6.0  # seconds on top of any deadline: generous, the machine is shared
TOTAL = 2.0  # one URL's whole-fetch deadline here (2 x the 1 s per-phase timeout)
ITEM = 3.0  # one item's deadline here


@pytest.fixture(scope="module")
def site() -> Iterator[HostileSite]:
    s = HostileSite(interval=0.2, max_seconds=15.0, slow_images=5).start()
    yield s
    s.stop()


def _fetcher(max_bytes: int = 20_000_000, total_seconds: float | None = None) -> Fetcher:
    return Fetcher(FetchPolicy(allow_private=True, timeout_seconds=1.0, max_bytes=max_bytes,
                               total_seconds=total_seconds),
                   resolve=lambda host: ["127.0.0.1"])


def _slow_fetcher() -> Fetcher:
    """One URL may take 30 s: only the item's deadline (3 s) can end a slow image here."""
    return _fetcher(total_seconds=30.0)


class _Hosting:
    def facts(self, host: str) -> HostingFacts:
        return HostingFacts(host=host, source="test")


def _stage(fetcher: Fetcher, **kw: Any) -> ClassifyStage:
    return ClassifyStage(
        fetcher=fetcher, hash_image=lambda data: hash_image(data), match=lambda images: [None] * len(images),
        hosting=_Hosting(), partner_names={}, item_deadline_seconds=kw.pop("item_deadline_seconds", ITEM),  # type: ignore[arg-type]
        image_concurrency=kw.pop("image_concurrency", 4), **kw,
    )


def _timed(fn: Callable[[], Any]) -> tuple[Any, float]:
    started = time.monotonic()
    try:
        result = fn()
    except FetchError as err:
        result = err
    return result, time.monotonic() - started


# ------------------------------------------------------------------ one URL, one deadline


def test_slow_headers_are_cut_at_the_whole_fetch_deadline(site: HostileSite) -> None:
    """Defect 1: headers trickled a byte every 0.2 s held the fetch (and classify) for minutes."""
    f = _fetcher()
    err, took = _timed(lambda: f.get(site.url("/slow-headers")))
    assert isinstance(err, FetchError) and err.code == "timeout", err
    assert "connect, headers, body and redirects together" in err.reason
    assert took < TOTAL + MARGIN, took


def test_slow_headers_are_cut_at_the_item_deadline(site: HostileSite) -> None:
    f = _fetcher()
    err, took = _timed(lambda: f.get(site.url("/slow-headers"), deadline=time.monotonic() + 0.5))
    assert isinstance(err, FetchError) and err.code == "deadline" and err.reason.startswith("deadline passed")
    assert took < 0.5 + MARGIN


def test_slow_body_is_cut(site: HostileSite) -> None:
    f = _fetcher()
    err, took = _timed(lambda: f.get(site.url("/slow-body")))
    assert isinstance(err, FetchError) and err.code == "timeout", err
    assert took < TOTAL + MARGIN


def test_endless_body_is_cut_at_the_size_cap_in_bounded_memory(site: HostileSite) -> None:
    cap = 3_000_000
    f = _fetcher(max_bytes=cap)
    tracemalloc.start()
    try:
        err, took = _timed(lambda: f.get(site.url("/endless")))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert isinstance(err, FetchError) and err.code == "too_large", err
    assert peak < 3 * cap, peak  # the body once, plus one chunk: never the endless stream
    assert took < TOTAL + MARGIN


def test_redirect_loop_ends(site: HostileSite) -> None:
    f = _fetcher()
    err, took = _timed(lambda: f.get(site.url("/redirect/0")))
    assert isinstance(err, FetchError) and err.code == "too_many_redirects"
    assert took < TOTAL + MARGIN


# ------------------------------------------------------------------ one item, one deadline


def test_slow_images_of_a_page_share_one_item_deadline(site: HostileSite) -> None:
    """Defect 2: each of 5 slow images had its own deadline, one after the other (5 x 20 s)."""
    stage = _stage(_slow_fetcher())
    c, took = _timed(lambda: stage.classify("i-slow", site.url("/slow-page")))
    assert took < ITEM + MARGIN, took
    assert c.online and len(c.images) == 5
    for image in c.images:
        assert image.error is not None and image.error.startswith("deadline: deadline passed"), image.error


def test_images_of_a_page_are_fetched_concurrently(site: HostileSite) -> None:
    """Five slow images with concurrency 5: all five were asked for before the deadline passed."""
    before = len(site.requests)
    stage = _stage(_slow_fetcher(), image_concurrency=5)
    stage.classify("i-conc", site.url("/slow-page"))
    asked = [p for p in site.requests[before:] if p.startswith("/slow-image/")]
    assert len(asked) == 5, asked


def test_what_was_fetched_before_the_deadline_is_kept(site: HostileSite) -> None:
    good = photo_like_jpeg(64, 48, seed=7)
    site.add("/good.jpg", "image/jpeg", good)
    body = b'<img src="/good.jpg">' + b"".join(b'<img src="/slow-image/%d">' % i for i in range(3))
    site.add("/mixed.html", "text/html", body)
    c = _stage(_slow_fetcher(), image_concurrency=1).classify("i-mixed", site.url("/mixed.html"))
    assert c.images[0].error is None and c.images[0].sha256 == hash_image(good).sha256
    assert all((i.error or "").startswith("deadline") for i in c.images[1:]), [i.error for i in c.images]
    assert "not fetched" in (c.images[-1].error or "")  # never started: recorded, not fetched


def test_the_recheck_has_the_same_bounds(site: HostileSite) -> None:
    obs, took = _timed(lambda: observe(_slow_fetcher(), hash_image, site.url("/slow-page"), [],
                                       deadline_seconds=ITEM, image_concurrency=2))
    assert took < ITEM + MARGIN, took
    assert obs.result is CheckResult.UNREACHABLE and "could not be fetched" in obs.detail


# ------------------------------------------------------------------ bombs and hostile HTML

BOMBS: dict[str, Callable[[], bytes]] = {
    "png": hostile.png_bomb, "gif": hostile.gif_bomb, "jpeg": hostile.jpeg_bomb, "webp": hostile.webp_bomb,
}


@pytest.fixture(scope="module")
def bombs(site: HostileSite) -> dict[str, bytes]:
    made = {fmt: make() for fmt, make in BOMBS.items()}
    made["gif-frames"] = hostile.gif_frames_bomb(side=600, frames=20)  # 7.2 MP: over 4 x VIEW_PIXELS
    for fmt, data in made.items():
        site.add(f"/bomb-{fmt}", "image/" + fmt.split("-")[0], data)
        site.add(f"/bomb-page-{fmt}", "text/html", f'<img src="/bomb-{fmt}">'.encode())
    return made


@pytest.mark.parametrize("fmt", sorted(BOMBS))
def test_bombs_of_every_format_are_refused_in_bounded_time_and_memory(
    site: HostileSite, bombs: dict[str, bytes], fmt: str
) -> None:
    stage = _stage(_fetcher())
    tracemalloc.start()
    try:
        for path in (f"/bomb-{fmt}", f"/bomb-page-{fmt}"):  # the URL itself, and a page showing it
            c, took = _timed(lambda path=path: stage.classify("i-bomb", site.url(path)))
            assert took < ITEM + MARGIN
            assert len(c.images) == 1 and c.images[0].error is not None
            assert "bomb" in c.images[0].error or "too large" in c.images[0].error, c.images[0].error
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 30_000_000, peak  # the pixels (64 MP to 4.3 GP) were never decoded


VIEW_PIXELS = 1_000_000
"""The pixel cap of the live-view tests: lower than the default 60 MP, so that an animation
over the frame budget is cheap to make (the mechanism is the same)."""


@pytest.mark.parametrize("fmt", [*sorted(BOMBS), "gif-frames"])
def test_check_viewable_refuses_every_bomb(bombs: dict[str, bytes], fmt: str) -> None:
    with pytest.raises(ImageError, match="bomb"):
        check_viewable(bombs[fmt], max_pixels=VIEW_PIXELS)
    assert check_viewable(photo_like_jpeg(64, 48, seed=1), max_pixels=VIEW_PIXELS) == "JPEG"


def test_huge_html_is_parsed_in_bounded_time_and_a_larger_one_refused(site: HostileSite) -> None:
    site.add("/huge.html", "text/html", hostile.huge_html(12))
    site.add("/late.png", "image/png", b"not a png")
    stage = _stage(_fetcher(max_bytes=15_000_000))
    c, took = _timed(lambda: stage.classify("i-huge", site.url("/huge.html")))
    assert took < ITEM + MARGIN and c.online
    site.add("/huger.html", "text/html", hostile.huge_html(16))
    c, took = _timed(lambda: stage.classify("i-huger", site.url("/huger.html")))
    assert not c.online and "too_large" in c.reason and took < ITEM + MARGIN


def test_deeply_nested_html_is_bounded_by_the_item_deadline(site: HostileSite) -> None:
    site.add("/nested.html", "text/html", hostile.nested_html(400_000))  # ~4.4 MB, seconds to parse
    stage = _stage(_fetcher(), item_deadline_seconds=1.0)
    c, took = _timed(lambda: stage.classify("i-nested", site.url("/nested.html")))
    assert c.online and took < 1.0 + MARGIN, took


def test_thousands_of_image_references_fetch_at_most_the_cap(site: HostileSite) -> None:
    site.add("/many.html", "text/html", hostile.many_images_html(5_000))
    before = len(site.requests)
    c, took = _timed(lambda: _stage(_fetcher(), max_images=10).classify("i-many", site.url("/many.html")))
    assert len(c.images) == 10 and all(i.error == "HTTP 404" for i in c.images)
    assert len([p for p in site.requests[before:] if p.startswith("/many/")]) == 10
    assert took < ITEM + MARGIN


# ------------------------------------------------------------------ the analyst's live view


class _System:
    def __init__(self, settings: Any) -> None:
        self.settings = settings

    def build_fetcher(self) -> Fetcher:
        return _fetcher()


def test_the_analysts_live_view_refuses_bombs(site: HostileSite, bombs: dict[str, bytes]) -> None:
    """Defect 8: a 30000x30000 PNG bomb and a GIF of many large frames went to the browser
    unchanged; now each is refused with its reason, and a fine image still shows."""
    from hotline.config import Settings
    from hotline.web.auth import Caller, get_store, optional_caller
    from schemas.items import ItemClassified
    from services.assessment import pages

    good = photo_like_jpeg(64, 48, seed=9)
    site.add("/fine.jpg", "image/jpeg", good)
    names = ["png", "gif", "jpeg", "webp", "gif-frames"]
    classified = ItemClassified(item_id="i-view", url=site.url("/"), online=True, known=False,
                                route="assessment", reason="test",
                                images=[{"url": site.url(f"/bomb-{n}")} for n in names]
                                + [{"url": site.url("/fine.jpg")}])  # type: ignore[list-item]

    class _Item:
        classification = classified.model_dump(mode="json")

    class _Items:
        def get(self, item_id: str) -> Any:
            return _Item() if item_id == "i-view" else None

    viewed: list[tuple[str, str, str, str]] = []

    class _Audit:
        def append(self, actor: str, action: str, subject: str, detail: str = "") -> None:
            viewed.append((actor, action, subject, detail))

    class _Store:
        items = _Items()
        audit = _Audit()

        def rollback(self) -> None:
            pass

        def commit(self) -> None:  # the view's audit row is committed before the fetch
            pass

    app = FastAPI()
    app.include_router(pages.router)
    app.state.system = _System(Settings(database_url="sqlite://", index_dir="none", fetch_max_pixels=VIEW_PIXELS))
    app.dependency_overrides[get_store] = lambda: _Store()
    app.dependency_overrides[optional_caller] = lambda: Caller(user_id=1, name="ana", role="analyst")
    with TestClient(app) as client:
        for n, name in enumerate(names):
            r = client.get(f"/analyst/items/i-view/images/{n}")
            assert r.status_code == 502 and "not shown" in r.text and "bomb" in r.text, (name, r.text)
            assert r.headers["content-type"].startswith("text/plain")
        r = client.get(f"/analyst/items/i-view/images/{len(names)}")
        assert r.status_code == 200 and r.content == good
    # Every view by a person is in the audit trail, the refused ones too (issue 11).
    assert [(a, act, subj) for a, act, subj, _ in viewed] == [("ana", "image_viewed", "i-view")] * (len(names) + 1)


def test_hostile_servers_close_what_the_fetcher_gave_up(site: HostileSite) -> None:
    """After the tests above, the fetcher holds no connection to the hostile site open (each
    gave-up fetch closed its socket; the server's trickling threads end with it)."""
    deadline = time.monotonic() + 20
    while site.open_connections and time.monotonic() < deadline:
        threading.Event().wait(0.1)
    assert site.open_connections == 0
