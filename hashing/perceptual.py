"""PDQ and pHash as matrix products, so both can be computed from one reduced decode.

Why this module exists: the naive way to hash a photo is to decode it at full
resolution, let ``pdqhash.compute`` blur and decimate the full luma plane to
64x64, and let ``imagehash.phash`` Lanczos-resize the full greyscale picture
to 32x32. Both steps are *linear* and *separable* in the pixels, so each is
``Rows @ Y @ Cols.T`` for a small weight matrix per axis. Written that way:

* the weights depend only on the image size, so they are built once and
  cached;
* the weights for a full-resolution axis can be summed over blocks of ``s``
  pixels, which gives the weights to apply to a picture decoded at ``1/s``
  scale (JPEG DCT scaling, ``Image.reduce``): every reduced pixel is the
  mean of an ``s x s`` block, so the reduced product equals the full one
  wherever the picture is flat within a block and stays very close
  elsewhere. That is what keeps the fast hashes faithful to the reference
  implementations other hotlines used to build their hash banks;
* PDQ and pHash share the pass over the pixels.

The PDQ part follows facebook/ThreatExchange ``pdq/cpp/hashing/pdqhashing.cpp``
step by step (Jarosz box filters, decimation, 16x16 DCT without the DC row,
Torben median, image-domain quality metric); with ``s = 1`` it reproduces
``pdqhash.compute`` (see the unit tests). The pHash part follows ImageHash
4.3.2 ``phash`` (greyscale, Pillow's Lanczos kernel to 32x32, DCT-II on both
axes, top-left 8x8, median threshold).

All caches are pure functions of their arguments, so this module is safe to
use from many threads at once.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from threadpoolctl import threadpool_limits

# One BLAS thread for the whole process. The products here are small (at most a few hundred
# rows and columns per image), and OpenBLAS's own threads cost more than they save: after
# each call its idle workers spin before they sleep, and in a stage process that fetches,
# hashes and writes on several threads of its own that spinning took 59 % of classify's CPU
# (perf, Kafka pipeline at 50 reports/s). Set here, after numpy has loaded OpenBLAS, so it
# holds whatever imported numpy first; image hashing is then one core's work per image and
# parallelism comes from images and processes.
threadpool_limits(limits=1, user_api="blas")

__all__ = [
    "PDQ_SIZE",
    "PHASH_SIZE",
    "PerceptualHashes",
    "clear_weight_caches",
    "perceptual_hashes",
]

PDQ_SIZE = 64
"""PDQ downsamples the luma plane to 64x64 before its DCT."""
PHASH_SIZE = 32
"""imagehash.phash resizes to 32x32 (hash_size 8 x highfreq_factor 4)."""
_PHASH_BITS_SIDE = 8
_JAROSZ_PASSES = 2
_LANCZOS_SUPPORT = 3.0


def _scatter_reduced(
    outputs: int, positions: np.ndarray, weights: np.ndarray, length: int, scale: int
) -> np.ndarray:
    """Sum per-pixel weights (rows x taps, at full-resolution ``positions``) into
    an ``outputs x ceil(length/scale)`` matrix: one column per reduced pixel,
    which is the mean of ``scale`` full-resolution pixels."""
    reduced = -(-length // scale)
    valid = (positions >= 0) & (positions < length)
    rows = np.broadcast_to(np.arange(outputs)[:, None], positions.shape)
    flat = rows[valid] * reduced + positions[valid] // scale
    summed = np.bincount(flat, weights=weights[valid], minlength=outputs * reduced)
    return summed.reshape(outputs, reduced)


def _jarosz_window(length: int) -> int:
    """computeJaroszFilterWindowSize(oldDimension, 64) of the PDQ reference."""
    return (length + 2 * PDQ_SIZE - 1) // (2 * PDQ_SIZE)


def _pdq_axis(length: int, scale: int) -> np.ndarray:
    """64 x ceil(length/scale) weights: Jarosz-filter, decimate to 64, along one axis.

    PDQ's ``box1DFloat`` writes ``out[k] = mean(in[lo(k) .. hi(k) - 1])`` with
    ``lo(k) = max(k - behind, 0)``, ``hi(k) = min(k + half, length)``: a window
    clipped at the edges, averaged over the pixels inside. Two passes, then
    ``decimateFloat`` keeps pixel ``pick(i)``. So output ``i`` weighs pixel
    ``j`` by the sum, over the ``k`` in pick(i)'s window, of
    ``1 / (count(pick) * count(k))`` when ``j`` is in k's window. Only those
    few pixels around each pick are visited, so a new size costs well under
    a millisecond even for very large pictures.
    """
    window = _jarosz_window(length)
    half = (window + 2) // 2
    behind = window - half

    def lo(k: np.ndarray) -> np.ndarray:
        return np.maximum(k - behind, 0)

    def hi(k: np.ndarray) -> np.ndarray:
        return np.minimum(k + half, length)

    picks = ((np.arange(PDQ_SIZE) + 0.5) * length / PDQ_SIZE).astype(np.int64)
    # Second-pass pixels k of each pick's window: PDQ_SIZE x window (padded, masked).
    ks = lo(picks)[:, None] + np.arange(window)[None, :]
    inside = ks < hi(picks)[:, None]
    k_weight = np.where(inside, 1.0 / ((hi(picks) - lo(picks))[:, None] * (hi(ks) - lo(ks))), 0.0)
    # Spread each k's weight over its own window with a local difference array.
    base = lo(lo(picks))
    span = 2 * window + 2
    diff = np.zeros((PDQ_SIZE, span + 1))
    row = np.broadcast_to(np.arange(PDQ_SIZE)[:, None], ks.shape)
    np.add.at(diff, (row, lo(ks) - base[:, None]), k_weight)
    np.add.at(diff, (row, hi(ks) - base[:, None]), -k_weight)
    local = np.cumsum(diff[:, :span], axis=1)
    positions = base[:, None] + np.arange(span)[None, :]
    weights = _scatter_reduced(PDQ_SIZE, positions, local, length, scale)
    weights.setflags(write=False)
    return weights


def _lanczos(x: np.ndarray) -> np.ndarray:
    """Pillow's lanczos_filter: sinc(x) * sinc(x / 3) on [-3, 3), in one pass of sines."""
    angle = np.pi * x
    with np.errstate(divide="ignore", invalid="ignore"):
        values = 3.0 * np.sin(angle) * np.sin(angle / 3.0) / (angle * angle)
    values[x == 0.0] = 1.0
    values[(x < -_LANCZOS_SUPPORT) | (x >= _LANCZOS_SUPPORT)] = 0.0
    return values


def _phash_dct() -> np.ndarray:
    """scipy.fftpack.dct type II, unnormalised, rows 0..7: 2 cos(pi k (2n + 1) / 2N)."""
    k = np.arange(_PHASH_BITS_SIDE)[:, None]
    n = np.arange(PHASH_SIZE)[None, :]
    return 2.0 * np.cos(np.pi * k * (2 * n + 1) / (2 * PHASH_SIZE))


_PHASH_DCT = _phash_dct()


def _phash_axis(length: int, scale: int) -> np.ndarray:
    """8 x ceil(length/scale) weights: Lanczos to 32 (Pillow's coefficients), then DCT rows 0..7.

    Mirrors Pillow's ``precompute_coeffs``: output ``o`` is centred at
    ``(o + 0.5) * length / 32`` and reads pixels ``[lo, hi)`` within
    ``3 * max(length / 32, 1)`` of it, with normalised Lanczos-3 weights.
    """
    step = length / PHASH_SIZE
    filterscale = max(step, 1.0)
    support = _LANCZOS_SUPPORT * filterscale
    centers = (np.arange(PHASH_SIZE) + 0.5) * step
    lo = np.maximum((centers - support + 0.5).astype(np.int64), 0)
    hi = np.minimum((centers + support + 0.5).astype(np.int64), length)
    taps = int((hi - lo).max())
    positions = lo[:, None] + np.arange(taps)[None, :]
    inside = positions < hi[:, None]
    weights = np.where(inside, _lanczos((positions - centers[:, None] + 0.5) / filterscale), 0.0)
    totals = weights.sum(axis=1, keepdims=True)
    weights = np.divide(weights, totals, out=weights, where=totals != 0.0)
    positions = np.where(inside, positions, -1)
    resize = _scatter_reduced(PHASH_SIZE, positions, weights, length, scale)
    folded = _PHASH_DCT @ resize
    folded.setflags(write=False)
    return folded


@lru_cache(maxsize=256)
def _combined_rows(length: int, scale: int) -> np.ndarray:
    """PDQ and pHash row weights stacked, so one product serves both hashes."""
    stacked = np.vstack([_pdq_axis(length, scale), _phash_axis(length, scale)]).astype(np.float32)
    stacked.setflags(write=False)
    return stacked


@lru_cache(maxsize=256)
def _combined_cols(length: int, scale: int) -> tuple[np.ndarray, np.ndarray]:
    pdq = np.ascontiguousarray(_pdq_axis(length, scale).T, dtype=np.float32)
    phash = np.ascontiguousarray(_phash_axis(length, scale).T, dtype=np.float32)
    pdq.setflags(write=False)
    phash.setflags(write=False)
    return pdq, phash


def clear_weight_caches() -> None:
    """Forget every cached weight matrix (benchmarks use it to measure the cold cost)."""
    for cached in (_combined_rows, _combined_cols):
        cached.cache_clear()


def _pdq_dct_matrix() -> np.ndarray:
    """The 16x64 DCT of pdqhashing.cpp: rows 1..16 (the DC row is skipped)."""
    i = np.arange(1, 17)[:, None]
    j = np.arange(PDQ_SIZE)[None, :]
    return math.sqrt(2.0 / PDQ_SIZE) * np.cos((math.pi / 2 / PDQ_SIZE) * i * (2 * j + 1))


_PDQ_DCT = _pdq_dct_matrix().astype(np.float32)
_PDQ_DCT.setflags(write=False)
_PDQ_BIT_WEIGHTS = (1 << np.arange(16, dtype=np.uint32)).astype(np.uint32)
_PDQ_BIT_WEIGHTS.setflags(write=False)
_PHASH_BIT_WEIGHTS = np.array([1 << (63 - b) for b in range(64)], dtype=np.uint64)
_PHASH_BIT_WEIGHTS.setflags(write=False)


@dataclass(frozen=True, slots=True)
class PerceptualHashes:
    """PDQ (hex, quality) and pHash (hex) of one picture."""

    pdq: str
    pdq_quality: int
    phash: str


def _pdq_quality(block: np.ndarray) -> int:
    """computePDQImageDomainQualityMetric: truncated, scaled gradient sum / 90, capped at 100."""
    vertical = np.trunc((block[:-1, :] - block[1:, :]) * 100.0 / 255.0)
    horizontal = np.trunc((block[:, :-1] - block[:, 1:]) * 100.0 / 255.0)
    gradient_sum = int(np.abs(vertical).sum() + np.abs(horizontal).sum())
    return min(gradient_sum // 90, 100)


def _pdq_hex(block: np.ndarray) -> str:
    """pdqBuffer16x16ToBits + Hash256::format: bit 16i+j set iff coefficient > Torben median."""
    coefficients = _PDQ_DCT @ block @ _PDQ_DCT.T
    flat = coefficients.ravel()
    # Torben's median over 256 values returns the 128th smallest (the lower median).
    median = np.partition(flat, 127)[127]
    bits = (coefficients > median).astype(np.uint32)
    words = bits @ _PDQ_BIT_WEIGHTS  # word i holds row i, bit j = column j
    return "".join(f"{int(w):04x}" for w in words[::-1])


def _phash_hex(lowfreq: np.ndarray) -> str:
    """ImageHash: bits = lowfreq > median, row-major, first bit most significant."""
    bits = (lowfreq > np.median(lowfreq)).ravel()
    return f"{int(_PHASH_BIT_WEIGHTS[bits].sum(dtype=np.uint64)):016x}"


def perceptual_hashes(
    luma: np.ndarray, full_size: tuple[int, int], scale: int | tuple[int, int]
) -> PerceptualHashes:
    """PDQ and pHash of a luma plane decoded at ``1/scale`` of ``full_size``.

    ``luma`` is a 2-D array (rows x columns, any real dtype) of the picture's
    luma 0.299 R + 0.587 G + 0.114 B, either at full resolution (``scale=1``)
    or reduced so that each pixel is the mean of an ``sx x sy`` block of the
    full picture (``scale`` is ``s`` or ``(sx, sy)``; the last row/column
    block may be partial). ``full_size`` is ``(width, height)`` of the full
    picture: the weights are those of the reference algorithms at that size.
    """
    width, height = full_size
    sx, sy = (scale, scale) if isinstance(scale, int) else scale
    rows = _combined_rows(height, sy)
    pdq_cols, phash_cols = _combined_cols(width, sx)
    if luma.shape != (rows.shape[1], pdq_cols.shape[0]):
        raise ValueError(
            f"luma plane {luma.shape} does not match {width}x{height} at 1/{sx}x1/{sy} scale"
        )
    partial = rows @ np.asarray(luma, dtype=np.float32)
    block = partial[:PDQ_SIZE] @ pdq_cols
    lowfreq = partial[PDQ_SIZE:] @ phash_cols
    return PerceptualHashes(_pdq_hex(block), _pdq_quality(block), _phash_hex(lowfreq))
