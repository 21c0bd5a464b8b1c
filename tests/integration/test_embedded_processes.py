"""``hotline serve`` on an SQLite file runs classify in a child process of its own
(``HOTLINE_EMBEDDED_PROCESSES``, ``hotline.runtime.stage_processes``), as an operator starts it:
known material reported before and after the child is killed with -9 reaches its notice, each
e-mailed once (the parent starts the child again); while the child runs it holds classify's
lock on the database; and a parent killed with -9 takes its child with it (nothing is left
running classify, and the lock is free for the next ``hotline serve``)."""

from __future__ import annotations

import fcntl
import os
import signal
from pathlib import Path

import pytest

from doubles.loopback import free_port
from hotline.storage.engine import make_engine, make_sessionmaker, migrate
from hotline.storage.unit_of_work import SqlUnitOfWork
from tests.integration import scenario
from tests.integration.scenario import StageProcesses, wait_for
from tests.integration.test_embedded_pipeline import EmbeddedPipeline

pytestmark = [pytest.mark.integration, pytest.mark.timeout(240)]


def _classify_child(parent: int) -> int | None:
    """The pid of ``parent``'s child running ``serve --stage classify``, if there is one."""
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
            argv = (stat.parent / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if int(fields[1]) == parent and fields[0] != "Z" and b"--stage" in argv and b"classify" in argv:
            return int(stat.parent.name)
    return None


def _running(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def _lock_free(db: Path) -> bool:
    with open(db.with_name(db.name + ".classify.lock"), "a+b") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        fcntl.flock(f, fcntl.LOCK_UN)
        return True


def test_classify_runs_in_a_child_that_is_restarted_and_ends_with_its_parent(tmp_path: Path) -> None:
    db = tmp_path / "hotline.db"
    db_url = f"sqlite:///{db}"
    migrate(db_url)
    engine = make_engine(db_url)
    sessions = make_sessionmaker(engine)
    (tmp_path / "logs").mkdir()
    with scenario.world(tmp_path) as w:
        with sessions() as s:
            scenario.load_bank(SqlUnitOfWork(s), w.known_images)
        procs = StageProcesses({**w.env(), "HOTLINE_DATABASE_URL": db_url}, tmp_path / "logs")
        pipeline = EmbeddedPipeline(sessions)

        def deliver(prefix: str) -> None:
            reports = scenario.known_batch(w, 4, prefix)
            for r in reports:
                pipeline.submit(r)
            urls = [r.urls[0] for r in reports]
            wait_for(f"the notices of {prefix}",
                     lambda: set(scenario.states_by_url(sessions, urls).values()) == {"notice_sent"}, 90, 0.2)

        try:
            procs.start("all", "--host", "127.0.0.1", "--port", str(free_port()))
            parent = procs.procs["all"].pid
            child = wait_for("a classify child of hotline serve", lambda: _classify_child(parent), 60)
            deliver("/before")
            assert not _lock_free(db)  # the child holds classify's lock

            os.kill(child, signal.SIGKILL)
            again = wait_for("a new classify child", lambda: (c := _classify_child(parent)) != child and c, 60)
            deliver("/after")
            assert procs.alive("all")

            procs.kill9("all")
            wait_for("the child to end with its parent", lambda: not _running(again), 60, 0.2)
            assert _lock_free(db)
        except BaseException:
            print(procs.logs())
            raise
        finally:
            procs.stop_all()
            engine.dispose()
        received = w.mail.count_by_notice()
        assert len(received) == 8 and set(received.values()) == {1}, received  # each notice once
