"""Scale-out failover: one of two classify processes dies and is *not* restarted; the survivor
takes its partitions over (after the group's session timeout) and finishes the batch, with
nothing lost and nothing doubled.

``test_kafka_pipeline.py`` shows a second process joining, ``test_restart.py`` and the crash
harness a killed process that is restarted; this is the case in between that scale-out
relies on: fewer processes than before, and the work still all done exactly once in effect.
Speed is measured by ``python -m benchmarks.bench_scaleout``, not here.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from hotline.storage.models import Item, ItemEvent
from tests.integration import scenario
from tests.integration.test_kafka_pipeline import Deploy, db_sessions, deploy, kafka_db  # noqa: F401 - fixtures

pytestmark = pytest.mark.integration


def test_survivor_takes_over_from_a_killed_classify(
    tmp_path: Path, deploy: Deploy, db_sessions: sessionmaker[Session]  # noqa: F811 - fixtures
) -> None:
    with scenario.world(tmp_path, site_delay=0.05) as w, deploy(w) as (pipeline, procs):
        procs.start("classify", name="classify-2")
        reports = scenario.known_batch(w, 30, prefix="/failover")
        urls = [r.urls[0] for r in reports]
        for r in reports:
            pipeline.submit(r)

        def classified() -> int:
            return sum(1 for s in scenario.states_by_url(db_sessions, urls).values() if s not in (None, "received"))

        scenario.wait_for("a few items classified", lambda: classified() >= 5, 90, interval=0.1)
        procs.kill9("classify")  # never restarted: classify-2 must take its partitions over
        try:
            scenario.wait_for(
                "every item notice_sent",
                lambda: set(scenario.states_by_url(db_sessions, urls).values()) == {"notice_sent"},
                120,
                interval=0.2,
            )
        except AssertionError as exc:
            stuck = {u: s for u, s in scenario.states_by_url(db_sessions, urls).items() if s != "notice_sent"}
            raise AssertionError(f"{exc}; not notice_sent: {stuck}") from None
        assert procs.alive("classify-2") and not procs.alive("classify")
        received = w.mail.count_by_notice()
        assert len(received) == 30 and set(received.values()) == {1}, received
        with db_sessions() as s:
            ids = s.scalars(select(Item.id).where(Item.url.in_(urls))).all()
            recorded = Counter(s.scalars(
                select(ItemEvent.item_id).where(
                    ItemEvent.item_id.in_(ids), ItemEvent.stage == "classify", ItemEvent.kind != "also_seen"
                )
            ).all())
        # One classification recorded per item, however often its event was delivered.
        assert len(ids) == 30 and set(recorded.values()) == {1} and set(recorded) == set(ids), recorded
