"""Bank end to end at 10M entries: CSV import, matcher from the database, snapshot save/load.

Why: the bank must work with 10 million entries and more. This measures what
an operator waits for: ``hotline bank import`` of a big CSV (SQLite, and
PostgreSQL when ``HOTLINE_TEST_DATABASE_URL`` is set), building the matcher
from the database (what every process did at start before snapshots, the
baseline), saving the snapshot, and loading it (what a process does at start
now), plus catching up with rows added after the snapshot. Every step runs in
its own process so its peak memory (max RSS) is its own.

    python benchmarks/bench_bank.py --n 10000000      # ~16 min, ~15 GB disk in /tmp
    python benchmarks/bench_bank.py --quick           # 200k entries, ~20 s

Data is synthetic: uniformly random md5, sha256, pdq and phash per entry.
Results are checked, not just timed: the matcher loaded from the snapshot must
give the same answers as the one built from the database (exact hits and
PDQ/pHash near hits with bits flipped), and rows added after the snapshot
must be found after the catch-up.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

_HEX = np.frombuffer(b"0123456789abcdef", dtype=np.uint8)
COLUMNS = (("md5", 16), ("sha256", 32), ("pdq", 32), ("phash", 8))
SEED = 20261124


def _hex(a: np.ndarray) -> np.ndarray:
    """(n, k) uint8 -> (n, 2k) ASCII hex, vectorised."""
    out = np.empty((a.shape[0], a.shape[1] * 2), dtype=np.uint8)
    out[:, 0::2] = _HEX[a >> 4]
    out[:, 1::2] = _HEX[a & 15]
    return out


def _rows(n: int, lo: int, hi: int) -> dict[str, np.ndarray]:
    """Deterministic random hashes of rows lo..hi (so queries can be regenerated)."""
    rng = np.random.default_rng([SEED, lo])
    return {name: rng.integers(0, 256, (hi - lo, nb), dtype=np.uint8) for name, nb in COLUMNS}


def generate_csv(path: Path, n: int, chunk: int = 1_000_000) -> None:
    """N random entries as bank CSV (md5,sha256,pdq,phash), written in vectorised chunks."""
    with path.open("wb") as fh:
        fh.write(b"md5,sha256,pdq,phash\n")
        for lo in range(0, n, chunk):
            hi = min(n, lo + chunk)
            cols = _rows(n, lo, hi)
            parts = []
            for i, (name, _) in enumerate(COLUMNS):
                parts.append(_hex(cols[name]))
                parts.append(
                    np.full((hi - lo, 1), ord("," if i < len(COLUMNS) - 1 else "\n"), np.uint8)
                )
            fh.write(np.hstack(parts).tobytes())


def queries(n: int, k: int = 300) -> dict[str, list[tuple[int, str]]]:
    """(expected entry id, hash) samples: exact md5/sha256, pdq with 1-31 bits flipped,
    phash with 1-8 flipped. Entry ids are row number + 1 (fresh database)."""
    rng = np.random.default_rng(SEED + 1)
    picks = np.sort(rng.choice(n, size=min(k, n), replace=False))
    out: dict[str, list[tuple[int, str]]] = {"md5": [], "sha256": [], "pdq": [], "phash": []}
    chunk = 1_000_000
    cache: dict[int, dict[str, np.ndarray]] = {}
    for p in picks.tolist():
        lo = (p // chunk) * chunk
        if lo not in cache:
            cache.clear()  # picks are sorted: one chunk in memory at a time
            cache[lo] = _rows(n, lo, min(n, lo + chunk))
        cols = cache[lo]
        r = p - lo
        out["md5"].append((p + 1, cols["md5"][r].tobytes().hex()))
        out["sha256"].append((p + 1, cols["sha256"][r].tobytes().hex()))
        for name, bits, maxflip in (("pdq", 256, 31), ("phash", 64, 8)):
            code = np.unpackbits(cols[name][r].copy())
            flip = rng.choice(bits, size=int(rng.integers(1, maxflip + 1)), replace=False)
            code[flip] ^= 1
            out[name].append((p + 1, np.packbits(code).tobytes().hex()))
    return out


def _answers(matcher: Any, qs: dict[str, list[tuple[int, str]]]) -> tuple[list[Any], int]:
    """Every query's hits, and how many expected entries were found."""
    got: list[Any] = []
    found = 0
    for kind, items in qs.items():
        for want, value in items:
            hits = matcher.lookup(kind, value)
            got.append(sorted((h.entry_id, h.distance, h.category) for h in hits))
            found += any(h.entry_id == want for h in hits)
    return got, found


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


# --------------------------------------------------------------------------- stages (subprocess)


def stage_import(url: str, csv_path: str) -> dict[str, Any]:
    from hotline.storage.engine import make_engine, make_sessionmaker, migrate
    from hotline.storage.unit_of_work import SqlUnitOfWork
    from services.bank.bank import import_csv

    migrate(url)
    sessions = make_sessionmaker(make_engine(url))
    t0 = time.perf_counter()
    with sessions() as session, open(csv_path, newline="") as fh:
        store = SqlUnitOfWork(session)
        added, errors = import_csv(fh, store, "baseline", "bench")
        t1 = time.perf_counter()
        store.commit()
    t2 = time.perf_counter()
    return {
        "rows": added,
        "errors": len(errors),
        "seconds": t2 - t0,
        "commit": t2 - t1,
        "rss_mb": _rss_mb(),
    }


def stage_build(url: str, index_dir: str | None, qfile: str) -> dict[str, Any]:
    """Matcher from the database (no snapshot), answers to the queries, then save."""
    from hotline.storage.engine import make_engine, make_sessionmaker
    from services.bank.bank import Bank

    sessions = make_sessionmaker(make_engine(url))
    bank = Bank(sessions, index_dir=Path(index_dir) if index_dir else None, verify_seconds=None)
    t0 = time.perf_counter()
    bank.rebuild(save=False)
    t_build = time.perf_counter() - t0
    rss_build = _rss_mb()
    qs = json.loads(Path(qfile).read_text())
    t0 = time.perf_counter()
    got, found = _answers(bank.matcher, qs)
    t_q = time.perf_counter() - t0
    out = {
        "entries": len(bank.matcher),
        "build": t_build,
        "rss_mb": rss_build,
        "found": found,
        "queries": sum(len(v) for v in qs.values()),
        "qps": sum(len(v) for v in qs.values()) / t_q,
        "answers": got,
    }
    if index_dir:
        t0 = time.perf_counter()
        bank.save_snapshot()
        out["save"] = time.perf_counter() - t0
        out["snapshot_mb"] = (
            sum(f.stat().st_size for f in Path(index_dir).rglob("*") if f.is_file()) / 1e6
        )
    return out


def stage_load(url: str, index_dir: str, qfile: str, mmap: bool) -> dict[str, Any]:
    """Snapshot -> matcher, as a process does at start (map + catch-up + verify)."""
    from hashing.snapshot import load_snapshot
    from hotline.storage.engine import make_engine, make_sessionmaker
    from services.bank.bank import Bank

    t0 = time.perf_counter()
    load_snapshot(Path(index_dir), mmap=mmap)
    t_map = time.perf_counter() - t0
    sessions = make_sessionmaker(make_engine(url))
    bank = Bank(sessions, index_dir=Path(index_dir), mmap=mmap, verify_seconds=None)
    t0 = time.perf_counter()
    how = bank.load()
    t_load = time.perf_counter() - t0
    t0 = time.perf_counter()
    repaired = bank.verify()
    t_verify = time.perf_counter() - t0
    qs = json.loads(Path(qfile).read_text())
    t0 = time.perf_counter()
    got, found = _answers(bank.matcher, qs)
    t_first = time.perf_counter() - t0
    t0 = time.perf_counter()
    _answers(bank.matcher, qs)
    t_q = time.perf_counter() - t0
    nq = sum(len(v) for v in qs.values())
    return {
        "how": how,
        "map": t_map,
        "load": t_load,
        "verify": t_verify,
        "repaired": repaired,
        "rss_mb": _rss_mb(),
        "found": found,
        "first_qps": nq / t_first,
        "qps": nq / t_q,
        "answers": got,
    }


def stage_catchup(url: str, index_dir: str, add: int) -> dict[str, Any]:
    """Rows added and one retired after the snapshot: load applies them; refresh sees more."""
    import secrets

    from hotline.storage.engine import make_engine, make_sessionmaker
    from hotline.storage.unit_of_work import SqlUnitOfWork
    from services.bank.bank import Bank, retire

    sessions = make_sessionmaker(make_engine(url))
    new = [secrets.token_hex(32) for _ in range(add)]
    with sessions() as s:
        store = SqlUnitOfWork(s)
        for h in new:
            store.bank.add(category="national", source="bench-late", sha256=h)
        retire(store, 1, "benchmark", "bench")
        store.commit()
    bank = Bank(sessions, index_dir=Path(index_dir), verify_seconds=None, refresh_seconds=0)
    t0 = time.perf_counter()
    bank.load()
    t_load = time.perf_counter() - t0
    ok_new = all(bank.matcher.lookup("sha256", h) for h in new)
    ok_retired = bank.matcher.entries.get(1) is None
    late = secrets.token_hex(32)
    with sessions() as s:
        SqlUnitOfWork(s).bank.add(category="national", source="bench-late", sha256=late)
        s.commit()
    t0 = time.perf_counter()
    bank.refresh(force=True)
    t_refresh = time.perf_counter() - t0
    return {
        "load": t_load,
        "refresh": t_refresh,
        "found_new": ok_new and bool(bank.matcher.lookup("sha256", late)),
        "retired_gone": ok_retired,
    }


def _run_stage(name: str, *args: str) -> dict[str, Any]:
    cmd = [sys.executable, __file__, "--stage", name, *args]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise SystemExit(f"stage {name} failed:\n{proc.stderr[-4000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


# --------------------------------------------------------------------------- driver


def _pg_database(base_url: str) -> tuple[str, str]:
    import sqlalchemy as sa

    name = f"bench_bank_{uuid.uuid4().hex[:8]}"
    admin = sa.create_engine(base_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as c:
        c.execute(sa.text(f'CREATE DATABASE "{name}"'))
    admin.dispose()
    return sa.engine.make_url(base_url).set(database=name).render_as_string(
        hide_password=False
    ), name


def _pg_drop(base_url: str, name: str) -> None:
    import sqlalchemy as sa

    admin = sa.create_engine(base_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as c:
        c.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


def _machine() -> str:
    model = "?"
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=False).stdout
        model = next(
            (ln.split(":", 1)[1].strip() for ln in out.splitlines() if ln.startswith("Model name")),
            "?",
        )
    except OSError:
        pass
    import sqlalchemy

    return (
        f"{os.cpu_count()} CPUs ({model}), Python {platform.python_version()}, numpy {np.__version__}, "
        f"SQLAlchemy {sqlalchemy.__version__}, SQLite {__import__('sqlite3').sqlite_version}"
    )


def bench_database(
    label: str, url: str, csv_path: Path, work: Path, qfile: Path, n: int
) -> list[dict[str, str]]:
    index_dir = work / f"index-{label}"
    rows: list[dict[str, str]] = []
    print(f"[{label}] import", file=sys.stderr, flush=True)
    imp = _run_stage("import", url, str(csv_path))
    rows.append(
        {
            "step": f"import CSV ({label}{', COPY' if label == 'postgresql' else ', executemany 10k'})",
            "time": f"{imp['seconds']:.1f} s",
            "rate": f"{imp['rows'] / imp['seconds']:,.0f} rows/s",
            "peak RSS": f"{imp['rss_mb']:,.0f} MB",
            "notes": f"{imp['rows']:,} rows, {imp['errors']} refused, commit {imp['commit']:.1f} s",
        }
    )
    print(f"[{label}] build from database + save", file=sys.stderr, flush=True)
    b = _run_stage("build", url, str(index_dir), str(qfile))
    nq = b["queries"]
    rows.append(
        {
            "step": f"matcher from the database ({label}) — baseline start",
            "time": f"{b['build']:.1f} s",
            "rate": f"{b['entries'] / b['build']:,.0f} entries/s",
            "peak RSS": f"{b['rss_mb']:,.0f} MB",
            "notes": f"{b['found']}/{nq} planted found; {b['qps']:,.0f} lookups/s",
        }
    )
    rows.append(
        {
            "step": "save snapshot",
            "time": f"{b['save']:.1f} s",
            "rate": "",
            "peak RSS": "",
            "notes": f"{b['snapshot_mb']:,.0f} MB on disk",
        }
    )
    for mmap in (True, False):
        print(f"[{label}] load snapshot mmap={mmap}", file=sys.stderr, flush=True)
        ld = _run_stage("load", url, str(index_dir), str(qfile), "1" if mmap else "0")
        same = ld["answers"] == b["answers"]
        rows.append(
            {
                "step": f"start from snapshot ({'mmap' if mmap else 'read'}) ({label})",
                "time": f"{ld['load']:.2f} s",
                "rate": f"{b['build'] / ld['load']:.0f}× faster than baseline",
                "peak RSS": f"{ld['rss_mb']:,.0f} MB",
                "notes": (
                    f"map/read files {ld['map']:.2f} s, rest = catch-up + verify (verify alone "
                    f"{ld['verify']:.2f} s); answers identical to baseline: {same}; "
                    f"{ld['found']}/{nq} found; first {ld['first_qps']:,.0f}, then {ld['qps']:,.0f} lookups/s"
                ),
            }
        )
        if not same or ld["found"] != b["found"]:
            raise SystemExit(f"[{label}] snapshot answers differ from the database-built matcher")
    print(f"[{label}] catch-up", file=sys.stderr, flush=True)
    cu = _run_stage("catchup", url, str(index_dir), "1000")
    rows.append(
        {
            "step": f"start after 1,000 adds + 1 retire since snapshot ({label})",
            "time": f"{cu['load']:.2f} s",
            "rate": "",
            "peak RSS": "",
            "notes": (
                f"then 1 more add seen by refresh() in {cu['refresh'] * 1000:.0f} ms; "
                f"all found: {cu['found_new']}, retired gone: {cu['retired_gone']}"
            ),
        }
    )
    if not (cu["found_new"] and cu["retired_gone"]):
        raise SystemExit(f"[{label}] catch-up check failed: {cu}")
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--n", type=int, default=10_000_000, help="bank size")
    ap.add_argument("--quick", action="store_true", help="200k entries")
    ap.add_argument("--workdir", type=Path, default=None, help="default: a temporary directory")
    ap.add_argument("--keep", action="store_true", help="keep the work directory")
    ap.add_argument("--no-postgres", action="store_true")
    ap.add_argument("--stage", default=None, help=argparse.SUPPRESS)
    ap.add_argument("args", nargs="*", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.stage:
        stages: dict[str, Callable[..., dict[str, Any]]] = {
            "import": stage_import,
            "build": stage_build,
            "load": stage_load,
            "catchup": stage_catchup,
        }
        fn = stages[a.stage]
        args: list[Any] = list(a.args)
        if a.stage == "load":
            args[3] = args[3] == "1"
        if a.stage == "catchup":
            args[2] = int(args[2])
        print(json.dumps(fn(*args)))
        return
    n = 200_000 if a.quick else a.n
    work = a.workdir or Path(tempfile.mkdtemp(prefix="bench-bank-"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        csv_path = work / "bank.csv"
        print(f"generating {n:,} entries -> {csv_path}", file=sys.stderr, flush=True)
        t0 = time.perf_counter()
        generate_csv(csv_path, n)
        t_gen = time.perf_counter() - t0
        qfile = work / "queries.json"
        qfile.write_text(json.dumps(queries(n)))
        rows = bench_database("sqlite", f"sqlite:///{work / 'bank.db'}", csv_path, work, qfile, n)
        pg = os.environ.get("HOTLINE_TEST_DATABASE_URL", "").strip()
        if pg and not a.no_postgres:
            url, name = _pg_database(pg)
            try:
                rows += bench_database("postgresql", url, csv_path, work, qfile, n)
            finally:
                _pg_drop(pg, name)
        print(
            f"\n{n:,} entries (CSV {csv_path.stat().st_size / 1e6:,.0f} MB, generated in {t_gen:.0f} s); {_machine()}\n"
        )
        keys = ["step", "time", "rate", "peak RSS", "notes"]
        print("| " + " | ".join(keys) + " |")
        print("|" + "---|" * len(keys))
        for r in rows:
            print("| " + " | ".join(r[k] for k in keys) + " |")
    finally:
        if not a.keep and a.workdir is None:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
