"""The analyst workspace in headless Chromium: leases that keep two analysts apart and expire,
the keyboard alone assessing a page of images (with undo), blur and grey until chosen, the
second-analyst queue, audited views, still first frames of animations, and screenshots of the
queue and an item page (synthetic images) in var/test-artifacts/."""

from __future__ import annotations

import io
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
from PIL import Image
from selenium.webdriver.common.action_chains import ActionChains
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys
from selenium.webdriver.support.ui import WebDriverWait
from sqlalchemy import select

from hashing.synthetic import photo_like_jpeg
from hotline.storage.models import AuditLog
from hotline.storage.unit_of_work import SqlUnitOfWork
from hotline.web.auth import new_token
from tests.e2e.conftest import Stack, _chromium, click_and_wait

pytestmark = pytest.mark.e2e


def _page_item(stack: Stack, seeds: list[int], channel_role: str | None = None) -> tuple[str, str]:
    """A page showing synthetic images the bank does not know; (item id, page URL) once it waits
    for an analyst. ``channel_role``: report it with that role's token (police: priority)."""
    base = f"/ws-{uuid.uuid4().hex[:8]}"
    for k, seed in enumerate(seeds):
        stack.site.add(f"{base}/{k}.jpg", "image/jpeg", photo_like_jpeg(320 + 16 * k, 240, seed=seed))
    imgs = "".join(f'<img src="{base}/{k}.jpg" alt="">' for k in range(len(seeds)))
    stack.site.add(f"{base}/index.html", "text/html", f"<html><body>{imgs}</body></html>".encode())
    url = f"{stack.site_url}{base}/index.html"
    with stack.api(channel_role) as api:
        r = api.post("/api/v1/reports", json={"urls": [url], "description": "e2e: workspace"})
    assert r.status_code == 202, r.text
    (item,) = stack.report_items(r.json()["report_id"], 1, {"awaiting_assessment"})
    return item["item_id"], url


def _analyst(stack: Stack, name: str) -> str:
    token = new_token()
    with stack.system.sessions() as session:
        store = SqlUnitOfWork(session)
        if store.users.by_token(token) is None:
            store.users.add(f"{name}-{uuid.uuid4().hex[:6]}", "analyst", token)
        store.commit()
    return token


def _sign_in(browser: Any, stack: Stack, token: str, target: str = "/analyst") -> None:
    browser.get(f"{stack.base_url}/login?next={target}")
    browser.find_element(By.ID, "token").send_keys(token)
    click_and_wait(browser, browser.find_element(By.ID, "sign-in"))


def _filter(browser: Any, element: Any) -> str:
    return str(browser.execute_script("return getComputedStyle(arguments[0]).filter", element))


def _keys(browser: Any, *keys: str) -> None:
    for key in keys:
        ActionChains(browser).send_keys(key).perform()


def _item_id(browser: Any) -> str:
    return str(browser.current_url.rsplit("/", 1)[-1])


@contextmanager
def _setting(stack: Stack, **values: Any) -> Iterator[None]:
    settings = stack.system.settings
    saved = {k: getattr(settings, k) for k in values}
    for k, v in values.items():
        object.__setattr__(settings, k, v)
    try:
        yield
    finally:
        for k, v in saved.items():
            object.__setattr__(settings, k, v)


@pytest.fixture
def second_browser(chromium_path: str, chromedriver_path: str, tmp_path: Path) -> Iterator[Any]:
    driver = _chromium(chromium_path, chromedriver_path, tmp_path / "chromium-profile-2", javascript=True)
    try:
        yield driver
    finally:
        driver.quit()


def test_two_analysts_at_once_never_get_the_same_item(stack: Stack, browser: Any, second_browser: Any,
                                                     artifacts_dir: Path) -> None:
    for seed in (611, 612, 613):
        _page_item(stack, [seed])
    ann, bob = _analyst(stack, "ann"), _analyst(stack, "bob")
    _sign_in(browser, stack, ann)
    _sign_in(second_browser, stack, bob)
    # Both on the queue page at once; both ask for the next item.
    click_and_wait(browser, browser.find_element(By.ID, "next"))
    click_and_wait(second_browser, second_browser.find_element(By.ID, "next"))
    a, b = _item_id(browser), _item_id(second_browser)
    assert a != b
    assert browser.find_element(By.ID, "lease").is_displayed()
    # Bob opening Ann's item by its URL: told who holds it, no images, no decision form.
    second_browser.get(f"{stack.base_url}/analyst/items/{a}")
    assert "is assessing this item" in second_browser.find_element(By.ID, "claimed-by-other").text
    assert not second_browser.find_elements(By.ID, "img-0")
    assert not second_browser.find_elements(By.ID, "decision")
    # A decision posted anyway (an old tab) is refused with 409, and Ann's item stays hers.
    with httpx.Client(base_url=stack.base_url, cookies={"hotline_token": bob}, trust_env=False) as http:
        r = http.post(f"/analyst/items/{a}/decision", data={"verdict": "not_illegal"},
                      headers={"Origin": stack.base_url})
    assert r.status_code == 409 and "being assessed by ann" in r.text
    # The queue shows who holds what.
    browser.get(f"{stack.base_url}/analyst")
    holder = browser.find_element(By.CSS_SELECTOR, f'tr.queue-item[data-item-id="{a}"] td.holder').text
    assert holder.startswith("ann-")
    browser.save_screenshot(str(artifacts_dir / "analyst-queue.png"))


def test_an_expired_lease_returns_the_item_to_the_queue(stack: Stack, chromium_path: str, chromedriver_path: str,
                                                        tmp_path: Path, second_browser: Any) -> None:
    item_id, _ = _page_item(stack, [621])
    ann, bob = _analyst(stack, "ann"), _analyst(stack, "bob")
    with _setting(stack, assessment_lease_seconds=2.0):
        closing = _chromium(chromium_path, chromedriver_path, tmp_path / "closing-profile", javascript=True)
        try:
            _sign_in(closing, stack, ann, f"/analyst/items/{item_id}")
            assert closing.find_element(By.ID, "lease").is_displayed()
            # While the page is open its heartbeat keeps the lease (2 s) alive.
            _sign_in(second_browser, stack, bob, f"/analyst/items/{item_id}")
            assert second_browser.find_elements(By.ID, "claimed-by-other")
            stack.wait_for(lambda: _renewed(stack, item_id), timeout=10, what="a heartbeat renewing the lease")
        finally:
            closing.quit()  # the analyst closes the browser without deciding
        # Nobody renews it now: within the lease time the item is free again, and Bob gets it.
        def bob_holds() -> bool:
            second_browser.get(f"{stack.base_url}/analyst/items/{item_id}")
            return bool(second_browser.find_elements(By.ID, "lease"))

        stack.wait_for(bob_holds, timeout=15, what="the expired lease to free the item")
        assert second_browser.find_element(By.ID, "decision")


def _renewed(stack: Stack, item_id: str) -> bool:
    with stack.system.sessions() as session:
        rows = session.scalars(select(AuditLog).where(AuditLog.subject == item_id)).all()
        from hotline.storage.models import Item

        item = session.get(Item, item_id)
        # The page was loaded once (one claim) and the lease now runs later than that load plus 2 s.
        views = [r for r in rows if r.action == "item_viewed" and r.actor.startswith("ann-")]
        return bool(item and item.claimed_until and views and (item.claimed_until - views[0].at).total_seconds() > 2.5)


def test_keyboard_alone_assesses_a_page_of_images_blurred_until_chosen(stack: Stack, browser: Any,
                                                                        artifacts_dir: Path) -> None:
    item_id, _ = _page_item(stack, [631, 632, 633])
    _page_item(stack, [634])  # something left for "next" afterwards
    token = _analyst(stack, "kim")
    with _setting(stack, undo_seconds=1.0):
        _sign_in(browser, stack, token, f"/analyst/items/{item_id}")
        imgs = [browser.find_element(By.ID, f"img-{n}") for n in range(3)]
        WebDriverWait(browser, 10).until(
            lambda b: all(b.execute_script("return arguments[0].complete && arguments[0].naturalWidth > 0", i)
                          for i in imgs))
        # Blurred and grey, every one, until the analyst chooses.
        for img in imgs:
            assert "blur(24px)" in _filter(browser, img) and "grayscale(1)" in _filter(browser, img)
        browser.save_screenshot(str(artifacts_dir / "analyst-item-page.png"))
        # j: the next image; s: show it (only it), s again: veiled again.
        _keys(browser, "j", "s")
        assert "blur" not in _filter(browser, imgs[1])
        assert "blur(24px)" in _filter(browser, imgs[0]) and "blur(24px)" in _filter(browser, imgs[2])
        _keys(browser, "s")
        assert "blur(24px)" in _filter(browser, imgs[1])
        # n: not illegal; d records it after the undo window; u undoes it, nothing is sent.
        _keys(browser, "n", "d")
        assert "u to undo" in browser.find_element(By.ID, "pending-decision").text
        _keys(browser, "u")
        assert "Undone" in browser.find_element(By.ID, "pending-decision").text
        browser.execute_script("return new Promise(r => setTimeout(r, 1300))")  # past the window: nothing sent
        assert _item_id(browser) == item_id
        # i, 2: illegal, national; d then Enter: recorded at once.
        _keys(browser, "i", "2")
        assert browser.find_element(By.ID, "verdict-illegal").is_selected()
        assert browser.find_element(By.ID, "category-national").is_selected()
        _keys(browser, "d", Keys.ENTER)
        WebDriverWait(browser, 10).until(lambda b: b.current_url.endswith("/analyst"))
        assert "escalated" in browser.find_element(By.ID, "flash").text
        # x: the next item, from the queue page, by keyboard.
        _keys(browser, "x")
        WebDriverWait(browser, 10).until(lambda b: "/analyst/items/" in b.current_url)
        assert _item_id(browser) != item_id
    with stack.system.sessions() as session:
        store = SqlUnitOfWork(session)
        got = store.items.get(item_id)
        assert got is not None and got.state == "escalated"


def test_second_analyst_confirms_in_its_own_queue(stack: Stack, browser: Any, second_browser: Any) -> None:
    item_id, _ = _page_item(stack, [641])
    ann, bob = _analyst(stack, "ann"), _analyst(stack, "bob")
    with _setting(stack, second_analyst=True):
        _sign_in(browser, stack, ann, f"/analyst/items/{item_id}")
        browser.find_element(By.ID, "verdict-illegal").click()
        browser.find_element(By.ID, "category-baseline").click()
        with _setting(stack, undo_seconds=0.0):
            click_and_wait(browser, browser.find_element(By.ID, "decide"))
        assert "awaiting_confirmation" in browser.find_element(By.ID, "flash").text
        # Its own queue, with its count; Ann never gets her own decision there.
        browser.get(f"{stack.base_url}/analyst?queue=confirmation")
        assert browser.find_element(By.CSS_SELECTOR, f'tr.queue-item[data-item-id="{item_id}"]')
        assert int(browser.find_element(By.CSS_SELECTOR, '.count[data-queue="confirmation"]').text) >= 1
        browser.get(f"{stack.base_url}/analyst/items/{item_id}")
        assert browser.find_element(By.ID, "own-decision")
        assert not browser.find_elements(By.ID, "second-opinion")
        # Bob takes it from the confirmation queue and confirms: escalated.
        _sign_in(second_browser, stack, bob, f"/analyst/items/{item_id}")
        assert "decided" in second_browser.find_element(By.ID, "first-decision").text
        second_browser.find_element(By.ID, "opinion-confirm").click()
        click_and_wait(second_browser, second_browser.find_element(By.ID, "record-opinion"))
        assert "escalated" in second_browser.find_element(By.ID, "flash").text
    with stack.system.sessions() as session:
        store = SqlUnitOfWork(session)
        got = store.items.get(item_id)
        assert got is not None and got.state == "escalated"
        (esc,) = [e for e in store.escalations.since() if e.item_id == item_id]
        assert esc.payload["classification"]["analyst"].startswith("bob-")
        assert "confirms ann-" in esc.payload["classification"]["notes"]


def _gif() -> bytes:
    frames = [Image.new("RGB", (40, 30), c) for c in ((200, 30, 30), (30, 200, 30), (30, 30, 200))]
    out = io.BytesIO()
    frames[0].save(out, format="GIF", save_all=True, append_images=frames[1:], duration=100, loop=0)
    return out.getvalue()


def test_views_are_audited_and_animations_start_still(stack: Stack) -> None:
    base = f"/ws-{uuid.uuid4().hex[:8]}"
    stack.site.add(f"{base}/a.gif", "image/gif", _gif())
    stack.site.add(f"{base}/p.html", "text/html", f'<img src="{base}/a.gif">'.encode())
    with stack.api(None) as api:
        r = api.post("/api/v1/reports", json={"urls": [f"{stack.site_url}{base}/p.html"]})
    (item,) = stack.report_items(r.json()["report_id"], 1, {"awaiting_assessment"})
    item_id = item["item_id"]
    with stack.signed_in("analyst") as http:
        page = http.get(f"/analyst/items/{item_id}")
        assert page.status_code == 200 and 'id="animate-0"' in page.text
        still = http.get(f"/analyst/items/{item_id}/images/0")
        assert still.headers["content-type"] == "image/png" and still.headers["x-hotline-frame"] == "still"
        moving = http.get(f"/analyst/items/{item_id}/images/0?animate=1")
        assert moving.headers["content-type"] == "image/gif" and moving.content == _gif()
    with stack.system.sessions() as session:
        rows = session.scalars(select(AuditLog).where(AuditLog.subject == item_id).order_by(AuditLog.id)).all()
        views = [(r.actor, r.action, r.detail.split(":")[0]) for r in rows]
        assert ("e2e-analyst", "item_viewed", "awaiting_assessment") in views
        assert ("e2e-analyst", "image_viewed", "image 0") in views
        assert ("e2e-analyst", "image_viewed", "image 0 animated") in views
        assert SqlUnitOfWork(session).audit.verify() == []  # in the hash chain, not beside it


def test_operator_resubmits_a_rejected_report_from_the_page(stack: Stack, browser: Any) -> None:
    from hotline.kernel.messages import Outgoing
    from hotline.storage.models import Rejection
    from schemas.reports import ReportSubmitted

    # A channel that bypasses the HTTP check (a CSV import, Kafka): ingest rejects it.
    bad = ReportSubmitted(channel="csv", urls=["http://printer.local/x.jpg"], description="e2e: fix me")
    with stack.system.sessions() as session:
        store = SqlUnitOfWork(session)
        store.reports.create(bad)
        store.enqueue([Outgoing("reports.submitted", bad)])
        store.commit()

    def kept() -> Rejection | None:
        with stack.system.sessions() as session:
            return session.scalars(select(Rejection).where(Rejection.report_id == bad.report_id)).first()

    row = stack.wait_for(kept, what="ingest's rejection on the operators' page")
    assert row.reason_code == "not_on_internet" and row.payload["url"] == "http://printer.local/x.jpg"

    _sign_in(browser, stack, stack.tokens["admin"], "/operations")
    tr = browser.find_element(By.CSS_SELECTOR, f'tr.rejection[data-rejection-id="{row.id}"]')
    assert "not_on_internet" in tr.text and "printer.local" in tr.get_attribute("innerHTML")
    fixed = f"{stack.site_url}/ws-fixed-{uuid.uuid4().hex[:6]}.jpg"
    stack.site.add(fixed.removeprefix(stack.site_url), "image/jpeg", photo_like_jpeg(300, 200, seed=651))
    box = tr.find_element(By.CSS_SELECTOR, "textarea.urls")
    box.clear()
    box.send_keys(fixed)
    click_and_wait(browser, tr.find_element(By.CSS_SELECTOR, "button.resubmit"))
    flash = browser.find_element(By.ID, "flash").text
    assert f"rejection {row.id} resubmitted as report" in flash
    new_report = flash.rsplit(" ", 1)[-1]
    (item,) = stack.report_items(new_report, 1, {"awaiting_assessment"})
    assert item["url"] == fixed
    assert not browser.find_elements(By.CSS_SELECTOR, f'tr.rejection[data-rejection-id="{row.id}"]')
    with stack.system.sessions() as session:
        audit = session.scalars(select(AuditLog).where(AuditLog.action == "rejection_resubmitted",
                                                       AuditLog.subject == str(row.id))).all()
        assert [a.actor for a in audit] == ["e2e-admin"]
