"""An analyst's decision on an item waiting for assessment.

Confirmed illegal material is *new* material: it is escalated to the police
at once (there may be a child in ongoing abuse) and its hashes join the bank,
so every further copy is recognised automatically. Not illegal closes the item.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Literal

from hotline.kernel.clock import now
from hotline.kernel.messages import Outgoing
from hotline.kernel.ports import UnitOfWork
from hotline.kernel.states import ItemState
from hotline.storage.models import Escalation, Item
from schemas.facts import HostingFacts, ImageFacts
from schemas.items import ItemClassified
from schemas.notices import AnalystClassification, Answer, Copy, PoliceEscalation
from services.assessment.classification import (
    ILLEGAL,
    ClassificationInvalid,
    ImageDecision,
    resolve,
)

Verdict = Literal["illegal", "not_illegal"]
WITHDRAWN = "withdrawn"  # escalation state: a senior analyst found it not illegal before the takedown


class AssessmentRefused(Exception):
    """The decision cannot be applied (unknown item, wrong state); ``status`` is the HTTP code."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


@dataclass(frozen=True)
class Decision:
    """What an analyst decided, checked: the verdict, the item's category, the item's images
    with each one's classification attached (when decided per image), the answers."""

    verdict: Literal["illegal", "not_illegal", "doubtful"]
    category: str | None
    images: list[ImageFacts]
    per_image: bool
    answers: list[Answer]
    notes: str | None

    def images_record(self) -> list[dict[str, Any]] | None:
        """The per-image classifications as the assessment row keeps them."""
        if not self.per_image:
            return None
        return [{"sha256": i.sha256, "url": i.url, **i.assessment.model_dump(mode="json")}
                for i in self.images if i.assessment is not None]

    def summary(self) -> str:
        """One line for the audit log: the verdict, the category, each image's X-ARF value."""
        text = f"{self.verdict} {self.category or ''}".strip()
        if self.per_image:
            codes = [f"{(i.sha256 or i.url)[:12]}={i.assessment.classification}"
                     + (f"/{i.assessment.xarf}" if i.assessment.xarf else "")
                     for i in self.images if i.assessment is not None]
            text += " [" + ", ".join(codes) + "]"
        if self.answers:
            text += " answers: " + "; ".join(f"{a.id}={a.value}" for a in self.answers)
        return text


def decide(
    item_images: Sequence[ImageFacts],
    *,
    verdict: str | None,
    category: str | None,
    images: Sequence[ImageDecision | Mapping[str, Any]] | None = None,
    answers: Sequence[Answer] = (),
    notes: str | None = None,
) -> Decision:
    """Pure: check a decision against the item's images. With ``images`` (one decision per
    image) the verdict and category follow from them (a ``verdict`` or ``category`` sent along
    must agree); without, the old body: the verdict for the whole item. Raises
    :class:`ClassificationInvalid` naming the image and field."""
    if images:
        decided = resolve(item_images, images)
        errors: list[tuple[tuple[str | int, ...], str]] = []
        if verdict is not None and verdict != decided.verdict:
            errors.append((("verdict",), f"verdict: the images add up to {decided.verdict}, not {verdict}"))
        if category is not None and decided.verdict == "illegal" and category != decided.category:
            errors.append((("category",), f"category: the images add up to {decided.category}, not {category}"))
        if errors:
            raise ClassificationInvalid(errors)
        return Decision(decided.verdict, decided.category, decided.images, True, list(answers), notes)
    if verdict not in ("illegal", "not_illegal"):
        raise ClassificationInvalid([(("verdict",), "verdict: send illegal or not_illegal, or a decision per image")])
    whole: Literal["illegal", "not_illegal"] = "illegal" if verdict == "illegal" else "not_illegal"
    category = (category or "national") if whole == "illegal" else None
    return Decision(whole, category, list(item_images), False, list(answers), notes)


def assess(
    uow: UnitOfWork,
    item_id: str,
    *,
    verdict: str | None,
    category: str | None,
    analyst: str,
    notes: str | None = None,
    hold_seconds: float | None = None,
    images: Sequence[ImageDecision | Mapping[str, Any]] | None = None,
    answers: Sequence[Answer] = (),
    states: tuple[str, ...] = (ItemState.AWAITING_ASSESSMENT,),
    second_analyst: bool = False,
) -> list[Outgoing]:
    """Apply the decision; returns the messages to publish with it (the caller commits).
    ``hold_seconds`` (``HOTLINE_POLICE_HOLD_SECONDS``): the takedown of confirmed material then
    follows that long after the escalation unless the police hold it; None: it waits for the
    police's release. ``states``: where the item may be (a second analyst confirms from
    ``awaiting_confirmation``: services/assessment/confirmation.py). ``second_analyst``
    (``HOTLINE_SECOND_ANALYST``): an "illegal" is recorded and waits in ``awaiting_confirmation``
    for a different analyst instead of escalating. Raises :class:`AssessmentRefused` or
    :class:`ClassificationInvalid`."""
    item = uow.items.get(item_id)
    if item is None:
        raise AssessmentRefused(404, f"no item {item_id}")
    if item.state not in states:
        wanted = " or ".join(str(st).replace("_", " ") for st in states)
        raise AssessmentRefused(409, f"item {item_id} is {item.state}, not {wanted}")
    classified = ItemClassified.model_validate(item.classification) if item.classification else None
    decision = decide(list(classified.images) if classified else [], verdict=verdict, category=category,
                      images=images, answers=answers, notes=notes)
    if decision.verdict == "doubtful":
        _record(uow, item, decision, analyst, [], None)
        uow.audit.append(analyst, "assessment", item_id, decision.summary())
        uow.items.set_state(item, ItemState.AWAITING_ASSESSMENT,
                            f"doubtful for {analyst}: waiting for a second look by another analyst", "assessment")
        return []
    if decision.verdict == "not_illegal":
        _record(uow, item, decision, analyst, [], None)
        uow.audit.append(analyst, "assessment", item_id, decision.summary())
        _annotate(item, decision)
        uow.items.set_state(item, ItemState.CLOSED_NOT_ILLEGAL, f"assessed as not illegal by {analyst}", "assessment")
        return []
    if second_analyst and item.state == ItemState.AWAITING_ASSESSMENT:
        _record(uow, item, decision, analyst, [], None)
        uow.audit.append(analyst, "assessment_proposed", item_id, decision.summary())
        _annotate(item, decision)
        uow.items.set_state(item, ItemState.AWAITING_CONFIRMATION,
                            f"assessed as illegal ({decision.category}) by {analyst}: waiting for a second analyst "
                            "to confirm before escalation", "assessment")
        return []
    return _confirm(uow, item, decision, analyst, hold_seconds, replaces_id=None)


def _confirm(
    uow: UnitOfWork, item: Item, decision: Decision, analyst: str, hold_seconds: float | None,
    replaces_id: int | None, changed: str | None = None,
) -> list[Outgoing]:
    """Confirmed new material: hashes to the bank, escalation to the police (with every copy)."""
    item_id = item.id
    category = decision.category or "national"
    classified = ItemClassified.model_validate(item.classification) if item.classification else None
    hosting: HostingFacts | None = classified.hosting if classified else None
    entry_ids = _bank_add(uow, decision, analyst)
    _record(uow, item, decision, analyst, entry_ids, replaces_id)
    uow.audit.append(analyst, "assessment_change" if changed else "assessment", item_id, changed or decision.summary())
    _annotate(item, decision)
    images = decision.images
    copies = _copies(uow, item_id, images, category, analyst, decision)
    escalated_at = now()
    release_due_at = escalated_at + timedelta(seconds=hold_seconds) if hold_seconds else None
    escalation_id = f"pol-{item_id}"
    n = 1
    while uow.escalations.get(escalation_id) is not None:  # an earlier escalation, withdrawn since
        n += 1
        escalation_id = f"pol-{item_id}-{n}"
    escalation = PoliceEscalation(
        escalation_id=escalation_id,
        escalated_at=escalated_at,
        release_due_at=release_due_at,
        item_id=item_id,
        url=item.url,
        images=images,
        hosting=hosting,
        first_seen=item.first_seen,
        last_seen=item.last_seen,
        report_ids=uow.items.report_ids(item_id),
        classification=AnalystClassification(analyst=analyst, verdict="illegal", category=category,
                                             notes=decision.notes, answers=decision.answers,
                                             changed_by=analyst if changed else None),
        copies=copies,
    )
    uow.escalations.add(escalation.escalation_id, item_id, escalation.model_dump(mode="json"), release_due_at)
    uow.items.set_state(
        item,
        ItemState.ESCALATED,
        (f"changed to illegal by senior analyst {analyst}: " if changed else "")
        + f"confirmed new material ({category}) by {analyst}: escalated to the police; "
        f"{len(entry_ids)} hash set(s) added to the bank; takedown follows on police release"
        + (f"; {len(copies)} copy(ies) at other URLs escalated with it" if copies else "")
        + (f" or automatically at {release_due_at.isoformat(timespec='seconds')} unless the police hold it"
           if release_due_at else ""),
        "assessment",
    )
    return [Outgoing("escalations.police", escalation)]


def _bank_add(uow: UnitOfWork, decision: Decision, analyst: str) -> list[int]:
    """The illegal images' hashes join the bank, each under its own category (per image), or
    every image under the item's (the old body). Returns the new entries' ids."""
    ids: list[int] = []
    for img in decision.images:
        if img.error is not None or not img.sha256:
            continue
        if decision.per_image:
            if img.assessment is None or img.assessment.classification not in ILLEGAL:
                continue
            category: str = img.assessment.classification
        else:
            category = decision.category or "national"
        entry = uow.bank.add(category=category, source=f"analyst:{analyst}", md5=img.md5, sha1=img.sha1,
                             sha256=img.sha256, pdq=img.pdq, phash=img.phash)
        ids.append(entry.id)
    return ids


def _record(
    uow: UnitOfWork, item: Item, decision: Decision, analyst: str, entry_ids: list[int], replaces_id: int | None,
) -> int:
    row = uow.assessments.add(
        item.id, analyst, decision.verdict, decision.category, decision.notes,
        images=decision.images_record(), answers=[a.model_dump() for a in decision.answers] or None,
        bank_entry_ids=entry_ids or None, replaces_id=replaces_id,
    )
    return row.id


def _annotate(item: Item, decision: Decision) -> None:
    """Each image's classification onto the item's classify record too, so everything built
    from it later (the police release's notice and forward, the item page) carries it."""
    if decision.per_image and item.classification:
        classified = ItemClassified.model_validate(item.classification)
        item.classification = classified.model_copy(update={"images": decision.images}).model_dump(mode="json")


@dataclass(frozen=True)
class Revision:
    """A senior analyst's change: the messages to publish and the bank entries retired (the
    caller tells its running bank to forget them after the commit)."""

    outgoing: list[Outgoing]
    retired: list[int]
    old: str
    new: str


def revise(
    uow: UnitOfWork,
    item_id: str,
    *,
    senior: str,
    reason: str,
    retire: Callable[[int, str], bool],
    verdict: str | None,
    category: str | None,
    images: Sequence[ImageDecision | Mapping[str, Any]] | None = None,
    answers: Sequence[Answer] = (),
    notes: str | None = None,
    hold_seconds: float | None = None,
) -> Revision:
    """A senior analyst changes a decision; the old and the new one go to the audit log.

    - not illegal → illegal: the item is escalated as on a first decision (refused while
      another item holds the URL: that one is the work now);
    - illegal → not illegal, before the takedown (the escalation not yet released): the
      escalation is withdrawn (the police can no longer release it), the bank entries the
      decision added are retired (``retire(entry_id, reason)``: services/bank ``retire`` in
      the caller's unit of work), copies escalated with it go back to the analysts, the item
      is closed; after the takedown it is refused: the notice is out, an operator handles it;
    - illegal → illegal (another category or per-image fields): the bank entries are
      replaced, the escalation's record updated while the police still hold it.
    A doubtful decision is no change: it is refused."""
    item = uow.items.get(item_id)
    if item is None:
        raise AssessmentRefused(404, f"no item {item_id}")
    previous = uow.assessments.latest(item_id)
    if previous is None or item.state == ItemState.AWAITING_ASSESSMENT:
        raise AssessmentRefused(409, f"item {item_id} is {item.state}: there is no decision to change")
    if not reason.strip():
        raise ClassificationInvalid([(("reason",), "reason: say why the decision changes")])
    classified = ItemClassified.model_validate(item.classification) if item.classification else None
    current = [i.model_copy(update={"assessment": None}) for i in (classified.images if classified else [])]
    decision = decide(current, verdict=verdict, category=category, images=images, answers=answers, notes=notes)
    if decision.verdict == "doubtful":
        raise ClassificationInvalid([(("images",), "a senior analyst's change decides: doubtful is no decision")])
    old = f"{previous.verdict} {previous.category or ''}".strip() + _codes(previous.images)
    new = decision.summary()
    change = f"{old} -> {new} (by senior {senior}: {reason.strip()})"
    if previous.verdict == "not_illegal" or item.state == ItemState.CLOSED_NOT_ILLEGAL:
        if decision.verdict == "not_illegal":
            _record(uow, item, decision, senior, [], previous.id)
            uow.audit.append(senior, "assessment_change", item_id, change)
            _annotate(item, decision)
            return Revision([], [], old, new)
        holder = uow.items.open_for_url(item.url)
        if holder is not None and holder.id != item.id:
            raise AssessmentRefused(409, f"{item.url} was reported again as item {holder.id}: decide that one")
        out = _confirm(uow, item, decision, senior, hold_seconds, replaces_id=previous.id, changed=change)
        return Revision(out, [], old, new)
    escalation = _escalation_of(uow, item_id)
    if escalation is None or escalation.state in ("released", WITHDRAWN) or item.state != ItemState.ESCALATED:
        raise AssessmentRefused(409, f"item {item_id} is {item.state}: the takedown has gone out; "
                                "an operator must correct it (the decision stays)")
    retired = [eid for eid in (previous.bank_entry_ids or []) if retire(int(eid), f"decision changed: {change}")]
    if decision.verdict == "not_illegal":
        _record(uow, item, decision, senior, [], previous.id)
        uow.audit.append(senior, "assessment_change", item_id, change)
        _annotate(item, decision)
        escalation.state = WITHDRAWN
        escalation.outcome = f"withdrawn: senior analyst {senior} found it not illegal before the takedown"
        for copy in PoliceEscalation.model_validate(escalation.payload).copies:
            other = uow.items.get(copy.item_id)
            if other is not None and other.state == ItemState.ESCALATED:
                uow.items.set_state(other, ItemState.AWAITING_ASSESSMENT,
                                    f"item {item_id}, escalated with it, was changed to not illegal by {senior}: "
                                    "an analyst looks at this one again", "assessment")
        uow.items.set_state(item, ItemState.CLOSED_NOT_ILLEGAL,
                            f"changed to not illegal by senior analyst {senior} before the takedown: "
                            f"escalation {escalation.id} withdrawn, {len(retired)} bank entry(ies) retired",
                            "assessment")
        return Revision([], retired, old, new)
    entry_ids = _bank_add(uow, decision, senior)
    _record(uow, item, decision, senior, entry_ids, previous.id)
    uow.audit.append(senior, "assessment_change", item_id, change)
    _annotate(item, decision)
    payload = PoliceEscalation.model_validate(escalation.payload)
    before = payload.classification
    escalation.payload = payload.model_copy(update={
        "images": decision.images,
        "classification": AnalystClassification(
            analyst=before.analyst if before else senior, verdict="illegal", category=decision.category or "national",
            notes=decision.notes, answers=decision.answers or (before.answers if before else []), changed_by=senior),
    }).model_dump(mode="json")
    uow.items.add_event(item_id, "assessment", "assessment_changed", change)
    return Revision([], retired, old, new)


def _escalation_of(uow: UnitOfWork, item_id: str) -> Escalation | None:
    """The item's newest escalation (``pol-{item}``, after a withdrawal ``pol-{item}-2``, ...),
    locked: a police release and this change never both apply."""
    found: Escalation | None = None
    escalation_id, n = f"pol-{item_id}", 1
    while uow.escalations.get(escalation_id) is not None:
        found = uow.escalations.lock(escalation_id)
        n += 1
        escalation_id = f"pol-{item_id}-{n}"
    return found


def _codes(images: list[Any] | None) -> str:
    if not images:
        return ""
    return " [" + ", ".join(f"{(i.get('sha256') or i.get('url') or '')[:12]}={i.get('classification')}"
                            + (f"/{i['xarf']}" if i.get("xarf") else "") for i in images) + "]"


def _copies(
    uow: UnitOfWork, item_id: str, images: list[ImageFacts], category: str, analyst: str, decision: Decision,
) -> list[Copy]:
    """The other items showing one of the illegal images that still wait for an analyst: the
    decision covers them too (an analyst decides once). They are escalated with this item and
    taken down with its police release (``services.escalate.release``), so the police's hold
    covers every copy; the image's classification goes onto the copy's record too. Copies
    reported later match the bank by hash and are routed as known material. An image decided
    not illegal (or doubtful) escalates no copy."""
    decided = {i.sha256: i.assessment for i in images if i.sha256 and i.assessment is not None}
    sha256s = [i.sha256 for i in images if i.error is None and i.sha256
               and (not decision.per_image or (i.assessment is not None and i.assessment.classification in ILLEGAL))]
    copies: list[Copy] = []
    for other_id in dict.fromkeys(other for other, _sha, _url in uow.items.sharing_images(item_id, sha256s)):
        other = uow.items.get(other_id)
        if other is None or other.state != ItemState.AWAITING_ASSESSMENT:
            continue
        classified = ItemClassified.model_validate(other.classification) if other.classification else None
        copies.append(Copy(item_id=other.id, url=other.url, hosting=classified.hosting if classified else None))
        if classified is not None and decided:
            other.classification = classified.model_copy(update={"images": [
                i.model_copy(update={"assessment": decided[i.sha256]}) if i.sha256 in decided else i
                for i in classified.images]}).model_dump(mode="json")
        uow.items.set_state(
            other, ItemState.ESCALATED,
            f"shows the same image as item {item_id}, confirmed as new material ({category}) by {analyst}: "
            "escalated to the police with it; takedown follows with its release",
            "assessment",
        )
        uow.audit.append(analyst, "assessment_copy", other.id, f"same image as {item_id}")
    return copies
