"""Messages on ``items.accepted`` and ``items.classified``."""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import Field

from schemas.base import Message, utcnow
from schemas.facts import HostingFacts, ImageFacts

Route = Literal["ntd", "assessment", "forward", "closed_offline", "police"]


class ItemAccepted(Message):
    """One unique normalized URL, linked to every report that named it."""

    item_id: str
    url: str
    report_ids: list[str]
    accepted_at: datetime = Field(default_factory=utcnow)


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
    classified_at: datetime = Field(default_factory=utcnow)
