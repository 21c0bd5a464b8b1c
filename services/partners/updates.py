"""Which status updates go back to a partner hotline that forwarded a report to us.

A report a partner forwarded (``channel == "partner"``, ``Report.partner_country`` set from
the partner's account) gets an update for each of its URLs at each step, decided from the
messages the escalate stage already sees:

- ``acknowledged``: ingest accepted the URL (``items.accepted``);
- ``offline``: classify found nothing online (``items.classified``, route ``closed_offline``);
- ``notice_sent`` / ``forwarded`` / ``removed``: ``notices.events`` of kind ``sent``,
  ``forwarded`` and ``removed`` (the follow-up's re-check, or a partner's own CR/CU).

Each is a ``PartnerStatusUpdate`` with a deterministic id ``<report>:<item>:<step>`` (the
``Idempotency-Key`` of its delivery), recorded in ``partner_updates`` and published on
``partners.status``; delivery is the forwards' queue (``services.escalate.forwards``), in
order per report. A later step first records the ``acknowledged`` one if it is missing
(messages of different topics can arrive in any order), so a partner always hears of a
URL before it hears what became of it. Partners without ``status_endpoint`` get none.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from hotline.kernel.messages import Outgoing
from hotline.kernel.ports import UnitOfWork
from schemas import Message
from schemas.items import ItemAccepted, ItemClassified
from schemas.notices import NoticeEvent, PartnerStatusUpdate
from services.escalate.forwards import UpdateDelivery, new_update
from services.escalate.partners import PartnerDirectory
from services.partners.iccam import STEP_ACTION

UPDATE_TOPICS = frozenset({"items.accepted", "items.classified", "notices.events"})
"""The topics status updates are decided from (``step_of``)."""
EVENT_STEP = {"sent": "notice_sent", "forwarded": "forwarded", "removed": "removed"}


def step_of(topic: str, message: Message) -> tuple[str, str, list[str] | None] | None:
    """(item id, step, report ids when the message names them) or None: nothing to tell."""
    if topic == "items.accepted" and isinstance(message, ItemAccepted):
        return message.item_id, "acknowledged", list(message.report_ids)
    if topic == "items.classified" and isinstance(message, ItemClassified):
        return (message.item_id, "offline", None) if message.route == "closed_offline" else None
    if topic == "notices.events" and isinstance(message, NoticeEvent):
        step = EVENT_STEP.get(message.kind)
        return (message.item_id, step, None) if step else None
    return None


def update_id(report_id: str, item_id: str, step: str) -> str:
    return f"{report_id}:{item_id}:{step}"


def updates_for(topic: str, message: Message, uow: UnitOfWork, partners: PartnerDirectory,
                at: datetime) -> list[Outgoing]:
    found = step_of(topic, message)
    if found is None or not partners.sends_status_updates():
        return []  # decided from the message and the partners file alone: no query
    item_id, step, report_ids = found
    reports = uow.reports.from_partners(report_ids if report_ids is not None else uow.items.report_ids(item_id))
    if not reports:
        return []  # no partner forwarded a report of this item (nearly every item)
    item = uow.items.get(item_id)
    if item is None:
        return []
    out: list[Outgoing] = []
    for report in reports:
        assert report.partner_country is not None
        partner = partners.get(report.partner_country)
        if partner is None or not partner.status_endpoint:
            continue
        steps = [step] if step == "acknowledged" else ["acknowledged", step]
        for n, s in enumerate(steps):
            uid = update_id(report.id, item_id, s)
            if uow.partner_updates.get(uid) is not None:
                continue
            detail = item.reason if s != "acknowledged" else f"the hotline accepted {item.url} for processing"
            update = PartnerStatusUpdate(
                update_id=uid, country=report.partner_country, report_id=report.id,
                partner_reference=report.partner_reference, item_id=item_id, url=item.url,
                step=s,  # type: ignore[arg-type]
                action=STEP_ACTION[s], detail=detail, at=at,
            )
            # The acknowledgment a hair earlier, so it is delivered first (in order per report).
            uow.partner_updates.add(new_update(update, at - timedelta(microseconds=len(steps) - n)))
            out.append(Outgoing(UpdateDelivery.topic, update))
    return out
