"""The unit of work in dictionaries: the same repositories as ``SqlUnitOfWork`` without a
database, for stage unit tests (cosmicpython's fake repositories).

``commit`` keeps everything and moves the enqueued messages to ``published``;
``rollback`` restores the state of the last commit, so a stage test sees exactly
what a runtime would have persisted.
"""

from __future__ import annotations

import copy
import itertools
from collections import Counter
from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any

from hotline.kernel.clock import now
from hotline.kernel.ports import ItemWork
from hotline.kernel.states import FINAL
from hotline.storage.actions import ESCALATION_OPEN_FOR_TIMER, new_forward, new_notice
from hotline.storage.deliveries import claim_in, mark_sent_in, older_pending_in, queue_order
from hotline.storage.followups import pick_within_cap, reopen
from hotline.storage.items import apply_state, new_item
from hotline.storage.models import (
    Assessment,
    BankEntry,
    Escalation,
    Followup,
    FollowupStep,
    Forward,
    ForwardStatus,
    Item,
    ItemEvent,
    Notice,
    PartnerUpdate,
    Report,
    ReportUrl,
)
from hotline.storage.reports import RecordsRejections, new_report

if TYPE_CHECKING:
    from hotline.kernel.messages import Outgoing
    from schemas.reports import ReportSubmitted


class MemoryState:
    """Everything a ``MemoryUnitOfWork`` keeps; survives between units of work like a database."""

    def __init__(self) -> None:
        self.reports: dict[str, Report] = {}
        self.report_urls: list[ReportUrl] = []
        self.items: dict[str, Item] = {}
        self.open_urls: dict[str, str] = {}
        self.events: list[ItemEvent] = []
        self.item_images: list[tuple[str, str, str]] = []  # (item id, sha256, image URL)
        self.notices: dict[str, Notice] = {}
        self.forwards: dict[str, Forward] = {}
        self.escalations: dict[str, Escalation] = {}
        self.assessments: list[Assessment] = []
        self.bank: list[BankEntry] = []
        self.followups: dict[str, Followup] = {}
        self.followup_steps: dict[str, FollowupStep] = {}
        self.audit: list[tuple[str, str, str, str]] = []
        self.published: list[Outgoing] = []
        self.forward_statuses: list[ForwardStatus] = []
        self.partner_updates: dict[str, PartnerUpdate] = {}


_ids = itertools.count(1)


class MemoryAudit:
    def __init__(self, state: MemoryState) -> None:
        self.state = state

    def append(self, actor: str, action: str, subject: str, detail: str = "") -> None:
        self.state.audit.append((actor, action, subject, detail))


class MemoryReports(RecordsRejections):
    def __init__(self, state: MemoryState, audit: MemoryAudit) -> None:
        self.state, self.audit = state, audit

    def get(self, report_id: str) -> Report | None:
        return self.state.reports.get(report_id)

    def by_idempotency_key(self, key: str) -> Report | None:
        return next((r for r in self.state.reports.values() if r.idempotency_key == key), None)

    def create(self, msg: ReportSubmitted, idempotency_key: str | None = None) -> Report:
        if msg.report_id in self.state.reports:
            raise KeyError(f"report {msg.report_id} exists")
        report = self.state.reports[msg.report_id] = new_report(msg, idempotency_key)
        return report

    def urls(self, report_id: str) -> Sequence[ReportUrl]:
        return sorted((u for u in self.state.report_urls if u.report_id == report_id), key=lambda u: u.position)

    def link_url(
        self, report_id: str, position: int, url_as_reported: str, item_id: str | None,
        rejected_reason: str | None = None,
    ) -> None:
        self.state.report_urls.append(
            ReportUrl(
                id=next(_ids), report_id=report_id, position=position, url_as_reported=url_as_reported,
                item_id=item_id, rejected_reason=rejected_reason,
            )
        )

    def _add(self, report: Report) -> None:
        self.state.reports[report.id] = report

    def from_partners(self, report_ids: Sequence[str]) -> list[Report]:
        found = (self.state.reports.get(i) for i in dict.fromkeys(report_ids))
        return [r for r in found if r is not None and r.channel == "partner" and r.partner_country]


class MemoryItems:
    def __init__(self, state: MemoryState) -> None:
        self.state = state

    def get(self, item_id: str) -> Item | None:
        return self.state.items.get(item_id)

    def work_of(self, item_id: str) -> ItemWork | None:
        item = self.state.items.get(item_id)
        if item is None:
            return None
        moved = {s.forward_id for s in self.state.forward_statuses if s.action == "MO"}
        relookups = sum(1 for f in self.state.forwards.values() if f.item_id == item_id and f.id in moved)
        return ItemWork(item.url, item.state, item.classification, item.first_seen, item.last_seen, relookups)

    def classify(self, item_id: str, work: ItemWork, classification: dict[str, Any],
                 hosting: tuple[str | None, str | None] | None, state: str, reason: str, stage: str,
                 *, if_unchanged: bool = False) -> bool:
        item = self.state.items[item_id]
        if if_unchanged and (item.classification is not None or item.state != work.state):
            return False
        item.classification = classification
        if hosting is not None:
            item.country, item.hoster = hosting
        self.set_state(item, state, reason, stage)
        return True

    def reload(self, item: Item) -> Item:
        return self.state.items[item.id]

    def lock(self, item_ids: Sequence[str]) -> list[Item]:
        # One thread of tests: nothing to wait for.
        return [self.state.items[i] for i in sorted(set(item_ids)) if i in self.state.items]

    def open_for_url(self, url: str) -> Item | None:
        item_id = self.state.open_urls.get(url)
        return None if item_id is None else self.state.items[item_id]

    def create(self, url: str) -> Item:
        from sqlalchemy.exc import IntegrityError

        if url in self.state.open_urls:
            raise IntegrityError("INSERT INTO open_urls", {}, Exception("an open item exists for this URL"))
        item = new_item(url)
        self.state.items[item.id] = item
        self.state.open_urls[url] = item.id
        return item

    def create_deferred(self, url: str) -> Item:
        return self.create(url)

    def set_state(self, item: Item, state: str, reason: str, stage: str, at: datetime | None = None) -> None:
        was_final = item.state in FINAL
        new = apply_state(item, state, reason)
        self.add_event(item.id, stage, new, reason, at)
        if new in FINAL:
            self.state.open_urls = {u: i for u, i in self.state.open_urls.items() if i != item.id}
        elif was_final:
            self.state.open_urls[item.url] = item.id

    def add_event(self, item_id: str, stage: str, kind: str, detail: str = "", at: datetime | None = None) -> None:
        self.state.events.append(
            ItemEvent(id=next(_ids), item_id=item_id, stage=stage, kind=str(kind), detail=detail, at=at or now())
        )

    def events(self, item_id: str) -> Sequence[ItemEvent]:
        return [e for e in self.state.events if e.item_id == item_id]

    def report_ids(self, item_id: str) -> list[str]:
        return sorted({u.report_id for u in self.state.report_urls if u.item_id == item_id})

    def exists(self, item_id: str) -> bool:
        return self.get(item_id) is not None

    def in_state(self, state: str) -> Sequence[Item]:
        return sorted((i for i in self.state.items.values() if i.state == state), key=lambda i: i.first_seen)

    def add_images(self, item_id: str, images: Sequence[tuple[str, str]]) -> None:
        self.state.item_images.extend((item_id, sha256, url) for sha256, url in images)

    def sharing_images(self, item_id: str, sha256s: Sequence[str]) -> list[tuple[str, str, str]]:
        wanted = set(sha256s)
        return [row for row in self.state.item_images if row[0] != item_id and row[1] in wanted]

    def first_sightings(self, item_id: str, sha256s: Sequence[str], count_up_to: int) -> list[tuple[str, str, str, int]]:
        out: list[tuple[str, str, str, int]] = []
        for sha256 in dict.fromkeys(sha256s):
            rows = [r for r in self.state.item_images if r[0] != item_id and r[1] == sha256]
            if rows:
                out.append((rows[0][0], sha256, rows[0][2], min(len({r[0] for r in rows}), count_up_to)))
        return out


class MemoryNotices:
    def __init__(self, state: MemoryState) -> None:
        self.state = state

    def get(self, notice_id: str) -> Notice | None:
        return self.state.notices.get(notice_id)

    def look_up(self, notice_id: str, abuse_email: str, item_id: str) -> tuple[Notice | None, list[Notice], bool]:
        return self.get(notice_id), list(self.held_for(abuse_email)), item_id in self.state.items

    def reserve(self, notice_id: str, item_id: str, hoster: str, abuse_email: str, message_id: str) -> Notice:
        notice = self.state.notices[notice_id] = new_notice(notice_id, item_id, hoster, abuse_email, message_id)
        return notice

    def mark_sent(self, notice_id: str, at: datetime) -> bool:
        notice = self.get(notice_id)
        if notice is None:
            return False
        notice.status, notice.sent_at = "sent", at
        return True

    def lock(self, notice_id: str) -> Notice | None:
        return self.get(notice_id)

    def for_item(self, item_id: str) -> Sequence[Notice]:
        return sorted((n for n in self.state.notices.values() if n.item_id == item_id),
                      key=lambda n: (n.created_at, n.id))

    def in_status(self, *statuses: str) -> Sequence[Notice]:
        return sorted((n for n in self.state.notices.values() if n.status in statuses),
                      key=lambda n: (n.created_at, n.id))

    def last_sent_to(self, abuse_email: str) -> datetime | None:
        return max((n.sent_at for n in self.state.notices.values()
                    if n.abuse_email == abuse_email and n.status == "sent" and n.sent_at is not None), default=None)

    def held_for(self, abuse_email: str) -> Sequence[Notice]:
        return sorted((n for n in self.state.notices.values() if n.abuse_email == abuse_email and n.status == "grouped"),
                      key=lambda n: (n.created_at, n.id))

    def in_group(self, message_id: str) -> Sequence[Notice]:
        return sorted((n for n in self.state.notices.values() if n.message_id == message_id),
                      key=lambda n: (n.created_at, n.id))

    def claim_held(self, at: datetime, until: datetime, limit: int) -> list[Notice]:
        taken = sorted((n for n in self.state.notices.values() if n.status == "grouped"
                        and n.held_until is not None and n.held_until <= at),
                       key=lambda n: (n.held_until or at, n.created_at, n.id))[:limit]
        for notice in taken:
            notice.held_until = until
        return taken


class MemoryForwards:
    def __init__(self, state: MemoryState) -> None:
        self.state = state

    def get(self, forward_id: str) -> Forward | None:
        return self.state.forwards.get(forward_id)

    def open(self, forward_id: str, item_id: str, country: str, partner: str) -> Forward:
        forward = self.state.forwards[forward_id] = new_forward(forward_id, item_id, country, partner)
        return forward

    def lock(self, forward_id: str) -> Forward | None:
        return self.get(forward_id)

    def mark_sent(self, forward_id: str, at: datetime) -> int | None:
        return mark_sent_in(self.get(forward_id), at)

    def _sorted(self, rows: Iterable[Forward]) -> list[Forward]:
        return sorted(rows, key=queue_order)

    def for_item(self, item_id: str) -> Sequence[Forward]:
        return self._sorted(f for f in self.state.forwards.values() if f.item_id == item_id)

    def for_country(self, country: str) -> Sequence[Forward]:
        return list(reversed(self._sorted(f for f in self.state.forwards.values() if f.country == country.upper())))

    def in_status(self, *statuses: str) -> Sequence[Forward]:
        return self._sorted(f for f in self.state.forwards.values() if f.status in statuses)

    def older_pending(self, forward: Forward) -> bool:
        return older_pending_in(self.state.forwards.values(), forward, lambda f: f.item_id)

    def claim_due(self, at: datetime, limit: int, stale_before: datetime) -> list[Forward]:
        return claim_in(list(self.state.forwards.values()), lambda f: f.item_id, at, limit, stale_before)

    def add_status(self, forward_id: str, action: str, note: str | None, by: str, at: datetime) -> ForwardStatus:
        row = ForwardStatus(id=next(_ids), forward_id=forward_id, action=action, note=note, by=by, at=at)
        self.state.forward_statuses.append(row)
        return row

    def statuses(self, forward_id: str) -> Sequence[ForwardStatus]:
        return [s for s in self.state.forward_statuses if s.forward_id == forward_id]

    def moved_count(self, item_id: str) -> int:
        return sum(1 for f in self.for_item(item_id) if any(s.action == "MO" for s in self.statuses(f.id)))


class MemoryPartnerUpdates:
    def __init__(self, state: MemoryState) -> None:
        self.state = state

    def get(self, update_id: str) -> PartnerUpdate | None:
        return self.state.partner_updates.get(update_id)

    def lock(self, update_id: str) -> PartnerUpdate | None:
        return self.get(update_id)

    def mark_sent(self, update_id: str, at: datetime) -> int | None:
        return mark_sent_in(self.get(update_id), at)

    def add(self, update: PartnerUpdate) -> PartnerUpdate:
        if update.id in self.state.partner_updates:
            from sqlalchemy.exc import IntegrityError

            raise IntegrityError("INSERT INTO partner_updates", {}, Exception(f"update {update.id} exists"))
        self.state.partner_updates[update.id] = update
        return update

    def _sorted(self, rows: Iterable[PartnerUpdate]) -> list[PartnerUpdate]:
        return sorted(rows, key=queue_order)

    def for_report(self, report_id: str) -> Sequence[PartnerUpdate]:
        return self._sorted(u for u in self.state.partner_updates.values() if u.report_id == report_id)

    def in_status(self, *statuses: str) -> Sequence[PartnerUpdate]:
        return self._sorted(u for u in self.state.partner_updates.values() if u.status in statuses)

    def older_pending(self, update: PartnerUpdate) -> bool:
        return older_pending_in(self.state.partner_updates.values(), update, lambda u: u.report_id)

    def claim_due(self, at: datetime, limit: int, stale_before: datetime) -> list[PartnerUpdate]:
        return claim_in(list(self.state.partner_updates.values()), lambda u: u.report_id, at, limit, stale_before)


class MemoryEscalations:
    def __init__(self, state: MemoryState) -> None:
        self.state = state

    def add(
        self, escalation_id: str, item_id: str, payload: dict[str, Any], release_due_at: datetime | None = None,
    ) -> None:
        self.state.escalations[escalation_id] = Escalation(
            id=escalation_id, item_id=item_id, payload=payload, created_at=now(), state="new",
            release_due_at=release_due_at,
        )

    def get(self, escalation_id: str) -> Escalation | None:
        return self.state.escalations.get(escalation_id)

    def lock(self, escalation_id: str) -> Escalation | None:
        return self.get(escalation_id)  # one writer at a time anyway

    def newest(self, limit: int = 200, start: datetime | None = None, end: datetime | None = None) -> Sequence[Escalation]:
        rows = [e for e in self.state.escalations.values()
                if (start is None or e.created_at >= start) and (end is None or e.created_at < end)]
        return sorted(rows, key=lambda e: (e.created_at, e.id), reverse=True)[:limit]

    def claim_due(self, at: datetime, limit: int) -> list[Escalation]:
        due = [e for e in self.state.escalations.values() if e.state in ESCALATION_OPEN_FOR_TIMER
               and e.release_due_at is not None and e.release_due_at <= at]
        return sorted(due, key=lambda e: (e.release_due_at or at, e.id))[:limit]

    def add_released(self, escalation_id: str, item_id: str, payload: dict[str, Any], by: str, outcome: str) -> None:
        at = now()
        self.state.escalations[escalation_id] = Escalation(
            id=escalation_id, item_id=item_id, payload=payload, created_at=at, state="released", released_at=at,
            released_by=by, outcome=outcome,
        )


class MemoryAssessments:
    def __init__(self, state: MemoryState) -> None:
        self.state = state

    def add(
        self, item_id: str, analyst: str, verdict: str, category: str | None, notes: str | None, *,
        images: list[Any] | None = None, answers: list[Any] | None = None,
        bank_entry_ids: list[int] | None = None, replaces_id: int | None = None,
    ) -> Assessment:
        row = Assessment(id=next(_ids), item_id=item_id, analyst=analyst, verdict=verdict, category=category,
                         notes=notes, at=now(), images=images, answers=answers, bank_entry_ids=bank_entry_ids,
                         replaces_id=replaces_id)
        self.state.assessments.append(row)
        return row

    def latest(self, item_id: str) -> Assessment | None:
        rows = [a for a in self.state.assessments if a.item_id == item_id]
        return rows[-1] if rows else None


class MemoryBank:
    def __init__(self, state: MemoryState) -> None:
        self.state = state

    def add(self, *, category: str, source: str, **hashes: str | None) -> BankEntry:
        entry = BankEntry(id=next(_ids), category=category, source=source, added_at=now(), **hashes)
        self.state.bank.append(entry)
        return entry


class MemoryFollowups:
    def __init__(self, state: MemoryState) -> None:
        self.state = state

    def get(self, item_id: str) -> Followup | None:
        return self.state.followups.get(item_id)

    def get_for_update(self, item_id: str) -> Followup | None:
        return self.get(item_id)  # one writer at a time anyway

    def get_many_for_update(self, item_ids: Sequence[str]) -> dict[str, Followup]:
        return {i: f for i in sorted(set(item_ids)) if (f := self.get(i)) is not None}

    def open(self, followup: Followup) -> Followup:
        existing = self.state.followups.get(followup.item_id)
        if existing is not None:
            return reopen(existing, followup)
        self.state.followups[followup.item_id] = followup
        return followup

    def unplanned(self, limit: int) -> list[Followup]:
        return sorted((f for f in self.state.followups.values() if f.status == "new"), key=lambda f: f.item_id)[:limit]

    def claim_due(self, at: datetime, limit: int, per_hoster: int, stale_before: datetime) -> list[Followup]:
        rows = self.state.followups.values()
        in_flight = Counter(
            f.hoster for f in rows
            if f.next_check_at is not None and f.next_check_at <= at
            and f.dispatched_at is not None and f.dispatched_at >= stale_before
        )
        candidates = sorted(
            (f for f in rows if f.next_check_at is not None and f.next_check_at <= at
             and (f.dispatched_at is None or f.dispatched_at < stale_before)),
            key=lambda f: (f.next_check_at, f.item_id),
        )
        taken = pick_within_cap(candidates, in_flight, per_hoster, limit)
        for f in taken:
            f.dispatched_at = at
        return taken

    def claim_pending_steps(self, at: datetime, limit: int, stale_before: datetime) -> list[Followup]:
        taken = sorted(
            (f for f in self.state.followups.values() if f.step_pending is not None
             and (f.step_dispatched_at is None or f.step_dispatched_at < stale_before)),
            key=lambda f: (f.step_pending or 0, f.item_id),
        )[:limit]
        for f in taken:
            f.step_dispatched_at = at
        return taken

    def get_step(self, step_id: str) -> FollowupStep | None:
        return self.state.followup_steps.get(step_id)

    def add_step(self, step: FollowupStep) -> FollowupStep:
        if step.id in self.state.followup_steps:
            from sqlalchemy.exc import IntegrityError

            raise IntegrityError("INSERT INTO followup_steps", {}, Exception(f"step {step.id} exists"))
        self.state.followup_steps[step.id] = step
        return step

    def steps(self, item_id: str) -> Sequence[FollowupStep]:
        return sorted((s for s in self.state.followup_steps.values() if s.item_id == item_id), key=lambda s: s.position)


class MemoryUnitOfWork:
    def __init__(self, state: MemoryState | None = None) -> None:
        self.state = state or MemoryState()
        self.pending: list[Outgoing] = []
        self.commits = 0
        self._bind(self.state)
        self._saved = copy.deepcopy(self.state)

    def _bind(self, state: MemoryState) -> None:
        self.state = state
        self.audit = MemoryAudit(state)
        self.reports = MemoryReports(state, self.audit)
        self.items = MemoryItems(state)
        self.notices = MemoryNotices(state)
        self.forwards = MemoryForwards(state)
        self.escalations = MemoryEscalations(state)
        self.assessments = MemoryAssessments(state)
        self.bank = MemoryBank(state)
        self.followups = MemoryFollowups(state)
        self.partner_updates = MemoryPartnerUpdates(state)

    def enqueue(self, outgoing: Iterable[Outgoing]) -> None:
        self.pending.extend(outgoing)

    def commit(self) -> None:
        self.state.published.extend(self.pending)
        self.pending.clear()
        self.commits += 1
        self._saved = copy.deepcopy(self.state)

    def rollback(self) -> None:
        """Back to the last commit. Entities handed out before are stale afterwards, as
        SQLAlchemy's are after a rollback: read them again."""
        self.pending.clear()
        restored = copy.deepcopy(self._saved)
        # Keep the caller's MemoryState object identity (tests hold it).
        self.state.__dict__.update(restored.__dict__)
