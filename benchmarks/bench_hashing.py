"""Throughput and drift of image hashing: naive pipeline vs decode floor vs hash_image.

    python benchmarks/bench_hashing.py [--quick] [--cpu N]

Prints markdown tables (paste into docs/benchmarks-hashing.md):

* per image size, ms/image and images/s on ONE core for
  - the naive pipeline (``hash_image_reference``: full decode,
    ``pdqhash.compute``, ``imagehash.phash``, hashlib),
  - a full-resolution RGB decode (what the naive pipeline starts with),
  - the bare reduced JPEG decode ``hash_image`` does (``Image.draft`` to
    luma at the same scale): the floor for any hashing that decodes,
  - that floor plus MD5/SHA-1/SHA-256 of the bytes (the unavoidable work),
  - ``hash_image`` (all five hashes);
* drift of the fast PDQ and pHash from the reference ones, in bits.

Pictures are synthetic photo-like JPEGs (``hashing.synthetic``, quality 85),
generated in memory; nothing is read from or written to disk. Timings are the
the best of several interleaved rounds, to keep other processes on a shared
machine out of the numbers as far as possible.
"""

from __future__ import annotations

import os

# One core, one thread: set before numpy is imported so BLAS honours it.
for _variable in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[_variable] = "1"

import argparse  # noqa: E402
import hashlib  # noqa: E402
import io  # noqa: E402
import platform  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from collections.abc import Callable, Sequence  # noqa: E402
from concurrent.futures import ThreadPoolExecutor  # noqa: E402
from importlib import metadata  # noqa: E402
from pathlib import Path  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
from PIL import Image, features  # noqa: E402

from hashing.image import hash_image, hash_image_reference, jpeg_draft_scale  # noqa: E402
from hashing.perceptual import clear_weight_caches  # noqa: E402
from hashing.signals import SIGNAL_TYPES  # noqa: E402
from hashing.synthetic import photo_like_jpeg  # noqa: E402

SIZES = ((1024, 768), (3000, 2000))


def machine_description() -> str:
    model = "unknown"
    try:
        lscpu = subprocess.run(["lscpu"], capture_output=True, text=True, check=False).stdout
        for line in lscpu.splitlines():
            if line.startswith("Model name:"):
                model = line.split(":", 1)[1].strip()
    except OSError:
        pass
    versions = ", ".join(
        f"{name} {metadata.version(name)}" for name in ("Pillow", "ImageHash", "pdqhash", "numpy")
    )
    return (
        f"CPU: {model}, {os.cpu_count()} cores (measured on one, pinned); "
        f"Python {platform.python_version()}; {versions}; "
        f"libjpeg-turbo {features.version('libjpeg_turbo')}"
    )


def throughputs(
    pipelines: Sequence[tuple[str, Callable[[bytes], object]]],
    images: Sequence[bytes],
    rounds: int,
    seconds: float,
) -> dict[str, float]:
    """Best seconds per image of each pipeline over interleaved rounds.

    Every round runs each pipeline for at least ``seconds``; interleaving and
    keeping the best round keep bursts of other work on a shared machine from
    favouring one pipeline over another.
    """
    for _, work in pipelines:
        work(images[0])  # warm caches (weight matrices, plugin imports)
    best = {name: float("inf") for name, _ in pipelines}
    for _ in range(rounds):
        for name, work in pipelines:
            done = 0
            started = time.perf_counter()
            while True:
                for data in images:
                    work(data)
                done += len(images)
                elapsed = time.perf_counter() - started
                if elapsed >= seconds:
                    break
            best[name] = min(best[name], elapsed / done)
    return best


def full_decode(data: bytes) -> object:
    with Image.open(io.BytesIO(data)) as image:
        image.load()
        return image.size


def draft_decode(data: bytes) -> object:
    """Exactly the decode hash_image does for a JPEG: luma only, DCT-domain scaling."""
    with Image.open(io.BytesIO(data)) as image:
        width, height = image.size
        scale = jpeg_draft_scale(width, height)
        image.draft("L", (width // scale, height // scale))
        image.load()
        return np.asarray(image)


def draft_decode_and_crypto(data: bytes) -> object:
    hashlib.md5(data, usedforsecurity=False).digest()
    hashlib.sha1(data, usedforsecurity=False).digest()
    hashlib.sha256(data).digest()
    return draft_decode(data)


def all_cores_rate(images: Sequence[bytes], seconds: float) -> float:
    """Images/s of hash_image on a pool with one thread per core (not pinned).

    Pillow's decoder, hashlib and BLAS release the GIL, so threads scale.
    """
    cores = sorted(os.sched_getaffinity(0) | set(range(os.cpu_count() or 1)))

    def unpin() -> None:
        os.sched_setaffinity(0, cores)  # on Linux this pins the calling thread only

    with ThreadPoolExecutor(max_workers=len(cores), initializer=unpin) as pool:
        list(pool.map(hash_image, images))
        done, started = 0, time.perf_counter()
        while time.perf_counter() - started < seconds:
            list(pool.map(hash_image, list(images) * len(cores)))
            done += len(images) * len(cores)
        return done / (time.perf_counter() - started)


def hash_image_cold(data: bytes) -> object:
    """hash_image as if every picture had a size never seen before."""
    clear_weight_caches()
    return hash_image(data)


def drift(images: Sequence[bytes]) -> dict[str, list[int]]:
    pdq, phash, quality_disagreements = [], [], 0
    for data in images:
        fast, reference = hash_image(data), hash_image_reference(data)
        pdq.append(SIGNAL_TYPES["pdq"].distance(fast.pdq or "", reference.pdq or ""))
        phash.append(SIGNAL_TYPES["phash"].distance(fast.phash or "", reference.phash or ""))
        usable = SIGNAL_TYPES["pdq"].usable
        quality_disagreements += usable(fast.pdq_quality) != usable(reference.pdq_quality)
    return {"pdq": pdq, "phash": phash, "quality": [quality_disagreements]}


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="small run, under ~30 s")
    parser.add_argument("--cpu", type=int, default=0, help="core to pin to (default 0)")
    args = parser.parse_args(argv)
    os.sched_setaffinity(0, {args.cpu})

    counts = (
        {(1024, 768): 6, (3000, 2000): 2} if args.quick else {(1024, 768): 40, (3000, 2000): 12}
    )
    rounds, seconds = (3, 0.3) if args.quick else (7, 0.6)
    print(f"_{machine_description()}_\n")
    load_before = os.getloadavg()[0]
    print(
        f"Synthetic photo-like JPEGs, quality 85, 4:2:0; {'quick' if args.quick else 'full'} run.\n"
    )

    rows: list[tuple[str, str, float, float, float | None]] = []
    drifts = []
    for width, height in SIZES:
        started = time.perf_counter()
        images = [
            photo_like_jpeg(width, height, seed=seed) for seed in range(counts[(width, height)])
        ]
        generated = time.perf_counter() - started
        kb = np.mean([len(data) for data in images]) / 1000
        scale = jpeg_draft_scale(width, height)
        label = f"{width}×{height} ({kb:.0f} KB avg, {len(images)} images)"
        timings = [
            ("naive: full decode + pdqhash + imagehash + hashlib", hash_image_reference),
            ("full-resolution decode only", full_decode),
            (f"floor: reduced luma decode (1/{scale} scale)", draft_decode),
            ("floor + MD5/SHA-1/SHA-256", draft_decode_and_crypto),
            ("**hash_image** (all five hashes)", hash_image),
            ("hash_image, every picture a new size (weight caches cleared)", hash_image_cold),
        ]
        measured = throughputs(timings, images, rounds, seconds)
        naive = measured[timings[0][0]]
        for name, _ in timings:
            per_image = measured[name]
            rows.append((label, name, per_image * 1000, 1 / per_image, naive / per_image))
        parallel = all_cores_rate(images, seconds * 3)
        cores = os.cpu_count()
        rows.append(
            (
                label,
                f"hash_image, {cores} threads on {cores} cores",
                1000 / parallel,
                parallel,
                None,
            )
        )
        drifts.append((label, drift(images)))
        print(f"<!-- generated {len(images)} images in {generated:.1f} s -->", file=sys.stderr)

    print("| image | pipeline | ms/image | images/s | × naive |")
    print("|---|---|---:|---:|---:|")
    for label, name, ms, rate, speedup in rows:
        times = f"{speedup:.1f}" if speedup else "–"
        ms_text = f"{ms:.2f}" if speedup else f"({ms:.2f} wall)"
        print(f"| {label} | {name} | {ms_text} | {rate:.0f} | {times} |")

    print(
        f"\nBest of {rounds} interleaved rounds; 1-minute load average "
        f"{load_before:.2f} before, {os.getloadavg()[0]:.2f} after (2 cores, shared)."
    )
    print("\nDrift of the fast hashes from the reference (bits; PDQ of 256, pHash of 64):\n")
    print(
        "| image | PDQ mean | PDQ p95 | PDQ max | pHash mean | pHash p95 | pHash max | quality≥50 disagreements |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for label, result in drifts:
        pdq, phash = np.array(result["pdq"]), np.array(result["phash"])
        print(
            f"| {label} | {pdq.mean():.2f} | {np.percentile(pdq, 95):.0f} | {pdq.max()} "
            f"| {phash.mean():.2f} | {np.percentile(phash, 95):.0f} | {phash.max()} "
            f"| {result['quality'][0]} |"
        )


if __name__ == "__main__":
    main()
