"""Benchmark of follow-up re-checks: URLs re-checked per second on one core by the real
scheduler + followup stage, next to the one-at-a-time loop a user would otherwise write,
with 100,000 open notices in the database; and the scheduler's cost per tick with 1,000 vs
100,000 open follow-ups that are not due.

    python benchmarks/bench_recheck.py            # 100,000 open, 5,000 due
    python benchmarks/bench_recheck.py --quick    # 100,000 open, 600 due, fewer ticks

Setup:

* database: SQLite through the real migrations (``--database-url`` for PostgreSQL: the
  script creates and drops a database of its own there); ``--open`` follow-ups with a sent
  notice (bulk insert through SQLAlchemy core, each with its item), ``--due`` of them due
  now and the rest due 1-2 hours from now, spread over ``--hosters`` hosters;
* hosters: ``doubles.loopback.LoopbackSite`` on 127.0.0.2, 127.0.0.3, ... in a process of
  their own, pinned to core 1 (so the server side does not share the measured core);
  every due URL is a direct image URL: half of them still serve the notice's image (a
  synthetic 640x480 JPEG from ``hashing/synthetic.py``, 24 different ones), half answer
  404. Nothing leaves 127.0.0.0/8;
* (a) real pipeline, pinned to core 0 (the stage's fetch threads too): the scheduler's tick through
  ``PeriodicRunner.tick`` (claims, outbox) followed by the embedded runtime's
  ``EmbeddedRuntime.step`` for the followup stage until the bus is drained (each message:
  ``StepRunner``: handle, commit, fetch through the guarded fetcher + hash, record +
  commit; a message holds up to ``HOTLINE_FOLLOWUP_CHECKS_PER_MESSAGE`` (50) checks, fetched
  on ``HOTLINE_FOLLOWUP_FETCH_WORKERS`` (8) threads), ticks back to back, until every due follow-up is checked; the tick interval
  (``HOTLINE_FOLLOWUP_TICK_SECONDS``, 5 s) is left out, so this is the capacity of one
  core; run with batch 100 (the shipped default is 500; with the cap the claims, not the
  batch, bound a tick), at most 2 per hoster in flight, and with the per-hoster cap off;
* (b) the naive loop, same core, same database copy: ``SELECT`` every open follow-up,
  and for each one that is due: ``httpx.get``, the same ``hash_image``, compare with the
  notice's hashes, ``UPDATE``, ``COMMIT``;
* (c) the scheduler alone: ``PeriodicRunner.tick`` with nothing due, and claiming a batch,
  with 1,000 and with 100,000 open follow-ups that are not due (best and median of
  ``--ticks`` ticks; the claims are reset between ticks, untimed).

Bounded: ``--due`` re-checks per run and ``--max-seconds`` per measured run.
Prints a markdown table; docs/benchmarks-recheck.md holds a recorded run.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import json
import os
import platform
import pstats
import shutil
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, cast

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

IMAGES = 24
WIDTH, HEIGHT = 640, 480


def pin(cpu: int) -> None:
    if hasattr(os, "sched_setaffinity") and cpu < (os.cpu_count() or 1):
        os.sched_setaffinity(0, {cpu})


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def image(k: int) -> bytes:
    from hashing.synthetic import photo_like_jpeg

    return photo_like_jpeg(WIDTH, HEIGHT, seed=1000 + k)


# ----------------------------------------------------------------------------- hoster process


def serve_hosters(args: argparse.Namespace) -> None:
    """Child process: ``--hosters`` loopback sites, each serving the same synthetic images
    under /online/<k>.jpg (anything else: 404); writes their ports to ``--info``."""
    pin(args.cpu)
    from doubles.loopback import LoopbackSite

    bodies = [image(k) for k in range(IMAGES)]
    sites = []
    for h in range(args.hosters):
        site = LoopbackSite(host=f"127.0.0.{2 + h}")
        for k, body in enumerate(bodies):
            site.add(f"/online/{k}.jpg", "image/jpeg", body)
        sites.append(site.start())
    Path(args.info).write_text(json.dumps({"ports": [s.port for s in sites],
                                           "bytes": statistics.mean(len(b) for b in bodies)}))
    signal.sigwait({signal.SIGTERM, signal.SIGINT})
    for s in sites:
        s.stop()


def start_hosters(n: int, cpu: int, tmp: Path) -> tuple[subprocess.Popen[bytes], list[int], float]:
    info = tmp / "hosters.json"
    proc = subprocess.Popen([sys.executable, __file__, "--serve-hosters", "--hosters", str(n),
                             "--cpu", str(cpu), "--info", str(info)])
    deadline = time.monotonic() + 120
    while not info.exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError("the loopback hosters did not start")
        time.sleep(0.05)
    data = json.loads(info.read_text())
    return proc, data["ports"], data["bytes"]


# ----------------------------------------------------------------------------- database


@dataclass
class World:
    ports: list[int]
    matched: list[dict[str, Any]]  # per image k: the notice's hashes


def hoster_name(h: int) -> str:
    return f"abuse@hoster-{h}.test"


def url_for(world: World, i: int, due: bool) -> str:
    h = i % len(world.ports)
    base = f"http://127.0.0.{2 + h}:{world.ports[h]}"
    if due and (i // len(world.ports)) % 2 == 0:
        return f"{base}/online/{i % IMAGES}.jpg"
    return f"{base}/gone/{i}.jpg"


def build_db(url: str, world: World, n_open: int, n_due: int, now: datetime) -> None:
    """``n_open`` open follow-ups (and their items) through the real schema, ``n_due`` of them due."""
    import sqlalchemy as sa

    from hotline.storage.engine import make_engine, migrate
    from hotline.storage.models import Followup, Item

    migrate(url)
    engine = make_engine(url)
    items, followups = cast(sa.Table, Item.__table__), cast(sa.Table, Followup.__table__)
    notice_at = now - timedelta(hours=2)
    report_at = now - timedelta(hours=3)
    chunk = 20_000
    with engine.begin() as conn:
        for lo in range(0, n_open, chunk):
            rows_i, rows_f = [], []
            for i in range(lo, min(n_open, lo + chunk)):
                due = i < n_due
                item_id = f"it-{i:07d}"
                url_i = url_for(world, i, due)
                hoster = hoster_name(i % len(world.ports))
                rows_i.append({"id": item_id, "url": url_i, "state": "notice_sent", "reason": "notice sent",
                               "country": "NL", "hoster": hoster, "classification": None,
                               "first_seen": report_at, "last_seen": report_at, "updated_at": notice_at})
                # not due: spread over the next 1-2 hours, like a real schedule
                at = now - timedelta(seconds=60 + i % 600) if due else now + timedelta(seconds=3600 + i % 3600)
                rows_f.append({
                    "item_id": item_id, "notice_id": f"nt-{i:07d}", "url": url_i, "hoster": hoster,
                    "country": "NL", "abuse_email": hoster, "matched": [{**world.matched[i % IMAGES], "url": url_i}],
                    "status": "open", "first_report_at": report_at, "first_notice_at": notice_at,
                    "next_check_at": at.replace(microsecond=0), "dispatched_at": None, "checks": 1, "misses": 0,
                    "first_gone_at": None, "last_result": "online", "last_checked_at": notice_at, "step": 0,
                    "last_step_at": None, "step_pending": None, "step_dispatched_at": None,
                    "removed_at": None, "removal_reason": None,
                })
            conn.execute(sa.insert(items), rows_i)
            conn.execute(sa.insert(followups), rows_f)
    if url.startswith("sqlite"):  # no ANALYZE: the app never runs it on SQLite
        with engine.connect() as conn:
            conn.exec_driver_sql("PRAGMA wal_checkpoint(TRUNCATE)")
    else:  # PostgreSQL's autovacuum would have analyzed a table this size
        with engine.connect() as conn:
            conn.exec_driver_sql("ANALYZE")
            conn.commit()
    engine.dispose()


class Databases:
    """Fresh copies of one built database: a file copy for SQLite, ``CREATE DATABASE ... TEMPLATE``
    for PostgreSQL."""

    def __init__(self, base_url: str | None, tmp: Path) -> None:
        self.base_url, self.tmp = base_url, tmp
        self.made: list[str] = []

    def new(self, world: World, n_open: int, n_due: int, now: datetime) -> str:
        name = f"hotline_bench_rc_{uuid.uuid4().hex[:8]}"
        if not self.base_url:
            url = f"sqlite:///{self.tmp / (name + '.db')}"
        else:
            url = self._pg_create(name)
        build_db(url, world, n_open, n_due, now)
        return url

    def copy(self, url: str) -> str:
        name = f"hotline_bench_rc_{uuid.uuid4().hex[:8]}"
        if url.startswith("sqlite"):
            src = url.removeprefix("sqlite:///")
            dst = self.tmp / (name + ".db")
            shutil.copyfile(src, dst)
            return f"sqlite:///{dst}"
        import sqlalchemy as sa

        return self._pg_create(name, template=sa.engine.make_url(url).database)

    def _pg_create(self, name: str, template: str | None = None) -> str:
        import sqlalchemy as sa

        assert self.base_url
        url = sa.engine.make_url(self.base_url)
        admin = sa.create_engine(url.set(database="postgres"), isolation_level="AUTOCOMMIT")
        with admin.connect() as c:
            c.execute(sa.text(f'CREATE DATABASE "{name}"' + (f' TEMPLATE "{template}"' if template else "")))
        admin.dispose()
        self.made.append(name)
        return url.set(database=name).render_as_string(hide_password=False)

    def drop_all(self) -> None:
        if not self.base_url or not self.made:
            return
        import sqlalchemy as sa

        admin = sa.create_engine(sa.engine.make_url(self.base_url).set(database="postgres"),
                                 isolation_level="AUTOCOMMIT")
        with admin.connect() as c:
            for name in reversed(self.made):
                c.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


# ----------------------------------------------------------------------------- (a) the real pipeline


def system_for(url: str, batch: int, per_hoster: int) -> Any:
    from entrypoints.bootstrap import bootstrap
    from hotline.config import Settings

    settings = Settings(database_url=url, index_dir="none", allow_private_fetch=True,
                        followup_batch=batch, recheck_per_hoster=per_hoster)
    return bootstrap(settings, run_migrations=False)


def run_pipeline(url: str, n_due: int, batch: int, per_hoster: int, max_seconds: float,
                 profile: Path | None = None) -> dict[str, Any]:
    """Scheduler ticks back to back, each followed by the followup stage draining the bus,
    on this thread (one core), until ``n_due`` re-checks are recorded or time runs out."""
    from sqlalchemy import func, select

    from hotline.runtime.embedded import EmbeddedRuntime
    from hotline.storage.models import Followup

    system = system_for(url, batch, per_hoster)
    stage = system.build_stage("followup")
    runtime = EmbeddedRuntime(system.sessions, [stage], periodic=[system.build_scheduler()])
    ticker = runtime.periodic[0]
    done = ticks = 0
    tick_s: list[float] = []
    prof = cProfile.Profile() if profile else None
    t0, c0 = time.perf_counter(), time.process_time()
    if prof:
        prof.enable()
    while done < n_due and time.perf_counter() - t0 < max_seconds:
        t = time.perf_counter()
        claimed = ticker.tick()
        tick_s.append(time.perf_counter() - t)
        ticks += 1
        while runtime.step(stage):
            done += 1
        if claimed == 0:
            break
    if prof:
        prof.disable()
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    with system.sessions() as s:
        checked = s.scalar(select(func.count()).select_from(Followup).where(Followup.checks > 1)) or 0
        results = dict(s.execute(select(Followup.last_result, func.count()).where(Followup.checks > 1)
                                 .group_by(Followup.last_result)).all())
    if runtime.errors:
        raise RuntimeError(f"stage errors: {runtime.errors}")
    system.close()
    if prof and profile:
        prof.dump_stats(profile)
    return {"n": checked, "messages": done, "seconds": wall, "rate": checked / wall, "cpu_rate": checked / cpu,
            "ticks": ticks, "tick_ms": 1000 * statistics.median(tick_s), "results": results}


# ----------------------------------------------------------------------------- (b) the naive loop


def run_naive(url: str, max_seconds: float) -> dict[str, Any]:
    """What a user would otherwise write: every open notice, one at a time, fetch, hash,
    compare, UPDATE, COMMIT (SQLite: the stdlib module; PostgreSQL: psycopg)."""
    import httpx

    from hashing.image import hash_image
    from hashing.signals import SIGNAL_TYPES

    pdq = SIGNAL_TYPES["pdq"]
    if url.startswith("sqlite"):
        conn: Any = sqlite3.connect(url.removeprefix("sqlite:///"))
        mark = "?"
    else:
        import psycopg
        import sqlalchemy as sa

        conn = psycopg.connect(sa.engine.make_url(url).set(drivername="postgresql")
                               .render_as_string(hide_password=False))
        mark = "%s"
    now = datetime.now(UTC)
    t0, c0 = time.perf_counter(), time.process_time()
    rows = conn.execute("SELECT item_id, url, matched, next_check_at, checks FROM followups "
                        "WHERE status = 'open'").fetchall()
    select_s = time.perf_counter() - t0
    n = 0
    results: dict[str, int] = {}
    with httpx.Client(timeout=10) as client:
        for item_id, u, matched, next_check_at, checks in rows:
            due = next_check_at if isinstance(next_check_at, datetime) else datetime.fromisoformat(next_check_at)
            if due.replace(tzinfo=UTC) > now:
                continue
            if time.perf_counter() - t0 > max_seconds:
                break
            r = client.get(u)
            if r.status_code in (404, 410):
                result = "gone"
            elif r.status_code >= 400:
                result = "unreachable"
            else:
                h = hash_image(r.content)
                known = json.loads(matched) if isinstance(matched, str) else matched
                online = any(m["sha256"] == h.sha256 or m["md5"] == h.md5
                             or (h.pdq is not None and pdq.distance(m["pdq"], h.pdq) <= 31) for m in known)
                result = "online" if online else "changed"
            at = datetime.now(UTC)
            conn.execute(f"UPDATE followups SET last_result = {mark}, last_checked_at = {mark}, "
                         f"checks = {mark}, next_check_at = {mark} WHERE item_id = {mark}",
                         (result, at.isoformat(" ") if mark == "?" else at, checks + 1,
                          (at + timedelta(hours=1)).isoformat(" ") if mark == "?" else at + timedelta(hours=1),
                          item_id))
            conn.commit()
            results[result] = results.get(result, 0) + 1
            n += 1
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    conn.close()
    return {"n": n, "seconds": wall, "rate": n / wall, "cpu_rate": n / cpu, "select_ms": 1000 * select_s,
            "results": results, "rows": len(rows)}


# ----------------------------------------------------------------------------- (c) the scheduler alone


def tick_cost(url: str, ticks: int, batch: int, per_hoster: int) -> dict[str, Any]:
    """``PeriodicRunner.tick`` timed ``ticks`` times; the claims (and the outbox rows they wrote)
    are reset after each, untimed, so every tick finds the same work."""
    from sqlalchemy import delete, func, select, update

    from hotline.runtime.periodic import PeriodicRunner
    from hotline.storage.models import BusMessage, Followup

    system = system_for(url, batch, per_hoster)
    runner = PeriodicRunner(system.sessions, system.build_scheduler())
    walls, claimed = [], 0
    for _ in range(ticks):
        t = time.perf_counter()
        runner.tick()
        walls.append(time.perf_counter() - t)
        with system.sessions() as s:
            claimed = s.scalar(select(func.count()).select_from(Followup)
                               .where(Followup.dispatched_at.is_not(None))) or 0
            s.execute(update(Followup).where(Followup.dispatched_at.is_not(None)).values(dispatched_at=None))
            s.execute(delete(BusMessage))
            s.commit()
    system.close()
    return {"best_ms": 1000 * min(walls), "median_ms": 1000 * statistics.median(walls), "claimed": claimed}


def query_plans(url: str) -> list[str]:
    """SQLite's plan for each of the scheduler's queries (what the index does for it)."""
    if not url.startswith("sqlite"):
        return []
    from sqlalchemy import create_engine
    from sqlalchemy.orm import Session

    from hotline.storage.followups import SqlFollowups

    engine = create_engine(url)
    plans: list[str] = []
    with Session(engine) as session:
        @__import__("sqlalchemy").event.listens_for(engine, "before_cursor_execute")
        def _plan(conn: Any, cursor: Any, statement: str, params: Any, context: Any, many: bool) -> None:
            if statement.lstrip().upper().startswith("SELECT") and "followups" in statement:
                raw = conn.connection.dbapi_connection
                rows = raw.execute("EXPLAIN QUERY PLAN " + statement, params).fetchall()
                first = " ".join(statement.split())[:90]
                plans.append(f"{first} … → " + "; ".join(str(r[-1]) for r in rows))

        now = datetime.now(UTC)
        store = SqlFollowups(session)
        store.unplanned(100)
        store.claim_due(now, 100, 2, now - timedelta(seconds=900))
        store.claim_pending_steps(now, 100, now - timedelta(seconds=900))
        session.rollback()
    engine.dispose()
    return plans


# ----------------------------------------------------------------------------- main


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="600 due re-checks, fewer ticks")
    p.add_argument("--open", type=int, default=100_000, help="open follow-ups in the database")
    p.add_argument("--due", type=int, default=None, help="of them due now (default 5,000; quick 600)")
    p.add_argument("--hosters", type=int, default=8, help="loopback hosters (127.0.0.2, ...)")
    p.add_argument("--ticks", type=int, default=None, help="ticks per scheduler measurement (default 30)")
    p.add_argument("--max-seconds", type=float, default=120.0, help="cap per measured run")
    p.add_argument("--database-url", default="", help="PostgreSQL server URL (default: SQLite in a temp dir)")
    p.add_argument("--profile", action="store_true", help="cProfile the pipeline run; print the top functions")
    # internal: the hoster process
    p.add_argument("--serve-hosters", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--cpu", type=int, default=1, help=argparse.SUPPRESS)
    p.add_argument("--info", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.serve_hosters:
        serve_hosters(args)
        return 0
    if args.hosters > 200:
        p.error("at most 200 hosters (127.0.0.2-127.0.0.201)")
    n_due = args.due or (600 if args.quick else 5_000)
    n_ticks = args.ticks or (10 if args.quick else 30)
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    hoster_cpu = 1 if (os.cpu_count() or 1) > 1 else 0
    pin(0)

    from hashing.image import hash_image

    matched = []
    for k in range(IMAGES):
        h = hash_image(image(k))
        matched.append({"url": f"/online/{k}.jpg", "sha256": h.sha256, "md5": h.md5, "pdq": h.pdq})

    tmp = Path(tempfile.mkdtemp(prefix="hotline-bench-rc-"))
    dbs = Databases(args.database_url or None, tmp)
    hosters, ports, img_bytes = start_hosters(args.hosters, hoster_cpu, tmp)
    try:
        world = World(ports, matched)
        now = datetime.now(UTC)
        print(f"writing {args.open:,} open follow-ups ({n_due:,} due) ...", file=sys.stderr, flush=True)
        t0 = time.perf_counter()
        base = dbs.new(world, args.open, n_due, now)
        build_s = time.perf_counter() - t0
        plans = query_plans(base)

        print("(a) real pipeline, batch 100, at most 2 per hoster in flight ...", file=sys.stderr, flush=True)
        prof_path = tmp / "pipeline.prof" if args.profile else None
        real = run_pipeline(dbs.copy(base), n_due, 100, 2, args.max_seconds, prof_path)
        if prof_path is not None:
            out = io.StringIO()
            pstats.Stats(str(prof_path), stream=out).sort_stats("cumulative").print_stats(35)
            print(out.getvalue(), file=sys.stderr)
            out = io.StringIO()
            pstats.Stats(str(prof_path), stream=out).sort_stats("tottime").print_stats(25)
            print(out.getvalue(), file=sys.stderr)
        print("(a) real pipeline, no per-hoster cap ...", file=sys.stderr, flush=True)
        uncapped = run_pipeline(dbs.copy(base), n_due, 100, 0, args.max_seconds)
        print("(b) naive loop ...", file=sys.stderr, flush=True)
        naive = run_naive(dbs.copy(base), args.max_seconds)

        print("(c) scheduler ticks, 1,000 vs 100,000 not due ...", file=sys.stderr, flush=True)
        ticks: dict[tuple[int, str], dict[str, Any]] = {}
        small_n = 1_000
        for n_open in (small_n, args.open):
            empty = dbs.new(world, n_open, 0, now)
            ticks[(n_open, "empty")] = tick_cost(empty, n_ticks, 100, 2)
            with_due = dbs.new(world, n_open + 200, 200, now)
            ticks[(n_open, "claim")] = tick_cost(with_due, n_ticks, 100, 2)
            ticks[(n_open, "claim_nocap")] = tick_cost(with_due, n_ticks, 100, 0)
    finally:
        hosters.send_signal(signal.SIGTERM)
        hosters.wait(30)
        dbs.drop_all()
        shutil.rmtree(tmp, ignore_errors=True)

    engine = "PostgreSQL" if args.database_url else f"SQLite {sqlite3.sqlite_version}"
    print()
    print(f"{args.open:,} open follow-ups, {n_due:,} due ({args.hosters} loopback hosters, half of the due URLs "
          f"still serve the image, a {WIDTH}x{HEIGHT} JPEG of {img_bytes / 1000:.0f} KB on average, half 404); "
          f"database {engine}, written in {build_s:.1f} s.  ")
    print(f"Machine: {os.cpu_count()} cores, {cpu_model()}; Python {platform.python_version()}; measured "
          f"process pinned to core 0, hosters to core {hoster_cpu}. Load average {os.getloadavg()[0]:.1f}.")
    print()
    print("| method | re-checks | seconds | re-checks/s (wall) | per CPU-second | vs naive | notes |")
    print("|---|---:|---:|---:|---:|---:|---|")

    def row(label: str, r: dict[str, Any], note: str) -> None:
        print(f"| {label} | {r['n']:,} | {r['seconds']:.1f} | {r['rate']:,.0f} | {r['cpu_rate']:,.0f} | "
              f"{r['rate'] / naive['rate']:.1f}× | {note} |")

    def res(r: dict[str, Any]) -> str:
        return ", ".join(f"{k} {v:,}" for k, v in sorted(r["results"].items()))

    row("(a) scheduler + followup stage (embedded runtime), batch 100, ≤ 2 per hoster in flight, "
        "≤ 50 checks a message", real,
        f"{real['ticks']} ticks, {real['messages']:,} messages, median tick {real['tick_ms']:.1f} ms; {res(real)}")
    row("(a) as above, no per-hoster cap", uncapped,
        f"{uncapped['ticks']} ticks, {uncapped['messages']:,} messages, median tick {uncapped['tick_ms']:.1f} ms; "
        f"{res(uncapped)}")
    row("(b) naive loop: SELECT all open, one at a time httpx + hash + UPDATE + COMMIT", naive,
        f"SELECT of {naive['rows']:,} rows {naive['select_ms']:.0f} ms; {res(naive)}")
    print()
    print("| scheduler tick (`PeriodicRunner.tick`, one transaction) | not due: 1,000 | "
          f"not due: {args.open:,} | ratio |")
    print("|---|---:|---:|---:|")
    for kind, label in (("empty", "nothing due"), ("claim", "200 due, claims with ≤ 2 per hoster"),
                        ("claim_nocap", "200 due, claims a batch of 100 (no cap)")):
        a, b = ticks[(small_n, kind)], ticks[(args.open, kind)]
        print(f"| {label} ({a['claimed']} claimed), best / median ms | {a['best_ms']:.2f} / {a['median_ms']:.2f} | "
              f"{b['best_ms']:.2f} / {b['median_ms']:.2f} | {b['median_ms'] / a['median_ms']:.1f}× |")
    if plans:
        print()
        print("SQLite query plans of the scheduler's queries:")
        for line in plans:
            print(f"- {line}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
