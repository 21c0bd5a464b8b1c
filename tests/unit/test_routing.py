"""decide_route: the routing table of the architecture, row by row."""

from __future__ import annotations

import pytest

from schemas.facts import HostingFacts
from services.classify.routing import RouteDecision, decide_route

NL_WITH_ABUSE = HostingFacts(host="a.test", ip="192.0.2.1", country="NL", hoster="Hoster A B.V.", abuse="abuse@a.test")
NL_NO_ABUSE = HostingFacts(host="b.test", ip="192.0.2.2", country="NL", hoster="Hoster B B.V.")
DE = HostingFacts(host="c.test", ip="192.0.2.3", country="DE", hoster="Hoster DE GmbH", abuse="abuse@c.test")
US = HostingFacts(host="d.test", ip="192.0.2.4", country="US", hoster="Hoster US Inc.", abuse="abuse@d.test")
UNKNOWN_COUNTRY = HostingFacts(host="e.test", source="unknown")


def route(**kw: object) -> RouteDecision:
    args: dict[str, object] = {
        "online": True,
        "offline_reason": "",
        "known": False,
        "image_count": 1,
        "hosting": NL_WITH_ABUSE,
        "home_country": "NL",
        "partner_countries": {"DE"},
    }
    args.update(kw)
    return decide_route(**args)  # type: ignore[arg-type]


def test_offline_closes_with_the_given_reason() -> None:
    d = route(online=False, offline_reason="the URL answered HTTP 404", known=True)
    assert d.route == "closed_offline"
    assert d.reason == "the URL answered HTTP 404"
    assert d.partner_country is None


def test_known_at_home_with_abuse_contact_is_a_takedown_notice() -> None:
    d = route(known=True, hosting=NL_WITH_ABUSE)
    assert d.route == "ntd"
    assert "abuse@a.test" in d.reason and "Hoster A B.V." in d.reason


def test_known_at_home_without_abuse_contact_needs_an_analyst() -> None:
    d = route(known=True, hosting=NL_NO_ABUSE)
    assert d.route == "assessment"
    assert "abuse contact" in d.reason


def test_known_abroad_with_partner_is_forwarded_to_that_country() -> None:
    d = route(known=True, hosting=DE, partner_countries={"DE", "FR"})
    assert d.route == "forward"
    assert d.partner_country == "DE"
    assert "DE" in d.reason


def test_known_abroad_without_partner_is_noticed_at_the_foreign_hoster() -> None:
    # SCART's "assign to hosting country": an NTD to the hoster there (classify adds the
    # police's record, reason no_partner).
    d = route(known=True, hosting=US, partner_countries={"DE"})
    assert d.route == "ntd"
    assert "US" in d.reason and "no partner" in d.reason and "abuse@d.test" in d.reason
    assert d.partner_country is None


def test_known_abroad_without_partner_or_abuse_contact_needs_an_analyst() -> None:
    us_no_abuse = US.model_copy(update={"abuse": None})
    d = route(known=True, hosting=us_no_abuse, partner_countries={"DE"})
    assert d.route == "assessment"
    assert "US" in d.reason and "no partner" in d.reason


def test_known_with_unknown_country_needs_an_analyst() -> None:
    for hosting in (UNKNOWN_COUNTRY, None):
        d = route(known=True, hosting=hosting)
        assert d.route == "assessment"
        assert "could not be determined" in d.reason


def test_home_country_decides_not_the_partner_list() -> None:
    # A partner registered for the home country does not turn a home NTD into a forward.
    assert route(known=True, hosting=NL_WITH_ABUSE, partner_countries={"NL", "DE"}).route == "ntd"
    # The same DE hosting is a takedown when the hotline itself is German.
    d = route(known=True, hosting=DE, home_country="DE", partner_countries={"DE"})
    assert d.route == "ntd"


@pytest.mark.parametrize("hosting", [NL_WITH_ABUSE, DE, US, None])
def test_unknown_material_goes_to_an_analyst_wherever_hosted(hosting: HostingFacts | None) -> None:
    d = route(known=False, image_count=3, hosting=hosting)
    assert d.route == "assessment"
    assert "3 image(s)" in d.reason
    assert d.partner_country is None


def test_no_images_goes_to_an_analyst_with_that_reason() -> None:
    d = route(known=False, image_count=0)
    assert d.route == "assessment"
    assert "no images" in d.reason


def test_offline_wins_over_everything() -> None:
    for known, hosting in [(True, NL_WITH_ABUSE), (True, DE), (False, US)]:
        assert route(online=False, offline_reason="gone", known=known, hosting=hosting).route == "closed_offline"


def test_phash_only_match_goes_to_an_analyst_not_a_notice() -> None:
    d = route(known=False, weak_match=True)
    assert d.route == "assessment"
    assert "pHash" in d.reason


def test_strong_match_wins_over_a_weak_one() -> None:
    assert route(known=True, weak_match=True).route == "ntd"
