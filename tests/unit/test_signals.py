"""One generic suite that every hash type (signal type) must pass, plus per-type facts, and
proof that the registry is the only list of hash types (every consumer derives from it)."""

from __future__ import annotations

import hashlib
from dataclasses import fields

import pytest

from hashing.image import FrameHashes, ImageHashes, hash_image
from hashing.matcher import MATCH_ORDER, BankMatcher, BankRecord
from hashing.signals import (
    EXACT_SIGNALS,
    NEAR_SIGNALS,
    PDQ_MIN_QUALITY,
    SIGNAL_TYPES,
    Comparison,
    InvalidHash,
    SignalType,
    UnknownSignalType,
    get_signal_type,
    radii,
)
from hashing.snapshot import HASH_BYTES, CompactBankMatcher
from hashing.synthetic import encode, generate_photo_like
from hotline.config import Settings
from hotline.storage.models import BankEntry
from schemas.facts import ImageFacts
from services.bank.bank import CSV_COLUMNS, HASH_COLUMNS
from services.classify.stage import HASH_FIELDS
from services.hashcheck.logic import BatchRejected, parse_batch
from services.hashcheck.routes import HashQuery

ALL = list(SIGNAL_TYPES.values())
IDS = list(SIGNAL_TYPES)


@pytest.fixture(scope="module")
def hashed_pictures() -> list[dict[str, str]]:
    """Hashes of freshly generated synthetic pictures, as the pipeline produces them."""
    rows = []
    for seed in (11, 12, 13):
        hashes = hash_image(encode(generate_photo_like(200, 150, seed), "PNG"))
        rows.append({name: getattr(hashes, name) for name in SIGNAL_TYPES})
    return rows


def _flip(value: str, nibble: int = 0) -> str:
    """The same hash with one hex digit changed (1 to 4 bits differ)."""
    digit = "0123456789abcdef"[(int(value[nibble], 16) + 1) % 16]
    return value[:nibble] + digit + value[nibble + 1 :]


def test_registry_names_and_sizes() -> None:
    assert list(SIGNAL_TYPES) == ["md5", "sha1", "sha256", "pdq", "phash"]
    sizes = {name: signal.bits for name, signal in SIGNAL_TYPES.items()}
    assert sizes == {"md5": 128, "sha1": 160, "sha256": 256, "pdq": 256, "phash": 64}
    assert get_signal_type(" PDQ ") is SIGNAL_TYPES["pdq"]


def test_unknown_signal_type_names_the_known_ones() -> None:
    with pytest.raises(UnknownSignalType, match="md5, sha1, sha256, pdq, phash"):
        get_signal_type("tmk")


@pytest.mark.parametrize("signal", ALL, ids=IDS)
class TestEverySignalType:
    def test_examples_are_valid_and_normalized(self, signal: SignalType) -> None:
        assert len(signal.examples) >= 2
        for example in signal.examples:
            assert signal.validate(example) == example
            assert len(example) == signal.hex_length == signal.bits // 4

    def test_validate_normalizes_case_and_whitespace(self, signal: SignalType) -> None:
        example = signal.examples[0]
        assert signal.validate(f"  {example.upper()}\n") == example

    @pytest.mark.parametrize(
        "mutate, reason",
        [
            (lambda h: h[:-1], "hex characters"),
            (lambda h: h + "0", "hex characters"),
            (lambda h: "", "got 0"),
            (lambda h: "g" + h[1:], "only hex digits"),
            (lambda h: h[:-2] + " 0", "only hex digits"),
            (lambda h: "0x" + h[2:], "only hex digits"),
        ],
        ids=["short", "long", "empty", "non-hex", "inner-space", "0x-prefix"],
    )
    def test_validate_rejects_bad_input_with_reason(
        self, signal: SignalType, mutate, reason: str
    ) -> None:
        with pytest.raises(InvalidHash, match=reason) as raised:
            signal.validate(mutate(signal.examples[0]))
        assert signal.name in str(raised.value)
        assert not signal.is_valid(mutate(signal.examples[0]))

    def test_validate_rejects_non_strings(self, signal: SignalType) -> None:
        with pytest.raises(InvalidHash, match="must be a string"):
            signal.validate(bytes.fromhex(signal.examples[0]))  # type: ignore[arg-type]

    def test_round_trip_str_bytes_str(self, signal: SignalType) -> None:
        for example in signal.examples:
            raw = signal.to_bytes(example.upper())
            assert len(raw) == signal.byte_length
            assert signal.from_bytes(raw) == example

    def test_from_bytes_rejects_wrong_length(self, signal: SignalType) -> None:
        with pytest.raises(InvalidHash, match="bytes"):
            signal.from_bytes(b"\x00" * (signal.byte_length + 1))

    def test_distance_identical_is_zero_and_symmetric(self, signal: SignalType) -> None:
        a, b = signal.examples[:2]
        assert signal.distance(a, a) == 0
        assert signal.distance(a, a.upper()) == 0
        assert signal.distance(a, b) == signal.distance(b, a)
        assert 0 < signal.distance(a, b) <= signal.bits

    def test_distance_of_a_small_change(self, signal: SignalType) -> None:
        a = signal.examples[0]
        changed = _flip(a)
        expected = signal.bits if signal.exact else (int(a, 16) ^ int(changed, 16)).bit_count()
        assert signal.distance(a, changed) == expected
        assert signal.exact or 1 <= expected <= 4

    def test_compare_uses_default_radius(self, signal: SignalType) -> None:
        a, b = signal.examples[:2]
        assert signal.compare(a, a) == Comparison(distance=0, radius=signal.default_radius)
        assert signal.compare(a, a).match
        assert not signal.compare(a, b).match  # unrelated synthetic pictures
        assert signal.compare(a, _flip(a)).match is (not signal.exact)

    def test_compare_rejects_out_of_range_radius(self, signal: SignalType) -> None:
        with pytest.raises(ValueError, match="radius"):
            signal.compare(signal.examples[0], signal.examples[0], radius=signal.bits + 1)

    def test_distance_rejects_invalid_hashes(self, signal: SignalType) -> None:
        with pytest.raises(InvalidHash):
            signal.distance(signal.examples[0], "xyz")

    def test_hashes_of_generated_pictures_validate(
        self, signal: SignalType, hashed_pictures: list[dict[str, str]]
    ) -> None:
        values = [row[signal.name] for row in hashed_pictures]
        for value in values:
            assert signal.validate(value) == value
            assert signal.from_bytes(signal.to_bytes(value)) == value
        assert len(set(values)) == len(values)  # different pictures, different hashes

    def test_regenerated_example_pictures_hash_to_the_examples(self, signal: SignalType) -> None:
        """The examples are hashes of generate_photo_like(256, 192, seed 1 / 2) as PNG."""
        for seed, example in zip((1, 2), signal.examples, strict=False):
            png = encode(generate_photo_like(256, 192, seed), "PNG")
            value = getattr(hash_image(png), signal.name)
            if signal.exact:
                # Encoder versions may change the bytes; what must hold is hashlib equality.
                assert value == hashlib.new(signal.name, png).hexdigest()
            else:
                assert signal.distance(value, example) <= 4


def test_exact_types_allow_only_radius_zero() -> None:
    md5 = SIGNAL_TYPES["md5"]
    with pytest.raises(ValueError, match="only radius is 0"):
        md5.compare(md5.examples[0], md5.examples[0], radius=3)


def test_pdq_quality_gate() -> None:
    pdq = SIGNAL_TYPES["pdq"]
    assert PDQ_MIN_QUALITY == 50
    assert pdq.usable(50) and pdq.usable(100)
    assert not pdq.usable(49)
    assert pdq.usable(None)  # unknown quality (a HashCheck query, a bank CSV row) is matched
    assert SIGNAL_TYPES["phash"].usable(None)


def test_default_radii() -> None:
    radii = {name: signal.default_radius for name, signal in SIGNAL_TYPES.items()}
    assert radii == {"md5": 0, "sha1": 0, "sha256": 0, "pdq": 31, "phash": 8}
    assert all(signal.exact == (signal.default_radius == 0) for signal in ALL)


# --------------------------------------------------------------------------- one registry


def test_radii_are_the_registry_defaults_unless_overridden() -> None:
    assert radii() == {name: s.default_radius for name, s in SIGNAL_TYPES.items()}
    assert radii({"phash": 12, "pdq": None})["phash"] == 12
    assert radii({"phash": 12})["pdq"] == SIGNAL_TYPES["pdq"].default_radius
    with pytest.raises(UnknownSignalType):
        radii({"crc32": 3})
    with pytest.raises(ValueError, match="only radius is 0"):
        radii({"md5": 1})
    with pytest.raises(ValueError, match="within 0..64"):
        radii({"phash": 65})


@pytest.mark.parametrize("quality", [None, 0, PDQ_MIN_QUALITY - 1, PDQ_MIN_QUALITY, 100])
@pytest.mark.parametrize(
    "signal", [s for s in ALL if s.quality_key], ids=[s.name for s in ALL if s.quality_key]
)
def test_matcher_matches_exactly_what_the_registry_calls_usable(
    signal: SignalType, quality: int | None
) -> None:
    """One quality rule: ``SignalType.usable`` and ``BankMatcher.match`` never disagree."""
    matcher = BankMatcher()
    matcher.add([BankRecord(id=1, category="c", source="s", **{signal.name: signal.examples[0]})])
    assert signal.quality_key is not None
    hit = matcher.match(**{signal.name: signal.examples[0], signal.quality_key: quality})
    assert (hit is not None) == signal.usable(quality)


def test_every_consumer_lists_exactly_the_registry() -> None:
    """Adding a hash type is one class in ``hashing.signals`` (plus its database column):
    every consumer below derives its list from the registry, and this fails if one does not."""
    names = list(SIGNAL_TYPES)
    exact = [n for n, s in SIGNAL_TYPES.items() if s.exact]
    near = [n for n, s in SIGNAL_TYPES.items() if not s.exact]
    qualities = [s.quality_key for s in ALL if s.quality_key]
    assert (list(EXACT_SIGNALS), list(NEAR_SIGNALS)) == (exact, near)

    # matcher: one index per type, of the type's width, at the type's radius
    matcher = BankMatcher()
    assert list(matcher._exact) == exact and list(matcher._near) == near
    assert {n: i.nbytes for n, i in matcher._exact.items()} == {
        n: SIGNAL_TYPES[n].byte_length for n in exact
    }
    assert {n: i.bits for n, i in matcher._near.items()} == {n: SIGNAL_TYPES[n].bits for n in near}
    assert matcher.radius == {n: s.default_radius for n, s in SIGNAL_TYPES.items()}
    assert sorted(MATCH_ORDER) == sorted(names)
    assert [f.name for f in fields(BankRecord)] == ["id", "category", "source", *names]

    # snapshot
    compact = CompactBankMatcher()
    assert list(compact._exact) == exact and list(compact._near) == near
    assert HASH_BYTES == {n: s.byte_length for n, s in SIGNAL_TYPES.items()}

    # bank: CSV columns and database columns
    assert list(HASH_COLUMNS) == names and list(CSV_COLUMNS) == [*names, "category", "source"]
    columns = BankEntry.__table__.c
    assert {n: columns[n].type.length for n in names} == {
        n: s.hex_length for n, s in SIGNAL_TYPES.items()
    }

    # classify: what it hashes, matches on and records per image
    assert list(HASH_FIELDS) == [*names, *qualities]
    assert set(HASH_FIELDS) <= set(ImageFacts.model_fields)
    assert set(HASH_FIELDS) <= set(ImageHashes.model_fields)
    assert set(near) | set(qualities) <= set(FrameHashes.model_fields)

    # HashCheck: the documented types and the accepted ones
    assert HashQuery.model_json_schema()["properties"]["type"]["enum"] == names
    batch = parse_batch(
        {"hashes": [{"type": n, "value": s.examples[0]} for n, s in SIGNAL_TYPES.items()]}
    )
    assert sorted(batch.positions) == sorted(names)
    with pytest.raises(BatchRejected) as refused:
        parse_batch({"hashes": [{"type": "crc32", "value": "00"}]})
    assert refused.value.errors[0]["reason"].endswith("known: " + ", ".join(names))

    # settings: radii default to the registry's
    assert Settings().radii() == {n: s.default_radius for n, s in SIGNAL_TYPES.items()}
