"""What a police release produces: the takedown of newly confirmed material.

The escalate stage hands every ``escalations.actions`` message here; only ``release`` does
anything (received and hold were recorded, with their audit and timeline entries, when the
police acted). The takedown is built from the stored escalation and the item's
classification:

- hosted at home with an abuse contact → a ``notices.ntd`` TakedownNotice (basis
  ``police_release``, the analyst's category), the item ``notice_queued``;
- hosted abroad in a country with a partner hotline → a ``forwards.partner`` PartnerForward,
  the item ``forward_queued`` (the forward's delivery is the escalate stage's own);
- abroad without a partner but with an abuse contact → the NTD to the foreign hoster directly
  (SCART's "assign to hosting country"), recorded as such in the escalation's ``outcome``;
- no abuse contact → the item goes back to an analyst with the reason.

Exactly one takedown per release, whatever is retried or restarted: the notice and forward ids
are the item's (``ntd-{item_id}``, ``fwd-{item_id}``, which notify and the forward delivery
dedupe by), and the decision is recorded once (``Escalation.outcome``). A redelivered release
finds the outcome recorded and publishes the same messages again without changing anything:
on Kafka the first delivery may have committed and died before its messages reached the
broker, and a duplicate is harmless downstream.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from hotline.kernel.messages import InvalidMessage, Outgoing
from hotline.kernel.ports import UnitOfWork
from hotline.kernel.stage import move_item
from hotline.kernel.states import FINAL, ItemState
from hotline.storage.models import Escalation, Item
from schemas.facts import HostingFacts, ImageFacts
from schemas.items import ItemClassified
from schemas.notices import (
    NoticeEvent,
    PartnerForward,
    PoliceAction,
    PoliceEscalation,
    TakedownNotice,
)
from services.police.logic import HOLD_TIMER

STAGE = "escalate"


@dataclass(frozen=True)
class Takedown:
    """The decision for one release: the item's next state and why, the outcome to record on
    the escalation, and the messages (takedown and ``released`` event)."""

    state: ItemState | None
    reason: str
    outcome: str
    messages: list[Outgoing]


def released_by(action: PoliceAction) -> str:
    return ("released automatically: hold time passed" if action.by == HOLD_TIMER
            else f"released by police officer {action.by}")


def decide(
    escalation: PoliceEscalation, item: Item, action: PoliceAction, *, home_country: str,
    partners: Mapping[str, str], hotline_name: str,
) -> Takedown:
    """Pure: the takedown a release of ``escalation`` produces. ``partners``: country → partner
    hotline name."""
    classified = ItemClassified.model_validate(item.classification) if item.classification else None
    hosting: HostingFacts | None = (classified.hosting if classified and classified.hosting else escalation.hosting)
    images: list[ImageFacts] = [i for i in (classified.images if classified else escalation.images)
                                if i.error is None and (i.sha256 or i.md5 or i.sha1)]
    category = escalation.classification.category if escalation.classification else None
    why = released_by(action)
    country = (hosting.country or "").upper() if hosting else ""
    abuse = hosting.abuse if hosting else None
    home = home_country.upper()

    if escalation.reason == "onion":
        outcome = "no takedown: a Tor hidden service has no hoster that could be noticed"
        return Takedown(None, f"{why}; {outcome}", outcome, [_event(escalation, action, outcome)])
    if item.state in FINAL:
        outcome = f"no takedown: the item is already {item.state}"
        return Takedown(None, f"{why}; {outcome}", outcome, [_event(escalation, action, outcome)])
    if country and country != home and country in partners:
        forward = PartnerForward(
            forward_id=f"fwd-{item.id}", item_id=item.id, url=item.url, country=country,
            partner_name=partners[country], images=images, hosting=hosting, basis="police_release",
            from_hotline=hotline_name, category=category, created_at=action.at,
        )
        outcome = f"forward {forward.forward_id} to {partners[country]} ({country})"
        return Takedown(ItemState.FORWARD_QUEUED, f"{why}: {outcome}", outcome,
                        [Outgoing("forwards.partner", forward), _event(escalation, action, outcome,
                                                                       forward_id=forward.forward_id)])
    if hosting is None or not abuse:
        where = f"{hosting.hoster or hosting.host} ({country or 'country unknown'})" if hosting else "an unknown hoster"
        outcome = f"no takedown sent: no abuse contact for {where}; an analyst decides"
        return Takedown(ItemState.AWAITING_ASSESSMENT, f"{why}, but there is no abuse contact for {where}: "
                        "an analyst decides how to get it taken down", outcome, [_event(escalation, action, outcome)])
    notice = TakedownNotice(
        notice_id=f"ntd-{item.id}", item_id=item.id, url=item.url, hoster=hosting.hoster or hosting.host,
        abuse_email=abuse, country=country or None, images=images, basis="police_release", hosting=hosting,
        category=category, created_at=action.at,
    )
    outcome = f"notice {notice.notice_id} to {abuse} ({notice.hoster}, {country or 'country unknown'})"
    if not country:
        outcome += "; the hosting country is unknown: noticed to the hoster directly"
    elif country != home:
        outcome += f"; hosted abroad with no partner hotline in {country}: noticed to the foreign hoster directly"
    return Takedown(ItemState.NOTICE_QUEUED, f"{why}: {outcome}", outcome,
                    [Outgoing("notices.ntd", notice), _event(escalation, action, outcome, notice_id=notice.notice_id)])


def handle_action(
    uow: UnitOfWork, action: PoliceAction, *, home_country: str, partners: Mapping[str, str], hotline_name: str,
) -> list[Outgoing]:
    """One ``escalations.actions`` message: a release produces the takedown, once."""
    if action.action != "release":
        return []  # recorded (state, audit, timeline) when the police acted; nothing to send
    row = uow.escalations.lock(action.escalation_id)
    if row is None:
        raise InvalidMessage("unknown_escalation", f"no escalation {action.escalation_id} to release")
    item = uow.items.get(row.item_id)
    if item is None:
        raise InvalidMessage("unknown_item", f"escalation {row.id} names no known item {row.item_id}")
    escalation = PoliceEscalation.model_validate(_payload(row))
    takedowns = [(item, decide(escalation, item, action, home_country=home_country, partners=partners,
                               hotline_name=hotline_name))]
    for copy in escalation.copies:  # the same image at other URLs, escalated with this item
        other = uow.items.get(copy.item_id)
        if other is None:
            continue
        as_copy = escalation.model_copy(update={"item_id": other.id, "url": other.url, "images": [],
                                                "hosting": copy.hosting})
        takedowns.append((other, decide(as_copy, other, action, home_country=home_country, partners=partners,
                                        hotline_name=hotline_name)))
    messages = [m for _, t in takedowns for m in t.messages]
    if row.outcome is not None:
        return messages  # a redelivery: the same messages again, nothing changed twice
    if row.state != "released":  # cannot happen through services.police.logic; keep the record true
        row.state, row.released_at, row.released_by = "released", action.at, action.by
    row.outcome = "; ".join([takedowns[0][1].outcome] + [f"copy {i.id}: {t.outcome}" for i, t in takedowns[1:]])
    for target, takedown in takedowns:
        if takedown.state is not None:
            move_item(uow, target.id, takedown.state, takedown.reason, STAGE)
        else:
            uow.items.add_event(target.id, STAGE, "released", takedown.reason)
    uow.audit.append(STAGE, "police_release_outcome", row.id, row.outcome)
    return messages


def _payload(row: Escalation) -> dict[str, Any]:
    return dict(row.payload or {})


def _event(escalation: PoliceEscalation, action: PoliceAction, outcome: str, notice_id: str | None = None,
           forward_id: str | None = None) -> Outgoing:
    return Outgoing("notices.events", NoticeEvent(
        event_id=f"{escalation.escalation_id}:released"
        + ("" if escalation.escalation_id == f"pol-{escalation.item_id}" else f":{escalation.item_id}"),
        item_id=escalation.item_id, kind="released",
        notice_id=notice_id, forward_id=forward_id, detail=f"{released_by(action)}: {outcome}", at=action.at,
    ))
