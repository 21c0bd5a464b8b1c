"""The public report form in a real browser with JavaScript switched off: the form must work for
anyone, on any device, and a reporter who typed something wrong must not lose what they typed."""

from __future__ import annotations

from typing import Any

import pytest
from selenium.webdriver.common.by import By

from hashing.synthetic import photo_like_jpeg
from tests.e2e.conftest import Stack, click_and_wait

pytestmark = pytest.mark.e2e


# Longer texts are set, not typed (``_fill``).
LONGEST_TYPED = 200


def _fill(browser: Any, urls: list[str], description: str) -> None:
    field = browser.find_element(By.ID, "urls")
    field.clear()
    field.send_keys("\n".join(urls))
    desc = browser.find_element(By.ID, "description")
    desc.clear()
    if len(description) <= LONGEST_TYPED:
        desc.send_keys(description)
    else:
        # WebDriver types a key event per character: 10,000 of them took 5-10 s a page. The
        # form posts the field's value either way; what is tested is the answer to it.
        desc.send_keys(description[:LONGEST_TYPED])
        browser.execute_script(
            "arguments[0].value = arguments[1];"
            "arguments[0].dispatchEvent(new Event('input', {bubbles: true}));",
            desc, description,
        )


def test_report_two_urls_without_javascript(stack: Stack, browser_without_js: Any) -> None:
    browser = browser_without_js
    stack.site.add("/form/unknown.jpg", "image/jpeg", photo_like_jpeg(640, 480, seed=301))
    urls = [f"{stack.site_url}/form/unknown.jpg", f"{stack.site_url}/form/deleted.jpg"]

    browser.get(f"{stack.base_url}/report")
    _fill(browser, urls, "e2e: two addresses from the public form")
    click_and_wait(browser, browser.find_element(By.ID, "submit"))

    report_id = browser.find_element(By.ID, "report-id").text.strip()
    assert report_id
    assert "Thank you" in browser.find_element(By.ID, "result").text

    # The report exists, with both addresses, and the pipeline takes it from there.
    with stack.api(None) as anonymous:
        body = anonymous.get(f"/api/v1/reports/{report_id}").json()
    assert body["report_id"] == report_id
    items = stack.report_items(report_id, 2, {"awaiting_assessment", "closed_offline"})
    assert sorted(i["url"] for i in items) == sorted(urls)
    by_url = {i["url"]: i for i in items}
    assert by_url[urls[0]]["state"] == "awaiting_assessment"
    assert by_url[urls[1]]["state"] == "closed_offline"
    with stack.system.sessions() as session:
        from hotline.storage.unit_of_work import SqlUnitOfWork

        report = SqlUnitOfWork(session).reports.get(report_id)
        assert report is not None and report.channel == "web"
        assert report.description == "e2e: two addresses from the public form"


def test_bad_url_shows_the_reason_and_keeps_the_text(stack: Stack, browser_without_js: Any) -> None:
    browser = browser_without_js
    typed = ["ftp://files.example.test/x.jpg", f"{stack.site_url}/fine.jpg"]
    description = "e2e: one address is not a web address"

    browser.get(f"{stack.base_url}/report")
    _fill(browser, typed, description)
    click_and_wait(browser, browser.find_element(By.ID, "submit"))

    errors = browser.find_element(By.ID, "errors").text
    assert "not sent" in errors
    assert "ftp://files.example.test/x.jpg" in errors  # names the offending address ...
    assert "ftp" in errors.split("x.jpg", 1)[1].lower()  # ... and why (the scheme)
    assert browser.find_elements(By.ID, "report-id") == []
    # What the reporter typed is still there to correct.
    assert browser.find_element(By.ID, "urls").get_attribute("value").splitlines() == typed
    assert browser.find_element(By.ID, "description").get_attribute("value") == description


# --------------------------------------------------------------------------- languages, access, phones


def _submit_valid(stack: Stack, browser: Any, name: str) -> str:
    stack.site.add(f"/form/{name}.jpg", "image/jpeg", photo_like_jpeg(320, 240, seed=sum(map(ord, name))))
    _fill(browser, [f"{stack.site_url}/form/{name}.jpg"], f"e2e: {name}")
    browser.find_element(By.ID, "reporter_email").clear()
    click_and_wait(browser, browser.find_element(By.ID, "submit"))
    report_id = str(browser.find_element(By.ID, "report-id").text.strip())
    assert len(report_id) == 32, report_id
    with stack.api() as api:
        assert api.get(f"/api/v1/reports/{report_id}").json()["report_id"] == report_id
    return report_id


def _submit_invalid(browser: Any, bad: str) -> str:
    _fill(browser, [bad], "e2e: a bad address")
    click_and_wait(browser, browser.find_element(By.ID, "submit"))
    summary = str(browser.find_element(By.ID, "errors").text)
    # The summary links to the field, and the field points at its inline error.
    link = browser.find_element(By.CSS_SELECTOR, "#errors a[href='#urls']")
    assert bad in link.text
    urls = browser.find_element(By.ID, "urls")
    assert urls.get_attribute("aria-invalid") == "true"
    assert "urls-error" in (urls.get_attribute("aria-describedby") or "").split()
    assert bad in browser.find_element(By.ID, "urls-error").text
    return summary


@pytest.mark.parametrize("javascript", [True, False], ids=["js", "nojs"])
def test_english_form_valid_and_invalid(stack: Stack, browser: Any, browser_without_js: Any, javascript: bool) -> None:
    driver = browser if javascript else browser_without_js
    driver.get(f"{stack.base_url}/report")
    assert driver.find_element(By.TAG_NAME, "html").get_attribute("lang") == "en"
    summary = _submit_invalid(driver, "http://printer.local/scan.jpg")
    assert "The report was not sent" in summary and "cannot be on the internet" in summary
    assert driver.find_element(By.TAG_NAME, "html").get_attribute("lang") == "en"
    _submit_valid(stack, driver, f"en-{javascript}")
    assert "Thank you" in driver.find_element(By.ID, "result").text


@pytest.mark.parametrize("javascript", [True, False], ids=["js", "nojs"])
def test_the_switch_turns_the_form_dutch_and_remembers_it(
    stack: Stack, browser: Any, browser_without_js: Any, javascript: bool
) -> None:
    driver = browser if javascript else browser_without_js
    driver.get(f"{stack.base_url}/report")
    click_and_wait(driver, driver.find_element(By.ID, "lang-nl"))
    assert driver.find_element(By.TAG_NAME, "html").get_attribute("lang") == "nl"
    assert driver.find_element(By.ID, "submit").text == "Melding versturen"
    driver.get(f"{stack.base_url}/report")  # the cookie remembers the choice
    assert driver.find_element(By.TAG_NAME, "html").get_attribute("lang") == "nl"

    summary = _submit_invalid(driver, "ftp://files.example.test/x.jpg")
    assert "De melding is niet verstuurd" in summary
    assert "alleen http- en https-adressen" in summary and "ftp:" in summary.split("x.jpg", 1)[1]
    _submit_valid(stack, driver, f"nl-{javascript}")
    assert "Dank u wel" in driver.find_element(By.ID, "result").text
    assert driver.find_element(By.TAG_NAME, "html").get_attribute("lang") == "nl"

    click_and_wait(driver, driver.find_element(By.ID, "lang-en"))  # and back
    assert driver.find_element(By.TAG_NAME, "html").get_attribute("lang") == "en"


def test_the_browser_language_picks_dutch(stack: Stack, dutch_browser: Any) -> None:
    dutch_browser.get(f"{stack.base_url}/report")
    assert dutch_browser.find_element(By.TAG_NAME, "html").get_attribute("lang") == "nl"
    assert "Seksueel kindermisbruikmateriaal melden" in dutch_browser.find_element(By.TAG_NAME, "h1").text
    _submit_valid(stack, dutch_browser, "nl-accept-language")
    assert "Dank u wel" in dutch_browser.find_element(By.ID, "result").text


def _with_every_error(browser: Any) -> None:
    _fill(browser, ["notaurl", "ftp://files.example.test/x.jpg"], "x" * 10_001)
    email = browser.find_element(By.ID, "reporter_email")
    email.clear()
    email.send_keys("x" * 195 + "@a.test")  # passes the browser's own check, too long for us
    click_and_wait(browser, browser.find_element(By.ID, "submit"))
    for field in ("urls", "description", "reporter_email"):
        assert browser.find_element(By.ID, f"{field}-error").text


@pytest.mark.parametrize("lang", ["en", "nl"])
def test_axe_finds_no_violations(stack: Stack, browser: Any, lang: str) -> None:
    from tests.e2e.axe import axe_violations, describe

    # The audit can fail: a page with known faults shows them (no lang, an image without alt text).
    browser.get("data:text/html,<!doctype html><title>t</title><main><img src='data:,'></main>")
    assert {"html-has-lang", "image-alt"} <= {v["id"] for v in axe_violations(browser)}

    browser.get(f"{stack.base_url}/report?lang={lang}")
    pages = {"form": axe_violations(browser)}
    _with_every_error(browser)
    assert browser.find_element(By.TAG_NAME, "html").get_attribute("lang") == lang
    pages["form with errors"] = axe_violations(browser)
    _submit_valid(stack, browser, f"axe-{lang}")
    pages["thank-you page"] = axe_violations(browser)
    found = {page: describe(v) for page, v in pages.items() if v}
    assert not found, "\n".join(f"--- {page} ({lang})\n{text}" for page, text in found.items())


def _no_horizontal_scroll(browser: Any) -> bool:
    return bool(browser.execute_script("return document.documentElement.scrollWidth <= window.innerWidth"))


def test_phone_screenshot_and_reflow(stack: Stack, browser: Any, artifacts_dir: Any) -> None:
    # A phone (390 x 844 CSS pixels, as an iPhone 12-15) ...
    browser.execute_cdp_cmd("Emulation.setDeviceMetricsOverride",
                            {"width": 390, "height": 844, "deviceScaleFactor": 2, "mobile": True})
    browser.get(f"{stack.base_url}/report")
    assert _no_horizontal_scroll(browser)
    button = browser.find_element(By.ID, "submit")
    assert button.size["width"] >= 300  # full width, an easy target for a thumb
    target = artifacts_dir / "report-form-phone.png"
    browser.save_screenshot(str(target))
    assert target.stat().st_size > 10_000
    _with_every_error(browser)
    assert _no_horizontal_scroll(browser)  # long URLs in the errors wrap
    browser.save_screenshot(str(artifacts_dir / "report-form-phone-errors.png"))
    # ... and 200 % zoom of a 1280 px window down to WCAG's reflow width of 320 px.
    for width in (640, 320):
        browser.execute_cdp_cmd("Emulation.setDeviceMetricsOverride",
                                {"width": width, "height": 800, "deviceScaleFactor": 2, "mobile": False})
        browser.get(f"{stack.base_url}/report")
        assert _no_horizontal_scroll(browser), f"horizontal scrolling at {width} CSS pixels"


def test_the_honeypot_is_out_of_reach(stack: Stack, browser: Any) -> None:
    """People (sighted, keyboard, screen reader) never meet the honeypot field."""
    browser.get(f"{stack.base_url}/report")
    trap = browser.find_element(By.ID, "website")
    assert not trap.is_displayed() or trap.location["x"] < 0
    assert trap.get_attribute("tabindex") == "-1" and trap.get_attribute("autocomplete") == "off"
    assert browser.execute_script("return arguments[0].closest('[aria-hidden=true]') !== null", trap)
    # Tabbing through the page never lands on it.
    from selenium.webdriver.common.keys import Keys

    seen = []
    body = browser.find_element(By.TAG_NAME, "body")
    body.send_keys(Keys.TAB)
    for _ in range(12):
        seen.append(browser.switch_to.active_element.get_attribute("id"))
        browser.switch_to.active_element.send_keys(Keys.TAB)
    assert "website" not in seen
    assert seen.index("urls") < seen.index("description") < seen.index("reporter_email") < seen.index("submit")
