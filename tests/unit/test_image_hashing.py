"""hash_image: right hashes, faithful to the reference tools, and safe on hostile input.

All pictures are synthetic (hashing.synthetic), generated in memory.
"""

from __future__ import annotations

import hashlib
import io
import struct
import time
import zlib
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pdqhash
import pydantic
import pytest
from PIL import Image

from hashing.image import ImageError, ImageHashes, hash_image, hash_image_reference
from hashing.perceptual import perceptual_hashes
from hashing.signals import PDQ_MIN_QUALITY, SIGNAL_TYPES
from hashing.synthetic import (
    encode,
    generate_animated_gif,
    generate_photo_like,
    jpeg_bytes,
    photo_like_jpeg,
)

PDQ = SIGNAL_TYPES["pdq"]
PHASH = SIGNAL_TYPES["phash"]


@pytest.fixture(scope="module")
def photo_jpegs() -> list[bytes]:
    sizes = [(1024, 768), (640, 480), (480, 640), (1200, 800), (333, 517)]
    return [photo_like_jpeg(w, h, seed=seed) for seed, (w, h) in enumerate(sizes, start=100)]


def _drift(fast: ImageHashes, reference: ImageHashes) -> tuple[int, int]:
    """Bits by which the fast PDQ and pHash differ from the reference ones."""
    assert fast.pdq and reference.pdq and fast.phash and reference.phash
    return PDQ.distance(fast.pdq, reference.pdq), PHASH.distance(fast.phash, reference.phash)


def _png_chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def _png_claiming(width: int, height: int) -> bytes:
    """A tiny PNG whose header claims ``width x height`` RGB pixels."""
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + _png_chunk(b"IHDR", header)
        + _png_chunk(b"IDAT", zlib.compress(b"\x00" * 64))
        + _png_chunk(b"IEND", b"")
    )


# --- crypto hashes -------------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "WEBP", "BMP", "TIFF"])
def test_crypto_hashes_equal_hashlib(fmt: str) -> None:
    data = encode(generate_photo_like(160, 120, seed=5), fmt)
    hashes = hash_image(data)
    assert hashes.md5 == hashlib.md5(data).hexdigest()
    assert hashes.sha1 == hashlib.sha1(data).hexdigest()
    assert hashes.sha256 == hashlib.sha256(data).hexdigest()
    assert (hashes.width, hashes.height, hashes.format) == (160, 120, fmt)
    assert hashes.frame_count == 1 and hashes.frames == []


def test_every_hash_is_valid_for_its_signal_type(photo_jpegs: list[bytes]) -> None:
    hashes = hash_image(photo_jpegs[0])
    for name, signal in SIGNAL_TYPES.items():
        value = getattr(hashes, name)
        assert signal.validate(value) == value
    assert len(hashes.pdq or "") == 64 and len(hashes.phash or "") == 16


def test_result_is_frozen(photo_jpegs: list[bytes]) -> None:
    hashes = hash_image(photo_jpegs[1])
    with pytest.raises(pydantic.ValidationError):
        hashes.md5 = "0" * 32  # type: ignore[misc]
    assert ImageHashes.model_validate(hashes.model_dump()) == hashes


# --- faithfulness to the reference implementations ------------------------------------


def test_fast_hashes_stay_close_to_reference(photo_jpegs: list[bytes]) -> None:
    for data in photo_jpegs:
        fast, reference = hash_image(data), hash_image_reference(data)
        assert fast.md5 == reference.md5 and fast.sha256 == reference.sha256
        pdq_bits, phash_bits = _drift(fast, reference)
        assert pdq_bits <= 8 and phash_bits <= 4
        assert PDQ.usable(fast.pdq_quality) and PDQ.usable(reference.pdq_quality)
        assert (fast.pdq_quality or 0) >= PDQ_MIN_QUALITY
        assert (fast.width, fast.height) == (reference.width, reference.height)


@pytest.mark.parametrize("mode", ["L", "RGBA", "P", "CMYK"])
def test_other_pixel_layouts_stay_close_to_reference(mode: str) -> None:
    picture = generate_photo_like(600, 400, seed=7).convert(mode)
    fmt = "JPEG" if mode in ("L", "CMYK") else "PNG"
    data = encode(picture, fmt)
    pdq_bits, phash_bits = _drift(hash_image(data), hash_image_reference(data))
    assert pdq_bits <= 8 and phash_bits <= 4


@pytest.mark.parametrize("size", [(1024, 768), (333, 517), (64, 64), (100, 40), (7, 5)])
def test_matrix_pdq_reproduces_pdqhash_at_full_scale(size: tuple[int, int]) -> None:
    """At scale 1 the matrix formulation is the reference algorithm, bit for bit."""
    picture = np.asarray(generate_photo_like(*size, seed=3))
    vector, quality = pdqhash.compute(picture)
    expected = f"{int(''.join(str(int(b)) for b in vector), 2):064x}"
    luma = picture.astype(np.float64) @ np.array([0.299, 0.587, 0.114])
    ours = perceptual_hashes(luma.astype(np.float32), size, 1)
    assert PDQ.distance(ours.pdq, expected) <= 1
    assert ours.pdq_quality == quality


def test_perceptual_hashes_rejects_mismatched_plane() -> None:
    with pytest.raises(ValueError, match="does not match"):
        perceptual_hashes(np.zeros((10, 10), dtype=np.uint8), (100, 100), 4)


def test_flat_picture_has_low_pdq_quality() -> None:
    data = encode(Image.new("RGB", (300, 200), (90, 90, 90)), "PNG")
    hashes = hash_image(data)
    assert hashes.pdq_quality is not None and hashes.pdq_quality < PDQ_MIN_QUALITY
    assert not PDQ.usable(hashes.pdq_quality)


def test_tiny_picture_is_hashed() -> None:
    hashes = hash_image(encode(Image.new("RGB", (1, 1), (200, 10, 10)), "PNG"))
    assert hashes.width == 1 and hashes.pdq is not None and hashes.phash is not None


# --- hostile and broken input ---------------------------------------------------------


@pytest.mark.parametrize(
    "data, reason",
    [
        (b"", "empty"),
        (b"not an image at all, just some text", "not an image"),
        (bytes(range(256)) * 4, "not an image"),
        (b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\n", "not an image"),
        (b"\xff\xd8\xff\xe0" + b"\x00" * 40, "header is broken"),
        (b"\x89PNG\r\n\x1a\n" + b"\x00" * 30, "header is broken"),
        (b"GIF89a\x10\x00\x10\x00", "header is broken"),
    ],
    ids=["empty", "text", "noise", "eps", "jpeg-magic-only", "png-magic-only", "gif-header-only"],
)
def test_broken_bytes_raise_image_error(data: bytes, reason: str) -> None:
    with pytest.raises(ImageError, match=reason):
        hash_image(data)
    with pytest.raises(ImageError):
        hash_image_reference(data)


@pytest.mark.parametrize("keep", [0.02, 0.1, 0.5, 0.9, 0.999])
def test_truncated_jpeg_never_crashes(keep: float) -> None:
    data = photo_like_jpeg(640, 480, seed=9)
    cut = data[: int(len(data) * keep)]
    try:
        hashes = hash_image(cut)
    except ImageError as error:
        assert "truncated" in str(error) or "broken" in str(error)
    else:
        assert hashes.md5 == hashlib.md5(cut).hexdigest()


def test_truncated_png_raises_image_error() -> None:
    data = encode(generate_photo_like(300, 200, seed=2), "PNG")
    with pytest.raises(ImageError, match="truncated|broken"):
        hash_image(data[: len(data) // 2])


def test_png_claiming_huge_size_is_refused_quickly() -> None:
    started = time.perf_counter()
    with pytest.raises(ImageError, match="too large|bomb"):
        hash_image(_png_claiming(100_000, 100_000))
    with pytest.raises(ImageError, match="exceeds the limit of 60000000"):
        hash_image(_png_claiming(9_000, 9_000))  # over our limit, under Pillow's
    assert time.perf_counter() - started < 0.5


def test_pillows_own_bomb_check_becomes_image_error() -> None:
    with pytest.raises(ImageError, match="bomb"):
        hash_image(_png_claiming(20_000, 10_000), max_pixels=10**12)


def test_jpeg_header_claiming_huge_size_is_refused() -> None:
    data = bytearray(jpeg_bytes(generate_photo_like(64, 48, seed=1)))
    sof = data.index(b"\xff\xc0")
    data[sof + 5 : sof + 9] = struct.pack(">HH", 60_000, 60_000)  # height, width
    started = time.perf_counter()
    with pytest.raises(ImageError, match="too large|bomb"):
        hash_image(bytes(data))
    assert time.perf_counter() - started < 0.5


def test_max_pixels_is_configurable() -> None:
    data = photo_like_jpeg(200, 100, seed=1)
    with pytest.raises(ImageError, match="20000 pixels exceeds the limit of 19999"):
        hash_image(data, max_pixels=19_999)
    assert hash_image(data, max_pixels=20_000).width == 200


# --- animations -----------------------------------------------------------------------


def test_animated_gif_frames_are_sampled_evenly_and_bounded() -> None:
    data = generate_animated_gif(frames=40, seed=4)
    hashes = hash_image(data, max_frames=5)
    assert hashes.format == "GIF" and hashes.frame_count == 40
    indices = [frame.index for frame in hashes.frames]
    assert indices == [10, 20, 29, 39]
    everything = [hashes.pdq] + [frame.pdq for frame in hashes.frames]
    assert len(set(everything)) == 5  # the frames differ, so do their hashes
    for frame in hashes.frames:
        assert frame.pdq and frame.phash and frame.pdq_quality is not None
        assert PDQ.validate(frame.pdq) and PHASH.validate(frame.phash)


def test_animated_gif_frame_hashes_match_frames_hashed_alone() -> None:
    data = generate_animated_gif(frames=6, seed=8)
    hashes = hash_image(data)
    assert [frame.index for frame in hashes.frames] == [1, 2, 3, 4, 5]
    with Image.open(io.BytesIO(data)) as animation:
        animation.seek(3)
        alone = hash_image(encode(animation.convert("RGB"), "PNG"))
    assert hashes.frames[2].pdq == alone.pdq and hashes.frames[2].phash == alone.phash


def test_max_frames_one_hashes_only_the_first_frame() -> None:
    hashes = hash_image(generate_animated_gif(frames=10, seed=1), max_frames=1)
    assert hashes.frame_count == 10 and hashes.frames == []


def test_animated_webp_frames_are_hashed() -> None:
    pictures = [generate_photo_like(120, 90, seed=s) for s in range(4)]
    data = encode(pictures[0], "WEBP", save_all=True, append_images=pictures[1:], duration=50)
    hashes = hash_image(data)
    assert hashes.format == "WEBP" and hashes.frame_count == 4
    assert [frame.index for frame in hashes.frames] == [1, 2, 3]


# --- concurrency ----------------------------------------------------------------------


def test_thread_safe(photo_jpegs: list[bytes]) -> None:
    inputs = photo_jpegs * 4 + [generate_animated_gif(frames=8, seed=2)] * 4
    expected = [hash_image(data) for data in inputs]
    with ThreadPoolExecutor(max_workers=4) as pool:
        assert list(pool.map(hash_image, inputs)) == expected


def test_frame_sampling_stays_within_the_decode_budget() -> None:
    data = generate_animated_gif(frames=30, width=96, height=64, seed=3)
    # Budget: 4 x max_pixels of frames; 96x64 frames, max_pixels = 2 frames -> 8 reachable.
    hashes = hash_image(data, max_pixels=96 * 64 * 2, max_frames=4)
    assert hashes.frame_count == 30
    assert [frame.index for frame in hashes.frames] == [2, 5, 7]


def test_frame_sampling_never_steps_through_endless_animations() -> None:
    from hashing.image import _sample_frames

    indices = _sample_frames(10**6, 16, frame_pixels=1, max_pixels=60_000_000)
    assert len(indices) == 16 and indices[0] == 0 and indices[-1] < 2_001


def test_jpeg_with_too_many_scans_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    import hashing.image

    progressive = encode(generate_photo_like(200, 150, seed=6), "JPEG", progressive=True)
    assert progressive.count(b"\xff\xda") > 3
    assert hash_image(progressive).width == 200
    monkeypatch.setattr(hashing.image, "MAX_JPEG_SCANS", 3)
    with pytest.raises(ImageError, match="scans, over the limit of 3"):
        hash_image(progressive)


def test_16_bit_greyscale_png_is_hashed_from_its_top_8_bits() -> None:
    grey = np.asarray(generate_photo_like(300, 200, seed=3).convert("L"))
    wide = encode(Image.fromarray(grey.astype(np.uint16) * 257), "PNG")
    narrow = encode(Image.fromarray(grey), "PNG")
    hashes, expected = hash_image(wide), hash_image(narrow)
    assert hashes.pdq_quality == expected.pdq_quality and PDQ.usable(hashes.pdq_quality)
    assert hashes.pdq == expected.pdq and hashes.phash == expected.phash


@pytest.mark.parametrize("size, fmt", [((4000, 150), "PNG"), ((6000, 200), "JPEG")])
def test_long_thin_pictures_stay_close_to_reference(size: tuple[int, int], fmt: str) -> None:
    data = encode(generate_photo_like(*size, seed=2), fmt)
    pdq_bits, phash_bits = _drift(hash_image(data), hash_image_reference(data))
    assert pdq_bits <= 8 and phash_bits <= 4


@pytest.mark.parametrize("size, fmt", [((200_000, 3), "PNG"), ((65_000, 16), "JPEG")])
def test_extreme_aspect_ratios_are_hashed_quickly(size: tuple[int, int], fmt: str) -> None:
    data = encode(Image.new("L", size, 128), fmt)
    started = time.perf_counter()
    hashes = hash_image(data)
    assert time.perf_counter() - started < 1.0
    assert (hashes.width, hashes.height) == size and hashes.pdq_quality == 0


def test_hashing_keeps_blas_to_one_thread_even_when_numpy_was_imported_first():
    """OpenBLAS's idle workers spin after every product; in a stage process that spinning
    took most of classify's CPU. The limit must hold in a fresh process whatever imported
    numpy before the hashing code (here numpy itself, with its default of one thread per core)."""
    import subprocess
    import sys

    probe = (
        "import numpy\n"
        "from threadpoolctl import threadpool_info\n"
        "before = [i['num_threads'] for i in threadpool_info() if i['user_api'] == 'blas']\n"
        "import hashing.image\n"
        "after = [i['num_threads'] for i in threadpool_info() if i['user_api'] == 'blas']\n"
        "print(before, after)\n"
    )
    env = {k: v for k, v in __import__("os").environ.items() if not k.endswith("_NUM_THREADS")}
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True, env=env)
    before, after = out.stdout.strip().split("] [")
    assert after.strip("[]") == "1", out.stdout
    assert before.strip("[]"), "numpy loaded no BLAS library: the probe shows nothing"
