"""The police page in a real browser (headless Chromium): a police officer signs in, sees a new
escalation with its facts (hashes, never an image), puts it on hold with a reason and releases
it; the running escalate and notify stages then send the NTD. Screenshot in
``var/test-artifacts/police-page.png``."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import pytest
from selenium.webdriver.common.by import By

from hotline.kernel.states import ItemState
from hotline.storage.unit_of_work import SqlUnitOfWork
from schemas.facts import HostingFacts, ImageFacts
from schemas.items import ItemClassified
from services.assessment.logic import assess
from tests.e2e.conftest import HOSTER_HOST, Stack, click_and_wait

pytestmark = pytest.mark.e2e


def _escalation(stack: Stack) -> tuple[str, str, str]:
    """An item an analyst has just confirmed as new material; (escalation id, item id, sha256)."""
    url = f"{stack.site_url}/police-e2e/{uuid.uuid4().hex[:8]}.jpg"
    sha256 = uuid.uuid4().hex * 2
    with stack.system.sessions() as session:
        store = SqlUnitOfWork(session)
        item = store.items.create(url)
        hosting = HostingFacts(host=HOSTER_HOST, ip="127.0.0.2", country="NL", asn=64501, hoster="Hoster A B.V.",
                               abuse="abuse@hoster-a.test", source="hosting_file")
        image = ImageFacts(url=url, md5=sha256[:32], sha1=sha256[:40], sha256=sha256, pdq="f" * 64)
        item.classification = ItemClassified(
            item_id=item.id, url=url, online=True, images=[image], hosting=hosting, route="assessment",
            reason="1 image(s) not in the bank: waiting for an analyst").model_dump(mode="json")
        item.country, item.hoster = "NL", "Hoster A B.V."
        store.items.set_state(item, ItemState.AWAITING_ASSESSMENT, "unknown material", "classify")
        store.enqueue(assess(store, item.id, verdict="illegal", category="baseline", analyst="e2e-analyst"))
        store.commit()
        return f"pol-{item.id}", item.id, sha256


def _state(stack: Stack, escalation_id: str, item_id: str) -> tuple[str | None, str | None, str | None]:
    with stack.system.sessions() as session:
        store = SqlUnitOfWork(session)
        esc, item = store.escalations.get(escalation_id), store.items.get(item_id)
        return (esc.state if esc else None), (esc.outcome if esc else None), (item.state if item else None)


def test_police_hold_and_release_on_the_page(stack: Stack, browser: Any, artifacts_dir: Path) -> None:
    escalation_id, item_id, sha256 = _escalation(stack)

    browser.get(f"{stack.base_url}/police")
    assert browser.current_url == f"{stack.base_url}/login?next=/police"
    browser.find_element(By.ID, "token").send_keys(stack.tokens["police"])
    click_and_wait(browser, browser.find_element(By.ID, "sign-in"))
    assert browser.current_url == f"{stack.base_url}/police"

    def row() -> Any:
        return browser.find_element(By.CSS_SELECTOR, f'tr.escalation[data-escalation-id="{escalation_id}"]')

    assert browser.find_elements(By.CSS_SELECTOR, "tr.escalation")[0].get_attribute("data-escalation-id") == escalation_id
    assert row().get_attribute("data-state") == "new"
    assert sha256 in row().text and "Hoster A B.V." in row().text and "baseline" in row().text
    assert browser.find_elements(By.TAG_NAME, "img") == []  # hashes only, never an image

    row().find_element(By.CSS_SELECTOR, "input.reason").send_keys("investigation needs it online")
    click_and_wait(browser, row().find_element(By.CSS_SELECTOR, "button.hold"))
    assert "put on hold" in browser.find_element(By.ID, "flash").text
    assert row().get_attribute("data-state") == "on_hold"
    assert "investigation needs it online" in row().find_element(By.CSS_SELECTOR, ".hold-reason").text
    assert not row().find_elements(By.CSS_SELECTOR, "button.hold")
    assert _state(stack, escalation_id, item_id)[::2] == ("on_hold", "escalated")

    click_and_wait(browser, row().find_element(By.CSS_SELECTOR, "button.release"))
    assert "released" in browser.find_element(By.ID, "flash").text
    assert row().get_attribute("data-state") == "released"
    stack.wait_for(lambda: _state(stack, escalation_id, item_id)[2] == "notice_sent", what="the NTD after the release")
    _, outcome, _ = _state(stack, escalation_id, item_id)
    assert outcome is not None and outcome.startswith(f"notice ntd-{item_id} to abuse@hoster-a.test")
    browser.refresh()
    assert f"notice ntd-{item_id}" in row().find_element(By.CSS_SELECTOR, ".outcome").text
    browser.save_screenshot(str(artifacts_dir / "police-page.png"))
