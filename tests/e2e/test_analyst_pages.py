"""The analyst pages in a real browser: sign-in with a token, the queue, the item with its image
fetched live and shown blurred until asked, and a decision that escalates new material.

Plus, over plain HTTP against the same running app, the guards a browser test cannot see: the
no-store image view that only serves raster images, and refused cross-site form posts.
"""

from __future__ import annotations

import hashlib
import uuid
from typing import Any

import pytest
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait

from hashing.synthetic import photo_like_jpeg
from hotline.storage.unit_of_work import SqlUnitOfWork
from tests.e2e.conftest import Stack, click_and_wait

pytestmark = pytest.mark.e2e


def _unknown_image_item(stack: Stack, seed: int) -> tuple[str, str, str, bytes]:
    """Report a synthetic image the bank does not know; return (report id, item id, URL, bytes)
    once the item waits for an analyst."""
    data = photo_like_jpeg(800, 600, seed=seed)
    path = f"/analyst-e2e/{uuid.uuid4().hex[:8]}.jpg"
    stack.site.add(path, "image/jpeg", data)
    url = f"{stack.site_url}{path}"
    with stack.api(None) as api:
        r = api.post("/api/v1/reports", json={"urls": [url], "description": "e2e: unknown image"})
    assert r.status_code == 202, r.text
    report_id = r.json()["report_id"]
    (item,) = stack.report_items(report_id, 1, {"awaiting_assessment"})
    return report_id, item["item_id"], url, data


def _sign_in(browser: Any, stack: Stack, role: str) -> None:
    browser.find_element(By.ID, "token").send_keys(stack.tokens[role])
    click_and_wait(browser, browser.find_element(By.ID, "sign-in"))


def _filter(browser: Any, element: Any) -> str:
    return str(browser.execute_script("return getComputedStyle(arguments[0]).filter", element))


def test_analyst_signs_in_views_blurred_image_and_escalates(stack: Stack, browser: Any) -> None:
    report_id, item_id, url, data = _unknown_image_item(stack, seed=401)
    path = url.removeprefix(stack.site_url)

    # Anonymous: the queue sends you to sign in first, and back afterwards.
    browser.get(f"{stack.base_url}/analyst")
    assert browser.current_url == f"{stack.base_url}/login?next=/analyst"
    _sign_in(browser, stack, "analyst")
    assert browser.current_url == f"{stack.base_url}/analyst"
    cookie = browser.get_cookie("hotline_token")
    assert cookie is not None and cookie["httpOnly"] is True and cookie["sameSite"] == "Strict"

    # The queue: URL, where it is hosted, why it is here, its hashes.
    row = browser.find_element(By.CSS_SELECTOR, f'tr.queue-item[data-item-id="{item_id}"]')
    text = row.text
    assert url in text and "NL" in text and "Hoster A B.V." in text
    assert "analyst" in text  # the reason: waiting for an analyst's assessment
    sha256 = row.find_element(By.CSS_SELECTOR, '[data-hash="sha256"]').text
    assert sha256 == hashlib.sha256(data).hexdigest()
    assert row.find_element(By.CSS_SELECTOR, '[data-hash="pdq"]').text

    # The item: the image is fetched live from the hoster, through the system, and blurred.
    fetched_before = stack.site.requests.count(path)
    click_and_wait(browser, row.find_element(By.LINK_TEXT, url))
    assert browser.current_url == f"{stack.base_url}/analyst/items/{item_id}"
    img = browser.find_element(By.ID, "img-0")
    WebDriverWait(browser, 10).until(
        lambda b: b.execute_script("return arguments[0].complete && arguments[0].naturalWidth", img) == 800
    )
    assert stack.site.requests.count(path) == fetched_before + 1
    assert img.get_attribute("src") == f"{stack.base_url}/analyst/items/{item_id}/images/0"
    veiled = _filter(browser, img)
    assert "blur(24px)" in veiled and "grayscale(1)" in veiled
    assert [e.text for e in browser.find_elements(By.CSS_SELECTOR, "#timeline li")]

    toggle = browser.find_element(By.CSS_SELECTOR, 'button.toggle[data-target="img-0"]')
    assert toggle.is_displayed() and toggle.text == "show"
    toggle.click()
    assert "blur" not in _filter(browser, img)
    assert toggle.text == "hide" and toggle.get_attribute("aria-pressed") == "true"
    toggle.click()
    assert "blur(24px)" in _filter(browser, img)

    # The decision: illegal, national. Back to the queue with word of what happened.
    browser.find_element(By.ID, "verdict-illegal").click()
    browser.find_element(By.ID, "category-national").click()
    browser.find_element(By.ID, "notes").send_keys("e2e: synthetic test image")
    click_and_wait(browser, browser.find_element(By.ID, "decide"))
    assert browser.current_url == f"{stack.base_url}/analyst"
    flash = browser.find_element(By.ID, "flash").text
    assert url in flash and "escalated" in flash
    assert not browser.find_elements(By.CSS_SELECTOR, f'tr.queue-item[data-item-id="{item_id}"]')

    # The flash is shown once.
    browser.get(f"{stack.base_url}/analyst")
    assert not browser.find_elements(By.ID, "flash")

    (item,) = stack.report_items(report_id, 1)
    assert item["state"] == "escalated"
    assert "police" in item["reason"]
    with stack.system.sessions() as session:
        store = SqlUnitOfWork(session)
        escalations = [e for e in store.escalations.since() if e.item_id == item_id]
        assert len(escalations) == 1
        payload = escalations[0].payload
        assert payload["url"] == url
        assert payload["classification"]["analyst"] == "e2e-analyst"
        assert payload["classification"]["category"] == "national"
        assert payload["images"][0]["sha256"] == hashlib.sha256(data).hexdigest()

    # Signing out ends the session in this browser.
    click_and_wait(browser, browser.find_element(By.ID, "logout"))
    assert browser.current_url.startswith(f"{stack.base_url}/login")
    assert browser.get_cookie("hotline_token") is None
    browser.get(f"{stack.base_url}/analyst")
    assert browser.current_url.startswith(f"{stack.base_url}/login")


def test_decision_form_works_without_javascript(stack: Stack, browser_without_js: Any) -> None:
    browser = browser_without_js
    report_id, item_id, _, _ = _unknown_image_item(stack, seed=405)
    item_page = f"{stack.base_url}/analyst/items/{item_id}"

    browser.get(item_page)  # a link from a colleague: sign in, then straight to the item
    assert browser.current_url == f"{stack.base_url}/login?next=/analyst/items/{item_id}"
    _sign_in(browser, stack, "analyst")
    assert browser.current_url == item_page

    # Without scripts the image stays veiled (CSS alone), and the useless button stays hidden.
    img = browser.find_element(By.ID, "img-0")
    assert "blur(24px)" in img.value_of_css_property("filter")
    assert not browser.find_element(By.CSS_SELECTOR, "button.toggle").is_displayed()

    browser.find_element(By.ID, "verdict-not-illegal").click()
    browser.find_element(By.ID, "notes").send_keys("e2e: nothing illegal")
    click_and_wait(browser, browser.find_element(By.ID, "decide"))
    assert browser.current_url == f"{stack.base_url}/analyst"
    assert "closed_not_illegal" in browser.find_element(By.ID, "flash").text

    (item,) = stack.report_items(report_id, 1)
    assert item["state"] == "closed_not_illegal"
    with stack.system.sessions() as session:
        assert not [e for e in SqlUnitOfWork(session).escalations.since() if e.item_id == item_id]

    # The decided item has nothing left to decide.
    browser.get(item_page)
    assert browser.find_element(By.ID, "decided").text.startswith("This item is closed_not_illegal")
    assert not browser.find_elements(By.ID, "decision")


def test_hoster_cannot_open_the_analyst_pages(stack: Stack, browser: Any) -> None:
    _, item_id, _, _ = _unknown_image_item(stack, seed=402)
    browser.get(f"{stack.base_url}/login")
    _sign_in(browser, stack, "hoster")
    # No page is for hosters: /login refuses them a session cookie (issue 12).
    assert browser.current_url.startswith(f"{stack.base_url}/login")
    assert "has no pages" in browser.find_element(By.ID, "login-error").text
    assert browser.get_cookie("hotline_token") is None
    browser.get(f"{stack.base_url}/analyst/items/{item_id}")
    assert browser.current_url.startswith(f"{stack.base_url}/login")
    assert not browser.find_elements(By.ID, "img-0")

    # With its token in the header (the API's way), the pages still answer 403.
    with stack.api("hoster") as http:
        assert http.get("/analyst").status_code == 403
        assert http.get(f"/analyst/items/{item_id}").status_code == 403
        assert http.get(f"/analyst/items/{item_id}/images/0").status_code == 403
    with stack.api(None) as anonymous:
        assert anonymous.get(f"/analyst/items/{item_id}/images/0").status_code == 401


def test_image_view_is_live_no_store_and_raster_only(stack: Stack) -> None:
    _, item_id, url, data = _unknown_image_item(stack, seed=403)
    path = url.removeprefix(stack.site_url)
    with stack.api("analyst") as api:
        r = api.get(f"/analyst/items/{item_id}/images/0")
        assert r.status_code == 200
        assert r.content == data
        assert r.headers["content-type"] == "image/jpeg"
        assert r.headers["cache-control"] == "no-store"
        assert r.headers["x-content-type-options"] == "nosniff"
        assert api.get(f"/analyst/items/{item_id}/images/1").status_code == 404

        # The hoster now serves a page with a script at that address: it must never be
        # served from the hotline's origin, whatever Content-Type the hoster claims.
        stack.site.add(path, "image/jpeg", b"<html><script>alert(1)</script></html>")
        r = api.get(f"/analyst/items/{item_id}/images/0")
        assert r.status_code == 502 and "raster image" in r.text
        assert r.headers["content-type"].startswith("text/plain")

        stack.site.pages.pop(path)
        r = api.get(f"/analyst/items/{item_id}/images/0")
        assert r.status_code == 502 and "HTTP 404" in r.text

    # Nothing of the image reached the database.
    with stack.system.sessions() as session:
        from sqlalchemy import text

        for (value,) in session.execute(text("SELECT value FROM bus_messages")):
            assert "<script>" not in value


def test_cross_site_decision_is_refused(stack: Stack) -> None:
    _, item_id, _, _ = _unknown_image_item(stack, seed=404)
    form = {"verdict": "not_illegal", "category": "", "notes": "forged"}
    with stack.signed_in("analyst") as http:
        for headers in ({"Origin": "http://evil.test"}, {"Referer": "http://evil.test/page"}, {},
                        {"Origin": "null"}):
            r = http.post(f"/analyst/items/{item_id}/decision", data=form, headers=headers)
            assert r.status_code == 403, headers
        state = http.get(f"/analyst/items/{item_id}")
        assert state.status_code == 200 and 'id="item-state">awaiting_assessment<' in state.text

        # A same-origin post without a verdict is sent back with the reason, nothing decided.
        r = http.post(f"/analyst/items/{item_id}/decision", data={"verdict": ""},
                      headers={"Origin": stack.base_url})
        assert r.status_code == 422 and "Choose a verdict" in r.text

    with stack.api(None) as http:
        # Sign-in refuses a token posted from elsewhere, and a wrong token.
        r = http.post("/login", data={"token": stack.tokens["analyst"]}, headers={"Origin": "http://evil.test"})
        assert r.status_code == 403 and "hotline_token" not in r.headers.get("set-cookie", "")
        r = http.post("/login", data={"token": "not-a-token"}, headers={"Origin": stack.base_url})
        assert r.status_code == 401 and "not-a-token" not in r.text
        # A login link cannot send the analyst to another site.
        r = http.post("/login", data={"token": stack.tokens["analyst"], "next": "//evil.test/x"},
                      headers={"Origin": stack.base_url})
        assert r.status_code == 303 and r.headers["location"] == "/analyst"
