"""The acceptance scenario on the distributed runtime: real Kafka, real PostgreSQL, and the four
stages as separate ``hotline serve --stage NAME`` processes. The same scenario runs embedded in
``test_embedded_pipeline.py``."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy.orm import Session, sessionmaker

from hotline.db.engine import make_engine, make_sessionmaker, migrate
from hotline.store import Store
from tests.integration import scenario
from tests.integration.scenario import KafkaPipeline, StageProcesses, World

pytestmark = pytest.mark.integration

STAGES = ("ingest", "classify", "notify", "escalate")
REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def kafka_db(pg_url: str) -> Iterator[str]:
    """A fresh PostgreSQL database for this module, migrated once before any worker starts
    (four processes migrating an empty database at the same moment would race)."""
    with scenario.fresh_pg_database(pg_url, "kafka") as url:
        migrate(url)
        yield url


@pytest.fixture
def db_sessions(kafka_db: str) -> Iterator[sessionmaker[Session]]:
    engine = make_engine(kafka_db)
    try:
        yield make_sessionmaker(engine)
    finally:
        engine.dispose()


def worker_env(w: World, database_url: str, brokers: str, prefix: str) -> dict[str, str]:
    return {
        **w.env(),
        "HOTLINE_DATABASE_URL": database_url,
        "HOTLINE_KAFKA_BROKERS": brokers,
        "HOTLINE_TOPIC_PREFIX": prefix,
        "HOTLINE_KAFKA_PARTITIONS": "3",
        "PYTHONPATH": str(REPO),
    }


@contextlib.contextmanager
def distributed(
    w: World, database_url: str, sessions: sessionmaker[Session], brokers: str, prefix: str, log_dir: Path
) -> Iterator[tuple[KafkaPipeline, StageProcesses]]:
    """Bank loaded, topics created, four stage processes and the outbox relay running.
    Processes are always stopped on exit, and their logs shown when the body failed."""
    with sessions() as s:
        scenario.load_bank(Store(s), w.known_images)
    log_dir.mkdir(exist_ok=True)
    pipeline = KafkaPipeline(brokers, prefix, sessions)
    procs = StageProcesses(worker_env(w, database_url, brokers, prefix), log_dir)
    try:
        for stage in STAGES:
            procs.start(stage)
        yield pipeline, procs
    except BaseException as exc:
        codes = procs.stop_all()
        raise AssertionError(f"{exc}\nexit codes {codes}\n{procs.logs()}") from exc
    finally:
        procs.stop_all()
        pipeline.close()


def test_acceptance_kafka(
    tmp_path: Path,
    kafka_brokers: str,
    kafka_db: str,
    db_sessions: sessionmaker[Session],
    unique_topic_prefix: str,
) -> None:
    prefix = unique_topic_prefix + "."
    with (
        scenario.world(tmp_path) as w,
        distributed(w, kafka_db, db_sessions, kafka_brokers, prefix, tmp_path / "logs") as (pipeline, procs),
    ):
        timings = scenario.run_acceptance(pipeline, w, timeout=90)
        # Every stage still up: bad input did not stop any of them.
        assert all(procs.alive(s) for s in STAGES)
        codes = procs.stop_all()
        # SIGTERM is a clean stop.
        assert codes == dict.fromkeys(STAGES, 0), f"{codes}\n{procs.logs()}"
    print("kafka acceptance timings:", {k: round(v, 2) for k, v in timings.items()})
