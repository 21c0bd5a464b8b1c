"""Messages on ``items.accepted`` and ``items.classified``."""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import Field

from schemas.base import Message, utcnow
from schemas.facts import Frozen, HostingFacts, ImageFacts

Route = Literal["ntd", "assessment", "forward", "closed_offline", "police"]


class ItemAccepted(Message):
    """One unique normalized URL, linked to every report that named it."""

    item_id: str
    url: str
    report_ids: list[str]
    accepted_at: datetime = Field(default_factory=utcnow)


class HosterRoute(Frozen):
    """Classify's decision for one hoster of an item (each image has its own hoster): where
    the content this hoster serves goes, why, and by which one-time action. ``page``: the
    decision covers the page URL itself (the page's hoster); ``image_urls``: the known images
    it covers (served by this hoster, or shown by the page for the page's hoster).
    ``action_id`` is the deterministic notice or forward id (None for an analyst)."""

    hosting: HostingFacts
    route: Route
    reason: str
    page: bool = False
    image_urls: list[str] = []
    action_id: str | None = None


class ItemClassified(Message):
    """Everything classify found out about an item, and where it goes next (``route``)."""

    item_id: str
    url: str
    online: bool
    http_status: int | None = None
    content_type: str | None = None
    images: list[ImageFacts] = []
    hosting: HostingFacts | None = None
    known: bool = False
    route: Route
    reason: str
    # One decision per hoster (the page's and every known image's own): ``route``/``reason``
    # above are the item's overall outcome; empty in classifications written before it.
    attribution: list[HosterRoute] = []
    classified_at: datetime = Field(default_factory=utcnow)
