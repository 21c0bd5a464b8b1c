"""Benchmark of the HashCheck API over real HTTP, against the per-hash SQL look-up a hoster or
hotline would otherwise write.

    python benchmarks/bench_hashcheck.py            # bank of 1,000,000 entries
    python benchmarks/bench_hashcheck.py --quick    # bank of 100,000, fewer batches

Setup:

* bank: ``n`` entries, each a random MD5, SHA-256 and PDQ hash, written to a
  SQLite database through the real migrations (so the hash columns carry the
  schema's indexes), then loaded by the app's own ``Bank.refresh`` into the
  in-memory ``BankMatcher``;
* server: ``entrypoints.web.create_app`` under one uvicorn worker in its own
  process, pinned to core 1 (``os.sched_setaffinity``); the client runs on
  core 0, so the server's figure is per core;
* exact batches: ``POST /api/v1/hashcheck`` with 10,000 hashes each (half MD5,
  half SHA-256; half of them known, shuffled), one keep-alive connection,
  request bodies encoded before the clock starts, every response read in
  full; the first answer is checked (the known half must come back known);
* near batches: 10,000 PDQ hashes, half of them bank entries with 0..31 bits
  flipped (all must be found), half random;
* every figure is the best of three runs (shared machines: the best run is
  the least disturbed one), next to the CPU time the server process used;
* baselines, on the same bank and the same hashes, one core: a per-hash
  ``SELECT id FROM bank_entries WHERE md5 = ?`` (indexed) with the stdlib
  sqlite3 module and, when PostgreSQL is reachable, with psycopg over
  loopback TCP (prepared statement); plus the batched ``IN (...)`` / ``= ANY``
  query a careful user would write. Baselines run in-process without HTTP,
  which flatters them.

Prints a markdown table; docs/benchmarks-hashcheck.md holds a recorded run.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, cast

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

BATCH = 10_000
ROUNDS = 3
"""Every figure is the best of this many runs: the machines this runs on are shared, and the
best run is the one least disturbed by other programs."""


def pin(cpu: int) -> None:
    if hasattr(os, "sched_setaffinity") and cpu < (os.cpu_count() or 1):
        os.sched_setaffinity(0, {cpu})


def cpu_model() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
        for line in out.splitlines():
            if line.startswith("Model name:"):
                return line.split(":", 1)[1].strip()
    except (OSError, subprocess.CalledProcessError):
        pass
    return platform.processor() or "unknown"


def hex_rows(rng: np.random.Generator, n: int, nbytes: int) -> list[str]:
    raw = rng.bytes(n * nbytes).hex()
    w = 2 * nbytes
    return [raw[i * w: (i + 1) * w] for i in range(n)]


# ----------------------------------------------------------------------------- server process


def serve(args: argparse.Namespace) -> None:
    """Child process: load the bank the way the app does, time one request's parts in-process,
    then serve on loopback with one uvicorn worker on one core."""
    pin(args.cpu)
    import uvicorn

    from entrypoints.bootstrap import bootstrap
    from entrypoints.web import create_app
    from hotline.config import Settings
    from services.hashcheck import logic, routes

    if args.stdlib_json:  # what the API would cost without orjson (the route looks these up)
        routes._loads = lambda raw: json.loads(raw)
        routes._dumps = lambda obj: json.dumps(obj, separators=(",", ":")).encode()
        routes.JSON_LIBRARY = "json (stdlib)"
    _loads, _dumps, JSON_LIBRARY = routes._loads, routes._dumps, routes.JSON_LIBRARY

    # A benchmark measures throughput: the per-account limits (issue 12) would throttle it.
    system = bootstrap(Settings(database_url=args.db, index_dir="none", hashcheck_requests_per_minute=0,
                                hashcheck_daily_hashes=0), run_migrations=False)
    t0 = time.perf_counter()
    system.bank.refresh(force=True)
    load_s = time.perf_counter() - t0

    # Where a request's time goes, measured in-process on one of the client's batches.
    body = Path(args.sample).read_bytes()
    parts: dict[str, list[float]] = {"loads": [], "parse_batch": [], "check": [], "dumps": []}
    clock = time.thread_time  # CPU time: robust when other programs share the core
    for _ in range(7):
        t = clock()
        data = _loads(body)
        parts["loads"].append(clock() - t)
        t = clock()
        batch = logic.parse_batch(data)
        parts["parse_batch"].append(clock() - t)
        t = clock()
        answer = logic.check(system.bank.matcher, batch)
        parts["check"].append(clock() - t)
        t = clock()
        _dumps({"results": answer.results})
        parts["dumps"].append(clock() - t)
    info = {"load_s": load_s, "bank": len(system.bank.matcher), "json": JSON_LIBRARY,
            "parts_ms": {k: 1000 * min(v) for k, v in parts.items()}}
    Path(args.info).write_text(json.dumps(info))
    uvicorn.run(create_app(system), host="127.0.0.1", port=args.port, log_level="warning",
                access_log=False, workers=1)


# ----------------------------------------------------------------------------- client side


def build_bank(db_url: str, n: int, seed: int) -> tuple[list[str], list[str], list[str], str]:
    """Write ``n`` random entries through the real schema; return their hashes and a token."""
    import sqlalchemy as sa

    from entrypoints.bootstrap import bootstrap
    from hotline.config import Settings
    from hotline.kernel.clock import now
    from hotline.storage.models import BankEntry
    from hotline.storage.unit_of_work import SqlUnitOfWork

    system = bootstrap(Settings(database_url=db_url, index_dir="none", hashcheck_requests_per_minute=0,
                                hashcheck_daily_hashes=0))
    rng = np.random.default_rng(seed)
    md5, sha256, pdq = hex_rows(rng, n, 16), hex_rows(rng, n, 32), hex_rows(rng, n, 32)
    stamp = now()
    table = cast(sa.Table, BankEntry.__table__)
    with system.engine.begin() as conn:
        for lo in range(0, n, 50_000):
            conn.execute(sa.insert(table), [
                {"md5": md5[i], "sha256": sha256[i], "pdq": pdq[i], "category": "baseline",
                 "source": "bench", "added_at": stamp} for i in range(lo, min(n, lo + 50_000))])
    token = uuid.uuid4().hex
    with system.sessions() as session:
        store = SqlUnitOfWork(session)
        store.users.add("bench-hoster", "hoster", token)
        store.commit()
    system.engine.dispose()
    return md5, sha256, pdq, token


def flip_bits(hex_code: str, k: int, rng: random.Random) -> str:
    v = int(hex_code, 16)
    for bit in rng.sample(range(256), k):
        v ^= 1 << bit
    return f"{v:064x}"


def exact_batches(md5: list[str], sha256: list[str], count: int, rng: random.Random
                  ) -> list[list[tuple[str, str, bool]]]:
    out = []
    for _ in range(count):
        rows: list[tuple[str, str, bool]] = []
        for j in range(BATCH // 2):
            i = rng.randrange(len(md5))
            rows.append(("md5", md5[i], True) if j % 2 else ("sha256", sha256[i], True))
            rows.append(("md5", os.urandom(16).hex(), False) if j % 2
                        else ("sha256", os.urandom(32).hex(), False))
        rng.shuffle(rows)
        out.append(rows)
    return out


def pdq_batches(pdq: list[str], count: int, rng: random.Random) -> list[list[tuple[str, str, bool]]]:
    out = []
    for _ in range(count):
        rows = [("pdq", flip_bits(pdq[rng.randrange(len(pdq))], rng.randint(0, 31), rng), True)
                for _ in range(BATCH // 2)]
        rows += [("pdq", os.urandom(32).hex(), False) for _ in range(BATCH // 2)]
        rng.shuffle(rows)
        out.append(rows)
    return out


def encode(rows: Sequence[tuple[str, str, bool]]) -> bytes:
    return json.dumps({"hashes": [{"type": t, "value": v} for t, v, _ in rows]}).encode()


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (Linux /proc), to report work per core even
    when other programs share the machine."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def run_http(base: str, token: str, batches: list[list[tuple[str, str, bool]]],
             server_pid: int) -> dict[str, Any]:
    import httpx

    bodies = [encode(rows) for rows in batches]
    headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
    with httpx.Client(base_url=base, headers=headers, timeout=300) as client:
        # Warm-up, and check the answers are right before timing anything.
        r = client.post("/api/v1/hashcheck", content=bodies[0])
        r.raise_for_status()
        results = r.json()["results"]
        expected = [k for _, _, k in batches[0]]
        got = [x["known"] for x in results]
        assert got == expected, f"{sum(a != b for a, b in zip(got, expected, strict=True))} wrong answers"
        rounds = []
        for _ in range(ROUNDS):
            latencies = []
            cpu0 = cpu_seconds(server_pid)
            t0 = time.perf_counter()
            for body in bodies:
                t = time.perf_counter()
                r = client.post("/api/v1/hashcheck", content=body)
                _ = r.content
                if r.status_code != 200:
                    raise RuntimeError(f"HTTP {r.status_code}: {r.text[:300]}")
                latencies.append(time.perf_counter() - t)
            elapsed = time.perf_counter() - t0
            cpu = cpu_seconds(server_pid) - cpu0
            rounds.append((elapsed, cpu, latencies))
    n = len(bodies) * BATCH
    elapsed, cpu, latencies = min(rounds, key=lambda x: x[0])
    return {"hashes": n, "seconds": elapsed, "rate": n / elapsed,
            "cpu_rate": n / max(min(c for _, c, _ in rounds), 1e-9),
            "p50_ms": 1000 * statistics.median(latencies),
            "max_ms": 1000 * max(latencies)}


def timed(n: int, fn: Callable[[], int]) -> dict[str, Any]:
    """Best of ``ROUNDS`` runs, like the API rows."""
    walls, cpus = [], []
    found = 0
    for _ in range(ROUNDS):
        t0, c0 = time.perf_counter(), time.process_time()
        found = fn()
        walls.append(time.perf_counter() - t0)
        cpus.append(time.process_time() - c0)
    return {"hashes": n, "seconds": min(walls), "rate": n / min(walls), "found": found,
            "cpu_rate": n / max(min(cpus), 1e-9)}


def sqlite_baselines(path: str, queries: list[tuple[str, str, bool]]) -> dict[str, dict[str, Any]]:
    conn = sqlite3.connect(path)
    cur = conn.cursor()
    sql = {t: f"SELECT id FROM bank_entries WHERE {t} = ?" for t in ("md5", "sha256")}

    def per_hash() -> int:
        found = 0
        for t, v, _ in queries:
            if cur.execute(sql[t], (v,)).fetchone() is not None:
                found += 1
        return found

    def batched() -> int:
        found = 0
        for t in ("md5", "sha256"):
            values = [v for tt, v, _ in queries if tt == t]
            for lo in range(0, len(values), 500):
                chunk = values[lo: lo + 500]
                q = f"SELECT {t} FROM bank_entries WHERE {t} IN ({','.join('?' * len(chunk))})"
                found += len({row[0] for row in cur.execute(q, chunk)})
        return found

    per_hash()  # warm the page cache: both baselines then read from memory
    out = {"sqlite_per_hash": timed(len(queries), per_hash),
           "sqlite_in": timed(len(queries), batched)}
    conn.close()
    return out


def pg_baselines(pg_url: str, n_bank: int, md5: list[str], sha256: list[str],
                 queries: list[tuple[str, str, bool]]) -> dict[str, dict[str, Any]] | None:
    """Copy the bank into a fresh PostgreSQL database and time the same look-ups there."""
    import psycopg
    import sqlalchemy as sa

    from hotline.storage.engine import migrate

    url = sa.engine.make_url(pg_url)
    name = f"hotline_bench_{uuid.uuid4().hex[:8]}"
    admin = sa.create_engine(url.set(database="postgres"), isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as c:
            c.execute(sa.text(f'CREATE DATABASE "{name}"'))
    except Exception as exc:  # noqa: BLE001 - PostgreSQL is optional for this benchmark
        print(f"PostgreSQL baseline skipped: {type(exc).__name__}: {exc}", file=sys.stderr)
        return None
    try:
        db_url = url.set(database=name)
        migrate(db_url.render_as_string(hide_password=False))
        dsn = db_url.set(drivername="postgresql").render_as_string(hide_password=False)
        with psycopg.connect(dsn, autocommit=True) as conn:
            with conn.cursor().copy(
                "COPY bank_entries (md5, sha256, category, source, added_at) FROM STDIN"
            ) as copy:
                for i in range(n_bank):
                    copy.write_row((md5[i], sha256[i], "baseline", "bench", "2026-01-01T00:00:00Z"))
            conn.execute("ANALYZE bank_entries")
            cur = conn.cursor()
            sql = {t: f"SELECT id FROM bank_entries WHERE {t} = %s" for t in ("md5", "sha256")}

            def per_hash() -> int:
                found = 0
                for t, v, _ in queries:
                    cur.execute(sql[t], (v,), prepare=True)
                    if cur.fetchone() is not None:
                        found += 1
                return found

            def batched() -> int:
                found = 0
                for t in ("md5", "sha256"):
                    values = [v for tt, v, _ in queries if tt == t]
                    cur.execute(f"SELECT {t} FROM bank_entries WHERE {t} = ANY(%s)", (values,))
                    found += len({row[0] for row in cur.fetchall()})
                return found

            per_hash()
            result = {"pg_per_hash": timed(len(queries), per_hash),
                      "pg_any": timed(len(queries), batched)}
            version = conn.execute("SHOW server_version").fetchone()
            result["pg_per_hash"]["version"] = version[0] if version else "?"
        return result
    finally:
        with admin.connect() as c:
            c.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def measure_server(db_url: str, token: str, sample: Path, cpu: int, tmp: Path,
                   exact: list[list[tuple[str, str, bool]]],
                   near: list[list[tuple[str, str, bool]]], stdlib_json: bool = False,
                   ) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any] | None]:
    """Start the app in its own process on ``cpu``, time the batches, stop it."""
    import httpx

    from doubles.loopback import free_port

    info_path = tmp / f"server-{uuid.uuid4().hex[:6]}.json"
    port = free_port("127.0.0.1")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1"}
    print("starting the server (loads the bank) ...", file=sys.stderr, flush=True)
    server = subprocess.Popen(
        [sys.executable, __file__, "--serve", "--db", db_url, "--port", str(port),
         "--cpu", str(cpu), "--info", str(info_path), "--sample", str(sample)]
        + (["--stdlib-json"] if stdlib_json else []),
        env=env,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 1800
        while True:
            if server.poll() is not None:
                raise RuntimeError("the server exited")
            try:
                if httpx.get(base + "/healthz", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError("the server did not start")
            time.sleep(0.2)
        info = json.loads(info_path.read_text())
        print("timing HTTP batches ...", file=sys.stderr, flush=True)
        http_exact = run_http(base, token, exact, server.pid)
        http_pdq = run_http(base, token, near, server.pid) if near else None
    finally:
        server.terminate()
        server.wait(30)
    return info, http_exact, http_pdq


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="bank of 100,000 and fewer batches")
    p.add_argument("--n", type=int, default=None, help="bank entries (default 1,000,000)")
    p.add_argument("--batches", type=int, default=None, help="exact batches of 10,000 (default 30)")
    p.add_argument("--pdq-batches", type=int, default=None, help="PDQ batches (default 3)")
    p.add_argument("--pg", default=os.environ.get("HOTLINE_TEST_DATABASE_URL", ""),
                   help="PostgreSQL URL for the PostgreSQL baseline ('' to skip)")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--skip-stdlib-json", action="store_true",
                   help="do not measure the API a second time without orjson")
    # internal: the server process
    p.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--db", help=argparse.SUPPRESS)
    p.add_argument("--port", type=int, help=argparse.SUPPRESS)
    p.add_argument("--cpu", type=int, default=1, help=argparse.SUPPRESS)
    p.add_argument("--info", help=argparse.SUPPRESS)
    p.add_argument("--sample", help=argparse.SUPPRESS)
    p.add_argument("--stdlib-json", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.serve:
        serve(args)
        return 0

    n = args.n or (100_000 if args.quick else 1_000_000)
    n_exact = args.batches or (10 if args.quick else 30)
    n_pdq = args.pdq_batches or (2 if args.quick else 3)
    server_cpu = 1 if (os.cpu_count() or 1) > 1 else 0
    pin(0)
    rng = random.Random(args.seed)
    with tempfile.TemporaryDirectory(prefix="hotline-bench-hc-") as tmp:
        db_path = Path(tmp) / "bank.db"
        db_url = f"sqlite:///{db_path}"
        print(f"writing a bank of {n:,} entries to SQLite ...", file=sys.stderr, flush=True)
        t0 = time.perf_counter()
        md5, sha256, pdq, token = build_bank(db_url, n, args.seed)
        build_s = time.perf_counter() - t0
        exact = exact_batches(md5, sha256, n_exact, rng)
        near = pdq_batches(pdq, n_pdq, rng)
        sample = Path(tmp) / "sample.json"
        sample.write_bytes(encode(exact[0]))
        info, http_exact, http_pdq = measure_server(db_url, token, sample, server_cpu,
                                                    Path(tmp), exact, near)
        http_stdlib = None
        if not args.skip_stdlib_json:
            print("again with the stdlib json module instead of orjson ...", file=sys.stderr,
                  flush=True)
            _, http_stdlib, _ = measure_server(db_url, token, sample, server_cpu, Path(tmp),
                                               exact, [], stdlib_json=True)

        # Baselines on the same hashes (the known/unknown mix of the HTTP batches).
        queries = [q for rows in exact[: max(2, n_exact // 10)] for q in rows]
        print("timing SQL baselines ...", file=sys.stderr, flush=True)
        base_results = sqlite_baselines(str(db_path), queries)
        pg = pg_baselines(args.pg, n, md5, sha256, queries) if args.pg else None
        if pg:
            base_results.update(pg)

    baseline = base_results.get("pg_per_hash") or base_results["sqlite_per_hash"]
    baseline_name = "PostgreSQL per-hash SELECT" if "pg_per_hash" in base_results \
        else "SQLite per-hash SELECT"
    assert http_pdq is not None
    rows = [
        (f"HashCheck API, exact (MD5+SHA-256), HTTP, batches of 10,000 ({info['json']})",
         http_exact),
    ]
    if http_stdlib:
        rows.append(("HashCheck API, exact, as above with the stdlib json module", http_stdlib))
    rows += [
        ("HashCheck API, PDQ near match (radius 31), HTTP, batches of 10,000", http_pdq),
        ("SQLite per-hash `SELECT ... WHERE md5 = ?` (indexed, in-process)",
         base_results["sqlite_per_hash"]),
        ("SQLite `WHERE md5 IN (500 values)` (indexed, in-process)", base_results["sqlite_in"]),
    ]
    if pg:
        rows += [("PostgreSQL per-hash `SELECT ... WHERE md5 = $1` (indexed, prepared, loopback)",
                  pg["pg_per_hash"]),
                 ("PostgreSQL `WHERE md5 = ANY($1)` (10,000 values per query, loopback)",
                  pg["pg_any"])]

    versions = (f"Python {platform.python_version()}, numpy {np.__version__}, "
                f"{info['json']}, SQLite {sqlite3.sqlite_version}")
    if pg:
        versions += f", PostgreSQL {pg['pg_per_hash']['version']}"
    print()
    print(f"Bank: {n:,} entries (MD5 + SHA-256 + PDQ each); written in {build_s:.1f} s, "
          f"loaded by the app in {info['load_s']:.1f} s ({info['bank']:,} entries).  ")
    print(f"Machine: {os.cpu_count()} cores, {cpu_model()}; server pinned to core {server_cpu}, "
          f"client to core 0.  ")
    print(f"{versions}.")
    print()
    print(f"| method | hashes | hashes/s (wall) | µs/hash | vs {baseline_name} "
          "| hashes per CPU-second¹ | latency p50 / max (ms) |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for label, r in rows:
        lat = f"{r['p50_ms']:.0f} / {r['max_ms']:.0f}" if "p50_ms" in r else "–"
        print(f"| {label} | {r['hashes']:,} | {r['rate']:,.0f} | {1e6 / r['rate']:.2f} | "
              f"{r['rate'] / baseline['rate']:.1f}× | {r['cpu_rate']:,.0f} | {lat} |")
    print()
    print("¹ CPU time of the server process for the API rows (what one core can do when the "
          "machine is shared), of the benchmark process for the baselines (for PostgreSQL "
          "that leaves out the database server's own CPU, so it flatters PostgreSQL). "
          f"Load average during the run: {os.getloadavg()[0]:.1f}.")
    parts = info["parts_ms"]
    print()
    print("One exact batch of 10,000 inside the server (CPU ms, best of 7): "
          + ", ".join(f"{k} {v:.1f}" for k, v in parts.items())
          + f"; total {sum(parts.values()):.1f} ms without HTTP, auth and the statistics upsert.")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
