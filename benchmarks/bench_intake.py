"""Report intake under load: POST /api/v1/reports with ``wrk`` while the pipeline runs.

One command (``python -m benchmarks.bench_intake [--quick] [--runtime embedded|kafka|both]``)
starts ``hotline serve`` on a free loopback port -- embedded: every stage and the web app in
one process on SQLite in a temp dir; kafka: a fresh PostgreSQL database, the web process with
its outbox relay and the five stage processes -- and drives it with ``wrk`` (several
connections, a fixed duration, every body unique). Each acknowledged (202) report id is
written down by wrk's Lua ``response()`` and looked up in the database afterwards: ``lost`` is
the number acknowledged but absent. Each runtime is measured twice in the same run: with
group commit (``HOTLINE_INTAKE_GROUP_COMMIT=true``, the default) and with the old path, one
commit per request (``false``). The per-address rate limit is switched off
(``HOTLINE_REPORT_RATE_PER_MINUTE=0``): the load comes from one address.

Bounded: each load phase lasts ``--seconds``; every process is killed (process group) in a
``finally``; loopback only. Needs ``wrk`` (Debian package ``wrk``); the kafka runtime needs
``--brokers`` and ``--database-url`` (defaults: the test services on 127.0.0.1).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
STAGES = ("ingest", "classify", "notify", "escalate", "followup")

LUA = r"""
local counter = 0
local tid = 0
local out = nil
local threads = {}
local n = 0

function setup(thread)
  n = n + 1
  thread:set("tid", n)
  table.insert(threads, thread)
end

function init(args)
  tid = tonumber(wrk.thread:get("tid"))
  out = io.open(string.format("%s/ids-%d.txt", IDS_DIR, tid), "w")
  wrk.method = "POST"
  wrk.headers["Content-Type"] = "application/json"
end

function request()
  counter = counter + 1
  local body = string.format('{"urls":["%s/bench/%s-%d-%d.jpg"]}', URL_BASE, RUN, tid, counter)
  return wrk.format(nil, "/api/v1/reports", nil, body)
end

function response(status, headers, body)
  if status == 202 then
    local id = string.match(body, '"report_id":"([^"]+)"')
    out:write((id or "?") .. "\n")
  else
    out:write("status " .. status .. "\n")
  end
  out:flush()
end

function done(summary, latency, requests)
  io.write(string.format("RESULT requests=%d seconds=%f p50=%d p99=%d max=%d connect=%d read=%d write=%d status=%d timeout=%d\n",
    summary.requests, summary.duration / 1e6, latency:percentile(50), latency:percentile(99), latency.max,
    summary.errors.connect, summary.errors.read, summary.errors.write, summary.errors.status, summary.errors.timeout))
end
"""


@dataclass
class Row:
    runtime: str
    mode: str
    accepted: int = 0
    seconds: float = 0.0
    p50_ms: float = 0.0
    p99_ms: float = 0.0
    max_ms: float = 0.0
    errors: int = 0
    lost: int = 0
    backlog: int | None = None  # kafka: outbox rows the relay had not published at the end
    cpu_seconds: float = 0.0  # CPU time the web process(es) used during the load (embedded: with the stages)
    # After the load: seconds until every stored report's URL reached a final state (or
    # awaiting_assessment); None: not within --drain-seconds (then ``unsettled`` is how many not).
    drained_after: float | None = None
    unsettled: int = 0
    drain_waited: bool = False  # False with --drain-seconds 0: the column shows "-"
    longest_deferral: str = "-"  # embedded with yielding: the longest a stage deferred (from the log)

    def line(self) -> str:
        rate = self.accepted / self.seconds if self.seconds else 0.0
        backlog = "-" if self.backlog is None else str(self.backlog)
        per_cpu = self.accepted / self.cpu_seconds if self.cpu_seconds else 0.0
        drained = ("-" if not self.drain_waited else f"{self.drained_after:.0f} s" if self.drained_after is not None
                   else f"not in time ({self.unsettled:,} open)")
        return (f"| {self.runtime} | {self.mode} | {rate:,.0f} | {per_cpu:,.0f} | {self.p50_ms:.1f} | "
                f"{self.p99_ms:.1f} | {self.max_ms:.0f} | {self.errors} | {self.lost} | {backlog} | {drained} |")


HEADER = ("| runtime | intake | reports/s accepted | reports per web CPU-second | p50 ms | p99 ms | max ms | "
          "errors | lost | outbox left | pipeline done after the load |\n"
          "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")


def cpu_seconds(pid: int) -> float:
    """User + system CPU time so far of the processes in ``pid``'s process group (Linux
    ``/proc``; ``spawn`` starts each server in a session of its own, so with ``--workers`` the
    group is uvicorn's supervisor, the relay and every worker): a figure a busy, shared
    machine distorts less than wall-clock rates."""
    total = 0
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pid:  # field 5 of stat, the process group
            total += int(fields[11]) + int(fields[12])
    return total / os.sysconf("SC_CLK_TCK")


def free_port() -> int:
    from doubles.loopback import free_port as pick

    return pick()


def _kill(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(15)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(5)


@contextlib.contextmanager
def spawn(args: list[str], env: dict[str, str], log: Path) -> Iterator[subprocess.Popen[bytes]]:
    with open(log, "wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "entrypoints.cli", *args], env={**os.environ, **env},
                                stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                start_new_session=True, cwd=ROOT)
    try:
        yield proc
    finally:
        _kill(proc)


def wait_healthy(port: int, proc: subprocess.Popen[bytes], log: Path, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"hotline serve exited ({proc.returncode}); see {log}")
        with contextlib.suppress(OSError):
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2) as r:
                if r.status == 200:
                    return
        time.sleep(0.3)
    raise RuntimeError(f"hotline serve did not come up in {timeout:.0f}s; see {log}")


def run_wrk(port: int, url_base: str, tmp: Path, seconds: int, connections: int, threads: int) -> tuple[dict[str, float], list[str], int]:
    ids_dir = tmp / f"ids-{uuid.uuid4().hex[:6]}"
    ids_dir.mkdir()
    script = tmp / "intake.lua"
    script.write_text(f'IDS_DIR = "{ids_dir}"\nURL_BASE = "{url_base}"\nRUN = "{uuid.uuid4().hex[:8]}"\n' + LUA)
    cmd = ["wrk", "-t", str(threads), "-c", str(connections), "-d", f"{seconds}s", "--timeout", "10s",
           "-s", str(script), f"http://127.0.0.1:{port}"]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds + 60, check=False)
    match = re.search(r"RESULT (.*)", done.stdout)
    if match is None:
        raise RuntimeError(f"wrk said: {done.stdout}\n{done.stderr}")
    stats = {k: float(v) for k, v in (kv.split("=") for kv in match.group(1).split())}
    ids: list[str] = []
    refused = 0
    for f in ids_dir.glob("ids-*.txt"):
        for line in f.read_text().splitlines():
            if line.startswith("status "):
                refused += 1
            elif line:
                ids.append(line)
    return stats, ids, refused


def count_lost(database_url: str, ids: list[str]) -> int:
    from sqlalchemy import create_engine, select
    from sqlalchemy.pool import NullPool

    from hotline.storage.models import Report

    engine = create_engine(database_url, poolclass=NullPool)
    found = 0
    try:
        with engine.connect() as conn:
            for i in range(0, len(ids), 500):
                chunk = ids[i:i + 500]
                found += len(conn.execute(select(Report.id).where(Report.id.in_(chunk))).all())
    finally:
        engine.dispose()
    return len(set(ids)) - found + (len(ids) - len(set(ids)))


def outbox_left(database_url: str) -> int:
    from sqlalchemy import create_engine, func, select
    from sqlalchemy.pool import NullPool

    from hotline.storage.models import BusMessage

    engine = create_engine(database_url, poolclass=NullPool)
    try:
        with engine.connect() as conn:
            return int(conn.scalar(select(func.count()).select_from(BusMessage)) or 0)
    finally:
        engine.dispose()


def unsettled(database_url: str) -> int:
    """Stored reports whose URL has not reached the end of the pipeline: not rejected, and its
    item in no final state nor awaiting an analyst (the bench's reports have one URL each)."""
    from sqlalchemy import create_engine, func, or_, select
    from sqlalchemy.pool import NullPool

    from hotline.kernel.states import FINAL, ItemState
    from hotline.storage.models import Item, Report, ReportUrl

    done = [str(s.value) for s in FINAL] + [ItemState.AWAITING_ASSESSMENT.value]
    engine = create_engine(database_url, poolclass=NullPool)
    try:
        with engine.connect() as conn:
            reports = int(conn.scalar(select(func.count()).select_from(Report)) or 0)
            settled = int(conn.scalar(
                select(func.count()).select_from(ReportUrl).outerjoin(Item, Item.id == ReportUrl.item_id)
                .where(or_(ReportUrl.rejected_reason.is_not(None), Item.state.in_(done)))) or 0)
    finally:
        engine.dispose()
    return max(reports - settled, 0)


def wait_drained(row: Row, database_url: str, limit: float) -> None:
    """Poll (every 2 s, at most ``limit`` seconds) until every stored report is settled."""
    start = time.monotonic()
    row.drain_waited = True
    while True:
        row.unsettled = unsettled(database_url)
        if row.unsettled == 0:
            row.drained_after = time.monotonic() - start
            return
        if time.monotonic() - start > limit:
            return
        if int(time.monotonic() - start) % 20 < 2:
            print(f"  pipeline: {row.unsettled:,} reports not finished yet", file=sys.stderr, flush=True)
        time.sleep(2)


def longest_deferral(log: Path) -> str:
    """The longest any stage deferred to intake, from the embedded server's log (the runtime
    logs each new longest per stage), or "-"."""
    found = [0.0]
    with contextlib.suppress(OSError):
        found += [float(m) for m in re.findall(r"deferred to intake for ([0-9.]+) s", log.read_text(errors="replace"))]
    return f"{max(found):.2f} s" if len(found) > 1 else "-"


def measure(row: Row, port: int, url_base: str, tmp: Path, opts: argparse.Namespace, database_url: str,
            pid: int) -> Row:
    cpu_before = cpu_seconds(pid)
    stats, ids, refused = run_wrk(port, url_base, tmp, opts.seconds, opts.connections, opts.threads)
    row.cpu_seconds = cpu_seconds(pid) - cpu_before
    row.accepted = len(ids)
    row.seconds = stats["seconds"]
    row.p50_ms, row.p99_ms, row.max_ms = stats["p50"] / 1000, stats["p99"] / 1000, stats["max"] / 1000
    row.errors = refused + int(stats["connect"] + stats["read"] + stats["write"] + stats["timeout"])
    row.lost = count_lost(database_url, ids)
    return row


# The phases of each runtime: the old path (the baseline), group commit, and this work's steps
# on top of it (embedded: the stages yield during the burst; kafka: the stage processes at a
# lower CPU priority, HOTLINE_STAGE_NICE, and several web processes).
OLD, GROUP, YIELD = "one commit per request", "group commit", "group commit, stages yield"
WORKERS, NICE = "group commit, {n} web workers", "group commit, stages at nice {nice}"
NICE_WORKERS = "group commit, stages at nice {nice}, {n} web workers"


def kafka_modes(opts: argparse.Namespace) -> tuple[str, ...]:
    """The Kafka phases in order, named with this run's worker count and niceness."""
    return (OLD, GROUP, WORKERS.format(n=opts.workers), NICE.format(nice=opts.stage_nice),
            NICE_WORKERS.format(nice=opts.stage_nice, n=opts.workers))


def bench_embedded(mode: str, url_base: str, world_env: dict[str, str], tmp: Path, opts: argparse.Namespace) -> Row:
    run_dir = tmp / f"embedded-{len(list(tmp.glob('embedded-*')))}"
    run_dir.mkdir()
    db = f"sqlite:///{run_dir / 'hotline.db'}"
    port = free_port()
    env = {**world_env, **common_env(mode), "HOTLINE_DATABASE_URL": db, "HOTLINE_INDEX_DIR": "none",
           "HOTLINE_EMBEDDED_YIELD_SECONDS": str(opts.yield_seconds) if mode == YIELD else "0"}
    log = run_dir / "serve.log"
    with spawn(["serve", "--port", str(port)], env, log) as proc:
        wait_healthy(port, proc, log)
        row = measure(Row("embedded", mode), port, url_base, tmp, opts, db, proc.pid)
        if opts.drain_seconds > 0:
            wait_drained(row, db, opts.drain_seconds)
        if mode == YIELD:
            row.longest_deferral = longest_deferral(log)
        return row


def bench_kafka(mode: str, url_base: str, world_env: dict[str, str], tmp: Path, opts: argparse.Namespace) -> Row:
    from benchmarks.crash_harness import fresh_database
    from hotline.runtime.kafka import create_topics
    from hotline.storage.engine import migrate
    from tests.integration import scenario

    run_dir = tmp / f"kafka-{len(list(tmp.glob('kafka-*')))}"
    run_dir.mkdir()
    workers = opts.workers if mode.endswith(f"{opts.workers} web workers") else 1
    nice = opts.stage_nice if "stages at nice" in mode else 0
    with contextlib.ExitStack() as stack:
        db = stack.enter_context(fresh_database(opts.database_url))
        migrate(db)
        prefix = f"benchintake{uuid.uuid4().hex[:8]}."
        create_topics(opts.brokers, prefix, 3)
        stack.callback(_quiet, scenario.delete_topics, opts.brokers, prefix)
        env = {**world_env, **common_env(mode), "HOTLINE_DATABASE_URL": db, "HOTLINE_KAFKA_BROKERS": opts.brokers,
               "HOTLINE_TOPIC_PREFIX": prefix, "HOTLINE_KAFKA_PARTITIONS": "3", "HOTLINE_INDEX_DIR": "none"}
        for stage in STAGES:
            stack.enter_context(spawn(["serve", "--stage", stage], {**env, "HOTLINE_STAGE_NICE": str(nice)},
                                      run_dir / f"{stage}.log"))
        port = free_port()
        log = run_dir / "web.log"
        proc = stack.enter_context(spawn(["serve", "--stage", "web", "--port", str(port), "--workers", str(workers)],
                                         env, log))
        wait_healthy(port, proc, log)
        row = measure(Row("kafka", mode), port, url_base, tmp, opts, db, proc.pid)
        time.sleep(2)  # the relay's last rounds (its poll is 0.2 s)
        row.backlog = outbox_left(db)
        if opts.drain_seconds > 0:
            wait_drained(row, db, opts.drain_seconds)
        return row


def _quiet(fn: object, *args: object) -> None:
    with contextlib.suppress(Exception):
        fn(*args)  # type: ignore[operator]


def common_env(mode: str) -> dict[str, str]:
    return {
        "HOTLINE_INTAKE_GROUP_COMMIT": "false" if mode == OLD else "true",
        "HOTLINE_REPORT_RATE_PER_MINUTE": "0",  # one load client, one address: no limit
        "PYTHONPATH": str(ROOT),
    }


def machine() -> str:
    cpu = "unknown CPU"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    return f"{os.cpu_count()} cores, {cpu}, Python {sys.version.split()[0]}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="short phases (about two minutes in all)")
    parser.add_argument("--runtime", choices=("embedded", "kafka", "both"), default="both")
    parser.add_argument("--seconds", type=int, default=None, help="length of each load phase")
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--workers", type=int, default=2, help="kafka: web processes in the last phase")
    parser.add_argument("--stage-nice", type=int, default=10,
                        help="kafka, last two phases: HOTLINE_STAGE_NICE of the stage processes")
    parser.add_argument("--yield-seconds", type=float, default=2.0,
                        help="embedded, last phase: HOTLINE_EMBEDDED_YIELD_SECONDS (the deferral bound)")
    parser.add_argument("--drain-seconds", type=float, default=None,
                        help="after each load, wait at most this long for the pipeline to finish (0: do not wait)")
    parser.add_argument("--phases", default="all", choices=("all", "new"),
                        help="new: only the last phase of each runtime (and group commit alone)")
    parser.add_argument("--brokers", default=os.environ.get("HOTLINE_TEST_KAFKA_BROKERS", "127.0.0.1:9092"))
    parser.add_argument("--database-url", default=os.environ.get(
        "HOTLINE_TEST_DATABASE_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/hotline_test"))
    opts = parser.parse_args(argv)
    opts.seconds = opts.seconds or (8 if opts.quick else 30)
    opts.drain_seconds = (120 if opts.quick else 600) if opts.drain_seconds is None else opts.drain_seconds
    if shutil.which("wrk") is None:
        print("wrk is not installed (apt-get install wrk)", file=sys.stderr)
        return 2
    from tests.integration import scenario

    runtimes = ("embedded", "kafka") if opts.runtime == "both" else (opts.runtime,)
    rows: list[Row] = []
    tmp = Path(tempfile.mkdtemp(prefix="hotline-bench-intake-"))
    keep = os.environ.get("BENCH_INTAKE_KEEP") == "1"  # leave the databases and logs for a look
    try:
        with scenario.world(tmp) as w:
            # URLs on the loopback hoster: the pipeline fetches them (a 404), attributes and
            # records them, so the stages do real work while intake is under load.
            url_base = w.url(scenario.NL_A, "")
            for runtime in runtimes:
                modes = (OLD, GROUP, YIELD) if runtime == "embedded" else kafka_modes(opts)
                if opts.phases == "new":
                    modes = modes[1:]
                for mode in modes:
                    print(f"{runtime}, {mode}: {opts.seconds} s of load ...", file=sys.stderr, flush=True)
                    bench = bench_embedded if runtime == "embedded" else bench_kafka
                    rows.append(bench(mode, url_base, w.env(), tmp, opts))
    finally:
        if keep:
            print(f"kept {tmp}", file=sys.stderr)
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    print(f"\nReport intake, {opts.connections} connections, {opts.seconds} s a phase, rate limit off, "
          f"pipeline running; {machine()}\n")
    print(HEADER)
    for row in rows:
        print(row.line())
    for row in rows:
        if row.longest_deferral != "-":
            print(f"\n{row.runtime}, {row.mode}: longest deferral of a stage {row.longest_deferral}")
    return 1 if any(r.lost for r in rows) or any(r.drained_after is None for r in rows if opts.drain_seconds) else 0


if __name__ == "__main__":
    sys.exit(main())
