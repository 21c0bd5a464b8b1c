"""The hash types the hotline matches on, as small plug-ins with one interface.

Modelled on facebook/ThreatExchange's ``SignalType``: each type knows its
name, size, how to validate and normalise a hash string, its byte form (what
the indexes store) and how to compare two hashes. Unlike ThreatExchange,
nothing returns ``""`` for "no hash": invalid input raises ``InvalidHash``
with the reason, and comparisons return an explicit ``Comparison``.

Distances are defined for every type so callers need one rule,
``distance <= radius``:

* perceptual types (PDQ, pHash): the Hamming distance between the bit
  strings, ``0 .. bits``;
* exact types (MD5, SHA-1, SHA-256): ``0`` if identical, otherwise ``bits``
  (the maximum). Two different cryptographic hashes say nothing about how
  similar the files are, so no in-between value is ever produced and the
  only sensible radius is 0.

Default radii: PDQ 31 of 256 bits is the threshold of the PDQ paper and of
ThreatExchange. pHash 10 of 64 bits, because of the bank size, not the
edits: with 64 bits a random unrelated hash lands within 10 bits with
probability ~1e-8, i.e. ~0.1 false candidates per query against a bank of
10 million (12 bits: ~2; 14 bits: ~35). ``benchmarks/bench_robustness.py``
shows radius 10 still catches every resized, re-encoded, watermarked and
greyscale copy and most small crops and rotations, with no false match
among thousands of pairs of unrelated synthetic photos (smallest unrelated
distance seen: 18); results in docs/benchmarks-hashing.md. A pHash hit
should still be confirmed (by PDQ or an analyst) before automatic action.

PDQ hashes of quality below ``PDQ_MIN_QUALITY`` (50) are too featureless to
match on and must be discarded (ThreatExchange does the same).
"""

from __future__ import annotations

import re
from abc import ABC
from dataclasses import dataclass
from typing import ClassVar

__all__ = [
    "PDQ_MIN_QUALITY",
    "SIGNAL_TYPES",
    "Comparison",
    "InvalidHash",
    "Md5Signal",
    "PdqSignal",
    "PhashSignal",
    "Sha1Signal",
    "Sha256Signal",
    "SignalType",
    "UnknownSignalType",
    "get_signal_type",
]

PDQ_MIN_QUALITY = 50
"""PDQ hashes with a quality below this are not used for matching."""

_HEX = re.compile(r"[0-9a-f]*")


class InvalidHash(ValueError):
    """A hash string of the wrong length or with non-hex characters. Never retry."""


class UnknownSignalType(ValueError):
    """A hash type name that is not in ``SIGNAL_TYPES``."""


@dataclass(frozen=True, slots=True)
class Comparison:
    """The outcome of comparing two hashes of one type."""

    distance: int
    radius: int

    @property
    def match(self) -> bool:
        return self.distance <= self.radius


class SignalType(ABC):
    """One hash type. Instances are stateless and safe to share between threads."""

    name: ClassVar[str]
    bits: ClassVar[int]
    exact: ClassVar[bool]
    default_radius: ClassVar[int]
    examples: ClassVar[tuple[str, ...]]
    """Valid hashes of synthetic pictures, for generic tests and docs: the hashes of
    ``hashing.synthetic.generate_photo_like(256, 192, seed)`` for seeds 1 and 2, saved
    as PNG by Pillow 13 (crypto hashes of those PNG bytes, perceptual of the pixels)."""

    @property
    def hex_length(self) -> int:
        return self.bits // 4

    @property
    def byte_length(self) -> int:
        return self.bits // 8

    def validate(self, value: str) -> str:
        """Return ``value`` as lowercase hex, or raise ``InvalidHash`` saying what is wrong."""
        if not isinstance(value, str):
            raise InvalidHash(f"{self.name} hash must be a string, got {type(value).__name__}")
        normalized = value.strip().lower()
        if len(normalized) != self.hex_length:
            raise InvalidHash(
                f"{self.name} hash must be {self.hex_length} hex characters "
                f"({self.bits} bits), got {len(normalized)}"
            )
        if not _HEX.fullmatch(normalized):
            bad = next(c for c in normalized if c not in "0123456789abcdef")
            raise InvalidHash(
                f"{self.name} hash must contain only hex digits 0-9a-f, found {bad!r}"
            )
        return normalized

    def is_valid(self, value: str) -> bool:
        try:
            self.validate(value)
        except InvalidHash:
            return False
        return True

    def to_bytes(self, value: str) -> bytes:
        """The compact form the indexes store (``bits / 8`` bytes, big-endian)."""
        return bytes.fromhex(self.validate(value))

    def from_bytes(self, raw: bytes) -> str:
        if len(raw) != self.byte_length:
            raise InvalidHash(f"{self.name} hash must be {self.byte_length} bytes, got {len(raw)}")
        return raw.hex()

    def distance(self, a: str, b: str) -> int:
        """Hamming distance for perceptual types; 0 or ``bits`` for exact ones (see module doc)."""
        left, right = self.validate(a), self.validate(b)
        if self.exact:
            return 0 if left == right else self.bits
        return (int(left, 16) ^ int(right, 16)).bit_count()

    def compare(self, a: str, b: str, radius: int | None = None) -> Comparison:
        """Distance of ``a`` and ``b`` and whether it is within ``radius`` (default: the type's)."""
        limit = self.default_radius if radius is None else radius
        if not 0 <= limit <= self.bits:
            raise ValueError(f"{self.name} radius must be within 0..{self.bits}, got {limit}")
        if self.exact and limit != 0:
            raise ValueError(f"{self.name} is an exact hash: the only radius is 0, got {limit}")
        return Comparison(distance=self.distance(a, b), radius=limit)

    def usable(self, quality: int | None) -> bool:
        """Whether a hash of this quality may be matched on (only PDQ has a quality)."""
        return True

    def __repr__(self) -> str:
        return f"<SignalType {self.name}: {self.bits} bits, radius {self.default_radius}>"


class Md5Signal(SignalType):
    name = "md5"
    bits = 128
    exact = True
    default_radius = 0
    examples = ("11accac1ac1507aefbfdf0948c9fbf39", "a34b7117a6097c614eb5f78c19faece6")


class Sha1Signal(SignalType):
    name = "sha1"
    bits = 160
    exact = True
    default_radius = 0
    examples = (
        "f837d912fdb93a0340889363f42ec555c4a08471",
        "bfaa0ed733a2c7e204716ce8f96f4cc63e3a2083",
    )


class Sha256Signal(SignalType):
    name = "sha256"
    bits = 256
    exact = True
    default_radius = 0
    examples = (
        "2de48ac9236c7faf3914f7ef3bc03cbee1aad9d1ad5a347fc7fd966db7c059b9",
        "f1d94250fe55ea7fc8b71b0968a54e13c379de0d0f798c0bd2d0d237eaff1c16",
    )


class PdqSignal(SignalType):
    name = "pdq"
    bits = 256
    exact = False
    default_radius = 31
    min_quality: ClassVar[int] = PDQ_MIN_QUALITY
    examples = (
        "3d0593eaecb905c23a1468b66b957d760ad4ec2045b1ef8788c5d52b8c5b3e6d",
        "4e56ad755a5290a9542c2f56a9529990afcb4e0aa3913916afd9c55666ef5539",
    )

    def usable(self, quality: int | None) -> bool:
        return quality is not None and quality >= self.min_quality


class PhashSignal(SignalType):
    name = "phash"
    bits = 64
    exact = False
    default_radius = 10
    examples = ("b7db6d6a11f04682", "ea4e7bb5cda44428")


SIGNAL_TYPES: dict[str, SignalType] = {
    signal.name: signal
    for signal in (Md5Signal(), Sha1Signal(), Sha256Signal(), PdqSignal(), PhashSignal())
}
"""Every hash type by name, in the order of the bank CSV columns."""


def get_signal_type(name: str) -> SignalType:
    """The signal type called ``name`` (case-insensitive), or ``UnknownSignalType``."""
    try:
        return SIGNAL_TYPES[name.strip().lower()]
    except (KeyError, AttributeError):
        raise UnknownSignalType(
            f"unknown hash type {name!r}; known: {', '.join(SIGNAL_TYPES)}"
        ) from None
