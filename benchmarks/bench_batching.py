"""Benchmark of stages that batch (issue 13): ingest messages/s with one message per
transaction (``HOTLINE_BATCH_SIZE=1``, what every stage did before) next to a batch of N per
transaction, on the embedded runtime (SQLite) and on Kafka + PostgreSQL, in the same run.

    python benchmarks/bench_batching.py            # 5,000 reports per run, batch 1 vs 100
    python benchmarks/bench_batching.py --quick    # 1,000 reports per run (under ~2 minutes)
    python benchmarks/bench_batching.py --no-kafka # embedded only

Method (docs/benchmarks-batching.md):

* every run gets a fresh database (SQLite file in a temporary directory; a PostgreSQL
  database of its own, created and dropped on the server of ``--pg``) and, on Kafka, topics
  of its own (a unique prefix, deleted at the end);
* the reports are synthetic, one URL each, all different, at a host the operator's hosting
  file vouches for (``images.hoster-a.test``): no DNS, no network beyond loopback;
* embedded: the burst is written to the bus table first, then the real ``EmbeddedRuntime``
  steps the real ingest stage (``step`` in this thread, no poll waits) until it is drained;
  the time from the first step to the last is measured, commits are counted;
* Kafka: the real worker (``hotline serve --stage ingest``, a process of its own) is started
  and warmed up with one report (group joined, partitions assigned); then the burst is
  produced (kafka-python, acks=all) and the time from the first send to the moment the
  database shows every report processed is measured;
* the baseline (batch 1) and batch N run one after the other in the same invocation on the
  same machine. Bounded: ``--reports`` per run, ``--timeout`` per run; every process is
  killed (its process group) on exit, Ctrl-C included.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import platform
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

HOST = "images.hoster-a.test"


@dataclass
class Row:
    runtime: str
    batch: int
    reports: int
    seconds: float
    commits: int | None = None

    @property
    def rate(self) -> float:
        return self.reports / self.seconds if self.seconds > 0 else float("nan")


def reports(n: int, tag: str) -> list[object]:
    from schemas.reports import ReportSubmitted

    return [ReportSubmitted(channel="api", urls=[f"http://{HOST}/{tag}/{i}.jpg"]) for i in range(n)]


def hosting_file(directory: Path) -> Path:
    path = directory / "hosting.yaml"
    path.write_text(
        f"hosts:\n  {HOST}: [127.0.0.2]\nnetworks:\n"
        "  - {range: 127.0.0.2/32, country: NL, asn: 64501, hoster: Hoster A B.V., abuse: abuse@hoster-a.test}\n"
    )
    return path


# ------------------------------------------------------------------ embedded


def run_embedded(batch: int, n: int, timeout: float) -> Row:
    from sqlalchemy import event

    from hotline.kernel.messages import Outgoing
    from hotline.runtime.embedded import EmbeddedRuntime
    from hotline.storage.engine import make_engine, make_sessionmaker, migrate
    from hotline.storage.unit_of_work import SqlUnitOfWork
    from services.ingest.stage import IngestStage

    with tempfile.TemporaryDirectory(prefix="bench-batching-") as tmp:
        url = f"sqlite:///{Path(tmp) / 'bench.db'}"
        migrate(url)
        engine = make_engine(url)
        try:
            sessions = make_sessionmaker(engine)
            with sessions() as s:
                store = SqlUnitOfWork(s)
                store.enqueue([Outgoing("reports.submitted", r) for r in reports(n, "emb")])  # type: ignore[arg-type]
                store.commit()
            stage = IngestStage(operator_hosts=frozenset({HOST}))
            runtime = EmbeddedRuntime(sessions, [stage], batch_size=batch)
            commits = [0]
            event.listen(sessions, "after_commit", lambda _s: commits.__setitem__(0, commits[0] + 1))
            started = time.perf_counter()
            deadline = time.monotonic() + timeout
            while runtime.step(stage):
                if time.monotonic() > deadline:
                    raise TimeoutError(f"embedded batch {batch}: not drained within {timeout:.0f}s")
            return Row("embedded (SQLite)", batch, n, time.perf_counter() - started, commits[0])
        finally:
            engine.dispose()


# ------------------------------------------------------------------ Kafka + PostgreSQL


@contextlib.contextmanager
def fresh_database(admin_url: str) -> Iterator[str]:
    from benchmarks.crash_harness import fresh_database as harness_database

    with harness_database(admin_url) as url:
        yield url


def processed(sessions: object, expected: int) -> int:
    from sqlalchemy import func, select

    from hotline.storage.models import Report

    with sessions() as s:  # type: ignore[operator]
        return int(s.scalar(select(func.count()).select_from(Report).where(Report.status != "received")) or 0)


def xact_commits(sessions: object) -> int:
    """Transactions committed in the benchmark's PostgreSQL database so far (the server's
    statistics; they lag a little, so read after the work is done, with a pause)."""
    from sqlalchemy import text

    with sessions() as s:  # type: ignore[operator]
        s.execute(text("SELECT pg_stat_clear_snapshot()"))
        return int(s.scalar(text("SELECT xact_commit FROM pg_stat_database WHERE datname = current_database()")) or 0)


def delete_topics(brokers: str, prefix: str) -> None:
    from kafka import KafkaAdminClient

    from hotline.runtime.kafka import app_id_for

    admin = KafkaAdminClient(bootstrap_servers=brokers.split(","), client_id="bench-batching-cleanup")
    try:
        internal = app_id_for(prefix, "")
        doomed = [t for t in admin.list_topics() if t.startswith(prefix) or t.startswith(internal)]
        if doomed:
            admin.delete_topics(doomed, timeout_ms=30000)
    finally:
        admin.close()


def stop(proc: subprocess.Popen[bytes]) -> None:
    """TERM the worker's process group, KILL it if it does not go within 20 s."""
    if proc.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(20)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(10)


def wait(what: str, probe: object, timeout: float, proc: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if probe():  # type: ignore[operator]
            return
        if proc.poll() is not None:
            raise RuntimeError(f"the ingest worker exited ({proc.returncode}) waiting for {what}:\n{log.read_text()[-3000:]}")
        time.sleep(0.05)
    raise TimeoutError(f"timed out after {timeout:.0f}s waiting for {what}")


def run_kafka(batch: int, n: int, timeout: float, brokers: str, pg: str) -> Row:
    from kafka import KafkaProducer

    from hotline.runtime.kafka import create_topics
    from hotline.storage.engine import make_engine, make_sessionmaker, migrate

    prefix = f"bench-batching-{uuid.uuid4().hex[:8]}."
    with tempfile.TemporaryDirectory(prefix="bench-batching-") as tmp, fresh_database(pg) as url:
        migrate(url)
        create_topics(brokers, prefix, 3)
        engine = make_engine(url)
        sessions = make_sessionmaker(engine)
        log = Path(tmp) / "ingest.log"
        env = {
            **os.environ, "PYTHONPATH": str(ROOT), "HOTLINE_DATABASE_URL": url, "HOTLINE_KAFKA_BROKERS": brokers,
            "HOTLINE_TOPIC_PREFIX": prefix, "HOTLINE_KAFKA_PARTITIONS": "3", "HOTLINE_BATCH_SIZE": str(batch),
            "HOTLINE_HOSTING_FILE": str(hosting_file(Path(tmp))),
        }
        with open(log, "wb") as out:
            proc = subprocess.Popen(
                [sys.executable, "-m", "entrypoints.cli", "serve", "--stage", "ingest"], env=env, cwd=ROOT,
                stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True,
            )
        producer = KafkaProducer(bootstrap_servers=brokers.split(","), acks="all", linger_ms=5)
        try:
            topic = prefix + "reports.submitted"
            (warm,) = reports(1, "warm")
            producer.send(topic, key=warm.report_id.encode(), value=warm.to_bytes()).get(30)  # type: ignore[attr-defined]
            wait("the warm-up report", lambda: processed(sessions, 1) >= 1, 120, proc, log)
            burst = reports(n, "kafka")
            time.sleep(1.0)  # let the statistics catch up with the warm-up
            before = xact_commits(sessions)
            started = time.perf_counter()
            for r in burst:
                producer.send(topic, key=r.report_id.encode(), value=r.to_bytes())  # type: ignore[attr-defined]
            producer.flush(60)
            wait(f"{n} reports processed", lambda: processed(sessions, n + 1) >= n + 1, timeout, proc, log)
            seconds = time.perf_counter() - started
            time.sleep(1.5)
            # The probes' reads end in a rollback (session closed): only the worker's commits count.
            return Row("Kafka + PostgreSQL", batch, n, seconds, xact_commits(sessions) - before)
        finally:
            producer.close(timeout=10)
            stop(proc)
            engine.dispose()
            with contextlib.suppress(Exception):
                delete_topics(brokers, prefix)


# ------------------------------------------------------------------ the table


def table(rows: list[Row]) -> str:
    lines = ["| runtime | batch | reports | seconds | messages/s | commits | vs batch 1 |", "|---|---:|---:|---:|---:|---:|---:|"]
    base = {r.runtime: r.rate for r in rows if r.batch == 1}
    for r in rows:
        ratio = r.rate / base[r.runtime] if r.runtime in base else float("nan")
        commits = "" if r.commits is None else str(r.commits)
        lines.append(f"| {r.runtime} | {r.batch} | {r.reports} | {r.seconds:.2f} | {r.rate:,.0f} | {commits} | {ratio:.1f}× |")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="1,000 reports per run")
    parser.add_argument("--reports", type=int, default=None, help="reports per run (default 5,000; --quick 1,000)")
    parser.add_argument("--batch", type=int, default=100, help="the batch size compared with 1")
    parser.add_argument("--timeout", type=float, default=300.0, help="seconds per run at most")
    parser.add_argument("--no-kafka", action="store_true", help="embedded runtime only")
    parser.add_argument("--no-embedded", action="store_true", help="Kafka runtime only")
    parser.add_argument("--brokers", default=os.environ.get("HOTLINE_TEST_KAFKA_BROKERS", "127.0.0.1:9092"))
    parser.add_argument("--pg", default=os.environ.get("HOTLINE_TEST_DATABASE_URL",
                                                       "postgresql+psycopg://postgres@127.0.0.1:5432/hotline_test"),
                        help="a PostgreSQL URL whose server may get a database of the benchmark's own")
    args = parser.parse_args()
    n = args.reports or (1000 if args.quick else 5000)
    rows: list[Row] = []
    if not args.no_embedded:
        for batch in (1, args.batch):
            rows.append(run_embedded(batch, n, args.timeout))
            print(f"embedded batch {batch}: {rows[-1].rate:,.0f} messages/s", file=sys.stderr)
    if not args.no_kafka:
        for batch in (1, args.batch):
            rows.append(run_kafka(batch, n, args.timeout, args.brokers, args.pg))
            print(f"kafka batch {batch}: {rows[-1].rate:,.0f} messages/s", file=sys.stderr)
    print(f"\nIngest messages/s, batch 1 vs {args.batch}; {n} one-URL reports per run; "
          f"{platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}, "
          f"load average {os.getloadavg()[0]:.1f}\n")
    print(table(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
