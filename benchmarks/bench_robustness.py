"""Do near-duplicates still match, and do unrelated pictures stay apart?

    python benchmarks/bench_robustness.py [--quick] [--count N]

For N synthetic photo-like base pictures (``hashing.synthetic``, JPEG q85)
and the edits re-uploaded copies typically carry (resize to 50 %, re-encode
at JPEG quality 30, a ~5 % crop, a 3° rotation, a text watermark,
greyscale), it hashes the edited copy with ``hash_image`` (the fast path)
and compares it with ``hash_image`` of the original:

* recall = share of edited copies within the radius (PDQ 31 with both
  qualities >= 50; pHash at its default radius);
* false-match rate = share of pairs of *unrelated* originals within the same
  radius, with the smallest distance seen, plus a small radius sweep that
  shows why the default pHash radius is what it is.

Synthetic test data only, generated and encoded in memory.
"""

from __future__ import annotations

import os

for _variable in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[_variable] = "1"

import argparse  # noqa: E402
import itertools  # noqa: E402
import sys  # noqa: E402
from collections.abc import Callable, Sequence  # noqa: E402
from pathlib import Path  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
from PIL import Image, ImageDraw, ImageFont  # noqa: E402

from hashing.image import ImageHashes, hash_image  # noqa: E402
from hashing.signals import SIGNAL_TYPES  # noqa: E402
from hashing.synthetic import generate_photo_like, jpeg_bytes  # noqa: E402

PDQ = SIGNAL_TYPES["pdq"]
PHASH = SIGNAL_TYPES["phash"]
SIZE = (800, 600)


def resize_half(picture: Image.Image) -> Image.Image:
    return picture.resize((picture.width // 2, picture.height // 2), Image.Resampling.LANCZOS)


def crop_5_percent(picture: Image.Image) -> Image.Image:
    """Keep the central 95 % of width and height (2.5 % off every side)."""
    dx, dy = round(picture.width * 0.025), round(picture.height * 0.025)
    return picture.crop((dx, dy, picture.width - dx, picture.height - dy))


def rotate_3_degrees(picture: Image.Image) -> Image.Image:
    return picture.rotate(3, resample=Image.Resampling.BICUBIC, expand=False, fillcolor=(0, 0, 0))


def watermark(picture: Image.Image) -> Image.Image:
    """Semi-opaque white text across the lower third, as image hosts stamp it."""
    overlay = Image.new("RGBA", picture.size, (0, 0, 0, 0))
    draw = ImageDraw.Draw(overlay)
    font = ImageFont.load_default(size=max(12, picture.height // 12))
    draw.text(
        (picture.width // 20, picture.height * 2 // 3),
        "uploaded @ example.test",
        font=font,
        fill=(255, 255, 255, 170),
    )
    return Image.alpha_composite(picture.convert("RGBA"), overlay).convert("RGB")


def greyscale(picture: Image.Image) -> Image.Image:
    return picture.convert("L")


TRANSFORMS: dict[str, tuple[Callable[[Image.Image], Image.Image], int]] = {
    "resize 50 %": (resize_half, 85),
    "re-encode JPEG q=30": (lambda picture: picture, 30),
    "crop 5 % (2.5 % per side)": (crop_5_percent, 85),
    "rotate 3°": (rotate_3_degrees, 85),
    "watermark text": (watermark, 85),
    "greyscale": (greyscale, 85),
}


def pdq_distance(a: ImageHashes, b: ImageHashes) -> int | None:
    """None when either PDQ is too low-quality to match on."""
    if not (PDQ.usable(a.pdq_quality) and PDQ.usable(b.pdq_quality)):
        return None
    return PDQ.distance(a.pdq or "", b.pdq or "")


def rate(distances: Sequence[int | None], radius: int) -> float:
    return sum(1 for d in distances if d is not None and d <= radius) / max(1, len(distances))


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="small run, under ~30 s")
    parser.add_argument("--count", type=int, help="number of base pictures")
    args = parser.parse_args(argv)
    count = args.count or (25 if args.quick else 120)

    originals: list[ImageHashes] = []
    edited: dict[str, list[ImageHashes]] = {name: [] for name in TRANSFORMS}
    for seed in range(count):
        picture = generate_photo_like(*SIZE, seed=10_000 + seed)
        originals.append(hash_image(jpeg_bytes(picture, quality=85)))
        for name, (transform, quality) in TRANSFORMS.items():
            edited[name].append(hash_image(jpeg_bytes(transform(picture), quality=quality)))

    pdq_radius, phash_radius = PDQ.default_radius, PHASH.default_radius
    print(
        f"{count} synthetic photo-like base pictures, {SIZE[0]}×{SIZE[1]} JPEG q85; "
        f"fast hashes (hash_image) of the edited copy vs of the original. "
        f"PDQ radius {pdq_radius} (both qualities ≥ {PDQ.min_quality}), "  # type: ignore[attr-defined]
        f"pHash radius {phash_radius}.\n"
    )
    print(
        "| edit | PDQ recall | PDQ mean / max distance | pHash recall | pHash mean / max distance |"
    )
    print("|---|---:|---:|---:|---:|")
    for name, copies in edited.items():
        pdq = [pdq_distance(o, c) for o, c in zip(originals, copies, strict=True)]
        phash = [
            PHASH.distance(o.phash or "", c.phash or "")
            for o, c in zip(originals, copies, strict=True)
        ]
        usable = [d for d in pdq if d is not None]
        pdq_stats = f"{np.mean(usable):.1f} / {max(usable)}" if usable else "n/a"
        print(
            f"| {name} | {rate(pdq, pdq_radius):.1%} | {pdq_stats} "
            f"| {rate(phash, phash_radius):.1%} | {np.mean(phash):.1f} / {max(phash)} |"
        )

    pairs = list(itertools.combinations(originals, 2))
    pdq_pairs = [pdq_distance(a, b) for a, b in pairs]
    phash_pairs = [PHASH.distance(a.phash or "", b.phash or "") for a, b in pairs]
    pdq_seen = [d for d in pdq_pairs if d is not None]
    print(f"\nUnrelated pairs: {len(pairs)} (all pairs of distinct originals).\n")
    print("| hash | radius | false-match rate | smallest distance between unrelated pictures |")
    print("|---|---:|---:|---:|")
    print(f"| PDQ | {pdq_radius} | {rate(pdq_pairs, pdq_radius):.3%} | {min(pdq_seen)} |")
    print(
        f"| pHash | {phash_radius} | {rate(phash_pairs, phash_radius):.3%} | {min(phash_pairs)} |"
    )

    print("\npHash radius sweep (recall over all edits vs false-match rate):\n")
    print("| pHash radius | recall, all edits | false-match rate |")
    print("|---:|---:|---:|")
    all_edits = [
        PHASH.distance(o.phash or "", c.phash or "")
        for copies in edited.values()
        for o, c in zip(originals, copies, strict=True)
    ]
    for radius in (4, 6, 8, 10, 12, 14, 16):
        print(f"| {radius} | {rate(all_edits, radius):.1%} | {rate(phash_pairs, radius):.3%} |")


if __name__ == "__main__":
    main()
