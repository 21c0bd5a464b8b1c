"""The same image at different URLs: "also seen at".

Classify records every image an item showed by its SHA-256 (``item_images``; never the
bytes) and links the item to every other item that showed the same image, on both
timelines, so an analyst sees at once that a picture is already being handled elsewhere and
decides once (``services.assessment.logic``: confirming one copy escalates the copies that
wait for an analyst with it).
"""

from __future__ import annotations

from hotline.kernel.ports import UnitOfWork
from schemas.items import ItemClassified

STAGE = "classify"


def record_sightings(uow: UnitOfWork, item_id: str, classified: ItemClassified) -> int:
    """Record the item's images and link it to the other items that showed one of them;
    returns how many other items it was linked to."""
    pairs = list(dict.fromkeys((i.sha256, i.url) for i in classified.images if i.error is None and i.sha256))
    if not pairs:
        return 0
    uow.items.add_images(item_id, pairs)
    url_of = {sha: url for sha, url in pairs}
    linked: set[str] = set()
    for other_id, sha256, other_url in uow.items.sharing_images(item_id, list(url_of)):
        if other_id in linked:
            continue
        linked.add(other_id)
        short = sha256[:16]
        uow.items.add_event(item_id, STAGE, "also_seen",
                            f"the same image (SHA-256 {short}…) was also reported at {other_url} (item {other_id})")
        uow.items.add_event(other_id, STAGE, "also_seen",
                            f"the same image (SHA-256 {short}…) is also at {url_of[sha256]} (item {item_id})")
    return len(linked)
