"""Benchmark of the matching indexes on one CPU core, with recall checked against brute force.

    python benchmarks/bench_index.py [--n 10000000] [--quick]

Setup (the standard one for Hamming-space search; real PDQ hashes are not
uniform, which makes buckets less even but changes no exactness argument):

* bank: ``n`` uniformly random 256-bit PDQ codes (and, separately, ``n``
  random 64-bit pHash codes), ids ``0..n-1``;
* near queries: bank entries with ``k`` random bits flipped, ``k`` uniform in
  ``0..radius``: every one must be found;
* random queries: uniform random codes (almost never match);
* radius: each type's ``default_radius`` from ``hashing.signals`` (inclusive;
  PDQ 31, pHash 8), the radius the running system matches with; the index is
  built as ``BankMatcher`` builds it (``HammingIndex(bits)``).

Recall is measured against exact brute force for every query: faiss
``IndexBinaryFlat.range_search(radius + 1)`` (faiss counts ``d < radius``),
itself cross-checked against the numpy reference ``brute_force`` on the
queries the numpy baseline times. The process is pinned to core 0 and faiss
to one thread, so every queries/s figure is per core.

faiss ``IndexBinaryMultiHash`` (the library's own exact multi-index hashing)
is timed on a smaller bank (``--faiss-n``, default 1M): it builds slowly and
uses several GB at 10M.
"""

from __future__ import annotations

import argparse
import os
import platform
import resource
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import TypeVar

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import faiss  # noqa: E402

from hashing.index import ExactIndex, HammingIndex, brute_force  # noqa: E402
from hashing.signals import SIGNAL_TYPES  # noqa: E402

PDQ, PHASH = SIGNAL_TYPES["pdq"], SIGNAL_TYPES["phash"]

Row = dict[str, str]
T = TypeVar("T")


def _pin(cpu: int) -> None:
    """One core, one thread: the target is queries/s per core."""
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {cpu})
    faiss.omp_set_num_threads(1)


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _random_codes(rng: np.random.Generator, n: int, nbytes: int) -> np.ndarray:
    return np.frombuffer(rng.bytes(n * nbytes), dtype=np.uint8).reshape(n, nbytes).copy()


def _near_queries(
    rng: np.random.Generator, codes: np.ndarray, count: int, max_flip: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(queries, source rows, flipped bits): bank rows with 0..max_flip random bits flipped."""
    bits = codes.shape[1] * 8
    rows = rng.integers(0, len(codes), size=count)
    ks = rng.integers(0, max_flip + 1, size=count)
    unpacked = np.unpackbits(codes[rows], axis=1)
    for i, k in enumerate(ks):
        unpacked[i, rng.choice(bits, size=int(k), replace=False)] ^= 1
    return np.packbits(unpacked, axis=1), rows, ks


def _rss_mb() -> float:
    """Resident memory of this process (Linux), to size indexes that live in C++ structures."""
    try:
        pages = int(Path("/proc/self/statm").read_text().split()[1])
    except OSError:
        return float("nan")
    return pages * os.sysconf("SC_PAGE_SIZE") / 2**20


class _Time(float):
    """Wall-clock seconds (the float value) plus the process CPU seconds of the same call.

    The machine is shared: under contention the wall rate drops while the CPU
    rate (work done per second of our core) stays put, so both are reported.
    """

    cpu: float

    def __new__(cls, wall: float, cpu: float) -> _Time:
        obj = super().__new__(cls, wall)
        obj.cpu = cpu
        return obj


def _timed(fn: Callable[[], T]) -> tuple[_Time, T]:
    w, c = time.perf_counter(), time.process_time()
    out = fn()
    return _Time(time.perf_counter() - w, time.process_time() - c), out


def _qps(count: int, t: float, digits: int = 0) -> str:
    """'wall rate (CPU rate)' for the results table."""
    cpu = getattr(t, "cpu", t) or float("nan")
    return f"{count / t:,.{digits}f} (CPU {count / cpu:,.{digits}f})"


def _faiss_truth(flat: faiss.IndexBinaryFlat, queries: np.ndarray, radius: int) -> list[set]:
    lims, dist, labels = flat.range_search(queries, radius + 1)  # faiss: d < radius
    return [
        set(
            zip(
                labels[lims[i] : lims[i + 1]].tolist(),
                dist[lims[i] : lims[i + 1]].tolist(),
                strict=True,
            )
        )
        for i in range(len(queries))
    ]


def _recall(got: list[list[tuple[int, int]]], truth: list[set]) -> tuple[float, int, bool]:
    """(recall, true pairs, no false positives)."""
    total = sum(len(t) for t in truth)
    found = sum(len(t & set(g)) for g, t in zip(got, truth, strict=True))
    exact = all(set(g) <= t for g, t in zip(got, truth, strict=True))
    return (found / total if total else 1.0), total, exact


def _build_and_save(
    bits: int, ids: np.ndarray, codes: np.ndarray, path: Path
) -> tuple[float, float]:
    """Build from scratch (tuned as ``BankMatcher`` tunes it) and save; the built index is freed
    on return (only the loaded one is queried)."""
    index = HammingIndex(bits)
    t_build, _ = _timed(lambda: index.add(ids, codes))
    t_save, _ = _timed(lambda: index.save(path))
    return t_build, t_save


def bench_hamming(
    name: str,
    bits: int,
    radius: int,
    n: int,
    n_queries: int,
    n_brute: int,
    faiss_n: int,
    rng: np.random.Generator,
    workdir: Path,
) -> list[Row]:
    rows: list[Row] = []
    nbytes = bits // 8
    print(f"[{name}] generating {n:,} random {bits}-bit codes", file=sys.stderr)
    codes = _random_codes(rng, n, nbytes)
    ids = np.arange(n, dtype=np.int64)
    near, src, ks = _near_queries(rng, codes, n_queries, radius)
    rand = _random_codes(rng, n_queries // 2, nbytes)
    queries = np.concatenate([near, rand])

    print(f"[{name}] exact truth (faiss IndexBinaryFlat)", file=sys.stderr)
    flat = faiss.IndexBinaryFlat(bits)
    flat.add(codes)
    t_flat, truth = _timed(lambda: _faiss_truth(flat, queries, radius))
    assert all((int(s), int(k)) in t for s, k, t in zip(src, ks, truth[: len(src)], strict=True))

    # Baseline: the numpy reference, on a few queries (a full scan each).
    sample = queries[:: max(1, len(queries) // n_brute)][:n_brute]
    t_np, res_np = _timed(lambda: [brute_force(codes, ids, q, radius) for q in sample])
    truth_sample = _faiss_truth(flat, sample, radius)
    np_recall, _, np_exact = _recall(res_np, truth_sample)
    assert np_recall == 1.0 and np_exact, "numpy brute force disagrees with faiss"
    rows.append(
        {
            "hash": name,
            "bank": f"{n:,}",
            "method": f"brute force, numpy (XOR + bitwise_count), {len(sample)} queries",
            "build": "–",
            "load": "–",
            "qps": _qps(len(sample), t_np, 1),
            "recall": "100 % (reference)",
        }
    )
    rows.append(
        {
            "hash": name,
            "bank": f"{n:,}",
            "method": "brute force, faiss IndexBinaryFlat (compiled popcount)",
            "build": "–",
            "load": "–",
            "qps": _qps(len(queries), t_flat),
            "recall": "100 % (truth for the rows below)",
        }
    )
    del flat

    print(f"[{name}] HammingIndex build", file=sys.stderr)
    path = workdir / f"{name}.idx"
    t_build, t_save = _build_and_save(bits, ids, codes, path)
    size_mb = sum(f.stat().st_size for f in path.iterdir()) / 2**20
    t_mmap, _ = _timed(lambda: HammingIndex.load(path, mmap=True))
    t_load, loaded = _timed(lambda: HammingIndex.load(path))
    assert isinstance(loaded, HammingIndex)
    index: HammingIndex = loaded

    print(f"[{name}] HammingIndex queries", file=sys.stderr)
    index.query_batch(queries[:50], radius)  # warm-up (probe plans, page cache)
    t_batch, got = _timed(lambda: index.query_batch(queries, radius))
    t_near, _ = _timed(lambda: index.query_batch(near, radius))
    t_rand, _ = _timed(lambda: index.query_batch(rand, radius))
    single = queries[: min(1000, len(queries))]
    t_single, got_single = _timed(lambda: [index.query(q, radius) for q in single])
    recall, total, exact = _recall(got, truth)
    assert got_single == got[: len(single)]
    planted = all((int(s), int(k)) in g for s, k, g in zip(src, ks, got[: len(src)], strict=True))
    label = "100 %" if recall == 1.0 and exact else f"{recall:.4%} (exact={exact})"
    rows.append(
        {
            "hash": name,
            "bank": f"{n:,}",
            "method": (
                f"HammingIndex (MIH, m={index.num_substrings}), batch "
                f"[near {len(near) / t_near:,.0f} q/s, random {len(rand) / t_rand:,.0f} q/s]"
            ),
            "build": f"{t_build:.1f} s (save {t_save:.1f} s, {size_mb:,.0f} MB)",
            "load": f"{t_load:.1f} s (mmap {t_mmap:.3f} s)",
            "qps": _qps(len(queries), t_batch),
            "recall": f"{label} of {total:,} pairs; planted {'all' if planted else 'MISSED'}",
        }
    )
    rows.append(
        {
            "hash": name,
            "bank": f"{n:,}",
            "method": "HammingIndex, one `query()` call per hash",
            "build": "",
            "load": "",
            "qps": _qps(len(single), t_single),
            "recall": "same results as batch",
        }
    )
    shutil.rmtree(path, ignore_errors=True)

    if faiss_n and bits == 256:
        fn = min(n, faiss_n)
        print(f"[{name}] faiss IndexBinaryMultiHash at {fn:,}", file=sys.stderr)
        sub = codes[:fn]
        fq, fsrc, fks = _near_queries(rng, sub, min(n_queries, 500), radius)
        flat = faiss.IndexBinaryFlat(bits)
        flat.add(sub)
        ftruth = _faiss_truth(flat, fq, radius)
        del flat
        for nhash, b, nflip in ((8, 32, 3), (16, 16, 1)):
            assert nhash * (nflip + 1) > radius  # pigeonhole: exact
            mh = faiss.IndexBinaryMultiHash(bits, nhash, b)
            mh.nflip = nflip
            rss0 = _rss_mb()
            t_b, _ = _timed(partial(mh.add, sub))
            rss = _rss_mb() - rss0
            # Only the first variant's RSS growth is meaningful (freed memory is reused).
            mem = f", RSS +{rss:,.0f} MB" if nhash == 8 else ""
            fpath = str(workdir / "faiss_mh.index")
            t_fs, _ = _timed(partial(faiss.write_index_binary, mh, fpath))
            t_fl, _ = _timed(partial(faiss.read_index_binary, fpath))
            os.unlink(fpath)
            t_q, _ = _timed(partial(mh.range_search, fq, radius + 1))
            lims, dist, labels = mh.range_search(fq, radius + 1)
            fgot = [
                list(
                    zip(
                        labels[lims[i] : lims[i + 1]].tolist(),
                        dist[lims[i] : lims[i + 1]].tolist(),
                        strict=True,
                    )
                )
                for i in range(len(fq))
            ]
            r, tot, ex = _recall(fgot, ftruth)
            mh.reset()  # free the maps before the next variant
            rows.append(
                {
                    "hash": name,
                    "bank": f"{fn:,}",
                    "method": f"faiss IndexBinaryMultiHash nhash={nhash} b={b} nflip={nflip}, near queries",
                    "build": f"{t_b:.1f} s (save {t_fs:.1f} s{mem})",
                    "load": f"{t_fl:.1f} s",
                    "qps": _qps(len(fq), t_q),
                    "recall": "100 %" if r == 1.0 and ex else f"{r:.4%}",
                }
            )
    return rows


def bench_exact(n: int, n_lookup: int, rng: np.random.Generator, workdir: Path) -> list[Row]:
    print(f"[sha256] ExactIndex at {n:,}", file=sys.stderr)
    keys = _random_codes(rng, n, 32)
    built = ExactIndex(32)
    t_build, _ = _timed(partial(built.add, np.arange(n), keys))
    path = workdir / "sha256.idx"
    built.save(path)
    built = ExactIndex(32)  # free the built copy; only the loaded one is queried
    t_load, index = _timed(partial(ExactIndex.load, path))
    hits = keys[rng.integers(0, n, size=n_lookup // 2)]
    misses = _random_codes(rng, n_lookup - len(hits), 32)
    batch = [bytes(k) for k in np.concatenate([hits, misses])]
    t_q, got = _timed(partial(index.lookup_batch, batch))
    assert all(len(g) == 1 for g in got[: len(hits)]) and not any(got[len(hits) :])
    shutil.rmtree(path, ignore_errors=True)
    return [
        {
            "hash": "SHA-256",
            "bank": f"{n:,}",
            "method": f"ExactIndex.lookup_batch ({n_lookup:,} keys, half known)",
            "build": f"{t_build:.1f} s",
            "load": f"{t_load:.1f} s",
            "qps": _qps(n_lookup, t_q),
            "recall": "100 %",
        }
    ]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--n", type=int, default=10_000_000, help="bank size")
    ap.add_argument("--quick", action="store_true", help="200k bank, fewer queries (smoke test)")
    ap.add_argument(
        "--queries", type=int, default=2000, help="near queries (plus half as many random)"
    )
    ap.add_argument("--brute", type=int, default=10, help="queries timed with numpy brute force")
    ap.add_argument(
        "--faiss-n", type=int, default=1_000_000, help="bank size for faiss MultiHash (0: skip)"
    )
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--cpu", type=int, default=0, help="core to pin to")
    ap.add_argument("--skip-phash", action="store_true")
    args = ap.parse_args(argv)
    if args.quick:
        args.n, args.queries, args.brute, args.faiss_n = 200_000, 400, 5, 200_000

    _pin(args.cpu)
    rng = np.random.default_rng(args.seed)
    rows: list[Row] = []
    with tempfile.TemporaryDirectory(prefix="bench_index_") as tmp:
        work = Path(tmp)
        r = PDQ.default_radius
        rows += bench_hamming(
            f"PDQ r≤{r}", PDQ.bits, r, args.n, args.queries, args.brute, args.faiss_n, rng, work
        )
        if not args.skip_phash:
            r = PHASH.default_radius
            rows += bench_hamming(
                f"pHash r≤{r}", PHASH.bits, r, args.n, args.queries, args.brute, 0, rng, work
            )
        rows += bench_exact(args.n, 1_000_000 if not args.quick else 100_000, rng, work)

    load1, load5, _ = os.getloadavg()
    print(
        f"\nLoad average at the end: {load1:.2f} (1 min), {load5:.2f} (5 min); "
        f"peak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20:.1f} GB."
        f"\nCPU: {_cpu_model()}, {os.cpu_count()} cores (pinned to 1); "
        f"Python {platform.python_version()}, numpy {np.__version__}, faiss {faiss.__version__}\n"
    )
    head = [
        "hash",
        "bank size",
        "method",
        "build",
        "load",
        "queries/s, wall (CPU time), 1 core",
        "recall vs brute force",
    ]
    keys = ["hash", "bank", "method", "build", "load", "qps", "recall"]
    print("| " + " | ".join(head) + " |")
    print("|" + "|".join("---" for _ in head) + "|")
    for r in rows:
        print("| " + " | ".join(r[k] for k in keys) + " |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
