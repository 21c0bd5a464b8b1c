"""The operators' page in a real browser: an admin signs in, finds a notice whose delivery is
unknown on /operations, checks its Message-ID and resolves it with a button (resend: the running
notify stage sends it to the stack's SMTP server)."""

from __future__ import annotations

import uuid
from typing import Any

import pytest
from selenium.webdriver.common.by import By

from hotline.kernel.states import ItemState
from hotline.storage.unit_of_work import SqlUnitOfWork
from schemas.facts import BankMatch, HostingFacts, ImageFacts
from schemas.items import ItemClassified
from services.notify.notice import message_id
from tests.e2e.conftest import HOSTER_HOST, Stack, click_and_wait

pytestmark = pytest.mark.e2e


def _unconfirmed_notice(stack: Stack) -> tuple[str, str, str]:
    """A notice whose delivery is unknown, as notify leaves one (the item notice_unconfirmed);
    returns (notice id, item id, Message-ID)."""
    url = f"{stack.site_url}/ops-e2e/{uuid.uuid4().hex[:8]}.jpg"
    with stack.system.sessions() as session:
        store = SqlUnitOfWork(session)
        item = store.items.create(url)
        hosting = HostingFacts(host=HOSTER_HOST, ip="127.0.0.2", country="NL", asn=64501, hoster="Hoster A B.V.",
                               abuse="abuse@hoster-a.test", source="hosting_file")
        image = ImageFacts(url=url, md5="0" * 31 + "1", sha1="0" * 39 + "2", sha256="0" * 63 + "3", pdq="f" * 64,
                           match=BankMatch(entry_id=1, signal="sha256", distance=0, category="baseline",
                                           source="e2e"))
        item.classification = ItemClassified(
            item_id=item.id, url=url, online=True, images=[image], hosting=hosting, known=True, route="ntd",
            reason="known material hosted at home").model_dump(mode="json")
        item.country, item.hoster = "NL", "Hoster A B.V."
        store.items.set_state(item, ItemState.NOTICE_QUEUED, "known material", "classify")
        notice_id = f"ntd-{item.id}"
        mid = message_id(notice_id, "hotline-e2e.test")
        notice = store.notices.reserve(notice_id, item.id, "Hoster A B.V.", "abuse@hoster-a.test", mid)
        notice.status = "delivery_unknown"
        store.items.set_state(item, ItemState.NOTICE_UNCONFIRMED, f"no final answer from the mail server; "
                              f"not re-sent to avoid a duplicate: an operator checks the SMTP log for {mid}",
                              "notify")
        store.commit()
        return notice_id, item.id, mid


def _status(stack: Stack, notice_id: str, item_id: str) -> tuple[str | None, str | None]:
    with stack.system.sessions() as session:
        store = SqlUnitOfWork(session)
        notice, item = store.notices.get(notice_id), store.items.get(item_id)
        return (notice.status if notice else None), (item.state if item else None)


def test_admin_resolves_an_unconfirmed_notice_with_a_button(stack: Stack, browser: Any) -> None:
    notice_id, item_id, mid = _unconfirmed_notice(stack)

    browser.get(f"{stack.base_url}/operations")
    assert browser.current_url == f"{stack.base_url}/login?next=/operations"
    browser.find_element(By.ID, "token").send_keys(stack.tokens["admin"])
    click_and_wait(browser, browser.find_element(By.ID, "sign-in"))
    assert browser.current_url == f"{stack.base_url}/operations"

    row = browser.find_element(By.CSS_SELECTOR, f'tr.notice[data-notice-id="{notice_id}"]')
    assert row.get_attribute("data-status") == "delivery_unknown"
    assert row.find_element(By.CSS_SELECTOR, ".message-id").text == mid
    assert row.find_element(By.CSS_SELECTOR, ".abuse").text == "abuse@hoster-a.test"
    assert "Hoster A B.V." in row.text and "SMTP log" in row.text

    # The operator found no trace of it in the SMTP log: send it again.
    click_and_wait(browser, row.find_element(By.CSS_SELECTOR, "button.resend"))
    assert browser.current_url == f"{stack.base_url}/operations"
    assert "sent again" in browser.find_element(By.ID, "flash").text
    assert not browser.find_elements(By.CSS_SELECTOR, f'tr.notice[data-notice-id="{notice_id}"]')
    stack.wait_for(lambda: _status(stack, notice_id, item_id) == ("sent", "notice_sent"),
                   what="notify to send the notice again")
    with stack.system.sessions() as session:
        events = SqlUnitOfWork(session).items.events(item_id)
        assert any(e.stage == "operations" and "e2e-admin" in e.detail for e in events)
