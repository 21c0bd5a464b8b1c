"""ClassifyStage end to end on loopback: what kind of bank match leads where.

Exact and PDQ matches are strong enough for an automatic notice; a pHash-only near match
goes to an analyst first; an animation is known when any sampled frame is.
"""

from __future__ import annotations

import io
import ipaddress
from collections.abc import Iterator

import httpx
import pytest
from PIL import Image

from doubles.loopback import LoopbackSite
from hashing.image import hash_image
from hashing.matcher import BankMatcher, BankRecord
from hashing.synthetic import generate_photo_like, photo_like_jpeg
from services.classify.fetcher import Fetcher, FetchPolicy
from services.classify.hosting import HostingDirectory, HostingResolver, NetworkEntry
from services.classify.stage import ClassifyStage


class LoopbackOnly(httpx.HTTPTransport):
    """Refuses (and records) any connection that would leave loopback."""

    def __init__(self) -> None:
        super().__init__()
        self.refused: list[str] = []

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        host = request.url.host.strip("[]")
        if not ipaddress.ip_address(host).is_loopback:
            self.refused.append(host)
            raise httpx.ConnectError(f"test transport refuses {host}")
        return super().handle_request(request)


@pytest.fixture()
def site() -> Iterator[LoopbackSite]:
    s = LoopbackSite("127.0.0.2").start()
    yield s
    s.stop()


def two_picture_gif() -> bytes:
    """An animation whose second frame is an unrelated picture (a frame hidden in a GIF)."""
    first = generate_photo_like(240, 180, seed=21).convert("P", palette=Image.Palette.ADAPTIVE)
    second = generate_photo_like(240, 180, seed=22).convert("P", palette=Image.Palette.ADAPTIVE)
    out = io.BytesIO()
    first.save(out, "GIF", save_all=True, append_images=[second], duration=100, loop=0)
    return out.getvalue()


def stage_with(bank: BankMatcher, transport: LoopbackOnly) -> ClassifyStage:
    hosting = HostingResolver(
        HostingDirectory(
            {"img.hoster-a.test": ["127.0.0.2"]},
            [(ipaddress.ip_network("127.0.0.2/32"),
              NetworkEntry(range="127.0.0.2/32", country="NL", hoster="Hoster A", abuse="abuse@a.test"))],
        )
    )
    return ClassifyStage(
        fetcher=Fetcher(FetchPolicy(allow_private=True), resolve=hosting.addresses, transport=transport),
        hash_image=hash_image,
        match=bank.match_batch,
        hosting=hosting,
        partner_names={},
    )


@pytest.mark.parametrize(
    ("bank_columns", "route", "signal"),
    [
        (("md5",), "ntd", "md5"),
        (("sha256",), "ntd", "sha256"),
        (("pdq",), "ntd", "pdq"),
        (("phash",), "assessment", "phash"),
        ((), "assessment", None),
    ],
)
def test_match_strength_decides_the_route(
    site: LoopbackSite, bank_columns: tuple[str, ...], route: str, signal: str | None
) -> None:
    data = photo_like_jpeg(640, 480, seed=11)
    h = hash_image(data)
    site.add("/img.jpg", "image/jpeg", data)
    bank = BankMatcher()
    bank.add([BankRecord(id=1, category="baseline", source="test", **{c: getattr(h, c) for c in bank_columns})])
    transport = LoopbackOnly()

    result = stage_with(bank, transport).classify("item-1", f"http://img.hoster-a.test:{site.port}/img.jpg")

    assert result.route == route
    match = result.images[0].match
    assert (match.signal if match else None) == signal
    if signal == "phash":
        assert "pHash" in result.reason and not result.known
    assert transport.refused == []


def test_a_known_frame_inside_an_animation_is_found(site: LoopbackSite) -> None:
    gif = two_picture_gif()
    hashes = hash_image(gif)
    assert hashes.frames, "the second frame must be hashed"
    hidden = hashes.frames[0]
    assert hidden.pdq != hashes.pdq
    site.add("/anim.gif", "image/gif", gif)
    bank = BankMatcher()
    bank.add([BankRecord(id=7, category="baseline", source="test", pdq=hidden.pdq)])

    result = stage_with(bank, LoopbackOnly()).classify("item-2", f"http://img.hoster-a.test:{site.port}/anim.gif")

    assert result.route == "ntd"
    assert result.images[0].match is not None and result.images[0].match.entry_id == 7


def test_an_unrelated_animation_is_not_known(site: LoopbackSite) -> None:
    site.add("/anim.gif", "image/gif", two_picture_gif())
    other = hash_image(photo_like_jpeg(240, 180, seed=99))
    bank = BankMatcher()
    bank.add([BankRecord(id=8, category="baseline", source="test", pdq=other.pdq)])

    result = stage_with(bank, LoopbackOnly()).classify("item-3", f"http://img.hoster-a.test:{site.port}/anim.gif")

    assert result.route == "assessment" and result.images[0].match is None


def test_a_tor_hidden_service_is_never_fetched_or_looked_up() -> None:
    class NoLookups(HostingResolver):
        def addresses(self, host: str) -> list[str]:
            raise AssertionError(f"looked up {host}")

    transport = LoopbackOnly()
    stage = stage_with(BankMatcher(), transport)
    stage.hosting = NoLookups(HostingDirectory.empty())
    stage.fetcher = Fetcher(FetchPolicy(allow_private=True), resolve=stage.hosting.addresses, transport=transport)

    result = stage.classify("item-onion", "http://" + "c" * 56 + ".onion/a.jpg")

    assert result.route == "police" and "Tor hidden service" in result.reason and "police" in result.reason
    assert result.images == [] and not result.known
    assert transport.refused == []
