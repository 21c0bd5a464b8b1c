"""Classify scale-out on Kafka: 1, 2 and 4 processes, one of two stopping, a 1M-entry bank,
and a burst that must wait in Kafka rather than in process memory.

Why: classify (fetch a page, hash every image, match the bank) is the expensive stage, and the
Kafka design promises that adding processes adds throughput, that a process that stops loses
and doubles nothing, and that a backlog stays in the broker. This measures all three on real
Kafka and a fresh PostgreSQL database:

* **throughput per process count**: the classify input topic (``items.accepted``, 8
  partitions) is pre-filled with N items (rows in ``items`` as ingest leaves them, one message
  each, spread round-robin over the partitions), then K ``hotline serve --stage classify``
  processes share it until every item is classified; items/s and images/s from the first to
  the last ``classified_at``, efficiency = rate(K) / (K × rate(1));
* **one of two stopping** (SIGTERM, then SIGKILL in a second run): stopped when about 40 % is
  done; "all partitions flowing again" is the longest time from the stop to a partition's next
  classification; lost = items not classified at the end; doubled = items with more than one
  classification recorded (``item_events`` of classify) or with two different
  classifications on ``items.classified`` (a redelivered item is published again, identical:
  downstream deduplicates by notice id, counted as "re-published");
* **peak RSS** (``VmHWM``) of every classify process with a bank of ``--bank`` synthetic
  entries (random hashes, ``COPY``-imported, snapshot built once with ``hotline bank index
  rebuild``, memory-mapped by the workers);
* **back-pressure**: a burst of ``--burst`` items for one process; RSS sampled while it works,
  next to the number still waiting in Kafka (consumer-group lag).

The hoster is a separate, small asyncio process serving precomputed JPEGs (``--images``
per page, HTTP/1.1 keep-alive) on 127.0.0.2; its CPU time is printed so the reader can
subtract it. Everything binds loopback; every process is killed at the end (process groups),
the topics and the database are dropped.

    python -m benchmarks.bench_scaleout                 # full: 2,000 items per run, 1M bank
    python -m benchmarks.bench_scaleout --quick         # ~3 minutes: 80 items, 100k bank
    python -m benchmarks.bench_scaleout --processes 1,2 --items 1000 --bank 1000000
    python -m benchmarks.bench_scaleout --rss           # ~5 minutes: classify's peak RSS, 1M bank

Needs HOTLINE_TEST_KAFKA_BROKERS (default 127.0.0.1:9092) and HOTLINE_TEST_DATABASE_URL (an
admin URL of a PostgreSQL server; default postgresql+psycopg://postgres@127.0.0.1:5432/postgres).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import io
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

HOST = "img.scaleout.test"
HOST_IP = "127.0.0.2"
PARTITIONS = 8
TARGET_IMAGES_PER_S = 150
TARGET_EFFICIENCY = 0.80
TARGET_RSS_MB = 300


# ---------------------------------------------------------------- the hoster (own process)


def serve_hoster(port: int, pool: int, per_page: int, width: int, height: int, ready: bool = True) -> None:
    """Serve ``/p/<i>.html`` (a page showing ``per_page`` images of the pool) and
    ``/i/<j>.jpg`` (precomputed synthetic JPEGs) with HTTP/1.1 keep-alive, until killed."""
    from hashing.synthetic import photo_like_jpeg

    images = [photo_like_jpeg(width, height, seed=7000 + j) for j in range(pool)]

    def image(name: str) -> bytes:
        # Every URL gets its own bytes (a JPEG comment segment naming it, right after SOI): the
        # same picture perceptually, but a SHA-256 of its own, as copies on the web have. With
        # one pool's bytes everywhere, classify's "also seen at" links (by SHA-256) would tie
        # every item to every other and the run would measure that instead.
        page_no, k = (int(x) for x in name.split("-"))
        data = images[(page_no * per_page + k) % pool]
        note = f"bench-scaleout {name}".encode()
        body = data[:2] + b"\xff\xfe" + (len(note) + 2).to_bytes(2, "big") + note + data[2:]
        return b"HTTP/1.1 200 OK\r\nContent-Type: image/jpeg\r\nContent-Length: %d\r\n\r\n" % len(body) + body

    not_found = b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n"

    def page(i: int) -> bytes:
        body = "<html><body>" + "".join(
            f'<img src="/i/{i}-{k}.jpg">' for k in range(per_page)
        ) + "</body></html>"
        data = body.encode()
        return b"HTTP/1.1 200 OK\r\nContent-Type: text/html\r\nContent-Length: %d\r\n\r\n" % len(data) + data

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                path = head.split(b" ", 2)[1].decode()
                answer = not_found
                with contextlib.suppress(ValueError, IndexError):
                    if path.startswith("/i/"):
                        answer = image(path[3:].split(".")[0])
                    elif path.startswith("/p/"):
                        answer = page(int(path[3:].split(".")[0]))
                writer.write(answer)
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError, asyncio.LimitOverrunError):
            pass
        finally:
            writer.close()

    async def main() -> None:
        parent = os.getppid()
        server = await asyncio.start_server(handle, HOST_IP, port)
        if ready:
            print("ready", flush=True)
        async with server:
            # Never outlive the benchmark, even one killed with -9.
            while os.getppid() == parent:
                await asyncio.sleep(1.0)

    asyncio.run(main())


def hoster_images(pool: int, width: int, height: int) -> list[bytes]:
    from hashing.synthetic import photo_like_jpeg

    return [photo_like_jpeg(width, height, seed=7000 + j) for j in range(pool)]


# ---------------------------------------------------------------- /proc


def proc_status_kb(pid: int, key: str) -> int | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


def pss_kb(pid: int) -> int | None:
    """Proportional set size: shared pages (the memory-mapped bank snapshot, which every
    classify process maps) divided among the processes that share them."""
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


def mapped_kb(pid: int, under: Path) -> dict[str, int]:
    """Resident kB per mapping of a process, from ``/proc/PID/smaps``: each file under ``under``
    (the bank snapshot) by its path below the snapshot directory, every other file together as
    ``other files`` (Python, libraries), anonymous memory as ``private``."""
    out: dict[str, int] = {}
    name = "private"
    try:
        text = Path(f"/proc/{pid}/smaps").read_text()
    except OSError:
        return out
    root = str(under)
    for line in text.splitlines():
        parts = line.split()
        if not parts:
            continue
        if "-" in parts[0] and not parts[0].endswith(":"):
            path = parts[5] if len(parts) > 5 else ""
            if path.startswith(root):
                rel = path[len(root):].lstrip("/")
                name = rel.split("/", 1)[1] if "/" in rel else rel  # drop the snap-* directory
            elif path.startswith("/"):
                name = "other files"
            else:
                name = "private"
        elif parts[0] == "Rss:":
            out[name] = out.get(name, 0) + int(parts[1])
    return out


def cpu_seconds(pid: int) -> float | None:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return None


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    mem = 0
    with contextlib.suppress(OSError):
        mem = int(Path("/proc/meminfo").read_text().split()[1]) // 1024
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    return (f"{os.cpu_count()} cores ({cpu}), {mem / 1024:.1f} GB RAM, Python {platform.python_version()}, "
            f"load average {load} at the start")


# ---------------------------------------------------------------- setup


@dataclass
class Env:
    brokers: str
    db_url: str
    tmp: Path
    hoster_port: int
    per_page: int
    worker_env: dict[str, str] = field(default_factory=dict)


@contextlib.contextmanager
def fresh_database(admin_url: str) -> Iterator[str]:
    from benchmarks.crash_harness import fresh_database as crash_fresh

    with crash_fresh(admin_url) as url:
        yield url


def load_bank(db_url: str, n: int, known: list[bytes], out: Any) -> None:
    """``n`` random entries by COPY (the import path operators use) plus the hashes of the
    ``known`` images, so some pages are known material."""
    import numpy as np

    from hashing.image import hash_image
    from hotline.storage.engine import make_engine, make_sessionmaker
    from hotline.storage.unit_of_work import SqlUnitOfWork
    from services.bank.bank import import_csv

    sizes = {"md5": 16, "sha1": 20, "sha256": 32, "pdq": 32, "phash": 8}
    hexdigits = np.frombuffer(b"0123456789abcdef", dtype=np.uint8)
    engine = make_engine(db_url)
    sessions = make_sessionmaker(engine)
    t0 = time.perf_counter()
    rng = np.random.default_rng(20261201)
    chunk = 200_000
    try:
        with sessions() as session:
            store = SqlUnitOfWork(session)
            for lo in range(0, n, chunk):
                m = min(chunk, n - lo)
                parts = []
                for i, (_, nb) in enumerate(sizes.items()):
                    a = rng.integers(0, 256, (m, nb), dtype=np.uint8)
                    hexed = np.empty((m, nb * 2), dtype=np.uint8)
                    hexed[:, 0::2], hexed[:, 1::2] = hexdigits[a >> 4], hexdigits[a & 15]
                    parts += [hexed, np.full((m, 1), ord("," if i < len(sizes) - 1 else "\n"), np.uint8)]
                text = ",".join(sizes) + "\n" + np.hstack(parts).tobytes().decode()
                added, errors = import_csv(io.StringIO(text), store, "baseline", "bench-scaleout")
                if errors:
                    raise RuntimeError(f"bank import refused rows: {errors[:3]}")
            for data in known:
                h = hash_image(data)
                store.bank.add(category="baseline", source="bench-scaleout", md5=h.md5, sha1=h.sha1,
                               sha256=h.sha256, pdq=h.pdq, phash=h.phash)
            store.commit()
    finally:
        engine.dispose()
    out(f"bank: {n:,} synthetic entries + {len(known)} known images imported in {time.perf_counter() - t0:.1f}s")


def build_snapshot(env: Env, out: Any) -> dict[str, Any]:
    """``hotline bank index rebuild`` once, so every classify process memory-maps it."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(
        [sys.executable, "-m", "entrypoints.cli", "bank", "index", "rebuild"],
        env={**os.environ, **env.worker_env}, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    hwm = 0
    while proc.poll() is None:
        hwm = max(hwm, proc_status_kb(proc.pid, "VmHWM") or 0)
        time.sleep(0.1)
    text = (proc.stdout.read() if proc.stdout else b"").decode(errors="replace")
    if proc.returncode != 0:
        raise RuntimeError(f"bank index rebuild failed:\n{text}")
    out(f"snapshot: {text.strip().splitlines()[-1]} ({time.perf_counter() - t0:.1f}s, peak RSS ≥ {hwm / 1024:.0f} MB)")
    return {"seconds": time.perf_counter() - t0, "rss_mb": hwm / 1024}


@dataclass
class Batch:
    prefix: str
    item_ids: list[str]
    partition_of: dict[str, int]


def prefill(env: Env, n: int, tag: str) -> Batch:
    """``n`` items as ingest leaves them (rows in ``items`` and ``open_urls``, state received)
    and one ``items.accepted`` message each, round-robin over the partitions, on a topic
    prefix of their own (so each run is a fresh consumer group)."""
    from kafka import KafkaProducer
    from sqlalchemy import insert

    from hotline.runtime.kafka import create_topics, kafka_topic
    from hotline.storage.engine import make_engine
    from hotline.storage.items import url_digest
    from hotline.storage.models import Item, OpenUrl
    from schemas.items import ItemAccepted

    run = uuid.uuid4().hex[:8]
    prefix = f"scale{run}."
    ids = [f"it-{tag}-{run}-{i:06d}" for i in range(n)]
    # Distinct URLs per run (an item per URL): the page number carries the run's offset.
    base = int(run, 16) % 1_000_000 * 1000
    urls = [f"http://{HOST}:{env.hoster_port}/p/{base + i}.html" for i in range(n)]
    engine = make_engine(env.db_url)
    try:
        with engine.begin() as conn:
            for lo in range(0, n, 5000):
                conn.execute(insert(Item), [{"id": ids[i], "url": urls[i]} for i in range(lo, min(n, lo + 5000))])
                conn.execute(insert(OpenUrl), [{"url_sha256": url_digest(urls[i]), "item_id": ids[i]}
                                               for i in range(lo, min(n, lo + 5000))])
    finally:
        engine.dispose()
    create_topics(env.brokers, prefix, PARTITIONS)
    topic = kafka_topic(prefix, "items.accepted")
    producer = KafkaProducer(bootstrap_servers=env.brokers.split(","), acks="all", linger_ms=20)
    parts: dict[str, int] = {}
    try:
        futures = []
        for i, (item_id, url) in enumerate(zip(ids, urls, strict=True)):
            parts[item_id] = i % PARTITIONS
            msg = ItemAccepted(item_id=item_id, url=url, report_ids=[f"rep-{item_id}"])
            futures.append(producer.send(topic, key=url.encode(), value=msg.to_bytes(), partition=i % PARTITIONS))
        for f in futures:
            f.get(timeout=60)
    finally:
        producer.close(timeout=10)
    return Batch(prefix, ids, parts)


class Workers:
    """Classify processes (``python -m entrypoints.cli serve --stage classify``), each in its
    own process group, killed on exit whatever happens."""

    def __init__(self, env: Env, prefix: str) -> None:
        self.env, self.prefix = env, prefix
        self.procs: list[subprocess.Popen[bytes]] = []
        self.hwm: dict[int, int] = {}
        # Highest private (anonymous) and file-backed (mostly the mapped snapshot) RSS and PSS seen.
        self.anon: dict[int, int] = {}
        self.file: dict[int, int] = {}
        self.pss: dict[int, int] = {}

    def start(self, k: int) -> None:
        for _ in range(k):
            n = len(self.procs)
            log = open(self.env.tmp / f"classify-{self.prefix}{n}.log", "wb")  # noqa: SIM115 - the child owns it
            self.procs.append(subprocess.Popen(
                [sys.executable, "-m", "entrypoints.cli", "serve", "--stage", "classify"],
                env={**os.environ, **self.env.worker_env, "HOTLINE_TOPIC_PREFIX": self.prefix},
                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True,
            ))
            log.close()

    def sample(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                for store, v in ((self.hwm, proc_status_kb(p.pid, "VmHWM")),
                                 (self.anon, proc_status_kb(p.pid, "RssAnon")),
                                 (self.file, proc_status_kb(p.pid, "RssFile")),
                                 (self.pss, pss_kb(p.pid))):
                    if v:
                        store[p.pid] = max(store.get(p.pid, 0), v)

    def memory(self) -> list[tuple[float, float, float, float]]:
        """Per process: (peak RSS, private, file-backed, PSS) in MB."""
        return [(self.hwm[pid] / 1024, self.anon.get(pid, 0) / 1024, self.file.get(pid, 0) / 1024,
                 self.pss.get(pid, 0) / 1024) for pid in self.hwm]

    def cpu(self) -> float:
        return sum(cpu_seconds(p.pid) or 0.0 for p in self.procs if p.poll() is None)

    def check_alive(self) -> None:
        for p in self.procs:
            if p.poll() is not None:
                raise RuntimeError(f"classify process {p.pid} exited with {p.returncode}; see {self.env.tmp}")

    def stop_all(self, grace: float = 15.0) -> None:
        for p in self.procs:
            if p.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(p.pid, signal.SIGTERM)
        deadline = time.monotonic() + grace
        for p in self.procs:
            try:
                p.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(p.pid, signal.SIGKILL)
                p.wait(10)


def classified_at(env: Env, ids: list[str]) -> dict[str, float]:
    """item id -> classified_at (epoch seconds) of every classified item of ``ids``."""
    from datetime import datetime

    from sqlalchemy import create_engine, select
    from sqlalchemy.pool import NullPool

    from hotline.storage.models import Item

    engine = create_engine(env.db_url, poolclass=NullPool)
    out: dict[str, float] = {}
    try:
        with engine.connect() as conn:
            for lo in range(0, len(ids), 5000):
                rows = conn.execute(select(Item.id, Item.classification).where(
                    Item.id.in_(ids[lo:lo + 5000]), Item.classification.is_not(None)))
                for item_id, c in rows:
                    out[item_id] = datetime.fromisoformat(c["classified_at"]).timestamp()
    finally:
        engine.dispose()
    return out


def classify_events(env: Env, ids: list[str]) -> Counter[str]:
    """How many times classify recorded a state per item (1 each when nothing was doubled;
    "also seen" links are not counted)."""
    from sqlalchemy import create_engine, func, select
    from sqlalchemy.pool import NullPool

    from hotline.storage.models import ItemEvent

    engine = create_engine(env.db_url, poolclass=NullPool)
    counts: Counter[str] = Counter()
    try:
        with engine.connect() as conn:
            for lo in range(0, len(ids), 5000):
                rows = conn.execute(select(ItemEvent.item_id, func.count()).where(
                    ItemEvent.item_id.in_(ids[lo:lo + 5000]), ItemEvent.stage == "classify",
                    ItemEvent.kind != "also_seen",
                ).group_by(ItemEvent.item_id))
                counts.update({i: c for i, c in rows})
    finally:
        engine.dispose()
    return counts


def read_output(env: Env, prefix: str) -> dict[str, list[str]]:
    """item id -> classified_at of every ``items.classified`` message (duplicates included)."""
    import json

    from kafka import KafkaConsumer, TopicPartition

    from hotline.runtime.kafka import kafka_topic

    topic = kafka_topic(prefix, "items.classified")
    consumer = KafkaConsumer(bootstrap_servers=env.brokers.split(","), group_id=None,
                             enable_auto_commit=False, consumer_timeout_ms=2000)
    seen: dict[str, list[str]] = defaultdict(list)
    try:
        tps = [TopicPartition(topic, p) for p in (consumer.partitions_for_topic(topic) or set())]
        consumer.assign(tps)
        consumer.seek_to_beginning(*tps)
        ends = consumer.end_offsets(tps)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and any(consumer.position(tp) < ends[tp] for tp in tps):
            for records in consumer.poll(timeout_ms=500).values():
                for r in records:
                    body = json.loads(r.value)
                    seen[body["item_id"]].append(body["classified_at"])
    finally:
        consumer.close()
    return seen


def lag(env: Env, prefix: str) -> int | None:
    """The classify group's lag over its input (None: the broker cannot say right now)."""
    from benchmarks.crash_harness import group_lag

    return group_lag(env.brokers, prefix, ("classify",))


def delete_topics(env: Env, prefix: str) -> None:
    with contextlib.suppress(Exception):
        from tests.integration.scenario import delete_topics as drop

        drop(env.brokers, prefix)


# ---------------------------------------------------------------- the runs


@dataclass
class RunResult:
    k: int
    items: int
    images: int
    seconds: float
    startup: float
    rss_mb: list[float]
    memory: list[tuple[float, float, float, float]]
    cpu_seconds: float
    hoster_cpu: float
    lost: int = 0
    doubled: int = 0
    republished: int = 0

    @property
    def rate(self) -> float:
        return self.items / self.seconds if self.seconds > 0 else 0.0


def wait_all(env: Env, batch: Batch, workers: Workers, deadline: float,
             on_tick: Any = None) -> dict[str, float]:
    done: dict[str, float] = {}
    while time.monotonic() < deadline:
        workers.sample()
        done = classified_at(env, batch.item_ids)
        if on_tick is not None:
            on_tick(done)
        if len(done) == len(batch.item_ids):
            return done
        time.sleep(0.5)
    return done


def run_k(env: Env, k: int, n: int, hoster_pid: int, timeout: float, out: Any) -> RunResult:
    batch = prefill(env, n, f"k{k}")
    workers = Workers(env, batch.prefix)
    h0 = cpu_seconds(hoster_pid) or 0.0
    try:
        started = time.time()
        workers.start(k)
        done = wait_all(env, batch, workers, time.monotonic() + timeout)
        workers.sample()
        cpu = workers.cpu()
        for p in workers.procs[:1]:
            parts = mapped_kb(p.pid, env.tmp / "index")
            snap = sorted(((v, k) for k, v in parts.items() if k not in ("private", "other files")),
                          reverse=True)
            out(f"K={k}: resident now in process {p.pid}: private {parts.get('private', 0) / 1024:.0f} MB, "
                f"other files {parts.get('other files', 0) / 1024:.0f} MB, snapshot "
                f"{sum(v for v, _ in snap) / 1024:.0f} MB ("
                + ", ".join(f"{name} {v / 1024:.0f}" for v, name in snap if v >= 1024) + ")")
        times = sorted(done.values())
        lost = n - len(done)
        events = classify_events(env, batch.item_ids)
        output = read_output(env, batch.prefix)
        doubled = sum(1 for c in events.values() if c > 1) + sum(1 for v in output.values() if len(set(v)) > 1)
        republished = sum(len(v) - 1 for v in output.values())
        result = RunResult(
            k=k, items=len(done), images=len(done) * env.per_page,
            seconds=(times[-1] - times[0]) if len(times) > 1 else 0.0,
            startup=(times[0] - started) if times else 0.0,
            rss_mb=[v / 1024 for v in workers.hwm.values()], memory=workers.memory(), cpu_seconds=cpu,
            hoster_cpu=(cpu_seconds(hoster_pid) or 0.0) - h0, lost=lost, doubled=doubled,
            republished=republished,
        )
        out(f"K={k}: {result.items}/{n} items in {result.seconds:.1f}s ({result.rate:.1f} items/s, "
            f"{result.rate * env.per_page:.0f} images/s), start {result.startup:.1f}s, "
            f"RSS {', '.join(f'{r:.0f}' for r in result.rss_mb)} MB, lost {lost}, doubled {doubled}")
        return result
    finally:
        workers.stop_all()
        delete_topics(env, batch.prefix)


@dataclass
class StopResult:
    how: str
    items: int
    lost: int
    doubled: int
    republished: int
    stopped_at_done: int
    flowing_again: float | None
    rate_before: float
    rate_after: float
    seconds: float


def run_stop(env: Env, n: int, how: signal.Signals, timeout: float, out: Any) -> StopResult:
    """Two processes; one is stopped with ``how`` when ~40 % is done; the survivor finishes."""
    batch = prefill(env, n, f"stop{how.name.lower()}")
    workers = Workers(env, batch.prefix)
    state: dict[str, Any] = {"stopped": None, "at_done": 0}

    def tick(done: dict[str, float]) -> None:
        if state["stopped"] is None and len(done) >= 0.4 * n:
            victim = workers.procs[1]
            os.killpg(victim.pid, how)
            state["stopped"], state["at_done"] = time.time(), len(done)
            out(f"  {how.name} to one of two at {len(done)}/{n} classified")

    try:
        workers.start(2)
        done = wait_all(env, batch, workers, time.monotonic() + timeout, tick)
        events = classify_events(env, batch.item_ids)
        output = read_output(env, batch.prefix)
    finally:
        workers.stop_all()
        delete_topics(env, batch.prefix)
    t_stop = state["stopped"] or time.time()
    # Per partition, the first classification after the stop (of partitions with work left).
    firsts: dict[int, float] = {}
    remaining: set[int] = set()
    for item_id in batch.item_ids:
        p = batch.partition_of[item_id]
        t = done.get(item_id)
        if t is None or t > t_stop:
            remaining.add(p)
        if t is not None and t > t_stop:
            firsts[p] = min(firsts.get(p, t), t)
    flowing = max((firsts[p] - t_stop for p in remaining if p in firsts), default=None)
    before = [t for t in done.values() if t_stop - 10 <= t <= t_stop]
    after_start = t_stop + (flowing or 0.0)
    after = [t for t in done.values() if after_start <= t <= after_start + 10]
    times = sorted(done.values())
    doubled = sum(1 for c in events.values() if c > 1) + sum(1 for v in output.values() if len(set(v)) > 1)
    r = StopResult(
        how=how.name, items=len(done), lost=n - len(done), doubled=doubled,
        republished=sum(len(v) - 1 for v in output.values()), stopped_at_done=state["at_done"],
        flowing_again=flowing,
        rate_before=len(before) / min(10.0, max(t_stop - (times[0] if times else t_stop), 1e-9)),
        rate_after=len(after) / max(min(10.0, (times[-1] if times else after_start) - after_start), 1e-9),
        seconds=(times[-1] - times[0]) if len(times) > 1 else 0.0,
    )
    out(f"stop ({how.name}): {r.items}/{n} classified, lost {r.lost}, doubled {r.doubled}, "
        f"re-published {r.republished}, all partitions flowing again after "
        f"{'-' if flowing is None else f'{flowing:.1f}s'}")
    return r


@dataclass
class BurstResult:
    items: int
    seconds: float
    classified: int
    waiting: int | None
    rss_samples: list[float]
    hwm_mb: float
    baseline_rss_mb: float
    anon_mb: float  # the largest private (RssAnon) and mapped-file (RssFile) parts seen
    file_mb: float


def run_burst(env: Env, n: int, seconds: float, out: Any) -> BurstResult:
    """One process, ``n`` items waiting: RSS while it works vs the backlog left in Kafka."""
    batch = prefill(env, n, "burst")
    workers = Workers(env, batch.prefix)
    samples: list[float] = []
    try:
        workers.start(1)
        pid = workers.procs[0].pid
        # RSS once the first items are done (bank loaded, consumer joined): the baseline.
        end = time.monotonic() + seconds
        baseline = 0.0
        while time.monotonic() < end:
            rss = (proc_status_kb(pid, "VmRSS") or 0) / 1024
            if rss:
                samples.append(rss)
            if not baseline and len(classified_at(env, batch.item_ids[::PARTITIONS][:50])) > 0:
                baseline = rss
            workers.sample()  # the private and mapped parts too: which of them a burst grows
            time.sleep(0.5)
            workers.check_alive()
        workers.sample()
        done = len(classified_at(env, batch.item_ids))
        waiting = lag(env, batch.prefix)
        r = BurstResult(n, seconds, done, waiting, samples, workers.hwm.get(pid, 0) / 1024, baseline,
                        workers.anon.get(pid, 0) / 1024, workers.file.get(pid, 0) / 1024)
        out(f"burst: {n} items, {done} classified in {seconds:.0f}s (start included), {waiting} waiting in Kafka, "
            f"RSS {min(samples or [0]):.0f}-{max(samples or [0]):.0f} MB (first classification at {baseline:.0f} MB)")
        return r
    finally:
        workers.stop_all()
        delete_topics(env, batch.prefix)


# ---------------------------------------------------------------- report


def report(machine_line: str, opts: argparse.Namespace, runs: list[RunResult], stops: list[StopResult],
           burst: BurstResult | None, snapshot: dict[str, Any] | None, env: Env) -> str:
    lines = [f"## Classify scale-out ({'quick' if opts.quick else 'full'} run)", "",
             f"Machine: {machine_line}.",
             f"Kafka {env.brokers}, {PARTITIONS} partitions; PostgreSQL (fresh database); bank "
             f"{opts.bank:,} synthetic entries (snapshot, mmap); {env.per_page} images of "
             f"{opts.size} per page from one loopback hoster process.", ""]
    base = next((r.rate for r in runs if r.k == 1), None)
    lines += ["| processes | items | time | items/s | images/s | efficiency vs linear | first result after start "
              "| peak RSS per process | classify CPU | hoster CPU | lost | doubled | re-published |",
              "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in runs:
        eff = f"{r.rate / (r.k * base):.0%}" if base else "-"
        lines.append(
            f"| {r.k} | {r.items} | {r.seconds:.1f} s | {r.rate:.1f} | {r.rate * env.per_page:.0f} | {eff} | "
            f"{r.startup:.1f} s | {', '.join(f'{m:.0f}' for m in r.rss_mb)} MB | {r.cpu_seconds:.0f} s | "
            f"{r.hoster_cpu:.2f} s | {r.lost} | {r.doubled} | {r.republished} |")
    lines += ["", "| processes | per process: peak RSS (VmHWM) = private (RssAnon) + mapped files (RssFile, "
              "mostly the bank snapshot, shared) | PSS (shared pages split) |", "|---|---|---|"]
    for r in runs:
        lines.append(f"| {r.k} | " + "; ".join(f"{h:.0f} = {a:.0f} + {f:.0f} MB" for h, a, f, _ in r.memory)
                     + " | " + ", ".join(f"{p:.0f} MB" for *_, p in r.memory) + " |")
    lines += ["", f"Targets: ≥ {TARGET_IMAGES_PER_S} images/s with both cores busy; 2 processes within "
              f"{TARGET_EFFICIENCY:.0%} of linear; peak RSS ≤ {TARGET_RSS_MB} MB per process."]
    two = next((r for r in runs if r.k == 2), None)
    if base and two:
        scaling = two.rate / (2 * base)
        lines.append(f"1 → 2 processes: {scaling:.0%} of linear "
                     f"({'met' if scaling >= TARGET_EFFICIENCY else 'NOT met'}).")
    best = max((r.rate * env.per_page for r in runs), default=0)
    lines.append(f"Best images/s: {best:.0f} ({'met' if best >= TARGET_IMAGES_PER_S else 'NOT met'}).")
    worst = max((m for r in runs for m in r.rss_mb), default=0)
    lines.append(f"Highest peak RSS: {worst:.0f} MB ({'met' if worst <= TARGET_RSS_MB else 'NOT met'}).")
    if snapshot:
        lines.append(f"Snapshot build (`hotline bank index rebuild`, not a stage process): {snapshot['seconds']:.1f} s, "
                     f"peak RSS {snapshot['rss_mb']:.0f} MB.")
    if stops:
        lines += ["", "| one of two stopped | classified | lost | doubled | re-published (identical) | stopped at "
                  "| all partitions flowing again after | items/s 10 s before | items/s 10 s after |",
                  "|---|---|---|---|---|---|---|---|---|"]
        for s in stops:
            again = "-" if s.flowing_again is None else f"{s.flowing_again:.1f} s"
            lines.append(f"| {s.how} | {s.items} | {s.lost} | {s.doubled} | {s.republished} | {s.stopped_at_done} done "
                         f"| {again} | {s.rate_before:.1f} | {s.rate_after:.1f} |")
    if burst:
        lines += ["", "| burst (1 process) | classified | still waiting in Kafka | RSS at first result | RSS max "
                  "while working | peak RSS (VmHWM) | largest private (RssAnon) / mapped files (RssFile) |",
                  "|---|---|---|---|---|---|---|",
                  f"| {burst.items} items, {burst.seconds:.0f} s | {burst.classified} | {burst.waiting} | "
                  f"{burst.baseline_rss_mb:.0f} MB | {max(burst.rss_samples or [0]):.0f} MB | {burst.hwm_mb:.0f} MB "
                  f"| {burst.anon_mb:.0f} / {burst.file_mb:.0f} MB |"]
    return "\n".join(lines)


def _interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="small run (~2 minutes)")
    ap.add_argument("--processes", default="1,2,4", help="process counts to measure")
    ap.add_argument("--items", type=int, default=None, help="items per run (default 2000; quick 80)")
    ap.add_argument("--bank", type=int, default=None, help="synthetic bank entries (default 1,000,000; quick 100,000)")
    ap.add_argument("--images", type=int, default=4, help="images per page")
    ap.add_argument("--size", default="640x480", help="image size WxH")
    ap.add_argument("--burst", type=int, default=None, help="items in the back-pressure burst (default 50,000; quick 5,000)")
    ap.add_argument("--no-stop", action="store_true", help="skip the stop-one-of-two runs")
    ap.add_argument("--rss", action="store_true",
                    help="only classify's peak RSS: one process, 300 items, the 1M bank, no stop runs, no burst")
    ap.add_argument("--serve-hoster", type=int, default=None, help=argparse.SUPPRESS)
    opts = ap.parse_args(argv)
    width, height = (int(x) for x in opts.size.lower().split("x"))
    if opts.serve_hoster is not None:
        serve_hoster(opts.serve_hoster, 32, opts.images, width, height)
        return 0
    if opts.rss:
        opts.processes, opts.no_stop = "1", True
        opts.items = opts.items or 300
    opts.items = opts.items or (80 if opts.quick else 2000)
    opts.bank = opts.bank if opts.bank is not None else (100_000 if opts.quick else 1_000_000)
    opts.burst = opts.burst or (5000 if opts.quick else 50_000)
    ks = [int(k) for k in opts.processes.split(",") if k.strip()]
    brokers = os.environ.get("HOTLINE_TEST_KAFKA_BROKERS", "127.0.0.1:9092")
    admin_url = os.environ.get("HOTLINE_TEST_DATABASE_URL",
                               "postgresql+psycopg://postgres@127.0.0.1:5432/postgres")
    machine_line = machine()
    # SIGTERM (timeout, a CI runner) must unwind through the finally blocks that stop the
    # workers and the hoster, as Ctrl-C does.
    signal.signal(signal.SIGTERM, _interrupt)

    def out(s: str) -> None:
        print(s, flush=True)

    out(f"bench_scaleout: {machine_line}")
    from doubles.loopback import free_port
    from hotline.storage.engine import migrate

    tmp = Path(tempfile.mkdtemp(prefix="hotline-scaleout-"))
    hoster: subprocess.Popen[bytes] | None = None
    deadline_run = 1200.0 if not opts.quick else 120.0
    try:
        with fresh_database(admin_url) as db_url:
            migrate(db_url)
            port = free_port(HOST_IP)
            hoster = subprocess.Popen(
                [sys.executable, "-m", "benchmarks.bench_scaleout", "--serve-hoster", str(port),
                 "--images", str(opts.images), "--size", opts.size],
                cwd=ROOT, stdout=subprocess.PIPE, start_new_session=True,
            )
            assert hoster.stdout is not None
            if hoster.stdout.readline().strip() != b"ready":
                raise RuntimeError("the hoster did not start")
            hosting = tmp / "hosting.yaml"
            hosting.write_text(
                f"hosts:\n  {HOST}: [{HOST_IP}]\nnetworks:\n  - range: {HOST_IP}/32\n    country: NL\n"
                f"    asn: 64501\n    hoster: Scaleout Hosting B.V.\n    abuse: abuse@scaleout.test\n")
            env = Env(brokers, db_url, tmp, port, opts.images)
            env.worker_env = {
                "HOTLINE_DATABASE_URL": db_url,
                "HOTLINE_KAFKA_BROKERS": brokers,
                "HOTLINE_KAFKA_PARTITIONS": str(PARTITIONS),
                "HOTLINE_HOSTING_FILE": str(hosting),
                "HOTLINE_ALLOW_PRIVATE_FETCH": "true",
                "HOTLINE_INDEX_DIR": str(tmp / "index"),
                "PYTHONPATH": str(ROOT),
            }
            # Two images of the pool are known material (their pages go to NTD), the rest unknown.
            load_bank(db_url, opts.bank, hoster_images(32, width, height)[:2], out)
            snapshot = build_snapshot(env, out)
            runs = [run_k(env, k, opts.items, hoster.pid, deadline_run, out) for k in ks]
            stops = [] if opts.no_stop else [
                run_stop(env, opts.items * (1 if opts.quick else 2), sig, deadline_run, out)
                for sig in (signal.SIGTERM, signal.SIGKILL)
            ]
            burst = None if opts.rss else run_burst(env, opts.burst, 25.0 if opts.quick else 90.0, out)
            out("")
            out(report(machine_line, opts, runs, stops, burst, snapshot, env))
            ok = all(r.lost == 0 and r.doubled == 0 for r in runs) and all(
                s.lost == 0 and s.doubled == 0 for s in stops)
            return 0 if ok else 1
    finally:
        if hoster is not None and hoster.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(hoster.pid, signal.SIGKILL)
            hoster.wait(10)
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
