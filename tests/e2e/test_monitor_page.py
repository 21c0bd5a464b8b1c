"""The public monitor in headless Chromium, with JavaScript off: the ranking of hosters slowest
first, the SVG charts drawn, nothing of a URL shown; and a screenshot in the test artifacts
folder (``var/test-artifacts/monitor.png``)."""

from __future__ import annotations

import base64
import uuid
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from selenium.webdriver.common.by import By

from hotline.kernel.clock import now
from hotline.storage.unit_of_work import SqlUnitOfWork
from tests.e2e.conftest import Stack

pytestmark = pytest.mark.e2e

H = timedelta(hours=1)


def _noticed(store: SqlUnitOfWork, hoster: str, noticed: datetime, removed: datetime | None) -> str:
    """An item noticed to ``hoster`` at ``noticed`` (and found removed at ``removed``), written
    through the repositories along the allowed transitions, as the stages would."""
    url = f"http://images.monitor-e2e.test/{uuid.uuid4().hex}.jpg"
    item = store.items.create(url)
    item.hoster, item.country, item.first_seen = hoster, "NL", noticed - H
    store.items.set_state(item, "notice_queued", "known material hosted at home", "classify")
    notice = store.notices.reserve(f"e2e-{item.id}", item.id, hoster, "abuse@monitor-e2e.test", f"<{item.id}@e2e>")
    notice.status, notice.sent_at = "sent", noticed
    store.items.set_state(item, "notice_sent", f"notice sent to {hoster}", "notify")
    if removed is not None:
        store.items.set_state(item, "removed", "gone", "recheck")
        store.flush()
        store.items.events(item.id)[-1].at = removed  # the re-check found it gone then
    return url


def _screenshot(browser: Any, path: Path) -> None:
    """The whole page, not only the window (CDP works with JavaScript off)."""
    metrics = browser.execute_cdp_cmd("Page.getLayoutMetrics", {})
    size = metrics.get("cssContentSize") or metrics["contentSize"]
    shot = browser.execute_cdp_cmd("Page.captureScreenshot", {
        "format": "png", "captureBeyondViewport": True,
        "clip": {"x": 0, "y": 0, "width": size["width"], "height": size["height"], "scale": 1},
    })
    path.write_bytes(base64.b64decode(shot["data"]))


def test_monitor_page_ranks_hosters_and_draws_charts(stack: Stack, browser_without_js: Any,
                                                     artifacts_dir: Path) -> None:
    browser = browser_without_js
    t = now()
    tag = uuid.uuid4().hex[:6]
    slow, medium, quick = f"Slow Hosting {tag}", f"Medium Hosting {tag}", f"Quick Hosting {tag}"
    with stack.system.sessions() as session:
        store = SqlUnitOfWork(session)
        urls = [
            _noticed(store, quick, t - 20 * 24 * H, t - 20 * 24 * H + 2 * H),
            _noticed(store, quick, t - 10 * 24 * H, t - 10 * 24 * H + 4 * H),
            _noticed(store, slow, t - 15 * 24 * H, t - 15 * 24 * H + 60 * H),
            _noticed(store, slow, t - 8 * 24 * H, t - 8 * 24 * H + 30 * H),
            _noticed(store, slow, t - 3 * 24 * H, None),  # still online, past the deadline
            _noticed(store, medium, t - 6 * 24 * H, t - 6 * 24 * H + 12 * H),
        ]
        store.commit()

    browser.get(f"{stack.base_url}/monitor")
    assert browser.title.startswith("Time to removal per hoster")

    # The ranking: slowest first (other tests' hosters may be listed too).
    names = [e.text for e in browser.find_elements(By.CSS_SELECTOR, "#ranking tr.hoster td.name")]
    ours = [n for n in names if n.endswith(tag)]
    assert ours == [slow, medium, quick]
    row = browser.find_element(By.XPATH, f'//table[@id="ranking"]//tr[td[@class="name"]="{slow}"]')
    cells = [c.text for c in row.find_elements(By.TAG_NAME, "td")]
    assert cells[2:9] == ["3", "2", "30 h", "2.5 d", "0 %", "1", "1"]

    # The charts: four inline SVGs, drawn, with a bar per hoster in the ranking chart.
    charts = browser.find_elements(By.CSS_SELECTOR, "figure.chart svg")
    assert len(charts) == 4
    for svg in charts:
        assert svg.size["width"] > 100 and svg.size["height"] > 50
        assert svg.find_elements(By.TAG_NAME, "rect")
    ranking = browser.find_element(By.ID, "chart-ranking")
    titles = [e.get_attribute("textContent") for e in ranking.find_elements(By.CSS_SELECTOR, "g.bar > title")]
    assert [x.split(":")[0] for x in titles if tag in x] == [slow, medium, quick]
    assert "6–24 h" in browser.find_element(By.ID, "chart-distribution").text

    page = browser.page_source
    assert not any(url in page for url in urls) and "monitor-e2e.test" not in page

    path = artifacts_dir / "monitor.png"
    _screenshot(browser, path)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 10_000
