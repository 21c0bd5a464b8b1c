"""The analysts' leases on a real PostgreSQL: concurrent "next item" requests (``FOR UPDATE
SKIP LOCKED`` plus the conditional UPDATE) never hand one item to two analysts, a lease
excludes others until it expires, and a decision without the lease is refused. The same checks
as tests/unit/test_assessment_queue.py on SQLite."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.integration.scenario import fresh_pg_sessions
from tests.unit import test_assessment_queue as q

pytestmark = pytest.mark.integration


@pytest.fixture
def sessions(pg_url: str) -> Iterator[q.Sessions]:
    with fresh_pg_sessions(pg_url, "leases") as sessions:
        yield sessions


def test_concurrent_claimers_never_share_an_item_on_postgres(sessions: q.Sessions) -> None:
    for _ in range(3):  # three rounds of fresh items, claimed by six analysts at once
        q.check_never_shared(sessions, items=15, analysts=6)


def test_priority_order_on_postgres(sessions: q.Sessions) -> None:
    q.test_priority_partners_police_and_new_material_first_then_oldest(sessions)


def test_lease_expiry_on_postgres(sessions: q.Sessions) -> None:
    q.test_a_lease_excludes_others_until_it_expires(sessions)


def test_decision_needs_the_lease_on_postgres(sessions: q.Sessions) -> None:
    q.test_a_decision_needs_the_lease(sessions)


def test_second_analyst_on_postgres(sessions: q.Sessions) -> None:
    q.test_second_analyst_confirms_or_disagrees(sessions)
