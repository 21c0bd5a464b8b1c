"""Where an item goes after classification: the routing table of the architecture, as a pure function."""

from __future__ import annotations

from dataclasses import dataclass

from schemas.facts import HostingFacts


@dataclass(frozen=True)
class RouteDecision:
    route: str  # ntd | assessment | forward | closed_offline
    reason: str
    partner_country: str | None = None


def decide_route(
    *,
    online: bool,
    offline_reason: str,
    known: bool,
    image_count: int,
    hosting: HostingFacts | None,
    home_country: str,
    partner_countries: set[str],
    weak_match: bool = False,
) -> RouteDecision:
    """``known``: an image matched the bank by an exact hash or PDQ, strong enough to act on
    automatically. ``weak_match``: only a pHash near match (64 bits: at 10M entries about 0.1
    chance candidates per query), which an analyst confirms before any notice goes out."""
    if not online:
        return RouteDecision("closed_offline", offline_reason)
    country = hosting.country if hosting else None
    if not known and weak_match:
        return RouteDecision(
            "assessment", "probable known material (pHash near match only): an analyst confirms before any notice"
        )
    if known:
        if country == home_country:
            if hosting and hosting.abuse:
                return RouteDecision("ntd", f"known material hosted in {country} by {hosting.hoster}: takedown notice to {hosting.abuse}")
            return RouteDecision("assessment", f"known material hosted in {country} but no abuse contact is known for it: an analyst must find the hoster")
        if country and country in partner_countries:
            return RouteDecision("forward", f"known material hosted in {country}: forwarded to the partner hotline there", country)
        if country and hosting and hosting.abuse:
            # SCART's "assign to hosting country": no partner there to take it down locally, so
            # the hoster gets our notice directly, and the police a record of it.
            return RouteDecision(
                "ntd",
                f"known material hosted in {country}, where no partner hotline is registered: takedown notice "
                f"to {hosting.hoster or hosting.host} ({hosting.abuse}) directly; recorded for the police",
            )
        if country:
            return RouteDecision("assessment", f"known material hosted in {country}, where no partner hotline is registered and no abuse contact is known: an analyst decides")
        return RouteDecision("assessment", "known material, but the hosting country could not be determined: an analyst decides")
    if image_count == 0:
        return RouteDecision("assessment", "no images found at the URL: an analyst looks at the page")
    return RouteDecision("assessment", f"{image_count} image(s) not in the bank: waiting for an analyst")
