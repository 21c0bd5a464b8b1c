"""The pipeline benchmark (``benchmarks/bench_pipeline.py``), tiny: a dozen reports through the
real API and the real processes of each runtime, to hold the benchmark's bookkeeping to the
truth. Speed is never asserted here; what is asserted is that the benchmark accounts for every
report (each accepted, each item in its expected state), that its notice and forward counts
agree with the database and with what reached the SMTP and partner sinks, and that the figures
it prints come from the measurements (a latency per item, a peak RSS per process).

The Kafka variant uses the shared test Kafka and PostgreSQL (a fresh database and topics of its
own); it never starts services of its own.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from benchmarks.bench_pipeline import (
    EXPECTED,
    KAFKA_STAGES,
    Options,
    PhaseResult,
    run_runtime,
    table,
)

pytestmark = [pytest.mark.integration, pytest.mark.timeout(240)]


def _opts(tmp_path: Path, lines: list[str], **kw: object) -> Options:
    base: dict[str, object] = {
        "rate": 20.0, "reports": 12, "max_reports": 8, "clients": 4, "gallery_images": 3, "warmup_reports": 4,
        "drain_seconds": 90.0, "keep_logs": tmp_path / "logs", "out": lines.append,
    }
    return Options(**{**base, **kw})  # type: ignore[arg-type]


def _check(results: list[PhaseResult], opts: Options, processes: set[str], lines: list[str]) -> None:
    report = "\n".join([*lines, table(results)])
    sizes = {"rate": opts.reports, "max": opts.max_reports}
    assert [r.phase for r in results] == [p for p in ("rate", "max") if sizes[p]], report
    for r in results:
        n = sizes[r.phase]
        assert r.planned == n and r.accepted == n and r.refused == 0, report
        assert r.drained and r.settled == n and not r.not_settled, report
        # The mix (60/15/15/10) of a dozen reports: every kind present, nothing counted twice.
        assert r.expected_notices + r.expected_forwards + r.expected_awaiting == n, report
        assert r.expected_forwards >= 1 and r.expected_awaiting >= 1, report
        # Notices: one per known item, in the database and at the SMTP sink alike.
        assert r.notices_db == r.notices_mailed == r.expected_notices == len(r.notice), report
        assert r.forwards_db == r.forwards_received == r.expected_forwards == len(r.forward), report
        assert len(r.awaiting) == r.expected_awaiting, report
        assert r.counts_ok, report
        # Latencies are measured (positive, one per item) and the images were hashed.
        assert all(x > 0 for x in r.notice + r.forward + r.awaiting), report
        assert r.images >= n, report
        assert {"ingest", "classify"} <= set(r.stage_time), report
        assert set(r.rss) == processes and all(v > 10 for v in r.rss.values()), report
    assert set(EXPECTED) == {"notice", "forward", "unknown", "gallery"}


def test_embedded_benchmark_accounts_for_every_report(tmp_path: Path) -> None:
    lines: list[str] = []
    opts = _opts(tmp_path, lines)
    results = run_runtime("embedded", opts)
    _check(results, opts, {"hotline serve", "hotline serve/classify", "hotline serve/notify"}, lines)


def test_kafka_benchmark_accounts_for_every_report(tmp_path: Path, kafka_brokers: str, pg_url: str) -> None:
    lines: list[str] = []
    # One phase only: five faust workers take a while to start and to stop.
    opts = _opts(tmp_path, lines, brokers=kafka_brokers, database_url=pg_url, own_services="no", max_reports=0)
    results = run_runtime("kafka", opts)
    _check(results, opts, {"web", *KAFKA_STAGES}, lines)
    # The stages' own processing times were read from their debug lines.
    assert results[0].work.get("classify"), "\n".join(lines)
