"""Hash one image (bytes as fetched) with every hash the hotline matches on, fast.

A hotline hashes every image behind every reported URL and a hoster's
HashCheck batch can be large, so hashing throughput is a capacity limit.
``hash_image`` computes MD5, SHA-1, SHA-256 (of the bytes) and PDQ and pHash
(of the picture) in one pass:

* the picture is decoded once, at the smallest scale that keeps the
  perceptual hashes faithful: JPEGs are decoded straight to their luma
  channel with libjpeg's DCT-domain scaling (``Image.draft``), so neither
  chroma nor full-size pixels are ever produced; other formats are decoded
  and box-reduced (``Image.reduce``);
* PDQ and pHash are computed together from that one reduced luma plane with
  cached weight matrices (:mod:`hashing.perceptual`) that reproduce the reference
  implementations' filters at the full size.

Compatibility matters more than speed: partner hotlines' hash banks were
built with ``pdqhash.compute`` and ``imagehash.phash`` on full-size pictures.
``hash_image_reference`` is that naive pipeline, kept as the baseline for
the benchmarks and the drift check; ``benchmarks/bench_hashing.py`` measures
the drift (well inside the 8-bit budget for PDQ, see docs/benchmarks-hashing.md).

Untrusted input: every failure to read the picture is an ``ImageError``
with a reason (not an image, unsupported format, truncated, too many pixels).
The pixel count is checked from the header before any pixel is decoded, so
a small file claiming to be 100000x100000 is refused without allocating.
JPEGs with an absurd number of progressive scans are refused too (decoding
time). Only raster formats decoded inside Pillow are accepted (no EPS,
which would start Ghostscript). EXIF orientation is deliberately *not* applied, exactly
like the reference tools, so hashes agree with other hotlines' banks.

Nothing here keeps or writes image bytes; all state is local to a call, so
``hash_image`` is safe to call from many threads at once.
"""

from __future__ import annotations

import hashlib
import io

import imagehash
import numpy as np
import pdqhash
from PIL import Image, UnidentifiedImageError
from pydantic import BaseModel, ConfigDict, Field

from hashing.perceptual import perceptual_hashes

__all__ = [
    "ACCEPTED_FORMATS",
    "DEFAULT_MAX_FRAMES",
    "DEFAULT_MAX_PIXELS",
    "MAX_JPEG_SCANS",
    "MAX_REDUCED_SIDE",
    "MIN_REDUCED_SIDE",
    "check_viewable",
    "FrameHashes",
    "ImageError",
    "ImageHashes",
    "hash_image",
    "hash_image_reference",
    "jpeg_draft_scale",
]

DEFAULT_MAX_PIXELS = 60_000_000
DEFAULT_MAX_FRAMES = 16
ACCEPTED_FORMATS: tuple[str, ...] = ("JPEG", "PNG", "GIF", "WEBP", "BMP", "TIFF", "AVIF", "ICO")
"""Formats Pillow decodes in-process; anything else is refused as not an image."""

MIN_REDUCED_SIDE = 128
"""Decode no smaller than this (shorter side, pixels). At >= 128 the fast PDQ
stays within a few bits of the full-resolution reference; at 96 it drifts up
to the 8-bit budget (sweep in docs/benchmarks-hashing.md)."""

MAX_REDUCED_SIDE = 1024
"""...and reduce any axis further that would still be longer than this, so
the weight matrices stay small for extreme aspect ratios (60000000 x 1)."""

_JPEG_SCALES = (8, 4, 2, 1)
_LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)
_FRAME_DECODE_BUDGET = 4
"""Animated files: decode at most this many times ``max_pixels`` in frames.
GIF and WebP frames can only be reached by decoding the ones before them."""
_MAX_SEEK_FRAMES = 2_000
"""...and never step through more frames than this, however small they are."""
MAX_JPEG_SCANS = 256
"""Progressive JPEGs have ~10 scans; each scan walks every block again, so a
file of thousands of tiny scans makes the decoder run for minutes (a known
denial of service; libjpeg-turbo's own tools cap scans too). Counted from
the bytes before decoding: 0xFFDA cannot occur unescaped in entropy-coded data."""


class ImageError(ValueError):
    """The bytes are not a picture we can hash; the message says why. Never retry."""


class FrameHashes(BaseModel):
    """Perceptual hashes of one further frame of an animated picture."""

    model_config = ConfigDict(frozen=True)

    index: int = Field(description="0-based frame number in the file")
    pdq: str | None
    pdq_quality: int | None
    phash: str | None


class ImageHashes(BaseModel):
    """Every hash of one image. Crypto hashes are of the bytes, perceptual ones of the picture.

    ``pdq``/``phash`` are of the first frame; ``pdq`` of quality below
    ``hashing.signals.PDQ_MIN_QUALITY`` must not be used for matching.
    ``frames`` holds the other sampled frames of an animation (frame 0 is
    never repeated there); at most ``max_frames`` frames are hashed in all.
    ``hash_image`` always fills the perceptual fields of a picture it could
    decode; they are optional so that hashes from other sources (bank rows,
    partner forwards) without a perceptual hash fit the same model.
    """

    model_config = ConfigDict(frozen=True)

    md5: str
    sha1: str
    sha256: str
    pdq: str | None
    pdq_quality: int | None
    phash: str | None
    width: int
    height: int
    format: str
    frame_count: int
    frames: list[FrameHashes] = Field(default_factory=list)


def _crypto(data: bytes) -> tuple[str, str, str]:
    return (
        hashlib.md5(data, usedforsecurity=False).hexdigest(),
        hashlib.sha1(data, usedforsecurity=False).hexdigest(),
        hashlib.sha256(data).hexdigest(),
    )


def _open(data: bytes, max_pixels: int) -> Image.Image:
    """Identify the picture and check its size from the header, decoding nothing."""
    if not data:
        raise ImageError("empty file: no image data")
    try:
        image = Image.open(io.BytesIO(data), formats=ACCEPTED_FORMATS)
    except UnidentifiedImageError as error:
        raise ImageError(
            "not an image, or its header is broken "
            f"(formats accepted: {', '.join(ACCEPTED_FORMATS)})"
        ) from error
    except Image.DecompressionBombError as error:
        raise ImageError(f"decompression bomb refused: {error}") from error
    except Exception as error:  # a malformed header can raise almost anything inside a plugin
        raise ImageError(f"broken image header: {type(error).__name__}: {error}") from error
    _check_size(image, max_pixels)
    if image.format in ("JPEG", "MPO") and image.info.get("progressive"):
        # Baseline JPEGs have one scan per picture; only progressive ones need counting.
        scans = data.count(b"\xff\xda")
        if scans > MAX_JPEG_SCANS:
            image.close()
            raise ImageError(
                f"JPEG has {scans} scans, over the limit of {MAX_JPEG_SCANS} "
                "(possible decoding-time bomb)"
            )
    return image


def _check_size(image: Image.Image, max_pixels: int) -> None:
    width, height = image.size
    if width < 1 or height < 1:
        raise ImageError(f"image has no pixels ({width}x{height})")
    if width * height > max_pixels:
        raise ImageError(
            f"image too large: {width}x{height} = {width * height} pixels "
            f"exceeds the limit of {max_pixels} (possible decompression bomb)"
        )


def _scale_for(width: int, height: int, choices: tuple[int, ...] | None = None) -> int:
    """Largest reduction keeping the shorter side >= MIN_REDUCED_SIDE."""
    shorter = min(width, height)
    if choices is None:
        return max(1, shorter // MIN_REDUCED_SIDE)
    for scale in choices:
        if shorter // scale >= MIN_REDUCED_SIDE:
            return scale
    return 1


def _axis_extra(reduced: int) -> int:
    """Further reduction of an axis still longer than MAX_REDUCED_SIDE (extreme aspect ratios)."""
    return reduced // (MAX_REDUCED_SIDE // 2) if reduced > MAX_REDUCED_SIDE else 1


Scale = tuple[int, int]
"""(horizontal, vertical) reduction: each reduced pixel is the mean of an sx x sy block."""


def _reduced_luma(frame: Image.Image) -> tuple[np.ndarray, Scale]:
    """Luma of an already-seeked frame, box-reduced; returns (plane, (sx, sy))."""
    width, height = frame.size
    if frame.mode.startswith("I;16"):
        # Pillow's RGB conversion clips 16-bit grey to white (the reference tools
        # then hash a blank, quality-0 picture); keep the top 8 bits instead.
        frame = Image.fromarray((np.asarray(frame, dtype=np.uint16) >> 8).astype(np.uint8), "L")
    elif frame.mode not in ("L", "RGB"):
        frame = frame.convert("RGB")  # what the reference pipeline does, alpha dropped
    scale = _scale_for(width, height)
    sx = scale * _axis_extra(-(-width // scale))
    sy = scale * _axis_extra(-(-height // scale))
    if (sx, sy) != (1, 1):
        frame = frame.reduce((sx, sy))
    if frame.mode == "L":
        return np.asarray(frame), (sx, sy)
    return np.asarray(frame, dtype=np.float32) @ _LUMA, (sx, sy)


def jpeg_draft_scale(width: int, height: int) -> int:
    """The DCT-domain reduction (1, 2, 4 or 8) ``hash_image`` decodes a JPEG of this size at."""
    return _scale_for(width, height, _JPEG_SCALES)


def _jpeg_luma(image: Image.Image) -> tuple[np.ndarray, Scale]:
    """Decode a JPEG's luma at 1/8, 1/4, 1/2 or full scale in the DCT domain.

    ``draft`` picks exactly the requested power-of-two scale here, and the
    decoded size is ``ceil(size / scale)``: what ``perceptual_hashes`` expects.
    """
    width, height = image.size
    scale = jpeg_draft_scale(width, height)
    if image.mode in ("RGB", "L"):
        # For YCbCr JPEGs libjpeg then emits Y only: JFIF's Y is exactly PDQ's luma.
        image.draft("L", (width // scale, height // scale))
        decoded: Image.Image = image
    else:
        image.draft("RGB", (width // scale, height // scale))  # CMYK and other rare layouts
        decoded = image.convert("RGB")
    decoded.load()
    fx, fy = _axis_extra(decoded.width), _axis_extra(decoded.height)
    if (fx, fy) != (1, 1):
        decoded = decoded.reduce((fx, fy))
    if decoded.mode == "L":
        return np.asarray(decoded), (scale * fx, scale * fy)
    return np.asarray(decoded, dtype=np.float32) @ _LUMA, (scale * fx, scale * fy)


def _sample_frames(
    frame_count: int, max_frames: int, frame_pixels: int, max_pixels: int
) -> list[int]:
    """Evenly spaced frame numbers (always including 0), within the decode budget."""
    by_pixels = max(1, (_FRAME_DECODE_BUDGET * max_pixels) // frame_pixels)
    reachable = min(frame_count, by_pixels, _MAX_SEEK_FRAMES)
    wanted = min(reachable, max(1, max_frames))
    if wanted == 1:
        return [0]
    return sorted({round(i * (reachable - 1) / (wanted - 1)) for i in range(wanted)})


def _decode_error(error: Exception) -> ImageError:
    if isinstance(error, Image.DecompressionBombError):
        return ImageError(f"decompression bomb refused: {error}")
    if isinstance(error, MemoryError):
        return ImageError("image too large to decode in memory")
    message = str(error) or type(error).__name__
    if "truncated" in message or isinstance(error, EOFError):
        return ImageError(f"truncated image: {message}")
    return ImageError(f"broken image data: {type(error).__name__}: {message}")


def hash_image(
    data: bytes,
    *,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    max_frames: int = DEFAULT_MAX_FRAMES,
) -> ImageHashes:
    """All five hashes of an image file's bytes, with one reduced decode.

    Raises ``ImageError`` when the bytes are not a supported picture, are
    broken or truncated, or the picture has more than ``max_pixels`` pixels.
    """
    md5, sha1, sha256 = _crypto(data)
    image = _open(data, max_pixels)
    width, height = image.size
    fmt = image.format or "unknown"
    try:
        frame_count = int(getattr(image, "n_frames", 1))
        if frame_count == 1 and image.format == "JPEG":
            luma, scale = _jpeg_luma(image)
        else:
            luma, scale = _reduced_luma(image)
        first = perceptual_hashes(luma, (width, height), scale)
        frames: list[FrameHashes] = []
        if frame_count > 1 and max_frames > 1:
            for index in _sample_frames(frame_count, max_frames, width * height, max_pixels)[1:]:
                image.seek(index)
                _check_size(image, max_pixels)
                frame_luma, frame_scale = _reduced_luma(image)
                hashes = perceptual_hashes(frame_luma, image.size, frame_scale)
                frames.append(
                    FrameHashes(
                        index=index,
                        pdq=hashes.pdq,
                        pdq_quality=hashes.pdq_quality,
                        phash=hashes.phash,
                    )
                )
    except ImageError:
        raise
    except Exception as error:  # decoders report broken data with many exception types
        raise _decode_error(error) from error
    finally:
        image.close()
    return ImageHashes(
        md5=md5,
        sha1=sha1,
        sha256=sha256,
        pdq=first.pdq,
        pdq_quality=first.pdq_quality,
        phash=first.phash,
        width=width,
        height=height,
        format=fmt,
        frame_count=frame_count,
        frames=frames,
    )


def check_viewable(data: bytes, *, max_pixels: int = DEFAULT_MAX_PIXELS) -> str:
    """Refuse (``ImageError``) a picture that ``hash_image`` would refuse from its header, or
    whose frames together exceed the decode budget of an animation: what may be handed to an
    analyst's browser, which decodes every frame at full size. Returns the format. Reads the
    header and the frame headers only, no pixels."""
    image = _open(data, max_pixels)
    try:
        fmt = image.format or "unknown"
        width, height = image.size
        frames = int(getattr(image, "n_frames", 1))  # GIF: walks the frame headers, decodes nothing
        if frames > _MAX_SEEK_FRAMES or frames * width * height > _FRAME_DECODE_BUDGET * max_pixels:
            raise ImageError(
                f"animation too large: {frames} frames of "
                f"{width}x{height} exceed {_FRAME_DECODE_BUDGET} x {max_pixels} pixels (possible decompression bomb)"
            )
    except ImageError:
        raise
    except Exception as error:  # broken frame headers
        raise _decode_error(error) from error
    finally:
        image.close()
    return fmt


def _reference_pdq(rgb: Image.Image) -> tuple[str, int]:
    vector, quality = pdqhash.compute(np.asarray(rgb))
    value = 0
    for bit in vector:  # most significant first, as ThreatExchange formats it
        value = (value << 1) | int(bit)
    return f"{value:064x}", int(quality)


def hash_image_reference(data: bytes, *, max_pixels: int = DEFAULT_MAX_PIXELS) -> ImageHashes:
    """The naive pipeline: full decode, ``pdqhash.compute`` and ``imagehash.phash``.

    First frame only. This is how partner banks are typically built; it is
    the baseline of the benchmarks and the yardstick of the drift checks.
    """
    md5, sha1, sha256 = _crypto(data)
    image = _open(data, max_pixels)
    try:
        frame_count = int(getattr(image, "n_frames", 1))
        fmt = image.format or "unknown"
        rgb = image.convert("RGB")
        pdq, quality = _reference_pdq(rgb)
        phash = str(imagehash.phash(image))
    except ImageError:
        raise
    except Exception as error:
        raise _decode_error(error) from error
    finally:
        image.close()
    return ImageHashes(
        md5=md5,
        sha1=sha1,
        sha256=sha256,
        pdq=pdq,
        pdq_quality=quality,
        phash=phash,
        width=rgb.width,
        height=rgb.height,
        format=fmt,
        frame_count=frame_count,
        frames=[],
    )
