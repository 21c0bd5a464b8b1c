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

This module is the one registry of hash types: the matcher, the snapshot, the
bank's CSV columns, classify and the HashCheck API all take the names, widths,
exact/near split and radii from ``SIGNAL_TYPES`` (``tests/unit/test_signals.py``
checks that each of them lists exactly these names). Adding a type means one
class here, plus its database column.

Radii: one per type, ``default_radius``; the settings ``HOTLINE_PDQ_RADIUS``
and ``HOTLINE_PHASH_RADIUS`` default to it. PDQ 31 of 256 bits is the
threshold of the PDQ paper and of ThreatExchange. pHash 8 of 64 bits, because
of the bank size, not the edits: with 64 bits a random unrelated hash lands
within 8 bits with probability ~3e-10, i.e. ~0.003 false candidates per query
against a bank of 10 million (10 bits: ~0.1; 12 bits: ~2; 14 bits: ~35).
``benchmarks/bench_robustness.py`` shows radius 8 still catches every resized,
re-encoded, watermarked and greyscale copy, most small crops and about half
of the 3° rotations (radius 10: three quarters), with no false match among
thousands of pairs of unrelated synthetic photos (smallest unrelated distance seen: 18);
results in docs/benchmarks-hashing.md. A pHash hit is ``weak``: it should be
confirmed (by PDQ or an analyst) before automatic action.

Quality (PDQ only): a PDQ hash whose quality is *known* and below
``PDQ_MIN_QUALITY`` (50) is too featureless to match on and is never matched
(ThreatExchange does the same). A PDQ hash whose quality is *unknown*
(``None``) is matched: a hoster's HashCheck query and a bank CSV carry no
quality. ``SignalType.usable`` is that rule and ``BankMatcher.match`` applies
it; callers pass the quality as the keyword ``quality_key`` (``pdq_quality``).
"""

from __future__ import annotations

import re
from abc import ABC
from collections.abc import Mapping
from dataclasses import dataclass
from typing import ClassVar

__all__ = [
    "EXACT_SIGNALS",
    "NEAR_SIGNALS",
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
    "radii",
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
    label: ClassVar[str]
    """How people write the name (``SHA-256``, ``pHash``), for messages and docs."""
    bits: ClassVar[int]
    exact: ClassVar[bool]
    default_radius: ClassVar[int]
    """The match radius (inclusive); 0 for exact types. The only literal radius in the code."""
    weak: ClassVar[bool] = False
    """A hit on this type alone is a hint, not proof: classify routes it to an analyst."""
    quality_key: ClassVar[str | None] = None
    """The keyword under which callers pass this type's quality (``pdq_quality``), if any."""
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
        limit = self.default_radius if radius is None else self.check_radius(radius)
        return Comparison(distance=self.distance(a, b), radius=limit)

    def check_radius(self, radius: int) -> int:
        """``radius`` if it is one this type can match within, else ``ValueError``."""
        if not 0 <= radius <= self.bits:
            raise ValueError(f"{self.name} radius must be within 0..{self.bits}, got {radius}")
        if self.exact and radius != 0:
            raise ValueError(f"{self.name} is an exact hash: the only radius is 0, got {radius}")
        return radius

    def usable(self, quality: int | None) -> bool:
        """Whether a hash of this quality may be matched on (only PDQ has a quality;
        ``None`` = unknown, which is matched: see the module docstring)."""
        return True

    def __repr__(self) -> str:
        return f"<SignalType {self.name}: {self.bits} bits, radius {self.default_radius}>"


class Md5Signal(SignalType):
    name = "md5"
    label = "MD5"
    bits = 128
    exact = True
    default_radius = 0
    examples = ("11accac1ac1507aefbfdf0948c9fbf39", "a34b7117a6097c614eb5f78c19faece6")


class Sha1Signal(SignalType):
    name = "sha1"
    label = "SHA-1"
    bits = 160
    exact = True
    default_radius = 0
    examples = (
        "f837d912fdb93a0340889363f42ec555c4a08471",
        "bfaa0ed733a2c7e204716ce8f96f4cc63e3a2083",
    )


class Sha256Signal(SignalType):
    name = "sha256"
    label = "SHA-256"
    bits = 256
    exact = True
    default_radius = 0
    examples = (
        "2de48ac9236c7faf3914f7ef3bc03cbee1aad9d1ad5a347fc7fd966db7c059b9",
        "f1d94250fe55ea7fc8b71b0968a54e13c379de0d0f798c0bd2d0d237eaff1c16",
    )


class PdqSignal(SignalType):
    name = "pdq"
    label = "PDQ"
    bits = 256
    exact = False
    default_radius = 31
    min_quality: ClassVar[int] = PDQ_MIN_QUALITY
    quality_key = "pdq_quality"
    examples = (
        "3d0593eaecb905c23a1468b66b957d760ad4ec2045b1ef8788c5d52b8c5b3e6d",
        "4e56ad755a5290a9542c2f56a9529990afcb4e0aa3913916afd9c55666ef5539",
    )

    def usable(self, quality: int | None) -> bool:
        return quality is None or quality >= self.min_quality


class PhashSignal(SignalType):
    name = "phash"
    label = "pHash"
    bits = 64
    exact = False
    default_radius = 8
    weak = True
    examples = ("b7db6d6a11f04682", "ea4e7bb5cda44428")


SIGNAL_TYPES: dict[str, SignalType] = {
    signal.name: signal
    for signal in (Md5Signal(), Sha1Signal(), Sha256Signal(), PdqSignal(), PhashSignal())
}
"""Every hash type by name, in the order of the bank CSV columns."""

EXACT_SIGNALS: tuple[str, ...] = tuple(n for n, s in SIGNAL_TYPES.items() if s.exact)
"""Names of the exact (cryptographic) types, in registry order."""
NEAR_SIGNALS: tuple[str, ...] = tuple(n for n, s in SIGNAL_TYPES.items() if not s.exact)
"""Names of the perceptual types (matched within a Hamming radius), in registry order."""


def get_signal_type(name: str) -> SignalType:
    """The signal type called ``name`` (case-insensitive), or ``UnknownSignalType``."""
    try:
        return SIGNAL_TYPES[name.strip().lower()]
    except (KeyError, AttributeError):
        raise UnknownSignalType(
            f"unknown hash type {name!r}; known: {', '.join(SIGNAL_TYPES)}"
        ) from None


def radii(overrides: Mapping[str, int | None] | None = None) -> dict[str, int]:
    """The match radius of every type: ``default_radius``, unless ``overrides`` names another
    (``None`` values mean "the default"). Raises ``UnknownSignalType`` for a name not in the
    registry and ``ValueError`` for a radius outside ``0..bits`` or non-zero for an exact type.
    """
    out = {name: signal.default_radius for name, signal in SIGNAL_TYPES.items()}
    for name, radius in (overrides or {}).items():
        if radius is None:
            continue
        signal = get_signal_type(name)
        out[signal.name] = signal.check_radius(radius)
    return out
