"""Messages on ``notices.ntd``, ``escalations.police``, ``forwards.partner`` and ``notices.events``."""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import Field

from schemas.base import Message, new_id, utcnow
from schemas.facts import Frozen, HostingFacts, ImageFacts


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
    # What the material is, for the notice's X-ARF report when no bank entry says it
    # (analyst-confirmed new material released by the police: the analyst's category).
    category: str | None = None
    # Who gets a copy (Cc): the CDN in front of the origin hoster this notice goes to.
    copy_to: list[str] = []
    # The page that shows the notice's images, when ``url`` is an image this hoster serves for
    # a page elsewhere (each image has its own hoster); None when ``url`` is that page.
    page_url: str | None = None


class Answer(Frozen):
    """An analyst's answer to one of the hotline's own questions (HOTLINE_ASSESSMENT_QUESTIONS_FILE)."""

    id: str
    label: str
    value: str


class AnalystClassification(Message):
    """The analyst's decision on the item. Each image's own classification (ICCAM's fields and
    its X-ARF value) is on the image (``ImageFacts.assessment``)."""

    analyst: str
    verdict: Literal["illegal"]
    category: str
    notes: str | None = None
    assessed_at: datetime = Field(default_factory=utcnow)
    # The answers to the hotline's own questions, in the file's order.
    answers: list[Answer] = []
    # Set when a senior analyst changed the decision: who, and the decision before.
    changed_by: str | None = None


class Copy(Message):
    """Another item that showed the same image (by SHA-256) as an escalated one."""

    item_id: str
    url: str
    hosting: HostingFacts | None = None


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
    # The analyst's classification; None when no analyst was involved: a Tor hidden service
    # (reason ``onion``, escalated by classify at once) or known material from the bank noticed
    # to a foreign hoster directly (reason ``no_partner``).
    classification: AnalystClassification | None = None
    escalated_at: datetime = Field(default_factory=utcnow)
    # Why the police get it: ``new_material`` (an analyst confirmed it; the takedown waits for
    # the police's release), ``no_partner`` (hosted in a country without a partner hotline:
    # the hotline noticed the foreign hoster directly, this is the police's record of it).
    # ``onion``: a Tor hidden service, never fetched (no hoster can be noticed there); the
    # police get it at once and a release sends nothing.
    reason: Literal["new_material", "no_partner", "onion"] = "new_material"
    # When the takedown follows by itself unless the police hold it (HOTLINE_POLICE_HOLD_SECONDS);
    # None: it waits for the police's release.
    release_due_at: datetime | None = None
    # The same image at other URLs, waiting for an analyst when this was confirmed: escalated
    # with it (an analyst decides once), taken down with its release.
    copies: list[Copy] = []


PoliceActionKind = Literal["received", "hold", "release"]


class PoliceAction(Message):
    """What the police did with an escalation (topic ``escalations.actions``): ``received``
    (acknowledged), ``hold`` (keep the takedown back, with a reason), ``release`` (the
    takedown may go; ``by`` is ``hold-timer`` when the hold time passed without a hold).
    ``action_id`` is ``{escalation_id}:{action}``: each action happens at most once per
    escalation (a hold cannot be repeated, released is final), so consumers dedupe by it."""

    action_id: str
    escalation_id: str
    item_id: str
    action: PoliceActionKind
    by: str
    reason: str | None = None
    at: datetime = Field(default_factory=utcnow)


class PartnerForward(Message):
    """A forward to the INHOPE partner hotline of the hosting country."""

    forward_id: str
    item_id: str
    url: str
    country: str
    partner_name: str
    images: list[ImageFacts] = []
    hosting: HostingFacts | None = None
    basis: Literal["known_material", "analyst_confirmed", "police_release"] = "known_material"
    from_hotline: str = "Hotline"
    category: str | None = None  # the analyst's category, when an analyst confirmed it
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
    "released",
    "partner_status",
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


IccamAction = Literal["LEA", "ISP", "CR", "CU", "MO", "NI"]


class PartnerStatusUpdate(Message):
    """A status update to the partner hotline that forwarded a report to us (topic
    ``partners.status``): what became of one URL of its report, as an ICCAM action code.
    ``update_id`` is deterministic (report, item, step), the ``Idempotency-Key`` of every
    delivery attempt."""

    update_id: str
    country: str
    report_id: str
    partner_reference: str | None = None
    item_id: str | None = None
    url: str | None = None
    step: Literal["acknowledged", "notice_sent", "removed", "forwarded", "escalated", "not_illegal", "offline", "rejected"]
    action: IccamAction | None = None
    detail: str = ""
    at: datetime = Field(default_factory=utcnow)
