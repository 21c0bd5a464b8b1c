"""The crash harness (``benchmarks/crash_harness.py``), short: ~30 reports through the five stage
processes on the shared test Kafka and PostgreSQL (a fresh database, topics of its own), posted
over HTTP to the web process (retried with their Idempotency-Key), while three randomly chosen
processes (the stages and the web process) are SIGKILLed at random moments and started again. Nothing may be
lost and no notice or forward may arrive twice. The broker and database restarts of the full run
are left out here: the shared services are not the test's to restart.

Every wait in the harness is on a condition (items in their expected states, consumer groups
caught up, outbox empty) with a deadline; the only sleeps are the random kill moments.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from benchmarks.crash_harness import Options, run_harness

pytestmark = [pytest.mark.integration, pytest.mark.timeout(240)]


def test_kills_lose_nothing_and_duplicate_nothing(
    tmp_path: Path, kafka_brokers: str, pg_url: str
) -> None:
    lines: list[str] = []
    result = run_harness(
        Options(
            reports=30,
            kills=3,
            max_minutes=3.5,
            rate=1.0,
            brokers=kafka_brokers,
            database_url=pg_url,
            broker_restart=False,
            db_restart=False,
            log_dir=tmp_path / "logs",
            out=lines.append,
        )
    )
    report = "\n".join([*lines, *result.events, *result.lost_detail, *result.duplicate_detail, result.table()])
    assert result.kills == 3 and result.restarts >= 3, report
    assert result.submitted == 30, report
    assert result.drained, report
    assert result.lost == 0, report
    assert result.duplicate_notices == 0, report
    assert result.duplicate_forwards == 0, report
    # Every NL report's notice arrived at the sink (at most one per notify kill may end
    # unconfirmed, with at most one copy); every DE report reached the partner.
    assert result.notices_received + result.unconfirmed >= result.expected_notices, report
    assert result.forwards_received == result.expected_forwards, report
    print(result.table())
