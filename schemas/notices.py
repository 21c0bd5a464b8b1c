"""Messages on ``notices.ntd``, ``escalations.police``, ``forwards.partner`` and ``notices.events``."""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import Field

from schemas.base import Message, new_id, utcnow
from schemas.facts import HostingFacts, ImageFacts


class TakedownNotice(Message):
    """One Notice-and-Takedown to send to a hoster's abuse contact. ``notice_id`` is derived
    from the item so that a redelivered message can never become a second notice."""

    notice_id: str
    item_id: str
    url: str
    hoster: str
    abuse_email: str
    country: str | None = None
    images: list[ImageFacts] = []
    basis: Literal["known_material", "analyst_confirmed", "police_release"] = "known_material"
    created_at: datetime = Field(default_factory=utcnow)
    # Where the URL was fetched from (address, ASN, ...), for the notice's X-ARF report;
    # optional, so notices written before it was added still decode.
    hosting: HostingFacts | None = None


class AnalystClassification(Message):
    analyst: str
    verdict: Literal["illegal"]
    category: str
    notes: str | None = None
    assessed_at: datetime = Field(default_factory=utcnow)


class PoliceEscalation(Message):
    """Everything the police need about newly confirmed material, sent the moment an analyst
    confirms it (there may be a child in ongoing abuse)."""

    escalation_id: str
    item_id: str
    url: str
    images: list[ImageFacts] = []
    hosting: HostingFacts | None = None
    first_seen: datetime
    last_seen: datetime
    report_ids: list[str] = []
    classification: AnalystClassification
    escalated_at: datetime = Field(default_factory=utcnow)


class PartnerForward(Message):
    """A forward to the INHOPE partner hotline of the hosting country."""

    forward_id: str
    item_id: str
    url: str
    country: str
    partner_name: str
    images: list[ImageFacts] = []
    hosting: HostingFacts | None = None
    basis: Literal["known_material", "analyst_confirmed"] = "known_material"
    from_hotline: str = "Hotline"
    created_at: datetime = Field(default_factory=utcnow)


NoticeEventKind = Literal[
    "sent",
    "delivered",
    "bounced",
    "rechecked",
    "removed",
    "reminder",
    "overdue",
    "forwarded",
    "forward_failed",
    "acknowledged",
    "delivery_unknown",
]


class NoticeEvent(Message):
    """Something that happened to a notice or forward. ``event_id`` is deterministic for
    one-time facts (sent, forwarded) so consumers can deduplicate redeliveries."""

    event_id: str = Field(default_factory=new_id)
    item_id: str
    kind: NoticeEventKind
    notice_id: str | None = None
    forward_id: str | None = None
    detail: str = ""
    at: datetime = Field(default_factory=utcnow)
