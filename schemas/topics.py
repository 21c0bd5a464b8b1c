"""The topic table of the architecture, as data: name -> message model and key field."""

from __future__ import annotations

from dataclasses import dataclass

from schemas.base import Message
from schemas.followups import RecheckDue
from schemas.items import ItemAccepted, ItemClassified
from schemas.notices import (
    NoticeEvent,
    PartnerForward,
    PartnerStatusUpdate,
    PoliceAction,
    PoliceEscalation,
    TakedownNotice,
)
from schemas.reports import ReportRejected, ReportSubmitted


@dataclass(frozen=True)
class Topic:
    name: str
    model: type[Message]
    key_field: str
    description: str

    def key_of(self, message: Message) -> str:
        return str(getattr(message, self.key_field) or "")


_ALL = [
    Topic("reports.submitted", ReportSubmitted, "report_id", "a raw report from any channel"),
    Topic("reports.rejected", ReportRejected, "report_id", "bad input with a machine-readable reason"),
    Topic("items.accepted", ItemAccepted, "url", "one item per unique normalized URL"),
    Topic("items.classified", ItemClassified, "item_id", "hashes, bank match, hosting, route"),
    Topic("notices.ntd", TakedownNotice, "hoster", "one takedown notice to send"),
    Topic("escalations.police", PoliceEscalation, "item_id", "newly confirmed material for the police"),
    Topic("escalations.actions", PoliceAction, "item_id", "what the police did: received, hold, release"),
    Topic("forwards.partner", PartnerForward, "item_id", "a forward to a partner hotline"),
    Topic("notices.events", NoticeEvent, "item_id", "what happened to notices and forwards"),
    Topic("partners.status", PartnerStatusUpdate, "report_id", "a status update back to the partner that forwarded a report"),
    Topic("rechecks.due", RecheckDue, "item_id", "a follow-up re-check or reminder/ladder step that is due"),
]

TOPICS: dict[str, Topic] = {t.name: t for t in _ALL}


def topic_for_model(model: type[Message]) -> Topic:
    for t in _ALL:
        if t.model is model:
            return t
    raise KeyError(model.__name__)
