"""An unrelated report is never delayed by more than the per-item deadline (issue 12, defect 1).

The embedded runtime classifies one item at a time. A hoster whose server sends its response
headers one byte every 0.2 s (well inside the 5 s per-phase timeout, so httpx's read timeout
never fires) once held that thread until the server gave up (here: 40 s; in the probe 241 s).
Now the item's deadline (3 s here) ends it, and a normal report submitted right after is
classified within that deadline plus a generous margin (the machine is shared).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from doubles.hostile import HostileSite
from entrypoints.bootstrap import bootstrap
from hotline.config import Settings
from hotline.runtime.embedded import EmbeddedRuntime
from schemas.reports import ReportSubmitted
from tests.integration import scenario
from tests.integration.scenario import NL_A, World
from tests.integration.test_embedded_pipeline import EmbeddedPipeline

pytestmark = pytest.mark.integration

ITEM_DEADLINE = 3.0
MARGIN = 15.0


@pytest.fixture
def the_world(tmp_path: Path) -> Iterator[World]:
    with scenario.world(tmp_path) as w:
        yield w


@pytest.fixture
def hostile() -> Iterator[HostileSite]:
    site = HostileSite("127.0.0.2", interval=0.2, max_seconds=40.0).start()  # NL_A's address
    yield site
    site.stop()


def test_a_slow_header_server_delays_the_next_report_by_at_most_the_item_deadline(
    the_world: World, hostile: HostileSite, tmp_path: Path
) -> None:
    settings = Settings(database_url=f"sqlite:///{tmp_path / 'hotline.db'}", index_dir="none",
                        fetch_timeout_seconds=5.0, fetch_item_deadline_seconds=ITEM_DEADLINE,
                        **the_world.settings_kwargs())
    system = bootstrap(settings)
    runtime = EmbeddedRuntime(system.sessions, system.build_stages(("ingest", "classify")))
    runtime.start()
    try:
        pipeline = EmbeddedPipeline(system.sessions)
        the_world.sites[NL_A].add("/fine.jpg", "image/jpeg", the_world.unknown_image)
        slow = f"http://{NL_A}:{hostile.port}/slow-headers"
        normal = the_world.url(NL_A, "/fine.jpg")
        pipeline.submit(ReportSubmitted(urls=[slow]))
        scenario.wait_for("classify fetching the slow URL", lambda: "/slow-headers" in hostile.requests, 30)
        submitted = time.monotonic()
        pipeline.submit(ReportSubmitted(urls=[normal]))
        scenario.wait_for("the normal report classified",
                          lambda: scenario.item_state(system.sessions, normal) not in (None, "received"), 60)
        waited = time.monotonic() - submitted
        assert waited < ITEM_DEADLINE + MARGIN, waited
        assert scenario.item_state(system.sessions, normal) == "awaiting_assessment"
        slow_item = scenario.item_for_url(system.sessions, slow)
        assert slow_item is not None and slow_item.state == "closed_offline"
        reason = (slow_item.classification or {}).get("reason", "")
        assert "deadline passed" in reason, reason
        print(f"normal report classified {waited:.1f} s after it was submitted behind a slow-header URL")
    finally:
        runtime.stop()
        system.close()
