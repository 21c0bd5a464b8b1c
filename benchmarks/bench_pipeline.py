"""Pipeline benchmark: synthetic reports through the whole pipeline, as a user runs it.

Why: issue 13 asks how fast the hotline is from the reporter's click to the hoster's inbox
(p99 report -> notice sent under a second at 50 reports/s; at least 150 images/s end to
end), on the embedded runtime (one ``hotline serve`` process, SQLite) and on the distributed
one (``hotline serve --stage web`` plus one ``hotline serve --stage NAME`` process per stage,
Kafka and PostgreSQL). The figure to beat is what a hotline has without it: SCART's cron,
15 records a minute per job (the issue's figure), printed as the reference row.

The world is loopback only (``tests.integration.scenario.world``): two NL hosters and a DE
hoster (``LoopbackSite`` on 127.0.0.2-4, named in a hosting file), an SMTP sink and a partner
hotline's endpoint for DE. Every report names one URL and every image is unique (a synthetic
photo with a JPEG comment making its bytes its own), so no two items share an image:

- ``notice``: an image the bank knows at an NL hoster -> takedown notice by e-mail (SMTP sink);
- ``forward``: an image the bank knows at the DE hoster -> forwarded to the partner sink;
- ``unknown``: an image the bank does not know, NL -> awaiting assessment;
- ``gallery``: an HTML page at an NL hoster showing ``--gallery-images`` images, one known ->
  notice (the images/s load: every image on the page is fetched and hashed).

Reports go in through the real API (``POST /api/v1/reports``) in two phases: ``rate``, open
loop at ``--rate`` reports/s (a request is sent when it is due whether or not earlier ones were
answered), and ``max``, ``--clients`` clients posting back to back. After each phase the
benchmark waits (bounded) until every accepted report's item is in its expected state, then
reads the recorded timestamps from the database: report ``submitted_at`` (set by the web
process when it takes the request), ``notices.sent_at``, ``forwards.sent_at`` and the
timeline event that moved the item to ``awaiting_assessment``. Where the time goes: each item's
timeline (``item_events``: every state change, by stage) split into the gaps between
consecutive events, each gap charged to the stage that wrote the later event (queueing in
front of that stage included). On Kafka the stages also log each event's own processing
time at debug level ("done in"), which separates work from waiting. Peak RSS is each
process's ``VmHWM`` (/proc/PID/status) at the end of the run.

    python -m benchmarks.bench_pipeline                      # both runtimes, full size
    python -m benchmarks.bench_pipeline --quick              # under ~2 minutes
    python -m benchmarks.bench_pipeline --runtime embedded --rate 50 --reports 1000

Kafka and PostgreSQL: the running ones (``--brokers``, ``--database-url``; by default
``HOTLINE_TEST_KAFKA_BROKERS`` and ``HOTLINE_TEST_DATABASE_URL``), with a fresh database and
a unique topic prefix, both removed at the end. Every wait has a deadline; every process the
benchmark starts is killed (its process group) when it ends, Ctrl-C included. Run from the
repository root. Method and columns: docs/benchmarks-pipeline.md.
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import json
import os
import platform
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import defaultdict
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

KAFKA_STAGES = ("ingest", "classify", "notify", "escalate", "followup")
KINDS = ("notice", "forward", "unknown", "gallery")
EXPECTED = {
    "notice": "notice_sent",
    "forward": "forwarded",
    "unknown": "awaiting_assessment",
    "gallery": "notice_sent",
}
# Issue 13: "SCART's cron: 15 records a minute per job".
SCART_PER_SECOND = 15 / 60
# A stage process with the runtime's per-event debug line on ("stage X: event from T done in
# 0.012s"), everything else as ``hotline serve`` logs it.
_CHILD = (
    "import logging, sys\n"
    "from entrypoints.cli import main\n"
    "logging.getLogger('hotline.runtime.kafka').setLevel(logging.DEBUG)\n"
    "main(sys.argv[1:], prog_name='hotline')\n"
)
_DONE = re.compile(
    r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) DEBUG \S+: stage (\w+): event from \S+ done in ([0-9.]+)s",
    re.MULTILINE,
)


@dataclass
class Options:
    runtimes: tuple[str, ...] = ("embedded", "kafka")
    rate: float = 50.0
    reports: int = 1000  # rate phase
    max_reports: int = 1000  # max phase (0: no max phase)
    clients: int = 16
    gallery_images: int = 8
    mix: tuple[float, float, float, float] = (0.6, 0.15, 0.15, 0.1)  # notice forward unknown gallery
    drain_seconds: float = 300.0  # per phase, after the last report went in
    # Reports through the whole pipeline before the measured phases, so what is measured is a
    # running deployment's steady state, not a cold start: the broker's JIT compiler was 40 %
    # of its CPU in a rate phase right after it started, and every process fills its caches.
    warmup_reports: int = 200
    brokers: str | None = None
    database_url: str | None = None
    partitions: int = 3
    own_services: str = "auto"  # auto: own Kafka/PostgreSQL when the given ones do not answer; yes; no
    kafka_port: int = 29392
    kafka_controller_port: int = 29393
    pg_port: int = 25632
    keep_logs: Path | None = None
    out: Callable[[str], None] = print


# ---------------------------------------------------------------- the synthetic world


def unique_jpeg(base: bytes, tag: str) -> bytes:
    """``base`` with a JPEG comment segment after SOI: the same pixels (so the same perceptual
    hashes), bytes of its own (so its own SHA-256). No two items share an image, as no two
    items of a real backlog mostly do; shared images would add "also seen" links."""
    data = tag.encode()
    return base[:2] + b"\xff\xfe" + (len(data) + 2).to_bytes(2, "big") + data + base[2:]


@dataclass
class Planned:
    url: str
    kind: str
    images: int


@dataclass
class Images:
    known_base: bytes
    unknown_base: bytes
    known_hashes: Any  # hashing.image hashes of known_base (perceptual ones reused)
    bank: list[bytes] = field(default_factory=list)  # unique known images, for the bank


def plan(w: Any, imgs: Images, n: int, opts: Options, phase: str, run: str) -> list[Planned]:
    """``n`` one-URL reports in the proportions of ``opts.mix``, served by the world's sites."""
    from tests.integration.scenario import DE_C, NL_A, NL_B

    out: list[Planned] = []
    counts = [0] * len(KINDS)
    for i in range(n):
        # Deterministic interleaving by largest deficit: the mix holds in every prefix.
        k = max(range(len(KINDS)), key=lambda j: opts.mix[j] * (i + 1) - counts[j])
        counts[k] += 1
        kind = KINDS[k]
        nl = NL_A if i % 2 == 0 else NL_B
        path = f"/{run}/{phase}/{i}"
        if kind in ("notice", "forward"):
            host = nl if kind == "notice" else DE_C
            body = unique_jpeg(imgs.known_base, f"{run}{phase}{i}")
            imgs.bank.append(body)
            w.sites[host].add(path + ".jpg", "image/jpeg", body)
            out.append(Planned(w.url(host, path + ".jpg"), kind, 1))
        elif kind == "unknown":
            body = unique_jpeg(imgs.unknown_base, f"{run}{phase}{i}")
            w.sites[nl].add(path + ".jpg", "image/jpeg", body)
            out.append(Planned(w.url(nl, path + ".jpg"), kind, 1))
        else:
            tags = []
            for j in range(opts.gallery_images):
                base = imgs.known_base if j == 0 else imgs.unknown_base
                body = unique_jpeg(base, f"{run}{phase}{i}g{j}")
                if j == 0:
                    imgs.bank.append(body)
                w.sites[nl].add(f"{path}/{j}.jpg", "image/jpeg", body)
                tags.append(f'<img src="{path}/{j}.jpg" alt="">')
            page = f"<!doctype html><html><body><h1>gallery</h1>{''.join(tags)}</body></html>"
            w.sites[nl].add(path + "/", "text/html; charset=utf-8", page.encode())
            out.append(Planned(w.url(nl, path + "/"), kind, opts.gallery_images))
    return out


def load_bank(sessions: Any, imgs: Images) -> None:
    """Every known image in the bank by its exact hashes (and the base's perceptual ones)."""
    import hashlib

    from hotline.storage.unit_of_work import SqlUnitOfWork

    h = imgs.known_hashes
    with sessions() as s:
        store = SqlUnitOfWork(s)
        for body in imgs.bank:
            store.bank.add(
                category="baseline",
                source="bench-pipeline",
                md5=hashlib.md5(body).hexdigest(),  # noqa: S324 - a bank hash type, not security
                sha1=hashlib.sha1(body).hexdigest(),  # noqa: S324
                sha256=hashlib.sha256(body).hexdigest(),
                pdq=h.pdq,
                phash=h.phash,
            )
        store.commit()


# ---------------------------------------------------------------- processes


def _group_children(leader: int) -> list[tuple[int, str]]:
    """(pid, the ``--stage`` it runs, else its pid) of the other processes in ``leader``'s group."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, IndexError, ValueError):
            pid = int(stat.parent.name)
            if pid == leader or int(stat.read_text().rsplit(")", 1)[1].split()[2]) != leader:
                continue
            argv = (stat.parent / "cmdline").read_bytes().decode(errors="replace").split("\0")
            found.append((pid, argv[argv.index("--stage") + 1] if "--stage" in argv else str(pid)))
    return found


_TICK = os.sysconf("SC_CLK_TCK")


def _cpu_in(stat: str) -> float:
    """utime + stime (all threads), in seconds, from the text of a ``/proc/PID/stat``."""
    fields = stat.rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / _TICK


def _machine_busy() -> tuple[float, float, float]:
    """(busy, stolen, total) CPU seconds of the whole machine so far (/proc/stat's first line).
    Stolen time (the hypervisor ran another guest on our virtual CPU) is counted apart: on this
    VM it was 4 % at rest and 17 % under the benchmark's load on 2026-12-03, and it is why runs
    of the same code on different days differ (issue 13, seventh round)."""
    v = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = v[3] + v[4]  # idle + iowait
    steal = v[7]
    return (sum(v[:8]) - idle - steal) / _TICK, steal / _TICK, sum(v[:8]) / _TICK


def _calibration_ms() -> float:
    """Milliseconds for a fixed piece of pure Python (10M additions), best of three: how fast
    this machine's cores are at the moment, to compare runs made on different days."""
    best = float("inf")
    for _ in range(3):
        t = time.perf_counter()
        sum(range(10_000_000))
        best = min(best, time.perf_counter() - t)
    return 1000 * best


class Procs:
    """The processes of one runtime, each in its own process group, logging to a file."""

    def __init__(self, env: dict[str, str], log_dir: Path, cwd: Path) -> None:
        self.env, self.log_dir, self.cwd = env, log_dir, cwd
        self.procs: dict[str, subprocess.Popen[bytes]] = {}

    def start(self, name: str, *args: str) -> None:
        log = open(self.log_dir / f"{name}.log", "wb")  # noqa: SIM115 - the child owns it
        try:
            self.procs[name] = subprocess.Popen(
                [sys.executable, "-c", _CHILD, *args],
                env={**os.environ, **self.env},
                cwd=self.cwd,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        finally:
            log.close()

    def check_alive(self) -> None:
        for name, p in self.procs.items():
            if p.poll() is not None:
                raise RuntimeError(f"{name} exited with {p.returncode}:\n{self.tail(name)}")

    def tail(self, name: str, n: int = 30) -> str:
        path = self.log_dir / f"{name}.log"
        lines = path.read_text(errors="replace").splitlines() if path.exists() else []
        return "\n".join(lines[-n:])

    def peak_rss_mb(self) -> dict[str, float]:
        """VmHWM (the process's peak resident set) of each live process, in MiB; a process's
        children in its group too (embedded ``hotline serve`` runs classify in one), named
        ``NAME/STAGE``."""
        out: dict[str, float] = {}
        for pid, label in self._named_pids():
            with contextlib.suppress(OSError):
                for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                    if line.startswith("VmHWM:"):
                        out[label] = int(line.split()[1]) / 1024
        return out

    def _named_pids(self) -> Iterator[tuple[int, str]]:
        """Each process the runtime started, and its children in its group (embedded
        ``hotline serve`` runs stages in them), as (pid, ``NAME`` or ``NAME/STAGE``)."""
        for name, p in self.procs.items():
            yield p.pid, name
            for pid, stage in _group_children(p.pid):
                yield pid, f"{name}/{stage}"

    def cpu_seconds(self) -> dict[str, float]:
        """CPU time (user + system, every thread) so far of each process of the runtime (named
        as in ``peak_rss_mb``), of PostgreSQL's processes and the Kafka broker (all of them on
        this machine: the benchmark is meant to run alone), and of this process (the load
        generator and the synthetic world)."""
        out: dict[str, float] = defaultdict(float)
        for pid, label in self._named_pids():
            with contextlib.suppress(OSError):
                out[label] += _cpu_in(Path(f"/proc/{pid}/stat").read_text())
        for stat in Path("/proc").glob("[0-9]*/stat"):
            with contextlib.suppress(OSError, IndexError, ValueError):
                text = stat.read_text()
                comm = text.split("(", 1)[1].rsplit(")", 1)[0]
                if comm == "postgres":
                    out["postgres"] += _cpu_in(text)
                elif comm == "java" and b"kafka" in (stat.parent / "cmdline").read_bytes():
                    out["kafka"] += _cpu_in(text)
        t = os.times()
        out["benchmark"] = t.user + t.system
        return dict(out)

    def stop_all(self, grace: float = 5.0) -> None:
        """TERM each process group, KILL what is left after ``grace`` (the run's data is thrown
        away: a faust worker's slow clean shutdown need not be waited for)."""
        for p in self.procs.values():
            if p.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(p.pid, signal.SIGTERM)
        deadline = time.monotonic() + grace
        for p in self.procs.values():
            try:
                p.wait(max(deadline - time.monotonic(), 0.1))
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(p.pid, signal.SIGKILL)
                p.wait(10)

    def work_times(self, since: float, until: float) -> dict[str, list[float]]:
        """Per stage, the processing time of each event it finished between ``since`` and
        ``until`` (``time.time()`` values), from the debug lines (Kafka only)."""
        out: dict[str, list[float]] = defaultdict(list)
        for path in self.log_dir.glob("*.log"):
            for m in _DONE.finditer(path.read_text(errors="replace")):
                at = datetime.strptime(m.group(1), "%Y-%m-%d %H:%M:%S,%f").timestamp()  # local time
                if since <= at <= until:
                    out[m.group(2)].append(float(m.group(3)))
        return out


# ---------------------------------------------------------------- load


@dataclass
class Sent:
    url: str
    at: float  # time.time() when sent
    answered: float = 0.0
    status: int = 0
    report_id: str | None = None


class Client:
    """``POST /api/v1/reports`` over one kept-alive connection per thread."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.local = threading.local()

    def post(self, url: str) -> Sent:
        sent = Sent(url, time.time())
        body = json.dumps({"urls": [url]})
        for attempt in (0, 1):
            conn = getattr(self.local, "conn", None)
            if conn is None:
                conn = self.local.conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
            try:
                conn.request("POST", "/api/v1/reports", body, {"Content-Type": "application/json"})
                resp = conn.getresponse()
                data = resp.read()
                sent.status = resp.status
                if resp.status == 202:
                    sent.report_id = json.loads(data)["report_id"]
                break
            except (OSError, http.client.HTTPException):
                conn.close()
                self.local.conn = None
                if attempt:
                    sent.status = -1
        sent.answered = time.time()
        return sent


def open_loop(client: Client, planned: Sequence[Planned], rate: float, deadline: float) -> list[Sent]:
    """Each report sent when it is due (``i / rate`` after the start), answered or not."""
    results: list[Sent | None] = [None] * len(planned)
    workers = min(64, max(8, int(rate)))

    def one(i: int) -> None:
        results[i] = client.post(planned[i].url)

    with ThreadPoolExecutor(workers, thread_name_prefix="open-loop") as pool:
        t0 = time.monotonic()
        for i in range(len(planned)):
            if time.monotonic() > deadline:
                break
            delay = t0 + i / rate - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            pool.submit(one, i)
    return [r for r in results if r is not None]


def closed_loop(client: Client, planned: Sequence[Planned], clients: int, deadline: float) -> list[Sent]:
    """``clients`` clients posting back to back until every report is in."""
    results: list[Sent] = []
    lock = threading.Lock()
    it = iter(planned)

    def worker() -> None:
        while time.monotonic() < deadline:
            with lock:
                p = next(it, None)
            if p is None:
                return
            r = client.post(p.url)
            with lock:
                results.append(r)

    threads = [threading.Thread(target=worker, name=f"client-{i}") for i in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return results


# ---------------------------------------------------------------- measuring


def _pct(values: Sequence[float], q: float) -> float | None:
    if not values:
        return None
    s = sorted(values)
    return s[min(len(s) - 1, max(0, round(q * (len(s) - 1))))]


def _ts(d: datetime) -> float:
    return d.timestamp()


@dataclass
class PhaseResult:
    runtime: str
    phase: str
    planned: int
    accepted: int = 0
    refused: int = 0
    settled: int = 0
    drained: bool = False
    accept_rate: float = 0.0
    api_p50: float | None = None
    api_p99: float | None = None
    items_per_s: float = 0.0
    images: int = 0
    images_per_s: float = 0.0
    notice: list[float] = field(default_factory=list)
    forward: list[float] = field(default_factory=list)
    awaiting: list[float] = field(default_factory=list)
    stage_time: dict[str, list[float]] = field(default_factory=dict)
    work: dict[str, list[float]] = field(default_factory=dict)  # Kafka: per-event processing time
    started: float = 0.0  # time.time() of the first request
    ended: float = 0.0  # time.time() when the phase had settled (or its deadline passed)
    notices_db: int = 0
    notices_mailed: int = 0
    forwards_db: int = 0
    forwards_received: int = 0
    expected_notices: int = 0
    expected_forwards: int = 0
    expected_awaiting: int = 0
    not_settled: list[str] = field(default_factory=list)
    rss: dict[str, float] = field(default_factory=dict)
    cpu: dict[str, float] = field(default_factory=dict)  # CPU seconds per process over the phase
    busy: float = 0.0  # the machine's CPU busy share over the phase, of all its cores
    stolen: float = 0.0  # ... and the share the hypervisor took for other guests

    @property
    def counts_ok(self) -> bool:
        return (
            self.drained
            and self.accepted == self.planned
            and self.notices_db == self.notices_mailed == self.expected_notices
            and self.forwards_db == self.forwards_received == self.expected_forwards
            and len(self.awaiting) == self.expected_awaiting
        )


def states_of(sessions: Any, report_ids: Sequence[str]) -> dict[str, str | None]:
    """Report id -> its (one) item's state."""
    from sqlalchemy import select

    from hotline.storage.models import Item, ReportUrl

    out: dict[str, str | None] = dict.fromkeys(report_ids)
    with sessions() as s:
        for chunk in range(0, len(report_ids), 500):
            ids = list(report_ids[chunk : chunk + 500])
            q = select(ReportUrl.report_id, Item.state).join(Item, Item.id == ReportUrl.item_id)
            for rid, state in s.execute(q.where(ReportUrl.report_id.in_(ids))):
                out[rid] = state
    return out


def wait_settled(
    sessions: Any, want: dict[str, str], deadline: float, check: Callable[[], None]
) -> tuple[bool, dict[str, str | None]]:
    states: dict[str, str | None] = {}
    while True:
        check()
        with contextlib.suppress(Exception):  # SQLite busy for a moment: just look again
            states = states_of(sessions, list(want))
            if all(states.get(r) == s for r, s in want.items()):
                return True, states
        if time.monotonic() > deadline:
            return False, states
        time.sleep(0.5)


def measure(
    res: PhaseResult,
    sessions: Any,
    sent: Sequence[Sent],
    kinds: dict[str, str],
    w: Any,
    mails_before: set[str],
    forwards_before: set[str],
) -> None:
    """Fill ``res`` from the database and the sinks."""
    from sqlalchemy import func, select

    from hotline.storage.models import Forward, ItemEvent, ItemImage, Notice, Report, ReportUrl

    ok = [s for s in sent if s.report_id]
    ids = [s.report_id for s in ok if s.report_id]
    submitted: dict[str, float] = {}
    item_of: dict[str, str] = {}
    notices: dict[str, tuple[str, float | None]] = {}
    forwards: dict[str, tuple[str, float | None]] = {}
    events: dict[str, list[tuple[float, int, str, str]]] = defaultdict(list)
    images: dict[str, int] = {}
    with sessions() as s:
        for chunk in range(0, len(ids), 500):
            part = ids[chunk : chunk + 500]
            for rid, at in s.execute(select(Report.id, Report.submitted_at).where(Report.id.in_(part))):
                submitted[rid] = _ts(at)
            for rid, iid in s.execute(
                select(ReportUrl.report_id, ReportUrl.item_id).where(ReportUrl.report_id.in_(part))
            ):
                if iid:
                    item_of[rid] = iid
        items = list(item_of.values())
        for chunk in range(0, len(items), 500):
            part = items[chunk : chunk + 500]
            for iid, nid, at in s.execute(
                select(Notice.item_id, Notice.id, Notice.sent_at).where(Notice.item_id.in_(part))
            ):
                notices[iid] = (nid, _ts(at) if at else None)
            for iid, fid, at in s.execute(
                select(Forward.item_id, Forward.id, Forward.sent_at).where(Forward.item_id.in_(part))
            ):
                forwards[iid] = (fid, _ts(at) if at else None)
            for iid, eid, stage, kind, at in s.execute(
                select(ItemEvent.item_id, ItemEvent.id, ItemEvent.stage, ItemEvent.kind, ItemEvent.at).where(
                    ItemEvent.item_id.in_(part)
                )
            ):
                events[iid].append((_ts(at), eid, stage, kind))
            for iid, n in s.execute(
                select(ItemImage.item_id, func.count()).where(ItemImage.item_id.in_(part)).group_by(ItemImage.item_id)
            ):
                images[iid] = int(n)

    final_at: list[float] = []
    stage_time: dict[str, list[float]] = defaultdict(list)
    for rid in ids:
        kind, iid, t0 = kinds[rid], item_of.get(rid), submitted.get(rid)
        if iid is None or t0 is None:
            continue
        end: float | None = None
        if EXPECTED[kind] == "notice_sent" and iid in notices and notices[iid][1] is not None:
            end = notices[iid][1]
            res.notice.append(end - t0)  # type: ignore[operator]
        elif kind == "forward" and iid in forwards and forwards[iid][1] is not None:
            end = forwards[iid][1]
            res.forward.append(end - t0)  # type: ignore[operator]
        elif kind == "unknown":
            moved = [e for e in events[iid] if e[3] == "awaiting_assessment"]
            if moved:
                end = min(moved)[0]
                res.awaiting.append(end - t0)
        if end is None:
            continue
        final_at.append(end)
        res.images += images.get(iid, 0)
        # The timeline up to the end, gaps charged to the stage that wrote the later event.
        per: dict[str, float] = defaultdict(float)
        prev = t0
        for at, _, stage, _kind in sorted(events[iid]):
            if at > end + 0.001:
                break
            per[stage] += max(0.0, at - prev)
            prev = at
        if end > prev:  # a sent_at recorded after the last state event (the notice row)
            per["notify" if EXPECTED[kind] == "notice_sent" else "escalate"] += end - prev
        for stage, t in per.items():
            stage_time[stage].append(t)
    res.stage_time = dict(stage_time)
    if final_at and submitted:
        first = min(submitted[r] for r in ids if r in submitted)
        span = max(final_at) - first
        res.items_per_s = len(final_at) / span if span > 0 else 0.0
        res.images_per_s = res.images / span if span > 0 else 0.0
    wanted_items = {item_of[r] for r in ids if r in item_of}
    res.notices_db = sum(1 for i in wanted_items if i in notices and notices[i][1] is not None)
    res.forwards_db = sum(1 for i in wanted_items if i in forwards and forwards[i][1] is not None)
    mailed = {m.notice_id for m in w.mail.snapshot()} - mails_before
    res.notices_mailed = len({notices[i][0] for i in wanted_items if i in notices} & mailed)
    got = {f.body.get("item_id") for f in w.partner.snapshot() if f.status in (201, 202)} - forwards_before
    res.forwards_received = len(wanted_items & got)  # type: ignore[arg-type]


# ---------------------------------------------------------------- one runtime


def run_runtime(runtime: str, opts: Options) -> list[PhaseResult]:
    """Start the runtime's processes in a fresh world, run the phases, always clean up."""
    from doubles.loopback import free_port
    from hashing.image import hash_image
    from hashing.synthetic import photo_like_jpeg
    from hotline.storage.engine import make_engine, make_sessionmaker, migrate
    from tests.integration import scenario

    say = opts.out
    tmp = Path(tempfile.mkdtemp(prefix=f"hotline-bench-{runtime}-"))
    log_dir = opts.keep_logs / runtime if opts.keep_logs else tmp / "logs"
    log_dir.mkdir(parents=True, exist_ok=True)
    results: list[PhaseResult] = []
    with contextlib.ExitStack() as stack:
        stack.callback(shutil.rmtree, tmp, True)
        seed = uuid.uuid4().int % 1_000_000 * 10
        known = photo_like_jpeg(320, 240, seed=seed + 1)
        imgs = Images(known, photo_like_jpeg(320, 240, seed=seed + 2), hash_image(known))
        w = stack.enter_context(scenario.world(tmp))
        run = uuid.uuid4().hex[:6]
        phases: list[tuple[str, list[Planned]]] = [("warm-up", plan(w, imgs, max(len(KINDS), opts.warmup_reports), Options(mix=(1, 1, 1, 1), gallery_images=opts.gallery_images), "w", run))]
        phases.append(("rate", plan(w, imgs, opts.reports, opts, "r", run)))
        if opts.max_reports:
            phases.append(("max", plan(w, imgs, opts.max_reports, opts, "m", run)))

        env = {
            **w.env(),
            "HOTLINE_REPORT_RATE_PER_MINUTE": "0",
            "HOTLINE_INDEX_DIR": str(tmp / "index"),
            "PYTHONPATH": str(ROOT),
        }
        if runtime == "embedded":
            db_url = f"sqlite:///{tmp / 'hotline.db'}"
        else:
            from hotline.runtime.kafka import create_topics

            brokers, admin_url = _services(opts, stack, tmp)
            db_url = stack.enter_context(_fresh_database(admin_url))
            prefix = f"bench{uuid.uuid4().hex[:8]}."
            create_topics(brokers, prefix, opts.partitions)
            stack.callback(_quietly, scenario.delete_topics, brokers, prefix)
            env |= {
                "HOTLINE_KAFKA_BROKERS": brokers,
                "HOTLINE_TOPIC_PREFIX": prefix,
                "HOTLINE_KAFKA_PARTITIONS": str(opts.partitions),
            }
        env["HOTLINE_DATABASE_URL"] = db_url
        migrate(db_url)
        engine = make_engine(db_url)
        stack.callback(engine.dispose)
        sessions = make_sessionmaker(engine)
        load_bank(sessions, imgs)
        say(f"{runtime}: bank holds {len(imgs.bank)} known images; starting processes (logs in {log_dir})")

        procs = Procs(env, log_dir, tmp)
        rss: dict[str, float] = {}

        def stop() -> None:
            rss.update(procs.peak_rss_mb())
            procs.stop_all()

        stack.callback(stop)
        port = free_port()
        if runtime == "embedded":
            procs.start("hotline serve", "serve", "--port", str(port))
        else:
            procs.start("web", "serve", "--stage", "web", "--port", str(port))
            for stage in KAFKA_STAGES:
                procs.start(stage, "serve", "--stage", stage)
        _wait_http(port, procs, time.monotonic() + 120)
        client = Client(port)
        for name, planned in phases:
            res = _phase(runtime, name, planned, client, opts, sessions, w, procs)
            if name != "warm-up":
                results.append(res)
            elif not res.drained:
                raise RuntimeError(f"{runtime}: warm-up did not settle: {res.not_settled}\n" + "\n".join(
                    f"--- {n}\n{procs.tail(n, 15)}" for n in procs.procs))
        stop()
        for r in results:
            r.rss = dict(rss)
            r.work = procs.work_times(r.started, r.ended)
    return results


def _phase(
    runtime: str,
    name: str,
    planned: list[Planned],
    client: Client,
    opts: Options,
    sessions: Any,
    w: Any,
    procs: Procs,
) -> PhaseResult:
    say = opts.out
    res = PhaseResult(runtime, name, len(planned))
    mails_before = {m.notice_id for m in w.mail.snapshot()}
    forwards_before = {f.body.get("item_id") for f in w.partner.snapshot()}
    budget = time.monotonic() + max(60.0, 3 * len(planned) / max(opts.rate, 1.0))
    say(f"{runtime}: phase {name}: {len(planned)} reports" + (f" at {opts.rate:g}/s" if name == "rate" else ""))
    cpu0, busy0 = procs.cpu_seconds(), _machine_busy()
    res.started = time.time()
    if name == "rate":
        sent = open_loop(client, planned, opts.rate, budget)
    else:
        sent = closed_loop(client, planned, opts.clients if name == "max" else 4, budget)
    ok = [s for s in sent if s.status == 202 and s.report_id]
    res.accepted = len(ok)
    res.refused = len(sent) - len(ok)
    if ok:
        span = max(s.answered for s in ok) - min(s.at for s in ok)
        res.accept_rate = len(ok) / span if span > 0 else 0.0
        lat = [s.answered - s.at for s in ok]
        res.api_p50, res.api_p99 = _pct(lat, 0.5), _pct(lat, 0.99)
    by_url = {p.url: p for p in planned}
    kinds = {s.report_id: by_url[s.url].kind for s in ok if s.report_id}
    res.expected_notices = sum(1 for k in kinds.values() if EXPECTED[k] == "notice_sent")
    res.expected_forwards = sum(1 for k in kinds.values() if k == "forward")
    res.expected_awaiting = sum(1 for k in kinds.values() if k == "unknown")
    want = {rid: EXPECTED[k] for rid, k in kinds.items()}
    deadline = time.monotonic() + (120.0 if name == "warm-up" else opts.drain_seconds)
    t = time.monotonic()
    res.drained, states = wait_settled(sessions, want, deadline, procs.check_alive)
    res.ended = time.time()
    cpu1, busy1 = procs.cpu_seconds(), _machine_busy()
    res.cpu = {k: v - cpu0.get(k, 0.0) for k, v in cpu1.items()}
    res.busy = (busy1[0] - busy0[0]) / max(busy1[2] - busy0[2], 1e-9)
    res.stolen = (busy1[1] - busy0[1]) / max(busy1[2] - busy0[2], 1e-9)
    say(f"{runtime}: phase {name}: {res.accepted} accepted, settled={res.drained} in {time.monotonic() - t:.1f}s after the last")
    res.not_settled = [f"{rid} {kinds[rid]}: {states.get(rid)}" for rid, s in want.items() if states.get(rid) != s][:10]
    res.settled = len(want) - len([1 for rid, s in want.items() if states.get(rid) != s])
    measure(res, sessions, ok, kinds, w, mails_before, forwards_before)  # type: ignore[arg-type]
    return res


def _wait_http(port: int, procs: Procs, deadline: float) -> None:
    while time.monotonic() < deadline:
        procs.check_alive()
        with contextlib.suppress(OSError, http.client.HTTPException):
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
            conn.request("GET", "/healthz")
            if conn.getresponse().status == 200:
                conn.close()
                return
        time.sleep(0.3)
    raise RuntimeError(f"the web process did not answer on port {port}")


def _answers(host_port: str) -> bool:
    import socket

    host, _, port = host_port.rpartition(":")
    try:
        with socket.create_connection((host or "127.0.0.1", int(port)), timeout=3):
            return True
    except (OSError, ValueError):
        return False


def _services(opts: Options, stack: contextlib.ExitStack, tmp: Path) -> tuple[str, str]:
    """The broker and the PostgreSQL admin URL to use: the given ones, or (``own_services``
    yes, or auto and the given one does not answer) a broker / cluster of the benchmark's own
    on ports of its own (``benchmarks.crash_harness.OwnKafka`` / ``OwnPostgres``), stopped and
    wiped at the end. The shared services are never started or stopped."""
    from sqlalchemy.engine import make_url

    from benchmarks.crash_harness import OwnKafka, OwnPostgres

    brokers, admin_url = opts.brokers or "", opts.database_url or ""
    own = opts.own_services
    if own == "yes" or (own == "auto" and not (brokers and _answers(brokers.split(",")[0]))):
        kafka = OwnKafka(opts.kafka_port, opts.kafka_controller_port, tmp / "kafka")
        opts.out(f"starting own Kafka on {kafka.brokers} (the given broker {brokers or '-'} does not answer)")
        stack.callback(_quietly, kafka.stop, True)
        kafka.start()
        brokers = kafka.brokers
    pg_answers = False
    if admin_url:
        u = make_url(admin_url)
        pg_answers = _answers(f"{u.host or '127.0.0.1'}:{u.port or 5432}")
    if own == "yes" or (own == "auto" and not pg_answers):
        pg = OwnPostgres(opts.pg_port)
        opts.out(f"starting own PostgreSQL on 127.0.0.1:{opts.pg_port}")
        stack.callback(_quietly, pg.stop, True)
        pg.start()
        admin_url = pg.url
    if not brokers or not admin_url:
        raise SystemExit("kafka runtime: no broker or database (--brokers, --database-url, --own-services)")
    return brokers, admin_url


@contextlib.contextmanager
def _fresh_database(admin_url: str) -> Iterator[str]:
    from benchmarks.crash_harness import fresh_database

    with fresh_database(admin_url) as url:
        yield url


def _quietly(fn: Callable[..., Any], *args: Any) -> None:
    with contextlib.suppress(Exception):
        fn(*args)


# ---------------------------------------------------------------- the table


def _ms(v: float | None) -> str:
    if v is None:
        return "-"
    return f"{v * 1000:.0f} ms" if v < 10 else f"{v:.1f} s"


def _pp(values: Sequence[float]) -> str:
    return f"{_ms(_pct(values, 0.5))} / {_ms(_pct(values, 0.99))}" if values else "-"


def _stages(r: PhaseResult) -> str:
    """Each stage's share of the summed item latency and its p50 per item; on Kafka also the
    p50 of the stage's own processing time per event (the rest of its share is waiting)."""
    total = sum(sum(v) for v in r.stage_time.values()) or 1.0
    parts = sorted(r.stage_time.items(), key=lambda kv: -sum(kv[1]))
    out = []
    for k, v in parts:
        work = f", work {_ms(_pct(r.work[k], 0.5))}" if r.work.get(k) else ""
        out.append(f"{k} {100 * sum(v) / total:.0f}% (p50 {_ms(statistics.median(v))}{work})")
    return ", ".join(out)


def table(results: Sequence[PhaseResult]) -> str:
    head = [
        "runtime", "phase", "reports", "accepted/s", "API p50 / p99", "items/s", "images/s",
        "report→notice p50 / p99", "report→forward p50 / p99", "report→awaiting p50 / p99",
        "where the time goes (share of item latency, p50)", "peak RSS (MiB)", "counts",
    ]
    rows = []
    for r in results:
        rows.append([
            r.runtime, r.phase, f"{r.accepted}/{r.planned}", f"{r.accept_rate:.1f}",
            f"{_ms(r.api_p50)} / {_ms(r.api_p99)}", f"{r.items_per_s:.1f}", f"{r.images_per_s:.1f}",
            _pp(r.notice), _pp(r.forward), _pp(r.awaiting), _stages(r),
            ", ".join(f"{k} {v:.0f}" for k, v in r.rss.items()),
            "ok" if r.counts_ok else "MISMATCH",
        ])
    rows.append([
        "SCART cron (issue 13: 15 records/min per job)", "reference", "-", f"{SCART_PER_SECOND:.2f}", "-",
        f"{SCART_PER_SECOND:.2f}", "-", "-", "-", "-", "-", "-", "-",
    ])
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def details(results: Sequence[PhaseResult]) -> str:
    out = []
    for r in results:
        out.append(
            f"{r.runtime}/{r.phase}: accepted {r.accepted}, refused {r.refused}, settled {r.settled}, "
            f"notices {r.notices_db} in db / {r.notices_mailed} at the SMTP sink / {r.expected_notices} expected, "
            f"forwards {r.forwards_db} in db / {r.forwards_received} at the partner / {r.expected_forwards} expected, "
            f"awaiting {len(r.awaiting)} / {r.expected_awaiting}, images hashed {r.images}"
        )
        rows = [(k, "per item", v) for k, v in r.stage_time.items()]
        rows += [(k, "work/event", v) for k, v in r.work.items()]
        for k, what, v in sorted(rows):
            out.append(f"    {k:<10} {what:<10} n={len(v):<6} p50 {_ms(_pct(v, 0.5)):>8}  "
                       f"p99 {_ms(_pct(v, 0.99)):>8}  sum {sum(v):8.1f} s")
        if r.cpu and r.settled:
            per = sorted(r.cpu.items(), key=lambda kv: -kv[1])
            out.append(f"    CPU per settled item {1000 * sum(r.cpu.values()) / r.settled:.1f} ms "
                       f"(machine busy {100 * r.busy:.0f}% of {os.cpu_count()} cores over the phase, "
                       f"{100 * r.stolen:.0f}% stolen by the hypervisor): "
                       + ", ".join(f"{k} {1000 * v / r.settled:.1f}" for k, v in per))
        for line in r.not_settled:
            out.append(f"    ! not settled: {line}")
    return "\n".join(out)


def machine() -> str:
    model = "?"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    mem = ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal"):
                mem = f", {int(line.split()[1]) // 1024} MiB RAM"
    return (f"{os.cpu_count()} CPUs ({model}){mem}, Linux {platform.release()}, "
            f"Python {platform.python_version()}")


def _load() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def run(opts: Options) -> list[PhaseResult]:
    results: list[PhaseResult] = []
    for runtime in opts.runtimes:
        results += run_runtime(runtime, opts)
    return results


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    ap.add_argument("--runtime", choices=("embedded", "kafka", "both"), default="both")
    ap.add_argument("--rate", type=float, default=50.0, help="reports/s in the open-loop phase")
    ap.add_argument("--reports", type=int, default=None, help="reports in the rate phase (default 1000)")
    ap.add_argument("--max-reports", type=int, default=None, help="reports in the max phase (0: none; default 1000)")
    ap.add_argument("--clients", type=int, default=16, help="concurrent clients in the max phase")
    ap.add_argument("--gallery-images", type=int, default=8)
    ap.add_argument("--drain-seconds", type=float, default=None, help="per phase, after the last report")
    ap.add_argument("--warmup", type=int, default=None, help="reports through the pipeline before measuring (default 200)")
    ap.add_argument("--quick", action="store_true", help="small counts: done in under ~2 minutes")
    ap.add_argument("--brokers", default=os.environ.get("HOTLINE_TEST_KAFKA_BROKERS", "127.0.0.1:9092"))
    ap.add_argument("--database-url", default=os.environ.get(
        "HOTLINE_TEST_DATABASE_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/hotline_test"))
    ap.add_argument("--own-services", choices=("auto", "yes", "no"), default="auto",
                    help="own Kafka and PostgreSQL on ports 29392/25632 (auto: when the given ones do not answer)")
    ap.add_argument("--keep-logs", type=Path, default=None, help="keep the process logs here")
    a = ap.parse_args(argv)
    opts = Options(
        runtimes=("embedded", "kafka") if a.runtime == "both" else (a.runtime,),
        rate=a.rate,
        reports=a.reports if a.reports is not None else (100 if a.quick else 1000),
        max_reports=a.max_reports if a.max_reports is not None else (100 if a.quick else 1000),
        clients=a.clients,
        gallery_images=a.gallery_images,
        drain_seconds=a.drain_seconds if a.drain_seconds is not None else (60.0 if a.quick else 300.0),
        warmup_reports=a.warmup if a.warmup is not None else (20 if a.quick else 200),
        brokers=a.brokers,
        database_url=a.database_url,
        own_services=a.own_services,
        keep_logs=a.keep_logs,
        out=lambda s: print(f"[{time.strftime('%H:%M:%S')}] {s}", flush=True),
    )
    print(f"machine: {machine()}; load average at start {_load()}; "
          f"calibration {_calibration_ms():.0f} ms (10M additions in pure Python, best of 3)", flush=True)
    results = run(opts)
    print(f"load average at end {_load()}")
    print(details(results))
    print()
    print(table(results))
    return 0 if all(r.counts_ok for r in results) else 1


if __name__ == "__main__":
    raise SystemExit(main())
