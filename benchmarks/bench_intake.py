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
    cpu_seconds: float = 0.0  # CPU time the web process used during the load (embedded: with the stages)

    def line(self) -> str:
        rate = self.accepted / self.seconds if self.seconds else 0.0
        backlog = "-" if self.backlog is None else str(self.backlog)
        per_cpu = self.accepted / self.cpu_seconds if self.cpu_seconds else 0.0
        return (f"| {self.runtime} | {self.mode} | {rate:,.0f} | {per_cpu:,.0f} | {self.p50_ms:.1f} | "
                f"{self.p99_ms:.1f} | {self.max_ms:.0f} | {self.errors} | {self.lost} | {backlog} |")


HEADER = ("| runtime | intake | reports/s accepted | reports per web CPU-second | p50 ms | p99 ms | max ms | "
          "errors | lost | outbox left |\n"
          "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|")


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of one process so far (Linux ``/proc``): a figure a busy,
    shared machine distorts less than wall-clock rates."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


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


def bench_embedded(mode: str, url_base: str, world_env: dict[str, str], tmp: Path, opts: argparse.Namespace) -> Row:
    run_dir = tmp / f"embedded-{mode}"
    run_dir.mkdir()
    db = f"sqlite:///{run_dir / 'hotline.db'}"
    port = free_port()
    env = {**world_env, **common_env(mode), "HOTLINE_DATABASE_URL": db, "HOTLINE_INDEX_DIR": "none"}
    log = run_dir / "serve.log"
    with spawn(["serve", "--port", str(port)], env, log) as proc:
        wait_healthy(port, proc, log)
        return measure(Row("embedded", mode), port, url_base, tmp, opts, db, proc.pid)


def bench_kafka(mode: str, url_base: str, world_env: dict[str, str], tmp: Path, opts: argparse.Namespace) -> Row:
    from benchmarks.crash_harness import fresh_database
    from hotline.runtime.kafka import create_topics
    from hotline.storage.engine import migrate
    from tests.integration import scenario

    run_dir = tmp / f"kafka-{mode}"
    run_dir.mkdir()
    with contextlib.ExitStack() as stack:
        db = stack.enter_context(fresh_database(opts.database_url))
        migrate(db)
        prefix = f"benchintake{uuid.uuid4().hex[:8]}."
        create_topics(opts.brokers, prefix, 3)
        stack.callback(_quiet, scenario.delete_topics, opts.brokers, prefix)
        env = {**world_env, **common_env(mode), "HOTLINE_DATABASE_URL": db, "HOTLINE_KAFKA_BROKERS": opts.brokers,
               "HOTLINE_TOPIC_PREFIX": prefix, "HOTLINE_KAFKA_PARTITIONS": "3", "HOTLINE_INDEX_DIR": "none"}
        for stage in STAGES:
            stack.enter_context(spawn(["serve", "--stage", stage], env, run_dir / f"{stage}.log"))
        port = free_port()
        log = run_dir / "web.log"
        proc = stack.enter_context(spawn(["serve", "--stage", "web", "--port", str(port)], env, log))
        wait_healthy(port, proc, log)
        row = measure(Row("kafka", mode), port, url_base, tmp, opts, db, proc.pid)
        time.sleep(2)  # the relay's last rounds (its poll is 0.2 s)
        row.backlog = outbox_left(db)
        return row


def _quiet(fn: object, *args: object) -> None:
    with contextlib.suppress(Exception):
        fn(*args)  # type: ignore[operator]


def common_env(mode: str) -> dict[str, str]:
    return {
        "HOTLINE_INTAKE_GROUP_COMMIT": "true" if mode == "group commit" else "false",
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
    parser.add_argument("--brokers", default=os.environ.get("HOTLINE_TEST_KAFKA_BROKERS", "127.0.0.1:9092"))
    parser.add_argument("--database-url", default=os.environ.get(
        "HOTLINE_TEST_DATABASE_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/hotline_test"))
    opts = parser.parse_args(argv)
    opts.seconds = opts.seconds or (8 if opts.quick else 30)
    if shutil.which("wrk") is None:
        print("wrk is not installed (apt-get install wrk)", file=sys.stderr)
        return 2
    from tests.integration import scenario

    runtimes = ("embedded", "kafka") if opts.runtime == "both" else (opts.runtime,)
    rows: list[Row] = []
    tmp = Path(tempfile.mkdtemp(prefix="hotline-bench-intake-"))
    try:
        with scenario.world(tmp) as w:
            # URLs on the loopback hoster: the pipeline fetches them (a 404), attributes and
            # records them, so the stages do real work while intake is under load.
            url_base = w.url(scenario.NL_A, "")
            for runtime in runtimes:
                for mode in ("one commit per request", "group commit"):
                    print(f"{runtime}, {mode}: {opts.seconds} s of load ...", file=sys.stderr, flush=True)
                    bench = bench_embedded if runtime == "embedded" else bench_kafka
                    rows.append(bench(mode, url_base, w.env(), tmp, opts))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print(f"\nReport intake, {opts.connections} connections, {opts.seconds} s a phase, rate limit off, "
          f"pipeline running; {machine()}\n")
    print(HEADER)
    for row in rows:
        print(row.line())
    return 1 if any(r.lost for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
