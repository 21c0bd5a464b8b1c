"""The public report form in a real browser with JavaScript switched off: the form must work for
anyone, on any device, and a reporter who typed something wrong must not lose what they typed."""

from __future__ import annotations

from typing import Any

import pytest
from selenium.webdriver.common.by import By

from hashing.synthetic import photo_like_jpeg
from tests.e2e.conftest import Stack, click_and_wait

pytestmark = pytest.mark.e2e


def _fill(browser: Any, urls: list[str], description: str) -> None:
    field = browser.find_element(By.ID, "urls")
    field.clear()
    field.send_keys("\n".join(urls))
    desc = browser.find_element(By.ID, "description")
    desc.clear()
    desc.send_keys(description)


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
