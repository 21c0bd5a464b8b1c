"""What one classify item costs, and where it goes: the real ``ClassifyStage`` through the real
``StepRunner`` (the same code path both runtimes take) on SQLite (and PostgreSQL when
``--postgres`` and ``HOTLINE_TEST_DATABASE_URL`` are given), against a loopback hoster serving
precomputed synthetic JPEGs, a loopback DNS server and a loopback RDAP server, so every
look-up the production path makes is made (DNS for each fetch, DNS and RDAP for attribution,
the hosting cache in the database).

Why: classify is the pipeline's bottleneck (issue 13). Hashing a 640×480 JPEG costs ~2 ms
(docs/benchmarks-hashing.md), but an item of four images cost ~95 ms of CPU: this harness
shows where the rest goes, per phase:

* **fetch**: ``Fetcher.get`` (name resolution, vetting, HTTP, reading the body), CPU of the
  calling thread;
* **hash**: ``hash_image``; **match**: the bank matcher; **attribution**:
  ``HostingResolver.facts`` (DNS, RDAP, the hosting cache);
* **act, other**: the rest of the act step (threads, parsing the page, building the facts);
* **database**: everything outside the act step: the reserve and record transactions
  (item, state, events, images, sightings, outbox-free outputs), commits.

Per-item CPU is ``time.process_time`` of the worker process (every thread of it; the hoster,
DNS and RDAP servers run in other processes/the parent, so they are not counted), wall is
``perf_counter``; phases are the per-thread CPU (``time.thread_time``) inside each call.

Two scenarios: **distinct** (every image its own bytes, a quarter of the pages show a known
image: notices), and **gallery** (every page shows the same images, byte for byte: the
"also seen at" sightings of a crawl or a flagger resubmitting; the cost per item must not grow
with the number of copies: the last tenth of the items is shown separately).

The reference ("before") is the classify code of ``--baseline`` (default: main before the
issue-13 classify work), exported with ``git archive`` into a temporary directory and measured
in the same run by the same worker code, next to the working tree ("after").

    python benchmarks/bench_classify.py            # full: 400 items per scenario (~3-5 min)
    python benchmarks/bench_classify.py --quick    # 60 items per scenario (< 2 min)
    python benchmarks/bench_classify.py --profile  # + the top of a cProfile of each run
    python benchmarks/bench_classify.py --baseline none   # only the working tree

Bounded (items, a deadline per run), loopback only (hoster on 127.0.0.2, DNS and RDAP on
127.0.0.1), every child process in its own process group and killed at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
HOSTER_IP = "127.0.0.2"
PAGE_HOST = "www.bench-classify.test"
IMAGE_HOST = "img.bench-classify.test"
DEFAULT_BASELINE = "1fd7b28"  # main before the issue-13 classify work
PHASES = ("fetch", "hash", "match", "attribution", "act_other", "database")


# ---------------------------------------------------------------- the hoster (own process)


def serve_hoster(port: int, pool: int, per_page: int, width: int, height: int) -> None:
    """``/d/<i>.html``: a page of ``per_page`` images with bytes of their own (a JPEG comment
    names them; every fourth page shows one image of the known pool first); ``/g/<i>.html``:
    a page showing the same ``per_page`` images as every other ``/g`` page. Keep-alive, until
    the parent is gone."""
    sys.path.insert(0, str(ROOT))
    from hashing.synthetic import photo_like_jpeg

    images = [photo_like_jpeg(width, height, seed=9100 + j) for j in range(pool)]
    known = [photo_like_jpeg(width, height, seed=9000 + j) for j in range(4)]

    def tagged(data: bytes, name: str) -> bytes:
        note = f"bench-classify {name}".encode()
        return data[:2] + b"\xff\xfe" + (len(note) + 2).to_bytes(2, "big") + note + data[2:]

    def http(body: bytes, ctype: str) -> bytes:
        return b"HTTP/1.1 200 OK\r\nContent-Type: %s\r\nContent-Length: %d\r\n\r\n" % (ctype.encode(), len(body)) + body

    cache: dict[str, bytes] = {}

    def answer(path: str) -> bytes:
        if path in cache:
            return cache[path]
        _, kind, leaf = path.split("/", 2)
        name = leaf.rsplit(".", 1)[0]
        if path.endswith(".html"):
            i = int(name)
            if kind == "g":
                srcs = [f"//{IMAGE_HOST}:{port}/gi/{k}.jpg" for k in range(per_page)]
            else:
                srcs = [f"//{IMAGE_HOST}:{port}/di/{i}-{k}.jpg" for k in range(per_page)]
            out = http(("<html><body>" + "".join(f'<img src="{s}">' for s in srcs) + "</body></html>").encode(),
                       "text/html")
            return out
        if path.startswith("/gi/"):
            out = http(images[int(name) % pool], "image/jpeg")
            cache[path] = out
            return out
        page_no, k = (int(x) for x in name.split("-"))
        data = known[page_no % len(known)] if page_no % 4 == 0 and k == 0 else images[(page_no * per_page + k) % pool]
        return http(tagged(data, name), "image/jpeg")

    not_found = b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n"

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                path = head.split(b" ", 2)[1].decode()
                try:
                    writer.write(answer(path))
                except (ValueError, IndexError):
                    writer.write(not_found)
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError, asyncio.LimitOverrunError):
            pass
        finally:
            writer.close()

    async def main() -> None:
        parent = os.getppid()
        server = await asyncio.start_server(handle, HOSTER_IP, port)
        print("ready", flush=True)
        async with server:
            while os.getppid() == parent:  # never outlive the benchmark
                await asyncio.sleep(0.5)

    asyncio.run(main())


# ---------------------------------------------------------------- the worker (own process)


def worker(cfg: dict[str, Any]) -> dict[str, Any]:
    """One run: a fresh database, the stage as bootstrap builds it, ``items`` items through
    ``StepRunner.process`` one after the other; per-item CPU and wall, phases."""
    tree = cfg["tree"]
    sys.path.insert(0, tree)
    os.chdir(cfg["tmp"])
    import cProfile
    import pstats

    from sqlalchemy import event, insert

    from entrypoints.bootstrap import bootstrap
    from hashing.image import hash_image
    from hashing.synthetic import photo_like_jpeg
    from hotline.config import Settings
    from hotline.runtime.steps import StepRunner
    from hotline.storage.items import url_digest
    from hotline.storage.models import Item, OpenUrl
    from hotline.storage.unit_of_work import SqlUnitOfWork
    from schemas.items import ItemAccepted

    settings = Settings(
        database_url=cfg["database_url"], allow_private_fetch=True, dns_servers=cfg["dns"],
        rdap_url=cfg["rdap"], index_dir="none", home_country="NL",
    )
    system = bootstrap(settings)
    try:
        with system.sessions() as session:
            store = SqlUnitOfWork(session)
            for j in range(4):
                h = hash_image(photo_like_jpeg(cfg["width"], cfg["height"], seed=9000 + j))
                store.bank.add(category="baseline", source="bench-classify", md5=h.md5, sha1=h.sha1,
                               sha256=h.sha256, pdq=h.pdq, phash=h.phash)
            store.commit()
        system.bank.refresh(force=True)
        stage: Any = system.build_stage("classify")  # a ClassifyStage, instrumented below
        if cfg.get("concurrency"):
            stage.image_concurrency = cfg["concurrency"]
        if cfg["profile"]:  # cProfile sees one thread: fetch the images in it
            stage.image_concurrency = 1
        runner = StepRunner(stage, system.sessions)

        phase_cpu = {p: 0.0 for p in PHASES}
        statements = [0]

        def timed(name: str, fn: Any) -> Any:
            def wrapped(*a: Any, **kw: Any) -> Any:
                t0 = time.thread_time()
                try:
                    return fn(*a, **kw)
                finally:
                    phase_cpu[name] += time.thread_time() - t0
            return wrapped

        stage.fetcher.get = timed("fetch", stage.fetcher.get)
        stage.hash_image = timed("hash", stage.hash_image)
        stage.match = timed("match", stage.match)
        stage.hosting.facts = timed("attribution", stage.hosting.facts)
        act_cpu = [0.0]
        classify = stage.classify

        def act(*a: Any, **kw: Any) -> Any:
            t0 = time.process_time()
            try:
                return classify(*a, **kw)
            finally:
                act_cpu[0] += time.process_time() - t0

        stage.classify = act
        event.listen(system.engine, "before_cursor_execute", lambda *a: statements.__setitem__(0, statements[0] + 1))

        n, kind, port = cfg["items"], cfg["scenario"], cfg["port"]
        ids = [f"it-{kind}-{i:05d}" for i in range(n)]
        urls = [f"http://{PAGE_HOST}:{port}/{kind[0]}/{i}.html" for i in range(n)]
        with system.engine.begin() as conn:
            conn.execute(insert(Item), [{"id": i, "url": u} for i, u in zip(ids, urls, strict=True)])
            conn.execute(insert(OpenUrl), [{"url_sha256": url_digest(u), "item_id": i} for i, u in zip(ids, urls, strict=True)])
        messages = [ItemAccepted(item_id=i, url=u, report_ids=[f"rep-{i}"]).to_bytes() for i, u in zip(ids, urls, strict=True)]
        # Warm-up (imports, first connections, caches of weight matrices): one item not counted.
        warm_id, warm_url = f"it-{kind}-warm", f"http://{PAGE_HOST}:{port}/{kind[0]}/999999.html"
        with system.engine.begin() as conn:
            conn.execute(insert(Item), [{"id": warm_id, "url": warm_url}])
        runner.process("items.accepted", ItemAccepted(item_id=warm_id, url=warm_url, report_ids=["r"]).to_bytes())
        for p in phase_cpu:
            phase_cpu[p] = 0.0
        act_cpu[0], statements[0] = 0.0, 0

        profile = cProfile.Profile() if cfg["profile"] else None
        cpu: list[float] = []
        wall: list[float] = []
        routes: dict[str, int] = {}
        images = 0
        failures: list[str] = []
        deadline = time.monotonic() + cfg["seconds"]
        if profile is not None:
            profile.enable()
        if cfg.get("echo_sql"):
            event.listen(system.engine, "before_cursor_execute",
                         lambda _c, _cur, sql, *a: print("SQL", " ".join(sql.split())[:160], file=sys.stderr))
        for msg in messages:
            c0, w0 = time.process_time(), time.perf_counter()
            out = runner.process("items.accepted", msg)
            cpu.append(time.process_time() - c0)
            wall.append(time.perf_counter() - w0)
            classified: Any = next(o.message for o in out if o.topic == "items.classified")
            routes[classified.route] = routes.get(classified.route, 0) + 1
            images += sum(1 for i in classified.images if i.error is None)
            errors = [i.error for i in classified.images if i.error]
            if errors or not classified.online:
                failures.append(f"{classified.reason} {errors[:2]}")
            if time.monotonic() > deadline:
                break
        if profile is not None:
            profile.disable()
        done = len(cpu)
        total_cpu = sum(cpu)
        phases = {p: phase_cpu.get(p, 0.0) for p in ("fetch", "hash", "match", "attribution")}
        phases["act_other"] = act_cpu[0] - sum(phases.values())
        phases["database"] = total_cpu - act_cpu[0]
        tail = max(1, done // 10)
        result: dict[str, Any] = {
            "items": done, "images": images, "routes": routes,
            "cpu_ms": 1000 * total_cpu / done, "wall_ms": 1000 * sum(wall) / done,
            "tail_cpu_ms": 1000 * sum(cpu[-tail:]) / tail, "tail_wall_ms": 1000 * sum(wall[-tail:]) / tail,
            "images_per_s": images / sum(wall), "failures": len(failures), "failure": failures[:1], "statements": statements[0] / done,
            "phases_ms": {p: 1000 * v / done for p, v in phases.items()},
        }
        if profile is not None:
            text = contextlib.redirect_stdout
            import io

            buf = io.StringIO()
            with text(buf):
                pstats.Stats(profile, stream=buf).sort_stats("tottime").print_stats(30)
                pstats.Stats(profile, stream=buf).sort_stats("cumulative").print_stats(60)
            result["profile"] = buf.getvalue()
        return result
    finally:
        with contextlib.suppress(Exception):
            stage.fetcher.close()
        system.close()


# ---------------------------------------------------------------- the parent


@contextlib.contextmanager
def child(cmd: list[str], env: dict[str, str] | None = None) -> Iterator[subprocess.Popen[bytes]]:
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, start_new_session=True)  # stderr: ours
    try:
        yield proc
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)


def export_tree(rev: str, into: Path) -> Path:
    into.mkdir(parents=True)
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", rev], check=True, capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive, check=True)
    return into


def run_worker(cfg: dict[str, Any]) -> dict[str, Any]:
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("HOTLINE_")},
           "PYTHONPATH": cfg["tree"], "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1"}
    with child([sys.executable, str(Path(__file__).resolve()), "--worker", json.dumps(cfg)], env) as proc:
        try:
            out, _ = proc.communicate(timeout=cfg["seconds"] + 120)
        except subprocess.TimeoutExpired:
            raise RuntimeError(f"worker for {cfg['label']} / {cfg['scenario']} did not finish") from None
        if proc.returncode != 0:
            raise RuntimeError(f"worker for {cfg['label']} / {cfg['scenario']} failed (exit {proc.returncode})")
        result: dict[str, Any] = json.loads(out.decode().strip().splitlines()[-1])
        return result


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="60 items per scenario")
    ap.add_argument("--items", type=int, default=None)
    ap.add_argument("--per-page", type=int, default=4)
    ap.add_argument("--width", type=int, default=640)
    ap.add_argument("--height", type=int, default=480)
    ap.add_argument("--scenarios", default="distinct,gallery")
    ap.add_argument("--baseline", default=DEFAULT_BASELINE, help="git revision of the reference, or 'none'")
    ap.add_argument("--postgres", action="store_true", help="also on PostgreSQL (HOTLINE_TEST_DATABASE_URL)")
    ap.add_argument("--profile", action="store_true", help="print the top of a cProfile of each run")
    ap.add_argument("--seconds", type=float, default=None, help="cap per run")
    ap.add_argument("--concurrency", type=int, default=0, help="images fetched at a time (default: the setting's)")
    ap.add_argument("--echo-sql", action="store_true", help="print every SQL statement of the measured items")
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        print(json.dumps(worker(json.loads(args.worker))), flush=True)
        return 0

    sys.path.insert(0, str(ROOT))
    from doubles.dns import DnsServer
    from doubles.loopback import free_port
    from doubles.rdap import RdapServer, domain, ip_network

    items = args.items or (60 if args.quick else 400)
    seconds = args.seconds or (40.0 if args.quick else 300.0)
    dbs = ["sqlite"]
    if args.postgres:
        if not os.environ.get("HOTLINE_TEST_DATABASE_URL"):
            print("--postgres needs HOTLINE_TEST_DATABASE_URL", file=sys.stderr)
            return 2
        dbs.append("postgresql")
    port = free_port(HOSTER_IP)
    dns_server = DnsServer().start()
    rdap = RdapServer()
    for name in (PAGE_HOST, IMAGE_HOST):
        dns_server.add(name, HOSTER_IP)
        rdap.domains[name] = domain(name, registrar="Bench Registrar", registrar_abuse="abuse@registrar.test")
    rdap.add_network(ip_network("127.0.0.0/8", name="BENCH-NET", hoster="Bench Hosting", country="NL",
                                abuse="abuse@bench-hosting.test", asn=64500))
    rdap.start()
    results: list[tuple[str, str, str, dict[str, Any]]] = []
    try:
        with tempfile.TemporaryDirectory(prefix="bench-classify-") as tmp_dir, \
                child([sys.executable, "-c",
                       f"import sys; sys.path.insert(0, {str(ROOT)!r}); from benchmarks.bench_classify import serve_hoster; "
                       f"serve_hoster({port}, 64, {args.per_page}, {args.width}, {args.height})"]) as hoster:
            assert hoster.stdout is not None
            if hoster.stdout.readline().strip() != b"ready":
                raise RuntimeError("the hoster did not start")
            tmp = Path(tmp_dir)
            trees = [("after", str(ROOT))]
            if args.baseline.lower() != "none":
                trees.insert(0, (f"before ({args.baseline})", str(export_tree(args.baseline, tmp / "baseline"))))
            print(f"bench_classify: {items} items per run, {args.per_page} images of {args.width}×{args.height} per page, "
                  f"{os.cpu_count()} cores, load {', '.join(f'{x:.1f}' for x in os.getloadavg())}", flush=True)
            for db in dbs:
                for scenario in args.scenarios.split(","):
                    for label, tree in trees:
                        work = tmp / f"{db}-{scenario}-{label.split()[0]}"
                        work.mkdir()
                        if db == "sqlite":
                            url = f"sqlite:///{work / 'hotline.db'}"
                        else:
                            from benchmarks.crash_harness import fresh_database
                            url = ""
                        cfg = {"tree": tree, "tmp": str(work), "scenario": scenario, "items": items, "port": port,
                               "width": args.width, "height": args.height, "dns": f"{dns_server.host}:{dns_server.port}",
                               "rdap": rdap.url, "profile": args.profile, "seconds": seconds, "label": label,
                               "database_url": url, "echo_sql": args.echo_sql, "concurrency": args.concurrency}
                        if db == "sqlite":
                            r = run_worker(cfg)
                        else:
                            with fresh_database(os.environ["HOTLINE_TEST_DATABASE_URL"]) as pg_url:
                                r = run_worker({**cfg, "database_url": pg_url})
                        results.append((db, scenario, label, r))
                        print(f"  {db:10s} {scenario:8s} {label:18s} {r['cpu_ms']:7.1f} ms CPU/item", flush=True)
    finally:
        rdap.stop()
        dns_server.stop()

    print()
    print("| database | scenario | code | items | CPU ms/item | wall ms/item | last 10 % CPU ms | images/s (1 thread) "
          "| SQL/item | " + " | ".join(PHASES) + " |")
    print("|---|---|---|---:|---:|---:|---:|---:|---:|" + "---:|" * len(PHASES))
    for db, scenario, label, r in results:
        ph = r["phases_ms"]
        print(f"| {db} | {scenario} | {label} | {r['items']} | {r['cpu_ms']:.1f} | {r['wall_ms']:.1f} | {r['tail_cpu_ms']:.1f} "
              f"| {r['images_per_s']:.0f} | {r['statements']:.1f} | " + " | ".join(f"{ph[p]:.1f}" for p in PHASES) + " |")
    print("\nphases: CPU ms per item (fetch, hash, match, attribution: per-thread CPU inside the call; "
          "act_other: rest of the act step; database: reserve + record transactions)")
    for db, scenario, label, r in results:
        print(f"routes {db}/{scenario}/{label}: {r['routes']}"
              + (f"; {r['failures']} item(s) with fetch errors, e.g. {r['failure']}" if r["failures"] else ""))
        if "profile" in r:
            print(f"\n--- cProfile {db}/{scenario}/{label} (tottime) ---\n{r['profile']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
