"""Crash recovery on the distributed runtime: ``kill -9`` a stage process in the middle of a batch,
start it again, and every report still reaches its final state with each notice e-mailed once.

What "once" can mean at the notice in flight: notify commits a notice as ``sending`` before
the SMTP conversation and ``sent`` after it. A process killed between the two cannot know
whether the hoster got the mail, and does not send it again (a duplicate takedown notice is
the worse failure): the item ends ``notice_unconfirmed`` for an operator to check the SMTP
log. So with one kill of notify, at most one item may end that way, with at most one copy
delivered; every other notice arrives exactly once. Killing classify loses nothing and
duplicates nothing: all notices arrive exactly once.
"""

from __future__ import annotations

import contextlib
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from doubles.loopback import free_port
from hotline.config import Settings
from hotline.storage.engine import make_engine, make_sessionmaker, migrate
from hotline.storage.models import Item, Notice
from hotline.storage.unit_of_work import SqlUnitOfWork
from tests.integration import scenario
from tests.integration.scenario import Pipeline, StageProcesses, World, wait_for
from tests.integration.test_kafka_pipeline import Deploy, deployer

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]

BATCH = 30


@pytest.fixture(scope="module")
def restart_db(pg_url: str) -> Iterator[str]:
    with scenario.fresh_pg_database(pg_url, "restart") as url:
        migrate(url)
        yield url


@pytest.fixture
def db_sessions(restart_db: str) -> Iterator[sessionmaker[Session]]:
    engine = make_engine(restart_db)
    try:
        yield make_sessionmaker(engine)
    finally:
        engine.dispose()


@pytest.fixture
def deploy(
    tmp_path: Path, kafka_brokers: str, restart_db: str, db_sessions: sessionmaker[Session], unique_topic_prefix: str
) -> Deploy:
    """This module's database, the test's own topics, logs under ``tmp_path / "logs"``."""
    return deployer(restart_db, db_sessions, kafka_brokers, unique_topic_prefix + ".", tmp_path / "logs")


@pytest.fixture
def slow_world(tmp_path: Path) -> Iterator[World]:
    # Slow enough that a batch of 30 takes a few seconds per stage, so the kill lands mid-batch.
    with scenario.world(tmp_path, site_delay=0.1, smtp_delay=0.1) as w:
        yield w


def batch_states(sessions: sessionmaker[Session], urls: list[str]) -> Counter[str]:
    with sessions() as s:
        return Counter(s.scalars(select(Item.state).where(Item.url.in_(urls))).all())


def not_final(sessions: sessionmaker[Session], urls: list[str], final: tuple[str, ...]) -> list[str]:
    """URL, state and reason of each item of the batch not in a final state (why it stopped)."""
    with sessions() as s:
        rows = s.execute(select(Item.url, Item.state, Item.reason).where(Item.url.in_(urls))).all()
    return [f"{url}: {state} ({reason})" for url, state, reason in rows if state not in final]


def notice_status(sessions: sessionmaker[Session], urls: list[str]) -> dict[str, str]:
    """Notice id -> status, for the batch's items."""
    with sessions() as s:
        rows = s.execute(
            select(Notice.id, Notice.status).join(Item, Item.id == Notice.item_id).where(Item.url.in_(urls))
        ).all()
    return {nid: status for nid, status in rows}


def mails_received(w: World) -> Callable[[list[str]], int]:
    """Progress through a batch as notify makes it: the mails the SMTP server accepted so far."""
    return lambda urls: len(w.mail.snapshot())


def run_kill_and_restart(
    stage: str,
    w: World,
    sessions: sessionmaker[Session],
    deployment: contextlib.AbstractContextManager[tuple[Pipeline, StageProcesses]],
    progress: Callable[[list[str]], int],
) -> dict[str, float]:
    """Submit the batch, kill -9 ``stage`` once ``progress()`` reaches 5, restart it, wait for the end."""
    reports = scenario.known_batch(w, BATCH)
    urls = [r.urls[0] for r in reports]
    t0 = time.monotonic()
    with deployment as (pipeline, procs):
        for r in reports:
            pipeline.submit(r)
        wait_for(f"{stage} to be part-way through the batch", lambda: progress(urls) >= 5, 90, interval=0.02)
        procs.kill9(stage)
        at_kill = progress(urls)
        killed_at = time.monotonic() - t0
        assert at_kill < BATCH, f"the batch was done before the kill ({at_kill}); nothing was tested"
        procs.restart(stage)

        final = ("notice_sent", "notice_unconfirmed")

        def done() -> bool:
            states = batch_states(sessions, urls)
            return sum(states[s] for s in final) == BATCH

        try:
            wait_for("every item of the batch in a final state", done, 120, interval=0.2)
        except AssertionError as exc:
            raise AssertionError(f"{exc}: {batch_states(sessions, urls)}; not final: "
                                 f"{not_final(sessions, urls, final)}") from None
        finished = time.monotonic() - t0
        # Give a late duplicate (if any) the chance to show up before counting.
        time.sleep(1.0)

        for r in reports:
            assert scenario.report_status(sessions, r.report_id) == "accepted"
        states = batch_states(sessions, urls)
        notices = notice_status(sessions, urls)
        received = w.mail.count_by_notice()
        assert len(notices) == BATCH
        duplicates = {n: c for n, c in received.items() if c > 1}
        assert not duplicates, f"notices e-mailed more than once: {duplicates}"
        for nid, status in notices.items():
            if status == "sent":
                assert received[nid] == 1, f"{nid} is sent but arrived {received[nid]} times"
            else:
                assert status == "delivery_unknown", (nid, status)
        assert set(received) <= set(notices)
        if stage in ("notify", "all"):
            # Only the e-mails in flight at the kill (notify has up to HOTLINE_NOTIFY_IN_FLIGHT
            # of them, of different items) can be of unknown outcome; each is never re-sent.
            assert states["notice_unconfirmed"] <= Settings.model_fields["notify_in_flight"].default, states
        else:
            assert states["notice_unconfirmed"] == 0, states
            assert all(received[n] == 1 for n in notices)
        assert all(procs.alive(s) for s in procs.procs)
    return {
        "killed_at": killed_at,
        "done_at": finished,
        "progress_at_kill": at_kill,
        "unconfirmed": states["notice_unconfirmed"],
    }


def test_kill_notify_mid_batch(deploy: Deploy, db_sessions: sessionmaker[Session], slow_world: World) -> None:
    result = run_kill_and_restart("notify", slow_world, db_sessions, deploy(slow_world), mails_received(slow_world))
    print("kill -9 notify:", result)


def test_kill_classify_mid_batch(deploy: Deploy, db_sessions: sessionmaker[Session], slow_world: World) -> None:
    def classified(urls: list[str]) -> int:
        states = batch_states(db_sessions, urls)
        return sum(n for s, n in states.items() if s != "received")

    result = run_kill_and_restart("classify", slow_world, db_sessions, deploy(slow_world), classified)
    print("kill -9 classify:", result)


def test_stop_while_retrying_keeps_the_event(
    tmp_path: Path, deploy: Deploy, db_sessions: sessionmaker[Session]
) -> None:
    """A worker stopped (SIGTERM) while it backs off from a failing event must not ack it:
    after the restart the event is processed, and the notice goes out once.

    This is what the manual acks in ``hotline.runtime.kafka`` are for: faust acks an event
    in a ``finally`` when the agent is cancelled, which would commit the failed event's
    offset on the way down and lose the notice.
    """
    with scenario.world(tmp_path) as w:
        w.mail.stop()  # the mail server is down: notify fails and retries
        (report,) = scenario.known_batch(w, 1, prefix="/retry")
        url = report.urls[0]
        with deploy(w) as (pipeline, procs):
            pipeline.submit(report)
            wait_for(
                "notify to fail and retry twice",
                lambda: "failed (attempt 2" in procs.log_text("notify"),
                90,
                interval=0.2,
            )
            assert scenario.item_state(db_sessions, url) == "notice_queued"
            assert procs.terminate("notify") == 0  # a clean stop, in the middle of the back-off
            w.mail.start()
            procs.start("notify")
            wait_for("the notice after the restart", lambda: scenario.item_state(db_sessions, url) == "notice_sent", 90)
            time.sleep(1.0)
            assert list(w.mail.count_by_notice().values()) == [1]


def test_kill_notify_inside_the_smtp_conversation(
    tmp_path: Path, deploy: Deploy, db_sessions: sessionmaker[Session]
) -> None:
    """The one case "exactly once" cannot be known: notify dies after the mail server has the
    message and before the answer. The restarted worker must not send it again; the item ends
    ``notice_unconfirmed`` with the reason, and later notices go out normally."""
    with scenario.world(tmp_path) as w:
        first, second = scenario.known_batch(w, 2, prefix="/inflight")
        with deploy(w) as (pipeline, procs):
            w.mail.hold.set()
            pipeline.submit(first)
            wait_for("notify inside the SMTP DATA phase", lambda: w.mail.held == 1, 90, interval=0.02)
            procs.kill9("notify")
            w.mail.hold.clear()
            procs.start("notify")
            first_url, second_url = first.urls[0], second.urls[0]
            wait_for(
                "the in-flight notice marked unconfirmed",
                lambda: scenario.item_state(db_sessions, first_url) == "notice_unconfirmed",
                90,
            )
            pipeline.submit(second)
            wait_for("the next notice", lambda: scenario.item_state(db_sessions, second_url) == "notice_sent", 90)
            time.sleep(1.0)
            item = scenario.item_for_url(db_sessions, first_url)
            assert item is not None and "not re-sent" in item.reason
            received = w.mail.count_by_notice()
            assert received[f"ntd-{item.id}"] <= 1, received
            assert list(received.values()).count(1) >= 1
            events = [m for m in pipeline.published("notices.events") if m["item_id"] == item.id]
            assert [e["kind"] for e in events] == ["delivery_unknown"], events


def test_kill_embedded_process_mid_batch(tmp_path: Path, slow_world: World) -> None:
    """The same on the embedded runtime: ``hotline serve`` (all stages, SQLite) killed with -9
    in the middle of the batch and started again."""
    from tests.integration.test_embedded_pipeline import EmbeddedPipeline

    db_url = f"sqlite:///{tmp_path / 'hotline.db'}"
    migrate(db_url)
    engine = make_engine(db_url)
    sessions = make_sessionmaker(engine)

    @contextlib.contextmanager
    def embedded_process() -> Iterator[tuple[Pipeline, StageProcesses]]:
        with sessions() as s:
            scenario.load_bank(SqlUnitOfWork(s), slow_world.known_images)
        (tmp_path / "logs").mkdir()
        procs = StageProcesses({**slow_world.env(), "HOTLINE_DATABASE_URL": db_url}, tmp_path / "logs")
        try:
            procs.start("all", "--host", "127.0.0.1", "--port", str(free_port()))
            yield EmbeddedPipeline(sessions), procs
        finally:
            procs.stop_all()

    try:
        result = run_kill_and_restart("all", slow_world, sessions, embedded_process(), mails_received(slow_world))
    finally:
        engine.dispose()
    print("kill -9 embedded:", result)
