"""Submitting reports while the embedded stages write: no submission path may fail.

Every way a report enters the embedded bus -- the web routes (``request_sessions``, with
``BEGIN IMMEDIATE`` on SQLite), ``hotline reports import`` and the tests' own submit helper
(the stages' plain sessions) -- ends in ``SqlUnitOfWork.commit``, the outbox. Its process-wide
``OUTBOX_LOCK`` once made a lock-order inversion on SQLite: a stage that had already written
held the database's write lock and waited for ``OUTBOX_LOCK``, while a submission whose first
write was its outbox row held ``OUTBOX_LOCK`` and waited for the write lock, until SQLite's
30 s busy timeout failed it with "database is locked". It needed only a stage and a submitter
meeting in that window; a slow machine widened the window. This test hammers all three paths
from their own threads while ingest runs, so that window is crossed hundreds of times: before
the fix it failed within the first dozen submissions (after 30 s); now it takes a few seconds.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from sqlalchemy import func, select

from entrypoints.bootstrap import System, bootstrap
from entrypoints.cli import submit_reports
from hotline.config import Settings
from hotline.runtime.embedded import EmbeddedRuntime
from hotline.storage.models import Report, ReportUrl
from hotline.storage.unit_of_work import SqlUnitOfWork
from schemas.reports import ReportSubmitted
from services.ingest.routes import ReportRequest
from services.ingest.routes import submit as web_submit
from tests.integration import scenario
from tests.integration.test_embedded_pipeline import EmbeddedPipeline

pytestmark = pytest.mark.integration

PER_PATH = 100  # submissions per path; three paths at once


@pytest.fixture(params=["sqlite", "postgresql"])
def system(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[System]:
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'hotline.db'}"
        s = bootstrap(Settings(database_url=url, index_dir="none"))
        yield s
        s.close()
        return
    pg_url: str = request.getfixturevalue("pg_url")
    with scenario.fresh_pg_database(pg_url, "sub") as url:
        s = bootstrap(Settings(database_url=url, index_dir="none"))
        yield s
        s.close()


def test_every_submit_path_succeeds_while_the_stages_write(system: System) -> None:
    # Ingest polls without pause, so it is nearly always inside a unit of work that has written.
    runtime = EmbeddedRuntime(system.sessions, system.build_stages(("ingest",)), poll_seconds=0.0)
    helper = EmbeddedPipeline(system.sessions)
    expected: dict[str, list[str]] = {"web": [], "import": [], "helper": []}
    raw_keys: list[str] = []
    errors: list[str] = []

    def url(path: str, i: int) -> str:
        return f"http://{path}-{i}.hoster.example/{i}.jpg"

    def via_web(i: int) -> None:
        with system.request_sessions()() as s:
            rid = web_submit(SqlUnitOfWork(s), ReportRequest(urls=[url("web", i)]), "api", f"key-{i}" if i % 2 else None)
        expected["web"].append(rid)

    def via_import(i: int) -> None:
        msg = ReportSubmitted(channel="csv", urls=[url("import", i)])
        submit_reports(system.sessions, [msg])
        expected["import"].append(msg.report_id)

    def via_helper(i: int) -> None:
        if i % 10 == 9:
            key = f"broken-{i}"
            helper.submit_raw(b"{not json", key=key.encode())
            raw_keys.append(key)
            return
        msg = ReportSubmitted(channel="web", urls=[url("helper", i)])
        helper.submit(msg)
        expected["helper"].append(msg.report_id)

    def hammer(name: str, one: Callable[[int], None]) -> None:
        for i in range(PER_PATH):
            try:
                one(i)
            except Exception as exc:  # noqa: BLE001 - every failure is reported below
                errors.append(f"{name} #{i}: {exc!r}")
                return

    runtime.start()
    try:
        threads = [
            threading.Thread(target=hammer, args=(n, f), name=f"submit-{n}")
            for n, f in (("web", via_web), ("import", via_import), ("helper", via_helper))
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert errors == [], errors
        assert runtime.wait_idle(60), "ingest did not catch up"
        assert runtime.errors == {}
    finally:
        runtime.stop()

    # Nothing lost, nothing duplicated: one report per submission, one item link per URL, one
    # rejection per broken message.
    submitted = [rid for ids in expected.values() for rid in ids]
    assert len(submitted) == len(set(submitted)) == 3 * PER_PATH - len(raw_keys)
    with system.sessions() as s:
        reports = {rid: status for rid, status in s.execute(select(Report.id, Report.status))}
        links = s.scalar(select(func.count()).select_from(ReportUrl))
    assert set(reports) == set(submitted)
    assert all(status != "received" for status in reports.values()), "a report was not ingested"
    assert links == len(submitted)
    rejected = EmbeddedPipeline(system.sessions).published("reports.rejected")
    assert len([m for m in rejected if m.get("reason_code") == "malformed_message"]) == len(raw_keys)
