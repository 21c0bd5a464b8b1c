"""The same image at different URLs: "also seen at".

Classify records every image an item showed by its SHA-256 (``item_images``; never the
bytes), so an analyst sees at once that a picture is already being handled elsewhere and
decides once (``services.assessment.logic``: confirming one copy escalates every copy that
waits for an analyst with it; the analyst's item page lists every copy; both read
``item_images``, which holds every sighting).

The timelines link each new copy to the image's **first sighting** (the earliest other item
that showed it), not to every other copy: a gallery crawl or a flagger resubmitting shows one
picture on thousands of items, and linking each with each would cost two events per pair,
quadratic in the copies. So a new copy costs O(1): its own timeline names the first sighting
and how many other items show the image; the first sighting's timeline names its first
:data:`NAMED_COPIES` copies one by one, then notes the count at each of :data:`MILESTONES`.
"""

from __future__ import annotations

from hotline.kernel.ports import UnitOfWork
from schemas.items import ItemClassified

STAGE = "classify"
NAMED_COPIES = 10
"""The first sighting's timeline names this many copies, each by its item and URL."""
MILESTONES = (100, 1000)
"""...and then says how many items show the image when the count reaches these."""
COUNT_UP_TO = MILESTONES[-1] + 1
"""Copies are counted up to this (a bounded count: the cost stays flat past it)."""


def record_sightings(uow: UnitOfWork, item_id: str, classified: ItemClassified) -> int:
    """Record the item's images and link it to the first sighting of each one another item
    showed; returns how many other items it was linked to."""
    pairs = list(dict.fromkeys((i.sha256, i.url) for i in classified.images if i.error is None and i.sha256))
    if not pairs:
        return 0
    uow.items.add_images(item_id, pairs)
    url_of = {sha: url for sha, url in pairs}
    linked: set[str] = set()
    for first_id, sha256, first_url, others in uow.items.first_sightings(item_id, list(url_of), COUNT_UP_TO):
        if first_id in linked:
            continue
        linked.add(first_id)
        short = sha256[:16]
        more = others - 1  # other items besides the first sighting
        also = ""
        if more > 0:
            also = f"; {more if others < COUNT_UP_TO else f'{COUNT_UP_TO - 1} or more'} other item(s) show it too"
        uow.items.add_event(item_id, STAGE, "also_seen",
                            f"the same image (SHA-256 {short}…) was also reported at {first_url} (item {first_id}){also}")
        copy_no = others  # this item is the first sighting's n-th copy
        if copy_no <= NAMED_COPIES:
            uow.items.add_event(first_id, STAGE, "also_seen",
                                f"the same image (SHA-256 {short}…) is also at {url_of[sha256]} (item {item_id})")
        elif copy_no in MILESTONES:
            uow.items.add_event(first_id, STAGE, "also_seen",
                                f"the same image (SHA-256 {short}…) is now shown by {copy_no} other items "
                                f"(the latest at {url_of[sha256]}, item {item_id}); copies after the "
                                f"{NAMED_COPIES}th are named on their own timelines")
    return len(linked)
