"""An analyst's decision on an item waiting for assessment.

Confirmed illegal material is *new* material: it is escalated to the police
at once (there may be a child in ongoing abuse) and its hashes join the bank,
so every further copy is recognised automatically. Not illegal closes the item.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Literal

from hotline.kernel.clock import now
from hotline.kernel.messages import Outgoing
from hotline.kernel.ports import UnitOfWork
from hotline.kernel.states import ItemState
from schemas.facts import HostingFacts, ImageFacts
from schemas.items import ItemClassified
from schemas.notices import AnalystClassification, Copy, PoliceEscalation

Verdict = Literal["illegal", "not_illegal"]


class AssessmentRefused(Exception):
    """The decision cannot be applied (unknown item, wrong state); ``status`` is the HTTP code."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


def assess(
    uow: UnitOfWork,
    item_id: str,
    *,
    verdict: Verdict,
    category: str | None,
    analyst: str,
    notes: str | None = None,
    hold_seconds: float | None = None,
    states: tuple[str, ...] = (ItemState.AWAITING_ASSESSMENT,),
) -> list[Outgoing]:
    """Apply the decision; returns the messages to publish with it (the caller commits).
    ``hold_seconds`` (``HOTLINE_POLICE_HOLD_SECONDS``): the takedown of confirmed material then
    follows that long after the escalation unless the police hold it; None: it waits for the
    police's release. ``states``: where the item may be (services/assessment/confirmation.py
    passes awaiting_confirmation)."""
    item = uow.items.get(item_id)
    if item is None:
        raise AssessmentRefused(404, f"no item {item_id}")
    if item.state not in states:  # ``states``: a second analyst confirms from awaiting_confirmation
        raise AssessmentRefused(409, f"item {item_id} is {item.state}, not {' or '.join(str(st).replace('_', ' ') for st in states)}")
    uow.assessments.add(item_id, analyst, verdict, category, notes)
    uow.audit.append(analyst, "assessment", item_id, f"{verdict} {category or ''}".strip())
    if verdict == "not_illegal":
        uow.items.set_state(item, ItemState.CLOSED_NOT_ILLEGAL, f"assessed as not illegal by {analyst}", "assessment")
        return []

    category = category or "national"
    classified = ItemClassified.model_validate(item.classification) if item.classification else None
    images: list[ImageFacts] = list(classified.images) if classified else []
    hosting: HostingFacts | None = classified.hosting if classified else None
    added = 0
    for img in images:
        if img.error is None and img.sha256:
            uow.bank.add(
                category=category,
                source=f"analyst:{analyst}",
                md5=img.md5,
                sha1=img.sha1,
                sha256=img.sha256,
                pdq=img.pdq,
                phash=img.phash,
            )
            added += 1
    copies = _copies(uow, item_id, images, category, analyst)
    escalated_at = now()
    release_due_at = escalated_at + timedelta(seconds=hold_seconds) if hold_seconds else None
    escalation = PoliceEscalation(
        escalation_id=f"pol-{item_id}",
        escalated_at=escalated_at,
        release_due_at=release_due_at,
        item_id=item_id,
        url=item.url,
        images=images,
        hosting=hosting,
        first_seen=item.first_seen,
        last_seen=item.last_seen,
        report_ids=uow.items.report_ids(item_id),
        classification=AnalystClassification(analyst=analyst, verdict="illegal", category=category, notes=notes),
        copies=copies,
    )
    uow.escalations.add(escalation.escalation_id, item_id, escalation.model_dump(mode="json"), release_due_at)
    uow.items.set_state(
        item,
        ItemState.ESCALATED,
        f"confirmed new material ({category}) by {analyst}: escalated to the police; "
        f"{added} hash set(s) added to the bank; takedown follows on police release"
        + (f"; {len(copies)} copy(ies) at other URLs escalated with it" if copies else "")
        + (f" or automatically at {release_due_at.isoformat(timespec='seconds')} unless the police hold it"
           if release_due_at else ""),
        "assessment",
    )
    return [Outgoing("escalations.police", escalation)]


def _copies(uow: UnitOfWork, item_id: str, images: list[ImageFacts], category: str, analyst: str) -> list[Copy]:
    """The other items showing one of these images that still wait for an analyst: the decision
    covers them too (an analyst decides once). They are escalated with this item and taken down
    with its police release (``services.escalate.release``), so the police's hold covers every
    copy. Copies reported later match the bank by hash and are routed as known material."""
    sha256s = [i.sha256 for i in images if i.error is None and i.sha256]
    copies: list[Copy] = []
    for other_id in dict.fromkeys(other for other, _sha, _url in uow.items.sharing_images(item_id, sha256s)):
        other = uow.items.get(other_id)
        if other is None or other.state != ItemState.AWAITING_ASSESSMENT:
            continue
        classified = ItemClassified.model_validate(other.classification) if other.classification else None
        copies.append(Copy(item_id=other.id, url=other.url, hosting=classified.hosting if classified else None))
        uow.items.set_state(
            other, ItemState.ESCALATED,
            f"shows the same image as item {item_id}, confirmed as new material ({category}) by {analyst}: "
            "escalated to the police with it; takedown follows with its release",
            "assessment",
        )
        uow.audit.append(analyst, "assessment_copy", other.id, f"same image as {item_id}")
    return copies
