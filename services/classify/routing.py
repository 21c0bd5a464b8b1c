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
) -> RouteDecision:
    if not online:
        return RouteDecision("closed_offline", offline_reason)
    country = hosting.country if hosting else None
    if known:
        if country == home_country:
            if hosting and hosting.abuse:
                return RouteDecision("ntd", f"known material hosted in {country} by {hosting.hoster}: takedown notice to {hosting.abuse}")
            return RouteDecision("assessment", f"known material hosted in {country} but no abuse contact is known for it: an analyst must find the hoster")
        if country and country in partner_countries:
            return RouteDecision("forward", f"known material hosted in {country}: forwarded to the partner hotline there", country)
        if country:
            return RouteDecision("assessment", f"known material hosted in {country}, where no partner hotline is registered: an analyst decides")
        return RouteDecision("assessment", "known material, but the hosting country could not be determined: an analyst decides")
    if image_count == 0:
        return RouteDecision("assessment", "no images found at the URL: an analyst looks at the page")
    return RouteDecision("assessment", f"{image_count} image(s) not in the bank: waiting for an analyst")
