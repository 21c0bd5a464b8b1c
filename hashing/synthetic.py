"""Synthetic, photo-like test images, generated in memory from a seed.

SYNTHETIC TEST DATA ONLY. The project never downloads, embeds or links real
imagery; every test, benchmark and demo that needs a picture makes one here
from gradients, blurred noise, random shapes and fine grain. The pictures
only have to *behave* like photographs for the hashes and the codecs: smooth
colour fields (so perceptual hashes have low-frequency structure to grip),
edges (so PDQ quality is realistic) and grain (so a 1024x768 JPEG at quality
85 weighs about as much as a camera photo scaled to that size, ~230 KB, and
the decoder does a realistic amount of entropy decoding).

Nothing here writes to disk: callers get a ``PIL.Image`` or encoded bytes.
"""

from __future__ import annotations

import io

import numpy as np
from PIL import Image, ImageDraw, ImageFilter, ImageFont

__all__ = [
    "encode",
    "generate_animated_gif",
    "generate_photo_like",
    "jpeg_bytes",
    "photo_like_jpeg",
]


def _smooth_field(
    rng: np.random.Generator, width: int, height: int, cells: int, channels: int
) -> np.ndarray:
    """Random values on a coarse grid, upsampled bicubically: soft colour fields."""
    gw = max(2, cells)
    gh = max(2, round(cells * height / max(width, 1)))
    coarse = rng.uniform(0, 255, size=(gh, gw, channels)).astype(np.uint8)
    planes = [
        np.asarray(
            Image.fromarray(coarse[:, :, c], "L").resize((width, height), Image.Resampling.BICUBIC),
            dtype=np.float32,
        )
        for c in range(channels)
    ]
    return np.stack(planes, axis=2)


def generate_photo_like(width: int, height: int, seed: int = 0) -> Image.Image:
    """A deterministic RGB picture with the statistics of a photograph.

    The same ``(width, height, seed)`` gives the same pixels on every run.
    Different seeds give unrelated pictures (used for false-match rates).
    """
    if width < 1 or height < 1:
        raise ValueError(f"image size must be positive, got {width}x{height}")
    rng = np.random.default_rng(seed)

    # Large soft colour regions plus mid-scale variation ("objects", lighting).
    base = _smooth_field(rng, width, height, cells=4, channels=3)
    mid = _smooth_field(rng, width, height, cells=14, channels=3)
    pixels = 0.65 * base + 0.35 * mid

    canvas = Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8), "RGB")
    draw = ImageDraw.Draw(canvas)
    scale = min(width, height)
    for _ in range(int(rng.integers(6, 14))):
        x0 = int(rng.integers(-scale // 4, width))
        y0 = int(rng.integers(-scale // 4, height))
        w = int(rng.integers(max(2, scale // 12), max(3, scale // 2)))
        h = int(rng.integers(max(2, scale // 12), max(3, scale // 2)))
        colour = tuple(int(v) for v in rng.integers(0, 256, size=3))
        shape = rng.integers(0, 3)
        if shape == 0:
            draw.ellipse((x0, y0, x0 + w, y0 + h), fill=colour)
        elif shape == 1:
            draw.rectangle((x0, y0, x0 + w, y0 + h), fill=colour)
        else:
            points = [
                (int(x0 + rng.integers(0, w)), int(y0 + rng.integers(0, h))) for _ in range(3)
            ]
            draw.polygon(points, fill=colour)
    # Soften the shapes a little: real edges are not one pixel sharp.
    canvas = canvas.filter(ImageFilter.GaussianBlur(radius=max(0.8, scale / 600)))

    # Fine grain (sensor noise / texture), slightly blurred so it is not pure white noise.
    grain = rng.normal(0.0, 9.0, size=(height, width, 1)).astype(np.float32)
    grain_img = Image.fromarray(np.clip(grain[:, :, 0] + 128, 0, 255).astype(np.uint8), "L")
    grain = np.asarray(grain_img.filter(ImageFilter.GaussianBlur(radius=0.6)), dtype=np.float32)
    out = np.asarray(canvas, dtype=np.float32) + (grain[:, :, None] - 128.0) * 2.25
    return Image.fromarray(np.clip(out, 0, 255).astype(np.uint8), "RGB")


def encode(image: Image.Image, fmt: str = "JPEG", **params: object) -> bytes:
    """Encode a picture in memory (never on disk)."""
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **params)
    return buffer.getvalue()


def jpeg_bytes(image: Image.Image, quality: int = 85) -> bytes:
    """JPEG bytes of ``image`` at the given quality, with 4:2:0 chroma like most cameras."""
    return encode(image.convert("RGB"), "JPEG", quality=quality, subsampling=2)


def photo_like_jpeg(width: int, height: int, seed: int = 0, quality: int = 85) -> bytes:
    """Shortcut: a synthetic photo-like picture encoded as JPEG."""
    return jpeg_bytes(generate_photo_like(width, height, seed), quality=quality)


def generate_animated_gif(
    frames: int, width: int = 96, height: int = 64, seed: int = 0, duration_ms: int = 80
) -> bytes:
    """An animated GIF whose frames are visibly different (a moving label on a field)."""
    if frames < 1:
        raise ValueError("an animation needs at least one frame")
    background = generate_photo_like(width, height, seed)
    font = ImageFont.load_default()
    pictures = []
    for index in range(frames):
        frame = background.copy()
        draw = ImageDraw.Draw(frame)
        offset = (index * 7) % max(1, width - 20)
        draw.rectangle((offset, 0, offset + width // 3, height), fill=(20 * (index % 12), 0, 90))
        draw.text((4, height // 2), f"frame {index}", fill=(255, 255, 255), font=font)
        pictures.append(frame.convert("P", palette=Image.Palette.ADAPTIVE))
    return encode(
        pictures[0],
        "GIF",
        save_all=True,
        append_images=pictures[1:],
        duration=duration_ms,
        loop=0,
        disposal=1,
    )
