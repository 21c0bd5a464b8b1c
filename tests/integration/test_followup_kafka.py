"""After the notice, on the distributed runtime: real Kafka, real PostgreSQL, and the stages
(``followup`` included, with its scheduler and outbox relay) as separate ``hotline serve
--stage NAME`` processes, a real SMTP server and loopback hosters. The same flow runs
embedded, with a fake clock, in ``test_followup_embedded.py``.

A fake clock cannot be shared across processes, so the intervals are short and real
(``FOLLOWUP_ENV``), and outcomes are asserted by condition, never by exact times: one
hoster removes its content right after the notice (``removed``, with the time to removal,
no reminder), the other never does (exactly one reminder, then exactly one authority step,
counted at the SMTP sink). The followup process is killed with -9 between the reminder and
the authority step and started again; and two followup processes run side by side. No step
goes out twice, no check is lost or done twice.
"""

from __future__ import annotations

import contextlib
import threading
from collections import Counter, defaultdict
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select, text
from sqlalchemy.orm import Session, sessionmaker

from hotline.kernel.clock import now
from hotline.storage.engine import make_engine, make_sessionmaker, migrate
from hotline.storage.followups import SqlFollowups, new_followup
from hotline.storage.models import Followup, FollowupStep, Item
from hotline.storage.unit_of_work import SqlUnitOfWork
from schemas.reports import ReportSubmitted
from tests.integration import scenario
from tests.integration.scenario import (
    HOSTER_A,
    HOSTER_B,
    NL_A,
    NL_B,
    KafkaPipeline,
    StageProcesses,
    World,
    wait_for,
)
from tests.integration.test_kafka_pipeline import worker_env

pytestmark = [pytest.mark.integration, pytest.mark.timeout(240)]

AUTHORITY = "authority@test"
DEADLINE_SECONDS = 4.0
LADDER_STEP_SECONDS = 4.0
FOLLOWUP_ENV = {
    "HOTLINE_RECHECK_SECONDS": "1",
    "HOTLINE_RECHECK_CONFIRM_SECONDS": "0.5",
    "HOTLINE_REMOVAL_DEADLINE_SECONDS": str(DEADLINE_SECONDS),
    "HOTLINE_LADDER_STEP_SECONDS": str(LADDER_STEP_SECONDS),
    "HOTLINE_FOLLOWUP_TICK_SECONDS": "0.2",
    "HOTLINE_RECHECK_JITTER": "0",
    "HOTLINE_AUTHORITY_EMAIL": AUTHORITY,
}
PIPELINE = ("ingest", "classify", "notify")
WAIT = 90.0  # generous bound on a busy machine; every wait ends as soon as its condition holds


@pytest.fixture(scope="module")
def followup_db(pg_url: str) -> Iterator[str]:
    with scenario.fresh_pg_database(pg_url, "kfollow") as url:
        migrate(url)
        yield url


@pytest.fixture
def db_sessions(followup_db: str) -> Iterator[sessionmaker[Session]]:
    engine = make_engine(followup_db)
    try:
        yield make_sessionmaker(engine)
    finally:
        engine.dispose()


@contextlib.contextmanager
def deployed(
    w: World, database_url: str, sessions: sessionmaker[Session], brokers: str, prefix: str, log_dir: Path,
) -> Iterator[tuple[KafkaPipeline, StageProcesses]]:
    """Bank loaded; ingest, classify and notify running. The test starts its followup
    process(es) itself. No relay in the test process: the outbox rows the scheduler writes
    must reach Kafka through the followup process's own relay."""
    with sessions() as s:
        scenario.load_bank(SqlUnitOfWork(s), w.known_images)
    log_dir.mkdir(exist_ok=True)
    pipeline = KafkaPipeline(brokers, prefix, sessions, relay=False)
    procs = StageProcesses({**worker_env(w, database_url, brokers, prefix), **FOLLOWUP_ENV}, log_dir)
    try:
        for stage in PIPELINE:
            procs.start(stage)
        yield pipeline, procs
    except BaseException as exc:
        codes = procs.stop_all()
        raise AssertionError(f"{exc}\nexit codes {codes}\n{procs.logs()}") from exc
    finally:
        procs.stop_all()
        pipeline.close()


@pytest.fixture
def deploy(
    tmp_path: Path, kafka_brokers: str, followup_db: str, db_sessions: sessionmaker[Session], unique_topic_prefix: str,
) -> Any:
    def start(w: World) -> contextlib.AbstractContextManager[tuple[KafkaPipeline, StageProcesses]]:
        return deployed(w, followup_db, db_sessions, kafka_brokers, unique_topic_prefix + ".", tmp_path / "logs")

    return start


# ---------------------------------------------------------------- probes


def step_mails(w: World) -> Counter[tuple[str, str, str]]:
    """(step id, kind, envelope recipients) -> how many times it reached the SMTP sink."""
    return Counter(
        (m.message["X-Hotline-Followup-Id"], m.message["X-Hotline-Followup-Step"], ",".join(m.rcpt_tos))
        for m in w.mail.snapshot() if m.message["X-Hotline-Followup-Id"]
    )


def followup(sessions: sessionmaker[Session], item_id: str) -> Followup | None:
    with sessions() as s:
        return s.get(Followup, item_id)


def step_status(sessions: sessionmaker[Session], item_id: str) -> dict[int, str]:
    with sessions() as s:
        rows = s.scalars(select(FollowupStep).where(FollowupStep.item_id == item_id)).all()
        return {r.position: r.status for r in rows}


def checks(sessions: sessionmaker[Session], item_id: str) -> int:
    f = followup(sessions, item_id)
    return f.checks if f is not None else 0


def no_check_twice(pipeline: KafkaPipeline, item_ids: set[str]) -> None:
    """Every re-check is numbered (``<notice>:rechecked:<n>``): a check recorded twice for the
    same count, by two processes or two deliveries, shows as one event id with two different
    contents (a producer retry would repeat the same content)."""
    by_id: dict[str, set[tuple[Any, ...]]] = defaultdict(set)
    for m in pipeline.published("notices.events"):
        if m["item_id"] in item_ids and m["kind"] == "rechecked":
            by_id[m["event_id"]].add((m["at"], m["detail"]))
    doubled = {k: v for k, v in by_id.items() if len(v) > 1}
    assert not doubled, f"re-checks recorded twice: {doubled}"


def report(pipeline: KafkaPipeline, w: World, host: str, path: str) -> str:
    w.sites[host].add(path, "image/jpeg", w.known_images[0])
    url = w.url(host, path)
    pipeline.submit(ReportSubmitted(channel="api", urls=[url]))
    return url


# ---------------------------------------------------------------- the flow, with a kill -9


def test_followup_on_kafka_survives_kill9(
    tmp_path: Path, deploy: Any, db_sessions: sessionmaker[Session]
) -> None:
    sessions = db_sessions
    with scenario.world(tmp_path) as w, deploy(w) as (pipeline, procs):
        procs.start("followup")
        removing_url = report(pipeline, w, NL_B, "/kf/removed.jpg")
        ignoring_url = report(pipeline, w, NL_A, "/kf/ignored.jpg")

        # The removing hoster acts as soon as its notice arrives.
        wait_for("the NTD to the removing hoster",
                 lambda: any(m.rcpt_tos == [HOSTER_B] and m.notice_id for m in w.mail.snapshot()), WAIT, 0.02)
        w.sites[NL_B].pages.pop("/kf/removed.jpg")
        wait_for("both notices sent", lambda: all(
            scenario.item_state(sessions, u) in ("notice_sent", "removed") for u in (removing_url, ignoring_url)), WAIT)
        removing = scenario.item_for_url(sessions, removing_url)
        ignoring = scenario.item_for_url(sessions, ignoring_url)
        assert removing is not None and ignoring is not None
        reminder, authority = f"{ignoring.id}:1", f"{ignoring.id}:4"

        # The reminder goes out to the ignoring hoster's abuse address, once; kill -9 the
        # followup process as soon as it is recorded sent (the authority step is not due
        # until LADDER_STEP_SECONDS after it).
        wait_for("the reminder recorded sent", lambda: step_status(sessions, ignoring.id).get(1) == "sent", WAIT, 0.02)
        procs.kill9("followup")
        assert step_mails(w) == {(reminder, "reminder", HOSTER_A): 1}, step_mails(w)
        checks_at_kill = checks(sessions, ignoring.id)

        procs.restart("followup")
        wait_for("the authority step after the restart",
                 lambda: step_status(sessions, ignoring.id).get(4) == "sent", WAIT, 0.1)
        # Checks go on after the restart (and after the last step).
        after_authority = checks(sessions, ignoring.id)
        wait_for("re-checks to continue", lambda: checks(sessions, ignoring.id) >= after_authority + 2, WAIT)
        assert checks(sessions, ignoring.id) > checks_at_kill + 2

        # Stop the followup process, then look at what happened.
        assert procs.terminate("followup") == 0, procs.log_text("followup")
        assert step_mails(w) == {(reminder, "reminder", HOSTER_A): 1, (authority, "authority", AUTHORITY): 1}, \
            step_mails(w)
        assert step_status(sessions, ignoring.id) == {1: "sent", 2: "skipped", 3: "skipped", 4: "sent"}
        assert step_status(sessions, removing.id) == {}  # removed content: no reminder, nothing

        gone = followup(sessions, removing.id)
        assert gone is not None and gone.status == "removed" and gone.next_check_at is None
        assert gone.removed_at is not None
        assert gone.removed_at - gone.first_notice_at < timedelta(seconds=DEADLINE_SECONDS)
        assert scenario.item_state(sessions, removing_url) == "removed"
        item = scenario.item_for_url(sessions, removing_url)
        assert item is not None and "after the first notice" in item.reason, item.reason

        kept = followup(sessions, ignoring.id)
        assert kept is not None and kept.status == "open" and kept.removed_at is None
        assert kept.last_step_at is not None and kept.step == 4 and kept.step_pending is None
        # The hoster's site saw classify's fetch and one per recorded check, plus at most one
        # fetch whose process was killed (-9) or stopped before it was recorded.
        hits = w.sites[NL_A].hits["/kf/ignored.jpg"] - 1
        assert kept.checks <= hits <= kept.checks + 2, (hits, kept.checks)
        no_check_twice(pipeline, {removing.id, ignoring.id})
        events = [m for m in pipeline.published("notices.events") if m["item_id"] == removing.id]
        assert [m["kind"] for m in events].count("removed") == 1


# ---------------------------------------------------------------- two followup processes


def test_two_followup_processes_share_the_work(
    tmp_path: Path, deploy: Any, db_sessions: sessionmaker[Session]
) -> None:
    """Two schedulers claiming from one table (``FOR UPDATE SKIP LOCKED``) and two consumers
    in one group: every item gets each step exactly once and no check is done twice."""
    sessions = db_sessions
    with scenario.world(tmp_path) as w, deploy(w) as (pipeline, procs):
        procs.start("followup")
        procs.start("followup", name="followup-2")
        hosts = [NL_A if i % 2 else NL_B for i in range(4)]
        urls = [report(pipeline, w, host, f"/kf2/{i}.jpg") for i, host in enumerate(hosts)]
        wait_for("every notice sent", lambda: all(
            scenario.item_state(sessions, u) == "notice_sent" for u in urls), WAIT)
        ids = []
        for u in urls:
            item = scenario.item_for_url(sessions, u)
            assert item is not None
            ids.append(item.id)
        wait_for("every authority step sent", lambda: all(
            step_status(sessions, i).get(4) == "sent" for i in ids), WAIT, 0.2)
        assert procs.alive("followup") and procs.alive("followup-2")
        assert procs.terminate("followup") == 0
        assert procs.terminate("followup-2") == 0

        sent = step_mails(w)
        want = {}
        for i, item_id in enumerate(ids):
            want[(f"{item_id}:1", "reminder", HOSTER_A if hosts[i] == NL_A else HOSTER_B)] = 1
            want[(f"{item_id}:4", "authority", AUTHORITY)] = 1
        assert sent == want, sent
        no_check_twice(pipeline, set(ids))
        for i, (u, item_id) in enumerate(zip(urls, ids, strict=True)):
            f = followup(sessions, item_id)
            assert f is not None and f.status == "open" and f.step == 4
            # One fetch per recorded check (and classify's), give or take the fetches that
            # at-least-once delivery repeats: a check in flight when its process stopped
            # (two stops), or when a rebalance moved its partition (the two joins). A check
            # done twice over would show as about twice the checks.
            hits = w.sites[hosts[i]].hits[f"/kf2/{i}.jpg"] - 1
            assert f.checks <= hits <= f.checks + 4, (u, hits, f.checks)
        # Nothing failed for good on the way (a message the stage gave up on is parked here).
        parked = [m for m in pipeline.published("reports.rejected") if m.get("stage") == "followup"]
        assert parked == [], parked


# ---------------------------------------------------------------- the claim, on PostgreSQL


@pytest.fixture
def empty_db_sessions(pg_url: str) -> Iterator[sessionmaker[Session]]:
    """A database of its own: the other tests' follow-ups would be claimed first."""
    with scenario.fresh_pg_sessions(pg_url, "kfclaim") as sessions:
        yield sessions


def test_claims_skip_rows_another_scheduler_holds(empty_db_sessions: sessionmaker[Session]) -> None:
    """``FOR UPDATE SKIP LOCKED`` really is what PostgreSQL runs: while one transaction
    holds its claim (uncommitted), a second claims the other rows at once, not the held
    ones, and does not wait for the lock (``lock_timeout`` would fail it)."""
    db_sessions = empty_db_sessions
    at = now()
    ids = [f"skip-{i}-{at.timestamp():.0f}" for i in range(4)]
    with db_sessions() as s:
        for item_id in ids:
            s.add(Item(id=item_id, url=f"http://skip.test/{item_id}", state="notice_sent", reason=""))
        s.flush()
        for item_id in ids:
            f = new_followup(item_id=item_id, notice_id=f"ntd-{item_id}", url=f"http://skip.test/{item_id}",
                             hoster=f"Hoster {item_id}", country="NL", abuse_email="abuse@skip.test", matched=[],
                             first_report_at=at, first_notice_at=at)
            f.status, f.next_check_at = "open", at - timedelta(seconds=5)
            f.step_pending = 1
            s.add(f)
        s.commit()

    first, second = db_sessions(), db_sessions()
    try:
        held = {f.item_id for f in SqlFollowups(first).claim_due(at, 2, 0, at - timedelta(hours=1))}
        assert len(held & set(ids)) == 2
        held_steps = {f.item_id for f in SqlFollowups(first).claim_pending_steps(at, 2, at - timedelta(hours=1))}
        second.execute(text("SET LOCAL lock_timeout = '3s'"))
        other = {f.item_id for f in SqlFollowups(second).claim_due(at, 10, 0, at - timedelta(hours=1))} & set(ids)
        other_steps = {f.item_id for f in SqlFollowups(second).claim_pending_steps(at, 10, at - timedelta(hours=1))}
        assert other == set(ids) - held, (held, other)
        assert not (other_steps & held_steps)
        second.commit()
        first.commit()
    finally:
        first.close()
        second.close()


def test_two_deliveries_of_one_check_record_it_once(empty_db_sessions: sessionmaker[Session]) -> None:
    """A partition moved to another followup process mid-event: both processes fetched the
    URL for the same due time and now record at the same moment. The second waits for the
    first's row lock (``get_for_update``), then sees the due time recorded and does nothing;
    without the lock both read the row before either committed and both recorded."""
    from hashing.image import hash_image
    from hotline.kernel.stage import SideEffect
    from schemas.followups import RecheckDue
    from services.classify.fetcher import Fetcher, FetchPolicy
    from services.followup.logic import CheckResult
    from services.followup.recheck import Observation
    from services.followup.stage import FollowupStage
    from services.notify.mailer import RecordingMailer

    sessions = empty_db_sessions
    at = now().replace(microsecond=0)
    item_id = f"twice-{at.timestamp():.0f}"
    with sessions() as s:
        s.add(Item(id=item_id, url=f"http://twice.test/{item_id}", state="notice_sent", reason=""))
        s.flush()
        f = new_followup(item_id=item_id, notice_id=f"ntd-{item_id}", url=f"http://twice.test/{item_id}",
                         hoster="Hoster T", country="NL", abuse_email="abuse@twice.test", matched=[],
                         first_report_at=at, first_notice_at=at)
        f.status, f.next_check_at, f.dispatched_at = "open", at, at
        s.add(f)
        s.commit()
    stage = FollowupStage(fetcher=Fetcher(FetchPolicy(), resolve=lambda host: []), hash_image=hash_image,
                          mailer=RecordingMailer(), sender="ntd@hotline.test")
    due = RecheckDue(item_id=item_id, action="check", due_at=at, dispatched_at=at)
    seen = Observation(CheckResult.ONLINE, "the matched image is still online")

    def fetched(session: Session) -> SideEffect:
        effect = stage.handle("rechecks.due", due, SqlUnitOfWork(session))
        assert isinstance(effect, SideEffect)
        session.commit()  # the runtime commits before the side effect (the fetch), and records after it
        return effect

    first, second = sessions(), sessions()
    outputs: dict[str, list[Any]] = {}
    try:
        effects = fetched(first), fetched(second)  # both deliveries fetched the URL
        outputs["first"] = effects[0].done(SqlUnitOfWork(first), seen)  # recorded, not committed: locked
        pid = second.scalar(text("SELECT pg_backend_pid()"))
        runner = threading.Thread(
            target=lambda: outputs.__setitem__("second", effects[1].done(SqlUnitOfWork(second), seen)))
        runner.start()

        def waiting() -> bool:
            with sessions() as s:
                blocked = s.scalar(text("SELECT wait_event_type FROM pg_stat_activity WHERE pid = :pid"), {"pid": pid})
            return blocked == "Lock" or not runner.is_alive()

        wait_for("the second recorder to wait for the lock, or to finish", waiting, 30, 0.05)
        first.commit()
        runner.join(30)
        assert not runner.is_alive()
        second.commit()
    finally:
        first.close()
        second.close()
    assert len(outputs["first"]) == 1
    assert outputs["second"] == []  # the due time was recorded meanwhile: nothing to do
    assert checks(sessions, item_id) == 1
