"""Each image has its own hoster: the per-hoster decisions of one item, as a pure function.

A page on hoster A that shows known images served by hosters B and C gets one decision per
hoster (``schemas.items.HosterRoute``), each taken by the one routing table
(``routing.decide_route``) on that hoster's own facts:

- every hoster that serves known images gets them (notice at home, partner forward abroad,
  an analyst when its abuse contact or country is unknown);
- the page's hoster gets the page, whenever the page shows known material, wherever the
  files are served from: a page that displays known material makes it available as much as
  the file does (an analyst judges the page illegal, not only the file), and each removal
  alone leaves half the problem (the page shows a re-upload from elsewhere; the file is
  embedded elsewhere). Its notice names the page and lists the images it shows.

Decisions of one hoster merge (a page on A showing images from A is one decision). The
item's own route is the most demanding one: an analyst if any hoster needs one (so no part
is dropped; automatic notices to the other hosters still go out), else a notice, else a
forward. Action ids are deterministic: the first notice ``ntd-<item>``, the next ones
``ntd-<item>-h2``, ``-h3`` … in the order the hosters appear (page first, then images in page
order); forwards alike (``fwd-<item>``, ``fwd-<item>-h2``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from schemas.facts import HostingFacts, ImageFacts
from schemas.items import HosterRoute
from services.classify.routing import RouteDecision

Decide = Callable[[HostingFacts, int], RouteDecision]  # (hoster's facts, images) -> decision
PRIORITY = ("assessment", "ntd", "forward", "closed_offline")


@dataclass(frozen=True)
class Attribution:
    decision: RouteDecision  # the item's overall route and reason
    routes: list[HosterRoute]


def hoster_key(h: HostingFacts) -> tuple[str, str]:
    """Who a decision is for: the hoster and its abuse contact (two names of one hoster
    share a decision; an unattributed host is its own)."""
    return ((h.hoster or h.host).lower(), (h.abuse or "").lower())


def _who(h: HostingFacts) -> str:
    return h.hoster or h.host


def attribute(
    item_id: str,
    page: HostingFacts,
    known_images: Sequence[ImageFacts],
    decide: Decide,
) -> Attribution:
    """The per-hoster decisions for an item whose page shows ``known_images`` (strong bank
    matches; at least one). An image without facts of its own is the page's hoster's."""
    groups: dict[tuple[str, str], tuple[HostingFacts, list[str], bool]] = {
        hoster_key(page): (page, [i.url for i in known_images], True)
    }
    for image in known_images:
        facts = image.hosting or page
        key = hoster_key(facts)
        if key not in groups:
            groups[key] = (facts, [], False)
        if not groups[key][2]:
            groups[key][1].append(image.url)
    routes: list[HosterRoute] = []
    counters = {"ntd": 0, "forward": 0}
    for facts, urls, is_page in groups.values():
        decision = decide(facts, len(urls))
        reason = decision.reason
        if facts.reason:
            reason = f"{reason} ({facts.reason})"
        action_id = None
        if decision.route in counters and not (decision.route == "ntd" and not facts.abuse):
            counters[decision.route] += 1
            prefix = "ntd" if decision.route == "ntd" else "fwd"
            n = counters[decision.route]
            action_id = f"{prefix}-{item_id}" if n == 1 else f"{prefix}-{item_id}-h{n}"
        routes.append(HosterRoute(hosting=facts, route=decision.route, reason=reason, page=is_page,  # type: ignore[arg-type]
                                  image_urls=urls, action_id=action_id))
    overall = min(routes, key=lambda r: PRIORITY.index(r.route))
    if len(routes) == 1:
        return Attribution(RouteDecision(overall.route, overall.reason, _country(overall)), routes)
    parts = [f"{'the page' if r.page else f'{len(r.image_urls)} image(s)'} at {_who(r.hosting)}: {r.reason}"
             for r in routes]
    return Attribution(RouteDecision(overall.route, "; ".join(parts), _country(overall)), routes)


def _country(r: HosterRoute) -> str | None:
    return r.hosting.country if r.route == "forward" else None
