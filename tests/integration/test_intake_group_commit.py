"""Group commit for report intake (``hotline.storage.group_commit``, ``services.ingest.intake``),
on SQLite and PostgreSQL: concurrent submissions through the real app are all stored exactly
once with their outbox rows; jobs that queue up share one commit; the same Idempotency-Key
twice in one batch makes one report; a failing row fails only its own request; and a web
process killed with SIGKILL under load has every report it answered 202 for."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
from sqlalchemy import func, select

from doubles.loopback import free_port, serve_app
from entrypoints.bootstrap import System, bootstrap
from entrypoints.web import create_app
from hotline.config import Settings
from hotline.storage.engine import make_engine, make_sessionmaker
from hotline.storage.group_commit import GroupCommitter
from hotline.storage.models import BusMessage, Report
from hotline.storage.unit_of_work import SqlUnitOfWork
from schemas.reports import ReportSubmitted
from services.ingest import intake
from tests.integration import scenario

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(params=["sqlite", "postgresql"])
def system(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[System]:
    settings = {"index_dir": "none", "report_rate_per_minute": 0}
    if request.param == "sqlite":
        s = bootstrap(Settings(database_url=f"sqlite:///{tmp_path / 'hotline.db'}", **settings))
        yield s
        s.close()
        return
    pg_url: str = request.getfixturevalue("pg_url")
    with scenario.fresh_pg_database(pg_url, "gc") as url:
        s = bootstrap(Settings(database_url=url, **settings))
        yield s
        s.close()


def _msg(i: int) -> ReportSubmitted:
    return ReportSubmitted(channel="api", urls=[f"http://gc-{i}.hoster.example/{i}.jpg"])


@contextlib.contextmanager
def _held(committer: GroupCommitter) -> Iterator[None]:
    """Keep the writer busy with a first job until the block ends, so every job submitted
    inside the block queues up and goes into the next batch together."""
    release = threading.Event()
    started = threading.Event()

    def blocker(uow: SqlUnitOfWork) -> None:
        started.set()
        assert release.wait(30)

    first = committer.submit(blocker)
    assert started.wait(30)
    try:
        yield
    finally:
        release.set()
        first.result(30)


def test_concurrent_submissions_through_the_app_are_stored_once_with_their_outbox_rows(system: System) -> None:
    server, thread = serve_app(create_app(system), port := free_port())
    n = 120
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=60) as client:
            def post(i: int) -> str:
                r = client.post("/api/v1/reports", json={"urls": [f"http://c{i}.hoster.nl/{i}.jpg"]},
                                headers={"Idempotency-Key": f"k-{i % 100}"})
                assert r.status_code == 202, r.text
                return str(r.json()["report_id"])

            with ThreadPoolExecutor(16) as pool:
                ids = list(pool.map(post, range(n)))
    finally:
        server.should_exit = True
        thread.join(15)
    # Keys k-0..k-19 were sent twice: their second request answers with the first report.
    assert len(set(ids)) == 100
    for i in range(20):
        assert ids[i] == ids[i + 100]
    with system.sessions() as s:
        stored = set(s.scalars(select(Report.id)))
        outbox = [row.value for row in s.scalars(select(BusMessage).where(BusMessage.topic == "reports.submitted"))]
    assert stored == set(ids)
    assert len(outbox) == 100
    assert {ReportSubmitted.model_validate_json(v).report_id for v in outbox} == set(ids)


def test_jobs_that_queue_up_share_one_commit(system: System) -> None:
    committer = GroupCommitter(system.request_sessions())
    try:
        msgs = [_msg(i) for i in range(5)]
        with _held(committer):
            futures = [committer.submit(intake.record_job(m, None)) for m in msgs]
        assert [f.result(30) for f in futures] == [m.report_id for m in msgs]
        assert committer.batches == 2  # the blocker's, then one for all five
    finally:
        committer.stop()
    with system.sessions() as s:
        assert s.scalar(select(func.count()).select_from(Report)) == 5


def test_the_same_idempotency_key_twice_in_one_batch_makes_one_report(system: System) -> None:
    committer = GroupCommitter(system.request_sessions())
    try:
        first, second = _msg(1), _msg(2)
        with _held(committer):
            a = committer.submit(intake.record_job(first, "same-key"))
            b = committer.submit(intake.record_job(second, "same-key"))
        assert a.result(30) == b.result(30) == first.report_id
    finally:
        committer.stop()
    with system.sessions() as s:
        assert list(s.scalars(select(Report.id))) == [first.report_id]
        assert s.scalar(select(func.count()).select_from(BusMessage)) == 1


def test_one_bad_row_does_not_fail_its_batch_mates(system: System) -> None:
    committer = GroupCommitter(system.request_sessions())
    taken = _msg(0)
    try:
        committer.submit(intake.record_job(taken, None)).result(30)
        good = [_msg(1), _msg(2)]
        with _held(committer):
            ok1 = committer.submit(intake.record_job(good[0], None))
            bad = committer.submit(intake.record_job(taken, None))  # its report id exists: IntegrityError
            ok2 = committer.submit(intake.record_job(good[1], None))
        assert ok1.result(30) == good[0].report_id
        assert ok2.result(30) == good[1].report_id
        with pytest.raises(Exception, match="(?i)unique|duplicate|integrity"):
            bad.result(30)
    finally:
        committer.stop()
    with system.sessions() as s:
        assert set(s.scalars(select(Report.id))) == {taken.report_id, good[0].report_id, good[1].report_id}
        assert s.scalar(select(func.count()).select_from(BusMessage)) == 3


def _serve(db_url: str, port: int, log: Path, env: dict[str, str]) -> subprocess.Popen[bytes]:
    with open(log, "ab") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "entrypoints.cli", "serve", "--port", str(port)],
            env={**os.environ, **env, "HOTLINE_DATABASE_URL": db_url, "HOTLINE_INDEX_DIR": "none",
                 "HOTLINE_REPORT_RATE_PER_MINUTE": "0", "PYTHONPATH": str(ROOT)},
            stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True, cwd=ROOT)


def _healthy(port: int) -> bool:
    with contextlib.suppress(httpx.HTTPError):
        return httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=2).status_code == 200
    return False


def _kill(proc: subprocess.Popen[bytes]) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(30)


def test_a_web_process_killed_under_load_keeps_every_report_it_acknowledged(tmp_path: Path) -> None:
    db_url = f"sqlite:///{tmp_path / 'hotline.db'}"
    log = tmp_path / "serve.log"
    acknowledged: list[str] = []
    lock = threading.Lock()
    with scenario.world(tmp_path) as w:
        port = free_port()
        proc = _serve(db_url, port, log, w.env())
        try:
            scenario.wait_for("hotline serve to answer", lambda: _healthy(port), 120)

            def post(i: int) -> None:
                with contextlib.suppress(httpx.HTTPError):
                    r = httpx.post(f"http://127.0.0.1:{port}/api/v1/reports", timeout=30,
                                   json={"urls": [w.url(scenario.NL_A, f"/kill/{i}.jpg")]})
                    if r.status_code == 202:
                        with lock:
                            acknowledged.append(r.json()["report_id"])

            with ThreadPoolExecutor(16) as pool:
                futures = [pool.submit(post, i) for i in range(400)]
                scenario.wait_for("100 acknowledged reports", lambda: len(acknowledged) >= 100, 120)
                _kill(proc)
                for f in futures:
                    f.result(60)
            assert len(acknowledged) < 400, "the kill came after the last request: nothing was tested"
            proc = _serve(db_url, port, log, w.env())
            scenario.wait_for("hotline serve to answer after the restart", lambda: _healthy(port), 120)
        finally:
            _kill(proc)
    engine = make_engine(db_url)
    try:
        with make_sessionmaker(engine)() as s:
            stored = set(s.scalars(select(Report.id)))
    finally:
        engine.dispose()
    missing = set(acknowledged) - stored
    assert not missing, f"{len(missing)} of {len(acknowledged)} acknowledged reports were lost: {log.read_text()[-2000:]}"
